"""The inner loop: a few optimizer steps on one task's loss, differentiable end to end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import grad

from . import _checks, _tree
from .optim import Optimizer, apply_updates

Loss = Callable[[Any, Any], torch.Tensor]


def adapt(
    params: Any,
    data: Any,
    *,
    loss: Loss,
    steps: int,
    opt: Optimizer,
    first_order: bool = False,
    pick: Callable[[str], bool] | None = None,
) -> Any:
    """``steps`` updates of ``opt`` on ``loss(θ, data)`` from ``θ = params``; returns the new θ.

    The steps are built with ``torch.func.grad`` and a functional optimizer, so the result
    stays differentiable with respect to ``params`` (and to anything the optimizer's rates are
    made of) through every step, the optimizer's own state included: an outer ``grad`` of a
    loss at the result is the exact meta-gradient, Hessian terms included. With
    ``first_order=True`` each inner gradient is detached, which drops those terms. ``pick`` (a
    predicate on dotted leaf names, see :func:`metafunc._tree.picker`) chooses the leaves that
    adapt; the others stay as they are and no gradient is computed for them. Pure and
    unchecked: it runs inside ``vmap`` and compiled code.

    Args:
        params: pytree of tensors, the starting point θ0.
        data: the task's support data, passed unchanged to ``loss``.
        loss: ``loss(params, data) -> scalar tensor``.
        steps: number of updates (0 returns ``params``).
        opt: the inner optimizer, e.g. from :func:`optimizer`; it sees the adapted leaves as a
            list, in the order of :func:`metafunc._tree.split`.
        first_order: detach inner gradients.
        pick: which leaves adapt; ``None`` for all.
    """
    if steps == 0:
        return params
    theta, merge = _tree.split(params, pick or _all)
    step_grad = grad(lambda leaves, data: loss(merge(leaves), data))
    state = opt.init(theta)
    for _ in range(steps):
        g = step_grad(theta, data)
        if first_order:
            g = _tree.detach(g)
        updates, state = opt.update(g, state, theta)
        theta = apply_updates(theta, updates)
    return merge(theta)


def sgd(lr: float | list[torch.Tensor]) -> Optimizer:
    """Plain SGD for the inner loop: ``θ ← θ − lr ∇θ``, with one rate or one tensor of rates per
    adapted leaf. Rates that are tensors stay differentiable (Meta-SGD learns them)."""

    def update(grads: list[torch.Tensor], state: Any, params: Any) -> tuple[Any, Any]:
        if isinstance(lr, float):
            return [-lr * g for g in grads], state
        return [-r * g for r, g in zip(lr, grads, strict=True)], state

    return Optimizer(lambda params: (), update)


def optimizer(
    inner: float | Any | Optimizer, params: Any, pick: Callable[[str], bool] | None = None
) -> Optimizer:
    """The inner optimizer a learner was given: an ``Optimizer`` as it is, or a learning rate
    (a number, or a tree of rates like ``params``) as :func:`sgd` over the leaves of ``params``
    that ``pick`` chooses, matched by name and in :func:`adapt`'s order."""
    if isinstance(inner, Optimizer):
        return inner
    if isinstance(inner, float):
        return sgd(inner)
    rates = _tree.by_name(inner)
    return sgd([rates[n] for n in _tree.names(params) if (pick or _all)(n)])


def _all(name: str) -> bool:
    return True


def inner_update(
    where: str,
    lr: float | Any | None,
    opt: Optimizer | None,
    *,
    lr_name: str = "inner_lr",
    opt_name: str = "inner_opt",
) -> float | Any | Optimizer:
    """A learner's inner update, checked: the optimizer ``opt``, or the learning rate ``lr`` (a
    positive number or a tree of rates; 0.01 when neither is given)."""
    if opt is None:
        return _checks.learning_rate(where, lr_name, 0.01 if lr is None else lr)
    if lr is not None:
        raise ValueError(
            f"{where}: give {lr_name} (plain SGD) or {opt_name} (any optimizer), not both "
            f"(got {lr_name}={lr!r} and {opt_name})"
        )
    if not isinstance(opt, Optimizer):
        got = f"the class {opt.__name__}" if isinstance(opt, type) else type(opt).__name__
        torch_optim = isinstance(opt, torch.optim.Optimizer) or (
            isinstance(opt, type) and issubclass(opt, torch.optim.Optimizer)
        )
        hint = (
            "; torch.optim optimizers update tensors in place, which cannot be differentiated "
            "through"
            if torch_optim
            else ""
        )
        raise TypeError(
            f"{where}: {opt_name} must be a metafunc.optim.Optimizer, e.g. "
            f"mf.optim.sgd(0.01, momentum=0.9) (got {got}){hint}"
        )
    return opt


def check_params(
    where: str, params: Any, inner: float | Any | Optimizer, lr_name: str = "inner_lr"
) -> None:
    """The parameters a learner's ``init`` gets, and its inner rates when they are a tree
    (which must fit the parameters, see ``_checks.learning_rate_like``)."""
    _checks.params_tree(where, "params", params)
    if not isinstance(inner, (float, Optimizer)):
        _checks.learning_rate_like(where, lr_name, inner, params, "params")


def inner_loop(
    params: Any,
    data: Any,
    *,
    loss: Loss,
    steps: int,
    lr: float | Any = None,
    opt: Optimizer | None = None,
    first_order: bool = False,
    mask: Any = None,
) -> Any:
    """The inner loop on one task, validated: ``steps`` updates from ``params`` on ``loss``.

    Give ``lr`` (plain SGD: a number, or a pytree of rates like ``params``) or ``opt`` (any
    ``mf.optim`` optimizer, e.g. ``mf.optim.sgd(0.01, momentum=0.9)``). Differentiable through
    every step (see the learners for the meta-gradient built on it).

    Args:
        params: pytree of tensors, the starting point.
        data: the task's support data, passed unchanged to ``loss``.
        loss: ``loss(params, data) -> scalar tensor``.
        steps: number of updates (0 returns ``params``).
        lr: the SGD step size; exclusive with ``opt``.
        opt: the inner optimizer; exclusive with ``lr``.
        first_order: detach inner gradients.
        mask: which leaves adapt (a name, names, a predicate on dotted names, or a tree of bools);
            ``None`` for all.

    Example:
        >>> adapted = mf.inner_loop(params, (x, y), loss=loss, lr=0.01, steps=5)
    """
    where = "inner_loop"
    _checks.function(where, "loss", loss, "loss(params, data)")
    steps = _checks.integer(where, "steps", steps, minimum=0)
    _checks.boolean(where, "first_order", first_order)
    _tree.picked(params, mask, where=where, name="mask")
    pick = _tree.picker(mask, where=where, name="mask")
    inner = inner_update(where, lr, opt, lr_name="lr", opt_name="opt")
    check_params(where, params, inner, lr_name="lr")
    return adapt(
        params,
        data,
        loss=loss,
        steps=steps,
        opt=optimizer(inner, params, pick),
        first_order=first_order,
        pick=pick,
    )
