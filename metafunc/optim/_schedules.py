"""Learning-rate schedules with optax's names, signatures and formulas.

A schedule maps the int64 count of updates taken (a tensor) to a float64 scalar tensor with
tensor operations only: no ``.item()`` and no Python branch on the count, so it runs inside a
compiled step that never recompiles as the count advances. Optimizers call it with the count
*before* the update, so the first update uses ``schedule(0)``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch

from .. import _checks
from ._base import Schedule


def constant_schedule(value: float) -> Schedule:
    """``value`` at every count.

    Example:
        >>> mf.optim.constant_schedule(1e-3)(torch.tensor(7))
        tensor(0.0010, dtype=torch.float64)
    """
    value = _number("constant_schedule", "value", value)

    def schedule(count: torch.Tensor) -> torch.Tensor:
        return torch.full((), value, dtype=torch.float64, device=count.device)

    return schedule


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """``init_value`` until ``transition_begin``, then linear to ``end_value`` over
    ``transition_steps`` counts, then ``end_value``.

    Example:
        >>> warmup = mf.optim.linear_schedule(0.0, 1e-3, transition_steps=100)
        >>> warmup(torch.tensor(50))
        tensor(0.0005, dtype=torch.float64)
    """
    where = "linear_schedule"
    init_value = _number(where, "init_value", init_value)
    end_value = _number(where, "end_value", end_value)
    steps = _checks.integer(where, "transition_steps", transition_steps, minimum=1)
    begin = _checks.integer(where, "transition_begin", transition_begin, minimum=0)
    return _linear(init_value, end_value, steps, begin)


def cosine_decay_schedule(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    """``init_value * ((1 - alpha) * (0.5 * (1 + cos(pi * t / decay_steps)))**exponent + alpha)``
    with ``t = min(count, decay_steps)``.

    Example:
        >>> schedule = mf.optim.cosine_decay_schedule(1e-3, decay_steps=10_000)
        >>> schedule(torch.tensor(5_000))
        tensor(0.0005, dtype=torch.float64)
    """
    where = "cosine_decay_schedule"
    init_value = _number(where, "init_value", init_value)
    decay_steps = _checks.integer(where, "decay_steps", decay_steps, minimum=1)
    alpha = _number(where, "alpha", alpha)
    exponent = _checks.positive_number(where, "exponent", exponent)
    return _cosine(init_value, decay_steps, alpha, exponent)


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear from ``init_value`` to ``peak_value`` over ``warmup_steps``, then cosine decay to
    ``end_value`` at count ``decay_steps`` (which includes the warmup), then ``end_value``.

    Example:
        >>> schedule = mf.optim.warmup_cosine_decay_schedule(0.0, 1e-3, 500, decay_steps=20_000)
        >>> schedule(torch.tensor(250)), schedule(torch.tensor(500))
        (tensor(0.0005, dtype=torch.float64), tensor(0.0010, dtype=torch.float64))
    """
    where = "warmup_cosine_decay_schedule"
    init_value = _number(where, "init_value", init_value)
    peak_value = _number(where, "peak_value", peak_value)
    warmup_steps = _checks.integer(where, "warmup_steps", warmup_steps, minimum=0)
    decay_steps = _checks.integer(where, "decay_steps", decay_steps, minimum=1)
    end_value = _number(where, "end_value", end_value)
    exponent = _checks.positive_number(where, "exponent", exponent)
    if decay_steps <= warmup_steps:
        raise ValueError(
            f"{where}: decay_steps must be greater than warmup_steps, since it counts the "
            f"warmup too (got decay_steps={decay_steps}, warmup_steps={warmup_steps})"
        )
    alpha = 0.0 if peak_value == 0 else end_value / peak_value
    # optax: a linear schedule of 0 steps holds its initial value (here: never used)
    warmup = _linear(init_value, peak_value, max(warmup_steps, 1), 0)
    decay = _cosine(peak_value, decay_steps - warmup_steps, alpha, exponent)

    def schedule(count: torch.Tensor) -> torch.Tensor:
        return torch.where(count < warmup_steps, warmup(count), decay(count - warmup_steps))

    return schedule


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """``init_value * decay_rate ** ((count - transition_begin) / transition_steps)`` from
    ``transition_begin`` on (the exponent floored with ``staircase``), ``init_value`` before;
    bounded by ``end_value`` (below when ``decay_rate < 1``, above otherwise).

    Example:
        >>> schedule = mf.optim.exponential_decay(1e-3, transition_steps=1000, decay_rate=0.5)
        >>> schedule(torch.tensor(2000))
        tensor(0.0003, dtype=torch.float64)
    """
    where = "exponential_decay"
    init_value = _number(where, "init_value", init_value)
    steps = _checks.integer(where, "transition_steps", transition_steps, minimum=1)
    decay_rate = _checks.positive_number(where, "decay_rate", decay_rate)
    begin = _checks.integer(where, "transition_begin", transition_begin, minimum=0)
    staircase = _checks.boolean(where, "staircase", staircase)
    end_value = None if end_value is None else _number(where, "end_value", end_value)

    def schedule(count: torch.Tensor) -> torch.Tensor:
        elapsed = (count - begin).to(torch.float64)
        exponent = elapsed / steps
        if staircase:
            exponent = torch.floor(exponent)
        value = torch.where(elapsed <= 0, init_value, init_value * decay_rate**exponent)
        if end_value is None:
            return value
        return (
            torch.clamp(value, min=end_value)
            if decay_rate < 1
            else torch.clamp(value, max=end_value)
        )

    return schedule


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: dict[int, float] | None = None
) -> Schedule:
    """``init_value`` times every ``scale`` whose boundary the count has reached
    (``count >= boundary``).

    Example:
        >>> schedule = mf.optim.piecewise_constant_schedule(1e-2, {1000: 0.1, 2000: 0.1})
        >>> schedule(torch.tensor(1500))
        tensor(0.0010, dtype=torch.float64)
    """
    where = "piecewise_constant_schedule"
    init_value = _number(where, "init_value", init_value)
    if boundaries_and_scales is None:
        boundaries_and_scales = {}
    if not isinstance(boundaries_and_scales, dict):
        raise TypeError(
            f"{where}: boundaries_and_scales must be a dict {{step: scale}} or None "
            f"(got {type(boundaries_and_scales).__name__})"
        )
    steps = []
    for boundary, scale in boundaries_and_scales.items():
        boundary = _checks.integer(where, "each boundary", boundary, minimum=0)
        name = f"boundaries_and_scales[{boundary}]"
        steps.append((boundary, _checks.positive_number(where, name, scale, allow_zero=True)))
    steps.sort()

    def schedule(count: torch.Tensor) -> torch.Tensor:
        value = torch.full((), init_value, dtype=torch.float64, device=count.device)
        for boundary, scale in steps:
            value = torch.where(count < boundary, value, value * scale)
        return value

    return schedule


def _linear(init_value: float, end_value: float, steps: int, begin: int) -> Schedule:
    def schedule(count: torch.Tensor) -> torch.Tensor:
        done = torch.clamp(count - begin, 0, steps).to(torch.float64)
        return (init_value - end_value) * (1 - done / steps) + end_value

    return schedule


def _cosine(init_value: float, decay_steps: int, alpha: float, exponent: float) -> Schedule:
    def schedule(count: torch.Tensor) -> torch.Tensor:
        done = torch.clamp(count, max=decay_steps).to(torch.float64)
        cosine = 0.5 * (1 + torch.cos(math.pi * done / decay_steps))
        return init_value * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def _number(where: str, name: str, value: Any) -> float:
    """A finite real number (of either sign) as a float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{where}: {name} must be a number (got {value!r} of type {type(value).__name__})"
        )
    if not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be a finite number (got {value!r})")
    return float(value)
