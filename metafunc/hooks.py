"""The pieces of the training loop besides the step: a :class:`Run` that hooks see, and the
hooks for logging, checkpoints and anything done every few steps (validation, early stopping).

A hook is any object with the methods of :class:`Hook`; :func:`metafunc.train` calls ``start``
before the first step (a checkpoint hook resumes there), ``step`` after every step and
``end`` after the last one (also when a hook or a signal stopped the run). A hook may replace
``run.state`` (to keep its own bookkeeping in ``state.extra``, which checkpoints keep) and may
stop the run with ``run.stop(reason)``: the loop ends after that step, calls every hook's
``end`` (so the checkpoint is written) and returns the state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from . import _checks, _tree
from . import distributed as _dist
from ._types import Metrics, TrainState
from .checkpoint import check_writable, load, read_metadata, save

__all__ = ["Checkpoints", "Every", "Hook", "Log", "Logger", "Run"]

logger = logging.getLogger("metafunc")


class Run:
    """What hooks see of a run of :func:`metafunc.train`.

    Attributes:
        state: the state after the last step (a hook may replace it, e.g. to update
            ``state.extra``).
        metrics: the last step's :class:`metafunc.Metrics` (``None`` before the first step).
        start_step: the step counter this run started from (after a resume, the checkpoint's).
        done: the step counter now (a host integer: no sync).
        until: the step counter at which the run ends.
        generator: the task stream's generator (``None`` for an iterable of batches).
        stopped: why the run was stopped before ``until`` (``None`` while it goes on).
        checkpoint: ``(path, step)`` of the last checkpoint this run wrote or resumed from.
        postfix: what the progress bar shows beside the count (set by :class:`Logger`).

    Example:
        >>> class StopAtTwo(mf.hooks.Hook):
        ...     def step(self, run):
        ...         if run.done == 2:
        ...             run.stop("two steps are enough")
        >>> step = mf.make_step(learner, opt, compile=False)
        >>> state = mf.train(step, state, [tasks] * 5, steps=5, hooks=[StopAtTwo()], progress=False)
        >>> int(state.step)
        2
    """

    def __init__(self, state: TrainState, until: int, generator: torch.Generator | None) -> None:
        self.state = state
        self.metrics: Metrics | None = None
        self.start_step = self.done = int(state.step)
        self.until = until
        self.generator = generator
        self.stopped: str | None = None
        self.checkpoint: tuple[Path, int] | None = None
        self.postfix: dict[str, str] = {}
        self.check_finite: Callable[[], None] = lambda: None  # train's non-finite policy
        self._started = time.perf_counter()
        self._first_end: float | None = None

    def begin(self) -> None:
        """Start the clock (the loop calls this before its first step)."""
        self._started = time.perf_counter()

    def stop(self, reason: str) -> None:
        """End the run after this step (every hook's ``end`` still runs)."""
        self.stopped = reason

    def tick(self, state: TrainState, metrics: Metrics) -> None:
        """Record a step (the loop calls this)."""
        self.state, self.metrics = state, metrics
        self.done += 1
        if self._first_end is None:
            self._first_end = time.perf_counter()

    def timing(self) -> tuple[float, float, int]:
        """``(first_call_s, steady_s, steady_steps)``: wall seconds of this run's first step
        (with a compiled step: compiling), of the steps after it, and their count."""
        if self._first_end is None:
            return float("nan"), 0.0, 0
        now = time.perf_counter()
        steps = self.done - self.start_step
        return self._first_end - self._started, now - self._first_end, steps - 1


class Hook:
    """A piece of the training loop; subclass it and override what you need.

    Example:
        >>> class CountSteps(mf.hooks.Hook):
        ...     def start(self, run):
        ...         self.count = 0
        ...     def step(self, run):
        ...         self.count += 1
        >>> counter = CountSteps()
        >>> step = mf.make_step(learner, opt, compile=False)
        >>> state = mf.train(step, state, [tasks] * 3, steps=3, hooks=[counter], progress=False)
        >>> counter.count
        3
    """

    def start(self, run: Run) -> None:
        """Before the first step."""

    def step(self, run: Run) -> None:
        """After every step."""

    def end(self, run: Run) -> None:
        """After the last step, or when the run was stopped."""


class Log(NamedTuple):
    """What :class:`metafunc.hooks.Logger`'s ``on_log`` gets at the end of each log window.

    Attributes:
        step: the step counter at the end of the window.
        start_step: the step counter this run started from (after a resume, the checkpoint's).
        metrics: the window's mean of each scalar metric, as floats (``finite`` and
            ``skipped`` become the fraction of such steps).
        state: the state after the window's last step (e.g. to validate on held-out tasks).
        first_call_s: wall seconds of this run's first step (with a compiled step: compiling).
        steady_s: wall seconds of this run's later steps so far.
        steady_steps: how many steps ``steady_s`` covers.
    """

    step: int
    start_step: int
    metrics: dict[str, float]
    state: TrainState
    first_call_s: float
    steady_s: float
    steady_steps: int


class Logger(Hook):
    """Means of the scalar metrics over windows of ``every`` steps (kept on the device until the
    window ends), logged to the ``metafunc`` logger, shown on the progress bar and passed to
    ``on_log`` as a :class:`Log`, at every multiple of ``every`` and after the last step.

    Example:
        >>> history = []
        >>> step = mf.make_step(learner, opt, compile=False)
        >>> logger = mf.hooks.Logger(2, on_log=history.append)
        >>> state = mf.train(step, state, [tasks] * 5, steps=5, hooks=[logger], progress=False)
        >>> [log.step for log in history]  # every 2 steps and after the last
        [2, 4, 5]
        >>> list(history[0].metrics)
        ['loss', 'loss_before', 'grad_norm', 'finite', 'skipped']
        >>> history[0].metrics["finite"]  # the fraction of finite steps
        1.0
    """

    def __init__(self, every: int = 100, on_log: Callable[[Log], Any] | None = None) -> None:
        self.every = _checks.integer("Logger", "every", every, minimum=1)
        if on_log is not None and not callable(on_log):
            raise TypeError(
                f"Logger: on_log must be callable or None (got {type(on_log).__name__})"
            )
        self.on_log = on_log
        self.sums: dict[str, torch.Tensor] | None = None
        self.count = 0

    def step(self, run: Run) -> None:
        if not _dist.is_main():
            return
        assert run.metrics is not None  # after a step
        scalars = {
            k: v.detach().to(torch.float64) for k, v in run.metrics._asdict().items() if v.ndim == 0
        }
        self.sums = scalars if self.sums is None else _tree.map(torch.add, self.sums, scalars)
        self.count += 1
        if run.done % self.every == 0:
            self._flush(run)

    def end(self, run: Run) -> None:
        if self.count and _dist.is_main():
            self._flush(run)

    def _flush(self, run: Run) -> None:
        means = _tree.map(lambda v: v.item() / self.count, self.sums)
        logger.info("step %d: %s", run.done, " ".join(f"{k}={v:.4g}" for k, v in means.items()))
        run.postfix = {"loss": f"{means['loss']:.4f}"}
        self.sums, self.count = None, 0
        if self.on_log is not None:
            self.on_log(Log(run.done, run.start_step, means, run.state, *run.timing()))


class Every(Hook):
    """``fn(run)`` every ``every`` steps and after the last one: validation, early stopping
    (``run.stop(reason)``), bookkeeping in ``state.extra`` (``run.state = ...``).

    Example:
        >>> held_out = mf.tasks.sine(torch.Generator().manual_seed(1), tasks=4)
        >>> def validate(run):  # stop when the held-out loss rises; the best one in state.extra
        ...     loss = torch.tensor(mf.evaluate(learner, run.state.meta, held_out).loss.mean)
        ...     best = run.state.extra["best"]
        ...     if loss > best:
        ...         run.stop(f"validation loss rose to {loss:.3f}")
        ...     run.state = run.state._replace(extra={"best": torch.minimum(loss, best)})
        >>> state = state._replace(extra={"best": torch.tensor(float("inf"))})
        >>> step = mf.make_step(learner, opt, compile=False)
        >>> hooks = [mf.hooks.Every(2, validate)]
        >>> state = mf.train(step, state, [tasks] * 6, steps=6, hooks=hooks, progress=False)
        >>> bool(state.extra["best"] < float("inf"))
        True
    """

    def __init__(self, every: int, fn: Callable[[Run], Any]) -> None:
        self.every = _checks.integer("Every", "every", every, minimum=1)
        self.fn = _checks.function("Every", "fn", fn, "fn(run)")
        self.last = -1

    def step(self, run: Run) -> None:
        if run.done % self.every == 0:
            self.last = run.done
            self.fn(run)

    def end(self, run: Run) -> None:
        if self.last != run.done and run.done > run.start_step:
            self.fn(run)


class Checkpoints(Hook):
    """Checkpoints of the state and the task generator (see :func:`metafunc.save`), written
    atomically to ``path`` at every multiple of ``every``, after the last step and when the run
    stops (a hook, Ctrl-C or SIGTERM). With ``resume=True`` the run first loads ``path`` if it
    exists (a first run starts fresh and says so) and continues from there, bit-identical to a
    run that never stopped; a checkpoint at or past the run's end returns at once, so the same
    script of several phases (``train(..., until=...)`` each) resumes in whichever phase it
    stopped. ``metadata`` (JSON-able, e.g. the run's settings) is stored with every checkpoint,
    and a resume refuses a checkpoint saved with other metadata. Rank 0 writes; the other ranks
    wait for each write.

    Example:
        >>> step = mf.make_step(learner, opt, compile=False)
        >>> hooks = [mf.hooks.Checkpoints("run/ckpt.pt", every=2, resume=True)]
        >>> first = mf.train(step, state, [tasks] * 3, until=3, hooks=hooks, progress=False)
        >>> int(mf.load("run/ckpt.pt", like=state).step)  # written at step 2 and at the end
        3
        >>> last = mf.train(step, state, [tasks] * 2, until=5, hooks=hooks, progress=False)
        >>> int(last.step)  # resumed at step 3, then two more
        5
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        every: int | None = None,
        resume: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Checkpoints: path must be a path (got {type(path).__name__})")
        self.every = (
            None if every is None else _checks.integer("Checkpoints", "every", every, minimum=1)
        )
        self.resume = _checks.boolean("Checkpoints", "resume", resume)
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(
                f"Checkpoints: metadata must be a dict or None (got {type(metadata).__name__})"
            )
        self.path, self.metadata = Path(path), metadata

    def start(self, run: Run) -> None:
        check_writable(self.path, "train")  # now, not after the whole run
        if not self.resume:
            return
        if not self.path.exists():
            logger.info("no checkpoint at %s yet: starting a new run", self.path)
            return
        self._check_metadata()
        run.state = load(self.path, like=run.state, generator=run.generator)
        run.start_step = run.done = int(run.state.step)
        run.checkpoint = (self.path, run.done)
        if _dist.is_main():
            logger.info("resumed from %s at step %d", self.path, run.done)

    def step(self, run: Run) -> None:
        if self.every is not None and run.done % self.every == 0:
            self._write(run)

    def end(self, run: Run) -> None:
        if run.done > run.start_step and (run.checkpoint is None or run.checkpoint[1] != run.done):
            self._write(run)

    def _write(self, run: Run) -> None:
        run.check_finite()  # a state the guard let NaN into is not written: the last file stays
        if _dist.is_main():  # save refuses a state that is not finite, naming the leaf
            save(self.path, run.state, generator=run.generator, metadata=self.metadata)
        _dist.barrier()
        run.checkpoint = (self.path, run.done)

    def _check_metadata(self) -> None:
        saved = read_metadata(self.path)
        if self.metadata is None or saved == self.metadata:
            return
        keys = sorted(set(saved or {}) | set(self.metadata))
        differ = [
            k for k in keys if (saved or {}).get(k, _MISSING) != self.metadata.get(k, _MISSING)
        ]
        shown = ", ".join(
            f"{k}: {(saved or {}).get(k, '(none)')!r} -> {self.metadata.get(k, '(none)')!r}"
            for k in differ
        )
        raise ValueError(
            f"train: the checkpoint {str(self.path)!r} was saved by a run with other metadata "
            f"({shown}); resume with the same settings, or write to another path"
        )


_MISSING = object()
