"""A ``train`` hook that keeps what the applications report of a run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import metafunc as mf


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
