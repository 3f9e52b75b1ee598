"""The inner loop: a few steps of plain SGD on a task's loss, differentiable end to end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import grad

from . import _checks, _tree

Loss = Callable[[Any, Any], torch.Tensor]


def adapt(
    params: Any,
    data: Any,
    *,
    loss: Loss,
    lr: float | Any,
    steps: int,
    first_order: bool = False,
) -> Any:
    """``steps`` SGD steps ``θ ← θ − lr ∇θ loss(θ, data)`` from ``params``; returns the new θ.

    The steps are built with ``torch.func.grad``, so the result stays differentiable with
    respect to ``params`` (and to ``lr`` when it is a pytree of tensors) through every step:
    an outer ``grad`` of a loss at the result is the exact MAML meta-gradient, Hessian terms
    included. With ``first_order=True`` each inner gradient is detached, which drops those
    terms (first-order MAML). This function is pure and unchecked: it runs inside ``vmap`` and
    compiled code; the learners validate their arguments before calling it.

    Args:
        params: pytree of tensors, the starting point θ0.
        data: the task's support data, passed unchanged to ``loss``.
        loss: ``loss(params, data) -> scalar tensor``.
        lr: a number, or a pytree like ``params`` (one rate per leaf, broadcast elementwise).
        steps: number of SGD steps (0 returns ``params``).
        first_order: detach inner gradients.
    """
    step_grad = grad(loss)
    for _ in range(steps):
        g = step_grad(params, data)
        if first_order:
            g = _tree.detach(g)
        params = _tree.axpy(_negate(lr), g, params)
    return params


def _negate(lr: float | Any) -> float | Any:
    if isinstance(lr, (int, float)):
        return -lr
    return _tree.map(torch.neg, lr)


def checked_adapt(
    params: Any,
    data: Any,
    *,
    loss: Loss,
    lr: float | Any,
    steps: int,
    first_order: bool = False,
) -> Any:
    """:func:`adapt` with its arguments validated first (the public ``metafunc.adapt``)."""
    _checks.params_tree("adapt", "params", params)
    lr = _checks.learning_rate("adapt", "lr", lr)
    if not isinstance(lr, float):
        _checks.learning_rate_like("adapt", "lr", lr, params, "params")
    steps = _checks.integer("adapt", "steps", steps, minimum=0)
    _checks.boolean("adapt", "first_order", first_order)
    if not callable(loss):
        raise TypeError(f"adapt: loss must be callable as loss(params, data) (got {loss!r})")
    return adapt(params, data, loss=loss, lr=lr, steps=steps, first_order=first_order)


checked_adapt.__doc__ = adapt.__doc__
