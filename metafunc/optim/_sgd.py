"""Stochastic gradient descent with momentum, as ``torch.optim.SGD`` and optax's ``sgd``."""

from __future__ import annotations

from numbers import Real
from typing import Any, NamedTuple

import torch

from .. import _checks, _tree
from . import _base
from ._base import Optimizer, PyTree, Schedule


class SGDState(NamedTuple):
    """The state of :func:`sgd`.

    Attributes:
        count: int64 scalar, updates taken; kept only when ``lr`` is a schedule (else ``None``).
        momentum: the momentum buffer (float32 for half-precision parameters); ``None`` without
            momentum.
    """

    count: torch.Tensor | None  # type: ignore[assignment]  # optax's name; hides tuple.count
    momentum: PyTree


def sgd(
    lr: float | torch.Tensor | Schedule | list[torch.Tensor],
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Stochastic gradient descent, as ``torch.optim.SGD`` (no dampening).

    Pure torch operations, so it also serves as a differentiable inner optimizer under
    ``torch.func.grad`` and ``vmap`` (every learner's ``inner_lr`` is this SGD). Half-precision
    parameters keep their momentum and compute the update in float32; the update is cast to
    the parameter's dtype.

    Args:
        lr: step size: a positive number, a positive 0-d tensor (an input of a compiled step:
            change it in place and no recompile follows), a schedule of the update count (e.g.
            :func:`cosine_decay_schedule`), or one tensor of rates per leaf of the parameters
            (a list or a tree like them, each broadcast to its leaf), used as given: they may be
            learned, as Meta-SGD's are, and take any value.
        momentum: heavy-ball coefficient in [0, 1); 0 keeps no buffer.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty added to the gradient.

    Raises:
        ValueError, TypeError: for a hyper-parameter out of range or of the wrong type.

    Example:
        >>> opt = mf.optim.sgd(1e-2, momentum=0.9)
        >>> state = opt.init(params)
        >>> updates, state = opt.update(grads, state, params)
        >>> params = mf.optim.apply_updates(params, updates)
    """
    per_leaf = not (isinstance(lr, (Real, torch.Tensor)) or callable(lr))
    if not per_leaf:
        lr = _base.learning_rate("sgd", lr)
    momentum = _checks.fraction("sgd", "momentum", momentum)
    nesterov = _checks.boolean("sgd", "nesterov", nesterov)
    weight_decay = _checks.positive_number("sgd", "weight_decay", weight_decay, allow_zero=True)
    if nesterov and momentum == 0:
        raise ValueError("sgd: nesterov=True needs momentum > 0 (got momentum=0.0)")
    if per_leaf and not all(isinstance(r, torch.Tensor) for r in _tree.leaves(lr)):
        raise TypeError(
            f"sgd: lr as rates per leaf must hold tensors (got {type(lr).__name__} holding "
            f"{sorted({type(r).__name__ for r in _tree.leaves(lr)})})"
        )
    return transform(lr, momentum, nesterov, weight_decay)


def transform(
    lr: Any, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0
) -> Optimizer:
    """:func:`sgd` with checked settings (the inner loops build it once per step, unchecked)."""
    scheduled = callable(lr)
    per_leaf = not (scheduled or isinstance(lr, (float, torch.Tensor)))

    def init(params: PyTree) -> SGDState:
        _base.check_init("sgd", params)
        return SGDState(
            _base.zero_count(params) if scheduled else None,
            _base.wide_zeros(params) if momentum else None,
        )

    def update(grads: PyTree, state: SGDState, params: PyTree) -> tuple[PyTree, SGDState]:
        _base.check_update("sgd", grads, params)
        grads = _base.widen(grads)
        if weight_decay:
            grads = _tree.map(lambda g, p: g + weight_decay * p.to(g.dtype), grads, params)
        buf = None
        direction = grads
        if momentum:
            buf = _tree.axpy(momentum, state.momentum, grads)
            direction = _tree.axpy(momentum, buf, grads) if nesterov else buf
        if per_leaf:
            updates = _tree.map(
                lambda r, d, p: _base.cast(_base.scale(-r, d), p.dtype), lr, direction, params
            )
        else:
            step = _base.in_dtype(-_base.rate_at(lr, state.count))
            updates = _tree.map(
                lambda d, p: _base.cast(step(d.dtype) * d, p.dtype), direction, params
            )
        count = None if state.count is None else state.count + 1
        return updates, SGDState(count, buf)

    return Optimizer(init, update)
