"""A training step made of phases: one step until a step count, then another (optax's
``join_schedules``, for steps); MAML++'s derivative-order annealing is two such phases."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from . import _checks
from ._learner import Learner
from ._types import Metrics, Step, Tasks, TrainState
from ._wrappers import first_order
from .optim import Optimizer


def join_steps(steps: Sequence[Step], boundaries: Sequence[int]) -> Step:
    """One training step that runs ``steps[i]`` while the state's step count is below
    ``boundaries[i]`` (and the last one from the last boundary on): phases chosen by
    ``state.step``, which checkpoints keep, so a single :func:`metafunc.train` call covers them
    all and a resumed run continues in the phase it stopped in.

    The count is read from the device once (when a state comes that this step did not return:
    the first call, a resume) and then counted on the host, so choosing costs no sync per step.
    The steps must share the state's layout (e.g. one learner first order and second order)
    and their guard (:func:`metafunc.optim.apply_if_finite`).

    Example:
        >>> first = mf.make_step(mf.first_order(learner), opt, compile=False)
        >>> second = mf.make_step(learner, opt, compile=False)
        >>> step = mf.join_steps([first, second], boundaries=[2])  # first order for 2 steps
        >>> state = mf.train(step, state, [tasks] * 3, steps=3, progress=False)
        >>> int(state.step)
        3
    """
    where = "join_steps"
    steps = list(steps)
    for i, s in enumerate(steps):
        if not isinstance(s, Step):
            raise TypeError(
                f"{where}: steps[{i}] must be a metafunc.Step, e.g. from mf.make_step (got "
                f"{type(s).__name__})"
            )
    bounds = [_checks.integer(where, "each boundary", b, minimum=0) for b in boundaries]
    if len(steps) != len(bounds) + 1 or bounds != sorted(set(bounds)):
        raise ValueError(
            f"{where}: give one step more than boundaries, and strictly increasing boundaries "
            f"(got {len(steps)} steps and boundaries {list(boundaries)})"
        )
    if len({s.guarded for s in steps}) > 1:
        raise ValueError(
            f"{where}: the steps must all refuse non-finite updates or all not (their "
            "optimizers wrapped in mf.optim.apply_if_finite alike)"
        )
    last: list[Any] = [None, 0]  # the step counter this step returned last, and its value

    def run(state: TrainState, tasks: Tasks) -> tuple[TrainState, Metrics]:
        count = last[1] if state.step is last[0] else int(state.step)
        new, metrics = steps[bisect.bisect_right(bounds, count)](state, tasks)
        last[:] = [new.step, count + 1]
        return new, metrics

    return Step(run, guarded=steps[0].guarded)


def derivative_annealing(
    learner: Learner, optimizer: Optimizer, *, first_order_steps: int, **options: Any
) -> Step:
    """MAML++'s derivative-order annealing (Antoniou et al., 2019): the step of
    ``mf.first_order(learner)`` for the first ``first_order_steps`` outer steps, then the
    second-order step of ``learner``, each from :func:`metafunc.make_step` with ``options``
    (two compiled steps), joined by :func:`join_steps`.

    Example:
        >>> step = mf.derivative_annealing(learner, opt, first_order_steps=2, compile=False)
        >>> int(mf.train(step, state, [tasks] * 3, steps=3, progress=False).step)
        3
    """
    from .step import make_step

    n = _checks.integer("derivative_annealing", "first_order_steps", first_order_steps, minimum=0)
    phases = [make_step(first_order(learner), optimizer, **options)]
    return join_steps([*phases, make_step(learner, optimizer, **options)], [n])
