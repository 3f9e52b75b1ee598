"""The loop around the step: sampling, progress and periodic logging."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from . import _checks, _tree
from ._types import Tasks
from .step import Step, TrainState

logger = logging.getLogger("metafunc")

Sampler = Callable[[torch.Generator], Tasks]


def train(
    step: Step,
    state: TrainState,
    sampler: Sampler,
    *,
    steps: int,
    generator: torch.Generator | None = None,
    log_every: int = 100,
    on_log: Callable[[int, dict[str, float]], Any] | None = None,
    progress: bool = True,
) -> TrainState:
    """Run ``steps`` outer steps, drawing each meta-batch as ``sampler(generator)``.

    Metrics stay on the device between logs (no per-step host sync); whenever the step
    count reaches a multiple of ``log_every`` (and after the last step) their means over the
    window are logged to the ``metafunc`` logger, shown on the
    progress bar and passed to ``on_log(step, metrics)`` as floats (``finite`` becomes the
    fraction of finite steps).

    Args:
        step: from :func:`metafunc.make_step`.
        state: from :func:`metafunc.init_state` (or a previous run).
        sampler: ``sampler(generator) -> Tasks``, e.g.
            ``functools.partial(mf.tasks.sine, tasks=32)``.
        steps: outer steps to run.
        generator: the task stream's generator; ``None`` uses ``torch.Generator().manual_seed(0)``.
        log_every: steps per log window.
        on_log: called with ``(step, metrics)`` at the end of each window.
        progress: show a progress bar.

    Returns:
        the final state.
    """
    steps = _checks.integer("train", "steps", steps, minimum=0)
    log_every = _checks.integer("train", "log_every", log_every, minimum=1)
    if not isinstance(state, TrainState):
        raise TypeError(f"train: state must be a metafunc.TrainState (got {type(state).__name__})")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    sums: dict[str, torch.Tensor] | None = None
    window = 0
    done = int(state.step)  # the only host read of the counter; windows end at multiples
    with tqdm(total=steps, disable=not progress, desc="meta-train", unit="step") as bar:
        for i in range(steps):
            state, metrics = step(state, sampler(generator))
            metrics = _tree.map(lambda v: v.detach().to(torch.float64), metrics)
            sums = metrics if sums is None else _tree.map(torch.add, sums, metrics)
            window += 1
            done += 1
            bar.update(1)
            if done % log_every == 0 or i == steps - 1:
                means = _tree.map(lambda v, n=window: v.item() / n, sums)
                logger.info("step %d: %s", done, " ".join(f"{k}={v:.4g}" for k, v in means.items()))
                bar.set_postfix(loss=f"{means['loss']:.4f}")
                if on_log is not None:
                    on_log(done, means)
                sums, window = None, 0
    return state
