"""Gradient clipping, as optax's ``clip`` and ``clip_by_global_norm``: stateless pieces for
:func:`~metafunc.optim.chain`."""

from __future__ import annotations

import functools

import torch

from .. import _checks, _tree
from . import _base
from ._base import EmptyState, Optimizer, PyTree


def clip_by_global_norm(max_norm: float) -> Optimizer:
    """Scale the gradients by ``max_norm / norm`` when their global norm exceeds ``max_norm``.

    The norm is taken over all leaves together (in float32 for half-precision gradients).

    Args:
        max_norm: the largest global norm let through, a positive number.

    Example:
        >>> clip = mf.optim.clip_by_global_norm(1.0)
        >>> g = {"w": torch.tensor([3.0, 4.0])}  # global norm 5
        >>> clip.update(g, clip.init(g), g)[0]
        {'w': tensor([0.6000, 0.8000])}
        >>> opt = mf.optim.chain(mf.optim.clip_by_global_norm(1.0), mf.optim.adam(1e-3))
    """
    max_norm = _checks.positive_number("clip_by_global_norm", "max_norm", max_norm)

    def init(params: PyTree) -> EmptyState:
        _base.check_init("clip_by_global_norm", params)
        return EmptyState()

    def update(grads: PyTree, state: EmptyState, params: PyTree) -> tuple[PyTree, EmptyState]:
        _base.check_update("clip_by_global_norm", grads, params)
        wide = _base.widen(grads)
        square = functools.reduce(torch.add, [torch.sum(g * g) for g in _tree.leaves(wide)])
        # sqrt's derivative is infinite at 0: clamped, an all-zero gradient keeps a finite
        # second-order gradient (the norm is only used above max_norm anyway).
        norm = torch.sqrt(torch.clamp(square, min=max_norm**2))
        clipped = square > max_norm**2
        return _tree.map(
            lambda g, w: torch.where(clipped, (w / norm * max_norm).to(g.dtype), g), grads, wide
        ), state

    return Optimizer(init, update)


def clip(max_delta: float) -> Optimizer:
    """Clamp every gradient element to ``[-max_delta, max_delta]``.

    Args:
        max_delta: a positive number.

    Example:
        >>> clip = mf.optim.clip(0.1)
        >>> g = {"w": torch.tensor([-0.5, 0.05, 2.0])}
        >>> clip.update(g, clip.init(g), g)[0]
        {'w': tensor([-0.1000,  0.0500,  0.1000])}
        >>> opt = mf.optim.chain(mf.optim.clip(0.1), mf.optim.sgd(1e-2))
    """
    max_delta = _checks.positive_number("clip", "max_delta", max_delta)

    def init(params: PyTree) -> EmptyState:
        _base.check_init("clip", params)
        return EmptyState()

    def update(grads: PyTree, state: EmptyState, params: PyTree) -> tuple[PyTree, EmptyState]:
        _base.check_update("clip", grads, params)
        return _tree.map(lambda g: torch.clamp(g, -max_delta, max_delta), grads), state

    return Optimizer(init, update)
