"""The optimizer record, ``apply_updates``, ``chain``, and what every optimizer shares: learning
rates that are numbers or schedules, and the wider dtype half-precision parameters compute in."""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from numbers import Real
from typing import Any, NamedTuple

import torch

from .. import _checks, _tree

PyTree = Any
Schedule = Callable[[torch.Tensor], Any]
"""A learning rate as a function of the int64 count of updates taken before this one."""


class Optimizer(NamedTuple):
    """An optimizer as two pure functions (optax's ``GradientTransformation``).

    Attributes:
        init: ``init(params) -> state``.
        update: ``update(grads, state, params) -> (updates, state)``; apply with
            :func:`apply_updates`. In a chain the ``grads`` of one piece are the ``updates``
            of the piece before.
        guarded: it refuses non-finite updates (:func:`apply_if_finite`, or a chain holding
            one), so a training loop may skip such steps.
    """

    init: Callable[[PyTree], Any]
    update: Callable[[PyTree, Any, PyTree], tuple[PyTree, Any]]
    guarded: bool = False


class EmptyState(NamedTuple):
    """The state of an optimizer that keeps none (e.g. :func:`clip`)."""


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """``params + updates`` leaf by leaf (new tensors; nothing is modified in place).

    Example:
        >>> mf.optim.apply_updates({"w": torch.ones(2)}, {"w": torch.tensor([0.5, -1.0])})
        {'w': tensor([1.5000, 0.0000])}
    """
    return _tree.map(torch.add, params, updates)


def chain(*optimizers: Optimizer) -> Optimizer:
    """The optimizers applied one after the other, each to the updates of the one before.

    The state is the tuple of their states.

    Args:
        *optimizers: e.g. ``clip_by_global_norm(1.0), adamw(1e-3)``.

    Raises:
        TypeError: if one of them is not an :class:`Optimizer`.

    Example:
        >>> opt = mf.optim.chain(mf.optim.clip_by_global_norm(1.0), mf.optim.adam(1e-3))
        >>> state = opt.init(params)  # (clip's EmptyState, adam's AdamState)
        >>> updates, state = opt.update(grads, state, params)
    """
    for i, opt in enumerate(optimizers):
        check_optimizer("chain", f"optimizers[{i}]", opt)

    def init(params: PyTree) -> tuple[Any, ...]:
        return tuple(opt.init(params) for opt in optimizers)

    def update(grads: PyTree, state: tuple[Any, ...], params: PyTree) -> tuple[PyTree, Any]:
        new_state = []
        for opt, s in zip(optimizers, state, strict=True):
            grads, s = opt.update(grads, s, params)
            new_state.append(s)
        return grads, tuple(new_state)

    return Optimizer(init, update, guarded=any(opt.guarded for opt in optimizers))


def check_optimizer(where: str, name: str, value: Any) -> Optimizer:
    if not isinstance(value, Optimizer):
        hint = (
            "; pass the optimizers as separate arguments, chain(a, b)"
            if isinstance(value, (list, tuple))
            else ""
        )
        raise TypeError(
            f"{where}: {name} must be a metafunc.optim.Optimizer, e.g. mf.optim.adam(1e-3) "
            f"(got {type(value).__name__}){hint}"
        )
    return value


# Counts a schedule is probed at when an optimizer is built: enough to see where it starts and
# whether it ever becomes positive, cheap enough to run eagerly once.
PROBE_COUNTS = (0, 1, 10, 100, 1000, 10**4, 10**5, 10**6)


def learning_rate(where: str, value: Any) -> torch.Tensor | Schedule:
    """A positive finite number or 0-d tensor, as a 0-d tensor (:func:`rate`), or a schedule
    that returns finite scalars and is positive somewhere.

    A schedule is called here, eagerly, at the counts in ``PROBE_COUNTS``, so a mistake
    surfaces when the optimizer is built rather than inside a compiled step. It must return a
    finite real scalar at count 0, must not start below zero (a warmup from 0 is fine), and must
    be positive at one of the counts probed: a rate that starts or stays at or below zero would
    run gradient ascent or nothing at all. A schedule that crosses zero later is allowed.
    """
    expected = f"{where}: lr must be a positive finite number, a 0-d tensor or a schedule"
    if isinstance(value, torch.Tensor):
        return tensor_rate(where, value)
    if isinstance(value, Real) and not isinstance(value, bool):
        if not (math.isfinite(value) and float(value) > 0):
            raise ValueError(f"{expected} (got {value!r})")
        return rate(float(value))
    if not callable(value):
        raise TypeError(f"{expected} (got {value!r} of type {type(value).__name__})")
    seen: list[tuple[int, float]] = []
    for count in PROBE_COUNTS:
        got = value(torch.tensor(count, dtype=torch.int64))
        problem, number = _scalar(got)
        if problem is None and count == 0 and not math.isfinite(number):
            problem = repr(number)
        if problem is not None:
            raise ValueError(
                f"{where}: lr schedule must return a finite scalar (a number or a 0-d tensor) "
                f"for a step count, but lr({count}) returned {problem}"
            )
        seen.append((count, number))
    values = ", ".join(f"lr({c})={v:.6g}" for c, v in seen)
    if seen[0][1] < 0:
        raise ValueError(
            f"{where}: lr schedule must not start below zero, which would run gradient ascent "
            f"(got {values})"
        )
    if all(v <= 0 for _, v in seen):
        raise ValueError(
            f"{where}: lr schedule must become positive (a warmup may start at 0), but it stays "
            f"at or below zero at every count probed (got {values})"
        )
    return typing.cast(Schedule, value)


