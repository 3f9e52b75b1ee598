"""What every algorithm shares: the ``Learner`` record and the one vmapped meta-loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.func import grad, vmap

from . import _checks
from ._types import Tasks

Metrics = dict[str, torch.Tensor]


class Learner(NamedTuple):
    """A meta-learning algorithm as a record of pure functions (optax's pattern).

    Attributes:
        name: the algorithm, used in messages.
        init: ``init(params) -> meta``, the meta-parameters (copies) to learn.
        adapt: ``adapt(meta, support) -> params`` for one task (no task dimension).
        meta_loss: ``meta_loss(meta, tasks) -> scalar``, the query loss after adaptation,
            averaged over the tasks (vmapped over the leading dimension).
        meta_grad: ``meta_grad(meta, tasks) -> (grads, metrics)``; ``grads`` is shaped like
            ``meta``; ``metrics`` holds tensors ``loss`` (query loss after adaptation) and
            ``loss_before`` (query loss before), means over the tasks.
    """

    name: str
    init: Callable[[Any], Any]
    adapt: Callable[[Any, Any], Any]
    meta_loss: Callable[[Any, Tasks], torch.Tensor]
    meta_grad: Callable[[Any, Tasks], tuple[Any, Metrics]]


def differentiable_learner(
    name: str,
    *,
    init: Callable[[Any], Any],
    adapt: Callable[[Any, Any], Any],
    loss: Callable[[Any, Any], torch.Tensor],
    params_of: Callable[[Any], Any],
    chunk_size: int | None,
) -> Learner:
    """A learner whose meta-gradient is the gradient of the outer loss through ``adapt``.

    ``adapt`` and ``loss`` are unchecked pure functions; this adds the vmap over tasks, the
    gradient, and eager validation at the public entry points.
    """

    def task_losses(meta: Any, support: Any, query: Any) -> tuple[torch.Tensor, torch.Tensor]:
        after = loss(adapt(meta, support), query)
        before = loss(params_of(meta), query)
        return after, before

    per_task = vmap(task_losses, in_dims=(None, 0, 0), chunk_size=chunk_size)

    def objective(meta: Any, tasks: Tasks) -> tuple[torch.Tensor, Metrics]:
        after, before = per_task(meta, tasks.support, tasks.query)
        mean = after.mean()
        return mean, {"loss": mean, "loss_before": before.mean()}

    raw_grad = grad(objective, has_aux=True)

    def check(meta: Any, tasks: Tasks) -> None:
        if not torch.compiler.is_compiling():
            _checks.params_tree(name, "meta", meta)
            _checks.tasks(name, tasks, like=meta)

    def meta_loss(meta: Any, tasks: Tasks) -> torch.Tensor:
        check(meta, tasks)
        return objective(meta, tasks)[0]

    def meta_grad(meta: Any, tasks: Tasks) -> tuple[Any, Metrics]:
        check(meta, tasks)
        return raw_grad(meta, tasks)

    def checked_adapt(meta: Any, support: Any) -> Any:
        if not torch.compiler.is_compiling():
            _checks.params_tree(name, "meta", meta)
        return adapt(meta, support)

    return Learner(name, init, checked_adapt, meta_loss, meta_grad)
