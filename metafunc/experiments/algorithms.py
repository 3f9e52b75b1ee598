"""The one registry of the algorithms the applications run, by their command-line names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import metafunc as mf

# The supervised family: learner(loss, head, embed, inner_lr, inner_steps). ProtoNet and
# ProtoMAML classify over an embedding, the model without its head (EMBEDDING): classification
# only. DAML needs a model with features and a learned loss; the sine experiment builds it.
_SUPERVISED: dict[str, Callable[..., mf.Learner]] = {
    "maml": lambda loss, head, embed, **inner: mf.maml(loss, **inner),
    "fomaml": lambda loss, head, embed, **inner: mf.fomaml(loss, **inner),
    "reptile": lambda loss, head, embed, **inner: mf.reptile(loss, **inner),
    "meta-sgd": lambda loss, head, embed, **inner: mf.meta_sgd(loss, **inner),
    "anil": lambda loss, head, embed, **inner: mf.anil(loss, head=head, **inner),
    "boil": lambda loss, head, embed, **inner: mf.boil(loss, head=head, **inner),
    "imaml": lambda loss, head, embed, **inner: mf.imaml(loss, **inner),
    "protonet": lambda loss, head, embed, **inner: mf.protonet(embed),
    "protomaml": lambda loss, head, embed, **inner: mf.protomaml(embed, **inner),
    "mamlpp": lambda loss, head, embed, norms=None, anneal=(10, 1), **inner: mf.mamlpp(
        loss, per_step=norms, msl_epochs=anneal[0], epoch_steps=anneal[1], **inner
    ),
}
EMBEDDING = ("protonet", "protomaml")
# MAML++ keeps a copy of the batch norms' running statistics and weights per inner step: its
# few-shot net tracks running statistics, threaded as model state (mf.stateful).
STATEFUL = ("mamlpp",)
ALGORITHMS = (*_SUPERVISED, "daml")


def build_learner(
    algo: str,
    loss: Callable[[Any, Any], Any],
    *,
    head: str,
    inner_lr: float,
    inner_steps: int,
    embed: Callable[[Any, Any], Any] | None = None,
    norms: list[str] | None = None,
    steps: int = 1000,
) -> mf.Learner:
    """The learner of a supervised algorithm; ``head`` names the layer ANIL adapts and BOIL
    freezes; ``embed`` is the model without its head, which ProtoNet and ProtoMAML classify
    over (they ignore ``loss``; ProtoNet takes no inner steps). MAML++ keeps the layers
    ``norms`` per inner step and anneals its multi-step loss over the first tenth of a run of
    ``steps`` outer steps (100 "epochs" of ``steps // 100``, the first 10 annealed)."""
    if algo not in _SUPERVISED:
        raise ValueError(
            f"build_learner: algo must be one of {list(_SUPERVISED)} (got {algo!r}; DAML runs "
            "on the DAML sine only)"
        )
    if algo in EMBEDDING and embed is None:
        raise ValueError(
            f"build_learner: {algo} classifies over an embedding, the model without its head: "
            "give embed=, on a classification task (got embed=None)"
        )
    inner: dict[str, Any] = {"inner_lr": inner_lr, "inner_steps": inner_steps}
    if algo in STATEFUL:
        inner.update(norms=norms, anneal=(10, max(steps // 100, 1)))
    return _SUPERVISED[algo](loss, head, embed, **inner)


def build_step(
    algo: str, learner: mf.Learner, opt: mf.optim.Optimizer, *, steps: int, compile: bool
) -> mf.Step:
    """The training step of ``algo``: MAML++ anneals the derivative order (first order for the
    first third of the ``steps``, then second order), the others are :func:`mf.make_step`."""
    if algo == "mamlpp":
        return mf.derivative_annealing(learner, opt, first_order_steps=steps // 3, compile=compile)
    return mf.make_step(learner, opt, compile=compile)


def outer_rate(algo: str, lr: float, steps: int, *, cosine: bool = True) -> Any:
    """The outer learning rate: MAML++ anneals it by a cosine to 1% over ``steps`` (the paper's
    code: 0.001 to 0.00001) unless ``cosine`` is False; the others keep ``lr``."""
    if algo == "mamlpp" and cosine:
        return mf.optim.cosine_decay_schedule(lr, max(steps, 1), alpha=0.01)
    return lr
