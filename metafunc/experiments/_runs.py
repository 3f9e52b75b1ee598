"""What the applications share of a run: training a config with its hooks, the loss curve and
timing they keep, and the options that define it (stored with its checkpoints, compared on
resume)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import metafunc as mf

# Options that change how a run is carried out or reported, not what it computes: a run may
# resume with other values of these.
_NOT_IDENTITY = frozenset(
    {
        "steps",
        "progress",
        "checkpoint",
        "checkpoint_every",
        "resume",
        "on_nonfinite",
        "device",
        "compile",
        "log_every",
        "eval_draws",
        "eval_tasks",
    }
)


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, shared by the experiments' configs (which add what it
    computes): where and when it checkpoints, whether it resumes, compiles, shows progress,
    and what it does with a step that is not finite."""

    device: str = "cpu"
    compile: bool = True
    progress: bool = True
    checkpoint: Path | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    on_nonfinite: str = "raise"


def identity(config: Any) -> dict[str, Any]:
    """The options of ``config`` (a frozen dataclass) that define the run it trains, as JSON-able
    values: a checkpoint holds them, and a resume with other ones is refused."""
    return {
        f.name: str(v) if isinstance(v, Path) else v
        for f in dataclasses.fields(config)
        if f.name not in _NOT_IDENTITY
        for v in [getattr(config, f.name)]
    } | {"experiment": type(config).__name__.removesuffix("Config").lower()}


class History:
    """Collects the loss curve from each log window (``on_log=history``) and the last window's
    timing; forwards every log to ``then`` when given."""

    def __init__(self, then: Callable[[mf.Log], Any] | None = None) -> None:
        self.curve: dict[str, list[float]] = {"step": [], "loss": [], "loss_before": []}
        self.last: mf.Log | None = None
        self.then = then

    def __call__(self, log: mf.Log) -> None:
        self.curve["step"].append(log.step)
        self.curve["loss"].append(log.metrics["loss"])
        self.curve["loss_before"].append(log.metrics["loss_before"])
        self.last = log
        if self.then is not None:
            self.then(log)

    def timing(self, state: mf.TrainState) -> tuple[int, float, float]:
        """``(start_step, first_call_s, step_ms)`` of the run that ended in ``state``; NaN
        times when it took no step (e.g. resumed at its end)."""
        if self.last is None:
            return int(state.step), float("nan"), float("nan")
        log = self.last
        return log.start_step, log.first_call_s, 1e3 * log.steady_s / max(log.steady_steps, 1)


def train(
    config: Any,
    step: mf.Step,
    state: mf.TrainState,
    sampler: Callable[[torch.Generator], mf.Tasks],
    generator: torch.Generator,
    history: History,
) -> mf.TrainState:
    """``config.steps`` steps of ``step`` with the config's logging, checkpoints, resume and
    non-finite policy (a run's config holds them: ``log_every``, ``checkpoint``,
    ``checkpoint_every``, ``resume``, ``on_nonfinite``, ``progress``)."""
    hooks: list[mf.hooks.Hook] = [mf.hooks.Logger(config.log_every, on_log=history)]
    if config.checkpoint is not None:
        saver = mf.hooks.Checkpoints(
            config.checkpoint,
            every=config.checkpoint_every,
            resume=config.resume,
            metadata=identity(config),
        )
        hooks.append(saver)
    return mf.train(
        step,
        state,
        sampler,
        until=config.steps,
        generator=generator,
        hooks=hooks,
        on_nonfinite=config.on_nonfinite,
        progress=config.progress,
    )
