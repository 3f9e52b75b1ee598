"""Adam with L2 weight decay (``torch.optim.Adam``) and with decoupled weight decay
(``torch.optim.AdamW``, optax's ``adamw``)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _checks, _tree
from . import _base
from ._base import Optimizer, PyTree, Schedule


class AdamState(NamedTuple):
    """The state of :func:`adam` and :func:`adamw`.

    Attributes:
        count: int64 scalar, updates taken.
        mu, nu: first and second moment estimates (float32 for half-precision parameters).
    """

    count: torch.Tensor  # type: ignore[assignment]  # optax's name; hides tuple.count
    mu: PyTree
    nu: PyTree


def adam(
    lr: float | torch.Tensor | Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Adam (Kingma & Ba, 2015), as ``torch.optim.Adam`` (L2 ``weight_decay``, no amsgrad).

    The update is ``-lr * m_hat / (sqrt(v_hat + eps_root) + eps)`` with bias-corrected moments.
    Pure torch operations, so it also serves as a differentiable inner optimizer under
    ``torch.func.grad`` and ``vmap``; there use ``eps_root > 0`` (e.g. ``1e-16``): the
    derivative of ``sqrt`` at ``v = 0`` is infinite, and a parameter whose gradient is exactly
    zero would make the second-order gradient NaN. Half-precision parameters keep their
    moments and compute the update in float32; the update is cast to the parameter's dtype.

    Args:
        lr: step size, or a schedule of the update count (e.g. :func:`warmup_cosine_decay_schedule`).
        b1: decay rate of the first moment estimate, in [0, 1).
        b2: decay rate of the second moment estimate, in [0, 1).
        eps: added to the denominator.
        eps_root: added to ``v_hat`` inside the square root.
        weight_decay: L2 penalty added to the gradient (for decoupled decay use :func:`adamw`).

    Raises:
        ValueError, TypeError: for a hyper-parameter out of range or of the wrong type.

    Example:
        >>> opt = mf.optim.adam(1e-3)
        >>> state = mf.init_state(learner, opt, params)
    """
    return _adam("adam", lr, b1, b2, eps, eps_root, weight_decay, decoupled=False)


def adamw(
    lr: float | torch.Tensor | Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 1e-2,
) -> Optimizer:
    """AdamW (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW`` and optax's ``adamw``: Adam
    plus ``-lr * weight_decay * params``, decoupled from the moments.

    Args and behaviour as :func:`adam`, except ``weight_decay`` (default ``1e-2``, torch's).

    Example:
        >>> opt = mf.optim.adamw(mf.optim.cosine_decay_schedule(1e-3, 10_000), weight_decay=0.05)
    """
    return _adam("adamw", lr, b1, b2, eps, eps_root, weight_decay, decoupled=True)


def _adam(
    where: str,
    lr: float | torch.Tensor | Schedule,
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    weight_decay: float,
    *,
    decoupled: bool,
) -> Optimizer:
    lr = _base.learning_rate(where, lr)
    b1 = _checks.fraction(where, "b1", b1)
    b2 = _checks.fraction(where, "b2", b2)
    eps = _checks.positive_number(where, "eps", eps)
    eps_root = _checks.positive_number(where, "eps_root", eps_root, allow_zero=True)
    weight_decay = _checks.positive_number(where, "weight_decay", weight_decay, allow_zero=True)

    def init(params: PyTree) -> AdamState:
        _base.check_init(where, params)
        return AdamState(
            _base.zero_count(params), _base.wide_zeros(params), _base.wide_zeros(params)
        )

    def update(grads: PyTree, state: AdamState, params: PyTree) -> tuple[PyTree, AdamState]:
        _base.check_update(where, grads, params)
        rate = _base.rate_at(lr, state.count)
        count = state.count + 1
        grads = _base.widen(grads)
        if weight_decay and not decoupled:
            grads = _tree.map(lambda g, p: g + weight_decay * _base.cast(p, g.dtype), grads, params)
        mu = _tree.map(lambda m, g: torch.lerp(m, g, 1 - b1), state.mu, grads)
        nu = _tree.map(lambda v, g: v * b2 + (1 - b2) * g * g, state.nu, grads)
        # the numbers every leaf shares, once per dtype: -rate, 1 - b1^t and 1 - b2^t
        t = _base.in_dtype(count)
        step_size = _base.in_dtype(-rate)
        first = _base.per_dtype(lambda dtype: 1 - b1 ** t(dtype))
        second = _base.per_dtype(lambda dtype: 1 - b2 ** t(dtype))

        def step(m: torch.Tensor, v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            root = v / second(m.dtype)
            if eps_root:  # adding 0 would change no number
                root = root + eps_root
            u = step_size(m.dtype) * m / first(m.dtype) / (torch.sqrt(root) + eps)
            if weight_decay and decoupled:
                u = u + step_size(m.dtype) * (weight_decay * _base.cast(p, m.dtype))
            return _base.cast(u, p.dtype)

        return _tree.map(step, mu, nu, params), AdamState(count, mu, nu)

    return Optimizer(init, update)
