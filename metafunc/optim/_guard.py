"""The non-finite guard as an optimizer wrapper, as optax's ``apply_if_finite``, checking the
result of an update as well as the gradient."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch

from .. import _checks, _tree
from . import _base
from ._base import Optimizer, PyTree


class ApplyIfFiniteState(NamedTuple):
    """The state of :func:`apply_if_finite` (optax's fields).

    Attributes:
        notfinite_count: int64 scalar, non-finite updates in a row (0 after a finite one).
        last_finite: bool scalar, the verdict on the last update (``True`` before the first).
        total_notfinite: int64 scalar, non-finite updates since ``init``.
        inner_state: the wrapped optimizer's state.
    """

    notfinite_count: torch.Tensor
    last_finite: torch.Tensor
    total_notfinite: torch.Tensor
    inner_state: Any


def apply_if_finite(optimizer: Optimizer, max_consecutive_errors: int | None = None) -> Optimizer:
    """``optimizer``, but an update that is not finite is not applied.

    An update is finite when the gradient, the wrapped optimizer's updates, ``params +
    updates`` and its new state are all finite: ``sgd(1e38)`` on finite gradients (which would
    make the parameters inf) is caught as well as a NaN gradient. A refused update is
    ``-0.0`` everywhere, so ``apply_updates`` leaves the parameters bit for bit as they were,
    and the wrapped optimizer's state stays as it was (selected with ``torch.where`` on the
    device: no host sync, no Python branch, so it runs in a compiled step and under
    ``torch.func`` transforms). :func:`last_finite` reads the verdict out of the state.

    Args:
        optimizer: the optimizer to guard, e.g. ``mf.optim.adam(1e-3)`` or a chain.
        max_consecutive_errors: ``None`` never applies a non-finite update; an integer ``n``
            refuses ``n`` in a row and applies the next ones until a finite update comes
            (optax's meaning).

    Raises:
        TypeError, ValueError: for an argument of the wrong type or out of range.

    Example:
        >>> opt = mf.optim.apply_if_finite(mf.optim.adam(1e-3))
        >>> state = opt.init(params)
        >>> updates, state = opt.update(grads, state, params)
        >>> mf.optim.last_finite(state)
        tensor(True)
        >>> nan = {k: torch.full_like(v, float("nan")) for k, v in grads.items()}
        >>> updates, state = opt.update(nan, state, params)  # refused: -0.0 everywhere
        >>> mf.optim.last_finite(state), int(state.total_notfinite)
        (tensor(False), 1)
    """
    _base.check_optimizer("apply_if_finite", "optimizer", optimizer)
    if max_consecutive_errors is not None:
        max_consecutive_errors = _checks.integer(
            "apply_if_finite", "max_consecutive_errors", max_consecutive_errors, minimum=1
        )

    def init(params: PyTree) -> ApplyIfFiniteState:
        _base.check_init("apply_if_finite", params)
        device = _tree.leaves(params)[0].device
        return ApplyIfFiniteState(
            torch.zeros((), dtype=torch.int64, device=device),
            torch.ones((), dtype=torch.bool, device=device),
            torch.zeros((), dtype=torch.int64, device=device),
            optimizer.init(params),
        )

    def update(
        grads: PyTree, state: ApplyIfFiniteState, params: PyTree
    ) -> tuple[PyTree, ApplyIfFiniteState]:
        updates, inner = optimizer.update(grads, state.inner_state, params)
        new_params = _base.apply_updates(params, updates)
        finite = _tree.all_finite((grads, updates, new_params, inner))
        in_a_row = torch.where(finite, 0, state.notfinite_count + 1)
        apply = finite
        if max_consecutive_errors is not None:
            apply = finite | (in_a_row > max_consecutive_errors)
        # x + (-0.0) is x bit for bit for every x, where x + 0.0 would turn -0.0 into +0.0
        updates = _tree.map(lambda u: torch.where(apply, u, -0.0), updates)
        inner = _tree.map(lambda new, old: torch.where(apply, new, old), inner, state.inner_state)
        total = torch.where(finite, state.total_notfinite, state.total_notfinite + 1)
        return updates, ApplyIfFiniteState(in_a_row, finite, total, inner)

    return Optimizer(init, update, guarded=True)


def last_finite(state: Any) -> torch.Tensor | None:
    """The verdict on the last update of every :func:`apply_if_finite` inside an optimizer state
    (anywhere in a chain), all together: a bool tensor, or ``None`` if the state has no guard.

    Example:
        >>> guarded = mf.optim.chain(mf.optim.clip(1.0), mf.optim.apply_if_finite(opt))
        >>> mf.optim.last_finite(guarded.init(params))  # True before the first update
        tensor(True)
        >>> print(mf.optim.last_finite(opt.init(params)))  # no guard
        None
    """
    verdicts = [guard.last_finite for guard in _guards(state)]
    return functools.reduce(torch.logical_and, verdicts) if verdicts else None


def is_guarded(state: Any) -> bool:
    """Whether an optimizer state holds an :func:`apply_if_finite` state anywhere.

    Example:
        >>> mf.optim.is_guarded(mf.optim.apply_if_finite(opt).init(params))
        True
    """
    return bool(_guards(state))


def _guards(state: Any) -> list[ApplyIfFiniteState]:
    if isinstance(state, ApplyIfFiniteState):
        return [state, *_guards(state.inner_state)]
    if isinstance(state, (tuple, list)):  # chains, and NamedTuple states
        return [guard for s in state for guard in _guards(s)]
    if isinstance(state, dict):
        return [guard for s in state.values() for guard in _guards(s)]
    return []
