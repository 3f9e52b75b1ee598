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
}
EMBEDDING = ("protonet", "protomaml")
ALGORITHMS = (*_SUPERVISED, "daml")


def build_learner(
    algo: str,
    loss: Callable[[Any, Any], Any],
    *,
    head: str,
    inner_lr: float,
    inner_steps: int,
    embed: Callable[[Any, Any], Any] | None = None,
) -> mf.Learner:
    """The learner of a supervised algorithm; ``head`` names the layer ANIL adapts and BOIL
    freezes; ``embed`` is the model without its head, which ProtoNet and ProtoMAML classify
    over (they ignore ``loss``; ProtoNet takes no inner steps)."""
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
    return _SUPERVISED[algo](loss, head, embed, inner_lr=inner_lr, inner_steps=inner_steps)