def _scalar(got: Any) -> tuple[str | None, float]:
    """(what is wrong with a schedule's value or None, the value as a float)."""
    if isinstance(got, torch.Tensor):
        if got.ndim != 0:
            return f"a tensor of shape {tuple(got.shape)}", math.nan
        if got.dtype == torch.bool or got.is_complex():
            return f"a {got.dtype} tensor", math.nan
        return None, float(got.item())
    if isinstance(got, Real) and not isinstance(got, bool):
        return None, float(got)
    return f"{got!r} of type {type(got).__name__}", math.nan


def rate(value: float | torch.Tensor) -> torch.Tensor:
    """A learning rate held in a one-element tensor: a compiled step reads it as an input, so a
    step built again with another rate (a new learner or optimizer of the same configuration)
    runs without compiling again, and a rate the user holds in a 0-d tensor can be changed in
    place. A number becomes a float64 tensor; a tensor is viewed, not copied. (Not 0-d:
    Dynamo reads a 0-d float64 CPU input as a Python number and traces the step twice.)"""
    if isinstance(value, torch.Tensor):
        return value.view(1)
    return torch.tensor([float(value)], dtype=torch.float64)


def tensor_rate(where: str, value: torch.Tensor) -> torch.Tensor:
    """A learning rate held in a 0-d floating-point tensor, checked positive and finite (when
    not compiling). It is an input of a compiled step, not a constant baked into it: change
    its value in place (``lr.fill_(2e-3)``) and the next step uses it, with no recompile."""
    if value.ndim != 0 or not value.is_floating_point():
        raise TypeError(
            f"{where}: lr as a tensor must be a 0-d floating-point tensor (got {value.dtype} of "
            f"shape {tuple(value.shape)})"
        )
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(value) & (value > 0)):
        raise ValueError(
            f"{where}: lr must be a positive finite number (got tensor {value.item()!r})"
        )
    return rate(value)


def rate_at(
    lr: float | torch.Tensor | Schedule, count: torch.Tensor | None
) -> float | torch.Tensor:
    """The learning rate for this update: a number or tensor (0-d), or the schedule at
    ``count``."""
    if isinstance(lr, torch.Tensor):
        return lr.view(())
    if isinstance(lr, float):
        return lr
    assert count is not None  # a scheduled optimizer keeps its count (static: no graph break)
    value = lr(count)
    return value if isinstance(value, torch.Tensor) else float(value)


def scale(rate: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``rate * x`` in ``x``'s dtype (a rate is a float64 tensor)."""
    if isinstance(rate, torch.Tensor):
        rate = cast(rate, x.dtype)
    return rate * x


def in_dtype(value: float | torch.Tensor) -> Callable[[torch.dtype], Any]:
    """``dtype -> value`` in that dtype: a number as it is, a tensor cast once per dtype (the
    updates of many leaves then cost no cast each)."""
    if not isinstance(value, torch.Tensor):
        return lambda dtype: value
    return per_dtype(lambda dtype: cast(value, dtype))


def per_dtype(f: Callable[[torch.dtype], Any]) -> Callable[[torch.dtype], Any]:
    """``f`` computed once per dtype, on its first call with it."""
    values: dict[torch.dtype, Any] = {}

    def get(dtype: torch.dtype) -> Any:
        if dtype not in values:
            values[dtype] = f(dtype)
        return values[dtype]

    return get


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``: itself when it already is (no operation)."""
    return t if t.dtype == dtype else t.to(dtype)


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype moments and updates are computed in: float32 for float16 and bfloat16
    parameters (``eps=1e-8`` underflows in float16, ``1 - 0.999**t`` rounds to 0 in
    bfloat16), the parameters' own dtype otherwise."""
    return _WIDE.get(dtype, dtype)


_WIDE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def widen(tree: PyTree) -> PyTree:
    """The leaves in :func:`wide_dtype` (the same tensors when they already are)."""
    return _tree.map(lambda t: cast(t, wide_dtype(t.dtype)), tree)


def wide_zeros(params: PyTree) -> PyTree:
    return _tree.map(lambda p: torch.zeros_like(p, dtype=wide_dtype(p.dtype)), params)


def zero_count(params: PyTree) -> torch.Tensor:
    """An int64 scalar 0 on the parameters' device: updates taken."""
    return torch.zeros((), dtype=torch.int64, device=_tree.leaves(params)[0].device)


def check_init(where: str, params: PyTree) -> None:
    _checks.params_tree(where, "params", params)


def check_update(where: str, grads: PyTree, params: PyTree) -> None:
    if not torch.compiler.is_compiling():
        _tree.check_same_structure(
            params, grads, where=f"{where}.update", expected_name="params", got_name="grads"
        )
