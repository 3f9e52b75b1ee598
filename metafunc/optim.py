"""Functional outer optimizers: ``(init, update)`` pairs on pytrees, in optax's shape.

``update(grads, state, params) -> (updates, state)`` is pure, and ``apply_updates(params,
updates)`` adds the updates, so the whole optimizer step traces into one compiled graph with
the meta-gradient. The arithmetic follows ``torch.optim.SGD`` and ``torch.optim.Adam``
operation for operation; the tests compare them in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from . import _checks, _tree

PyTree = Any


class Optimizer(NamedTuple):
    """An optimizer as two pure functions.

    Attributes:
        init: ``init(params) -> state``.
        update: ``update(grads, state, params) -> (updates, state)``; apply with
            :func:`apply_updates`.
    """

    init: Callable[[PyTree], Any]
    update: Callable[[PyTree, Any, PyTree], tuple[PyTree, Any]]


class SGDState(NamedTuple):
    momentum: PyTree  # None without momentum


class AdamState(NamedTuple):
    count: torch.Tensor  # int64 scalar: steps taken
    mu: PyTree
    nu: PyTree


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """``params + updates`` leaf by leaf (new tensors; nothing is modified in place)."""
    return _tree.map(torch.add, params, updates)


def sgd(
    lr: float, *, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0
) -> Optimizer:
    """Stochastic gradient descent, as ``torch.optim.SGD`` (no dampening).

    Args:
        lr: step size.
        momentum: heavy-ball coefficient in [0, 1); 0 keeps no state.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty added to the gradient.

    Example:
        >>> opt = mf.optim.sgd(1e-2, momentum=0.9)
        >>> state = opt.init(params)
        >>> updates, state = opt.update(grads, state, params)
        >>> params = mf.optim.apply_updates(params, updates)
    """
    lr = _checks.positive_number("sgd", "lr", lr)
    momentum = _checks.fraction("sgd", "momentum", momentum)
    nesterov = _checks.boolean("sgd", "nesterov", nesterov)
    weight_decay = _checks.positive_number("sgd", "weight_decay", weight_decay, allow_zero=True)
    if nesterov and momentum == 0:
        raise ValueError("sgd: nesterov=True needs momentum > 0 (got momentum=0.0)")

    def init(params: PyTree) -> SGDState:
        _checks.params_tree("sgd", "params", params)
        return SGDState(_tree.zeros_like(params) if momentum else None)

    def update(grads: PyTree, state: SGDState, params: PyTree) -> tuple[PyTree, SGDState]:
        _check_update("sgd", grads, params)
        if weight_decay:
            grads = _tree.axpy(weight_decay, params, grads)
        if not momentum:
            return _tree.map(lambda g: -lr * g, grads), state
        buf = _tree.axpy(momentum, state.momentum, grads)
        direction = _tree.axpy(momentum, buf, grads) if nesterov else buf
        return _tree.map(lambda d: -lr * d, direction), SGDState(buf)

    return Optimizer(init, update)


def adam(
    lr: float,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Adam (Kingma & Ba, 2015), as ``torch.optim.Adam`` (L2 ``weight_decay``, no amsgrad).

    Args:
        lr: step size.
        b1, b2: decay rates of the first and second moment estimates, in [0, 1).
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient.
    """
    lr = _checks.positive_number("adam", "lr", lr)
    b1 = _checks.fraction("adam", "b1", b1)
    b2 = _checks.fraction("adam", "b2", b2)
    eps = _checks.positive_number("adam", "eps", eps)
    weight_decay = _checks.positive_number("adam", "weight_decay", weight_decay, allow_zero=True)

    def init(params: PyTree) -> AdamState:
        _checks.params_tree("adam", "params", params)
        device = _tree.leaves(params)[0].device
        count = torch.zeros((), dtype=torch.int64, device=device)
        return AdamState(count, _tree.zeros_like(params), _tree.zeros_like(params))

    def update(grads: PyTree, state: AdamState, params: PyTree) -> tuple[PyTree, AdamState]:
        _check_update("adam", grads, params)
        if weight_decay:
            grads = _tree.axpy(weight_decay, params, grads)
        count = state.count + 1
        mu = _tree.map(lambda m, g: torch.lerp(m, g, 1 - b1), state.mu, grads)
        nu = _tree.map(lambda v, g: v * b2 + (1 - b2) * g * g, state.nu, grads)

        def step(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            t = count.to(m.dtype)
            step_size = lr / (1 - b1**t)
            denom = v.sqrt() / torch.sqrt(1 - b2**t) + eps
            return -step_size * m / denom

        return _tree.map(step, mu, nu), AdamState(count, mu, nu)

    return Optimizer(init, update)


def _check_update(where: str, grads: PyTree, params: PyTree) -> None:
    if not torch.compiler.is_compiling():
        _tree.check_same_structure(
            params, grads, where=f"{where}.update", expected_name="params", got_name="grads"
        )
