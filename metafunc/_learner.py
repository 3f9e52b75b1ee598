"""What every algorithm shares: the ``Learner`` record and the one vmapped meta-loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.func import grad, vmap

from . import _checks
from ._types import Tasks

Metrics = dict[str, torch.Tensor]
# per_task(meta, support, query) -> (adapted, query loss after, query loss before), vmapped
PerTask = Callable[[Any, Any, Any], tuple[Any, torch.Tensor, torch.Tensor]]
MetaGrad = Callable[[Any, Tasks], tuple[Any, Metrics]]


class Learner(NamedTuple):
    """A meta-learning algorithm as a record of pure functions (optax's pattern).

    Every function that takes task data takes a batch: a leading task dimension on every
    tensor (one task is a batch of one, ``x[None]``).

    Attributes:
        name: the algorithm, used in messages.
        init: ``init(params) -> meta``, the meta-parameters (copies) to learn.
        adapt: ``adapt(meta, support) -> adapted``: the model parameters adapted to each task
            of the batched ``support``, each leaf with a leading task dimension.
        meta_loss: ``meta_loss(meta, tasks) -> scalar``, the query loss after adaptation,
            averaged over the tasks.
        meta_grad: ``meta_grad(meta, tasks) -> (grads, metrics)``; ``grads`` is shaped like
            ``meta``; ``metrics`` holds tensors ``loss`` (query loss after adaptation) and
            ``loss_before`` (query loss at the meta-learned parameters), means over the tasks.
        params: ``params(meta) -> params``, where the model parameters sit inside the
            meta-parameters (the only place that knows an algorithm's layout).
        check: ``check(where, meta, tasks, meta_name="meta")`` validates the meta-parameters
            and a meta-batch eagerly, naming ``where`` and ``meta_name`` in its messages; a
            signature (structure, shapes, dtypes, devices) it has passed is not checked again.
    """

    name: str
    init: Callable[[Any], Any]
    adapt: Callable[[Any, Any], Any]
    meta_loss: Callable[[Any, Tasks], torch.Tensor]
    meta_grad: MetaGrad
    params: Callable[[Any], Any]
    check: Callable[..., None]


def exact(per_task: PerTask) -> MetaGrad:
    """The meta-gradient differentiated through adaptation (MAML and its relatives)."""

    def objective(meta: Any, tasks: Tasks) -> tuple[torch.Tensor, Metrics]:
        _, after, before = per_task(meta, tasks.support, tasks.query)
        mean = after.mean()
        return mean, {"loss": mean, "loss_before": before.mean()}

    return grad(objective, has_aux=True)


def build(
    name: str,
    *,
    init: Callable[[Any], Any],
    adapt: Callable[[Any, Any], Any],
    loss: Callable[[Any, Any], torch.Tensor],
    params: Callable[[Any], Any] = lambda meta: meta,
    chunk_size: int | None,
    gradient: Callable[[PerTask], MetaGrad] = exact,
    paired: bool = True,
    check_meta: Callable[[str, str, Any], None] | None = None,
) -> Learner:
    """Build a :class:`Learner` from one task's pure ``adapt`` and query ``loss``.

    This adds the vmap over tasks, the meta-gradient (``gradient(per_task)``: :func:`exact` by
    default; Reptile and iMAML bring their own rule) and the eager validation at the public
    entry points; ``adapt`` and ``loss`` stay unchecked pure functions of one task.

    Args:
        params: the model parameters inside the meta-parameters.
        paired: support and query hold the same kind of data (checked to match); DAML's
            unlabeled support is not paired with its labeled query.
        check_meta: ``check_meta(where, meta_name, meta)`` checks the algorithm's own layout
            of the meta-parameters (e.g. Meta-SGD's ``{"params", "lr"}``).
    """

    def task(meta: Any, support: Any, query: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
        adapted = adapt(meta, support)
        return adapted, loss(adapted, query), loss(params(meta), query)

    per_task = vmap(task, in_dims=(None, 0, 0), chunk_size=chunk_size)
    raw_grad = gradient(per_task)
    adapt_all = vmap(adapt, in_dims=(None, 0), chunk_size=chunk_size)

    def check_params(where: str, meta: Any, meta_name: str) -> None:
        _checks.params_tree(where, meta_name, meta)
        if check_meta is not None:
            check_meta(where, meta_name, meta)

    @_checks.once_per_signature
    def check(where: str, meta: Any, tasks: Tasks, meta_name: str = "meta") -> None:
        check_params(where, meta, meta_name)
        _checks.tasks(where, tasks, like=meta, paired=paired)

    @_checks.once_per_signature
    def check_support(where: str, meta: Any, support: Any) -> None:
        check_params(where, meta, "meta")
        _checks.batch(where, {"support": support}, like=meta)

    def meta_loss(meta: Any, tasks: Tasks) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            check(name, meta, tasks)
        _, after, _ = per_task(meta, tasks.support, tasks.query)
        return after.mean()

    def meta_grad(meta: Any, tasks: Tasks) -> tuple[Any, Metrics]:
        if not torch.compiler.is_compiling():
            check(name, meta, tasks)
        return raw_grad(meta, tasks)

    def adapt_tasks(meta: Any, support: Any) -> Any:
        if not torch.compiler.is_compiling():
            check_support(f"{name}.adapt", meta, support)
        return adapt_all(meta, support)

    return Learner(name, init, adapt_tasks, meta_loss, meta_grad, params, check)
