"""What every algorithm shares: the ``Learner`` record and the one vmapped meta-loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.func import grad, vmap

from . import _checks, _tree
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
        check: ``check(where, meta, tasks, meta_name="meta")`` validates the meta-parameters
            and a meta-batch eagerly, naming ``where`` and ``meta_name`` in its messages.
    """

    name: str
    init: Callable[[Any], Any]
    adapt: Callable[[Any, Any], Any]
    meta_loss: Callable[[Any, Tasks], torch.Tensor]
    meta_grad: Callable[[Any, Tasks], tuple[Any, Metrics]]
    check: Callable[..., None]


def build_learner(
    name: str,
    *,
    init: Callable[[Any], Any],
    adapt: Callable[[Any, Any], Any],
    loss: Callable[[Any, Any], torch.Tensor],
    params_of: Callable[[Any], Any] = lambda meta: meta,
    chunk_size: int | None,
    pseudo_grad: bool = False,
    paired: bool = True,
    check_meta: Callable[[str, str, Any], None] | None = None,
) -> Learner:
    """Build a :class:`Learner` from one task's pure ``adapt`` and query ``loss``.

    The meta-loss is the query loss of the adapted parameters, vmapped over the tasks. The
    meta-gradient is its gradient through ``adapt`` (MAML and its relatives), or with
    ``pseudo_grad=True`` Reptile's ``meta − mean(adapted)``, with no backward pass through
    the inner loop. ``adapt`` and ``loss`` are unchecked pure functions; this adds the vmap,
    the gradient and the eager validation at the public entry points.

    Args:
        params_of: the model parameters inside the meta-parameters (the loss before
            adaptation is scored at them).
        paired: support and query hold the same kind of data (checked to match); DAML's
            unlabeled support is not paired with its labeled query.
        check_meta: ``check_meta(where, meta_name, meta)`` checks the algorithm's own layout
            of the meta-parameters (e.g. Meta-SGD's ``{"params", "lr"}``).
    """

    def task_losses(meta: Any, support: Any, query: Any) -> tuple[torch.Tensor, torch.Tensor]:
        adapted = adapt(meta, support)
        return adapted, loss(adapted, query), loss(params_of(meta), query)

    per_task = vmap(task_losses, in_dims=(None, 0, 0), chunk_size=chunk_size)

    def objective(meta: Any, tasks: Tasks) -> tuple[torch.Tensor, Metrics]:
        _, after, before = per_task(meta, tasks.support, tasks.query)
        mean = after.mean()
        return mean, {"loss": mean, "loss_before": before.mean()}

    def reptile_grad(meta: Any, tasks: Tasks) -> tuple[Any, Metrics]:
        adapted, after, before = per_task(meta, tasks.support, tasks.query)
        grads = _tree.map(lambda m, a: m - a.mean(0), meta, adapted)
        return grads, {"loss": after.mean(), "loss_before": before.mean()}

    raw_grad = reptile_grad if pseudo_grad else grad(objective, has_aux=True)

    def check(where: str, meta: Any, tasks: Tasks, meta_name: str = "meta") -> None:
        _checks.params_tree(where, meta_name, meta)
        if check_meta is not None:
            check_meta(where, meta_name, meta)
        _checks.tasks(where, tasks, like=meta, paired=paired)

    def meta_loss(meta: Any, tasks: Tasks) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            check(name, meta, tasks)
        return objective(meta, tasks)[0]

    def meta_grad(meta: Any, tasks: Tasks) -> tuple[Any, Metrics]:
        if not torch.compiler.is_compiling():
            check(name, meta, tasks)
        return raw_grad(meta, tasks)

    def checked_adapt(meta: Any, support: Any) -> Any:
        if not torch.compiler.is_compiling():
            _checks.params_tree(name, "meta", meta)
            if check_meta is not None:
                check_meta(name, "meta", meta)
        return adapt(meta, support)

    return Learner(name, init, checked_adapt, meta_loss, meta_grad, check)
