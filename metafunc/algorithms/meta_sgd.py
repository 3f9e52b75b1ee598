"""Meta-SGD.

Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
arXiv:1707.09835, 2017. Besides the initialisation θ0, every parameter entry has its own
inner learning rate α, learned with it: ``θ' = θ0 − α ⊙ ∇L_support(θ0)``, and both descend the
query loss of θ'. The meta-parameters are ``{"params": θ0, "lr": α}``.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _checks, _inner, _tree
from .._learner import Learner, build, check_randomness, exact
from ..optim import Optimizer
from .maml import Loss


def meta_sgd(
    loss: Loss,
    *,
    inner_lr: float | Any = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    chunk_size: int | None = None,
    randomness: str = "error",
    remat: bool = False,
) -> Learner:
    """Meta-SGD (Li et al., 2017): MAML with a learned learning rate per parameter entry.

    Args:
        loss: ``loss(params, data) -> scalar`` for the support and the query set.
        inner_lr: the initial rates: a positive number (every entry starts there) or a pytree
            like the parameters whose leaves broadcast to them. The learned rates may go
            anywhere, including below zero, as in the paper.
        inner_steps: SGD steps per task (the paper uses one).
        first_order: detach the inner gradients; the rates still get the gradient
            ``−∇L_support(θ) ⊙ ∇L_query(θ')`` since they multiply the detached gradient.
        chunk_size: compute the meta-gradient this many tasks at a time; ``None`` for all.
        remat: recompute each inner step's activations in the backward pass instead of
            keeping them (see :func:`metafunc.maml`).
        randomness: what random operations in the model (dropout) do across the tasks of a
            batch: ``"error"`` refuses them, ``"different"`` gives each task its own draws,
            ``"same"`` the same draws; a step seeds them from ``TrainState.rng`` (see
            :func:`metafunc.init_state`).

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are ``{"params": θ0, "lr": α}``.

    Example:
        >>> learner = mf.meta_sgd(mf.supervised(fn, mf.losses.mse), inner_lr=0.01)
        >>> meta = learner.init(params)   # meta["lr"] is shaped like params
    """
    name = "meta_sgd"
    _checks.function(name, "loss", loss, "loss(params, data)")
    inner_lr = _checks.learning_rate(name, "inner_lr", inner_lr)
    inner_steps = _checks.integer(name, "inner_steps", inner_steps, minimum=1)
    first_order = _checks.boolean(name, "first_order", first_order)
    chunk_size = _checks.chunk_size(name, chunk_size)
    randomness = check_randomness(name, randomness)
    remat = _inner.check_remat(name, remat, randomness)

    def init(params: Any) -> Any:
        _inner.check_params(name, params, inner_lr)
        if isinstance(inner_lr, float):
            lr = _tree.map(lambda p: torch.full_like(p, inner_lr), params)
        else:
            lr = _tree.map(lambda r, p: r.expand_as(p).clone(), inner_lr, params)
        return {"params": _tree.copy(params), "lr": lr}

    def setup(meta: Any) -> tuple[Any, Loss, Optimizer]:
        return meta["params"], loss, _inner.optimizer(meta["lr"], meta["params"])

    loop = _inner.Loop(setup, inner_steps, first_order)
    params = lambda meta: meta["params"]  # noqa: E731

    def check_meta(where: str, meta_name: str, meta: Any) -> None:
        _checks.keyed(where, meta_name, meta, ("params", "lr"), "from meta_sgd(...).init")
        _tree.check_same_structure(
            meta["params"],
            meta["lr"],
            where=where,
            expected_name=f"{meta_name}['params']",
            got_name=f"{meta_name}['lr']",
        )

    return build(
        name,
        init=init,
        adapt=lambda meta, support: _inner.run(loop, meta, support),
        loss=loss,
        params=params,
        chunk_size=chunk_size,
        gradient=_inner.remat_gradient(loop, loss, params) if remat else exact,
        check_meta=check_meta,
        randomness=randomness,
    )
