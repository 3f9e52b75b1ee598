"""The loop around the step: sampling, progress, metric windows, hooks, checkpoints, resume,
and stopping cleanly on Ctrl-C / SIGTERM or a non-finite step."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from . import _checks, _tree
from . import distributed as _dist
from ._types import Tasks, TrainState
from .checkpoint import check_writable, load, save
from .optim import is_guarded
from .step import Step

logger = logging.getLogger("metafunc")

Sampler = Callable[[torch.Generator], Tasks]


class Log(NamedTuple):
    """What ``on_log`` gets at the end of each log window.

    Attributes:
        step: the step counter at the end of the window.
        start_step: the step counter this run started from (after a resume, the checkpoint's).
        metrics: the window's mean of each scalar metric, as floats (``finite`` becomes the
            fraction of finite steps).
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


def train(
    step: Step,
    state: TrainState,
    sampler: Sampler,
    *,
    steps: int,
    generator: torch.Generator | None = None,
    log_every: int = 100,
    on_log: Callable[[Log], Any] | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str | os.PathLike[str] = False,
    on_nonfinite: str = "raise",
    metadata: dict[str, Any] | None = None,
) -> TrainState:
    """Run outer steps until the step counter reaches ``state.step + steps``, drawing each
    meta-batch as ``sampler(generator)``.

    Metrics stay on the device between logs; whenever the step count reaches a multiple of
    ``log_every`` (and after the last step) their means over the window are logged to the
    ``metafunc`` logger, shown on the progress bar and passed to ``on_log`` with the state and
    the run's timing (:class:`Log`).

    Checkpoints (see :func:`metafunc.save`) hold the state and the generator, and are written
    atomically to ``checkpoint`` at every multiple of ``checkpoint_every``, after the last step,
    and when the process gets SIGINT (Ctrl-C) or SIGTERM: the loop finishes the current step,
    writes the checkpoint, then raises ``KeyboardInterrupt`` (SIGINT) or ``SystemExit(143)``
    (SIGTERM). A second signal interrupts at once (the last checkpoint on disk stays whole).
    The handlers are installed only while ``train`` runs, in the main thread, and the previous
    ones are restored. ``resume`` loads a checkpoint (state and generator) first and runs only
    the steps that remain, so the same call can be repeated after a crash; the result is
    bit-identical to an uninterrupted run.

    Distributed (under torchrun, after :func:`metafunc.distributed.init`, with a learner from
    :func:`metafunc.distributed.data_parallel`): every rank runs this loop with the same seed,
    so every rank draws the same meta-batches. Only rank 0 logs, shows progress, calls
    ``on_log`` and writes checkpoints; the other ranks wait for each write at a barrier. A stop
    signal received by any rank stops every rank after the same step. Resuming loads the same
    file on every rank (on several machines, put it on a shared file system).

    Non-finite steps: with ``on_nonfinite="raise"`` (the default) the loop reads the step's
    ``finite`` flag after every step (one host sync per step) and raises ``FloatingPointError``
    naming the step and what was not finite; no checkpoint is written from a non-finite state.
    With an optimizer wrapped in :func:`metafunc.optim.apply_if_finite` such a step left the
    state as it was; ``"skip"`` (which needs that guard) never syncs for it: the step is skipped
    (it still counts) and a warning at the end of the log window says how many were.

    Args:
        step: from :func:`metafunc.make_step`.
        state: from :func:`metafunc.init_state` (or a previous run); with ``resume``, the
            template the checkpoint is loaded into.
        sampler: ``sampler(generator) -> Tasks``, e.g.
            ``functools.partial(mf.tasks.sine, tasks=32)``.
        steps: outer steps to run from ``state`` (a resumed run does the ones left).
        generator: the task stream's generator; ``None`` uses ``torch.Generator().manual_seed(0)``.
        log_every: steps per log window.
        on_log: called with a :class:`Log` at the end of each window.
        progress: show a progress bar.
        checkpoint: file to write checkpoints to (its folder must exist and be writable, which
            is checked before the first step); ``None`` writes none.
        checkpoint_every: steps between periodic checkpoints (needs ``checkpoint``).
        resume: ``True`` resumes from ``checkpoint`` (which must exist), a path resumes from
            that file; ``False`` starts from ``state``.
        on_nonfinite: ``"raise"`` or ``"skip"``.
        metadata: JSON-able options stored with every checkpoint (e.g. the run's settings, to
            refuse a resume with other ones; see :func:`metafunc.checkpoint.read_metadata`).

    Returns:
        the final state.

    Example:
        >>> state = mf.train(step, state, sampler, steps=10_000, generator=g,
        ...                  checkpoint="run/ckpt.pt", checkpoint_every=1000, resume=True)
    """
    steps = _checks.integer("train", "steps", steps, minimum=0)
    log_every = _checks.integer("train", "log_every", log_every, minimum=1)
    if not isinstance(state, TrainState):
        raise TypeError(f"train: state must be a metafunc.TrainState (got {type(state).__name__})")
    for name, value in (("step", step), ("sampler", sampler)):
        if not callable(value):
            raise TypeError(f"train: {name} must be callable (got {type(value).__name__})")
    if on_log is not None and not callable(on_log):
        raise TypeError(f"train: on_log must be callable or None (got {type(on_log).__name__})")
    _checks.boolean("train", "progress", progress)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    elif not isinstance(generator, torch.Generator):
        raise TypeError(
            f"train: generator must be a torch.Generator or None (got {type(generator).__name__})"
        )
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"train: on_nonfinite must be 'raise' or 'skip' (got {on_nonfinite!r})")
    if on_nonfinite == "skip" and not is_guarded(state.opt_state):
        raise ValueError(
            "train: on_nonfinite='skip' needs an optimizer wrapped in mf.optim.apply_if_finite, "
            "which keeps the state when a step is not finite; without it such a step writes "
            "NaN or inf into the parameters"
        )
    saver = _Checkpointer.build(checkpoint, checkpoint_every, generator, metadata)
    source = _resume_source(resume, saver)

    target = int(state.step) + steps  # the counter is read on the host here, never in the loop
    if source is not None:
        state = load(source, like=state, generator=generator)
        if int(state.step) > target:
            raise ValueError(
                f"train: the checkpoint {str(source)!r} is at step {int(state.step)}, past the "
                f"{target} steps this run goes to (steps={steps} from step {target - steps})"
            )
        if _dist.is_main():
            logger.info("resumed from %s at step %d", source, int(state.step))
    done = start = int(state.step)
    remaining = target - done
    main = _dist.is_main()
    window = _Window()
    clock = _Clock()
    with (
        _stop_signals() as stop,
        tqdm(
            total=remaining, disable=not (progress and main), desc="meta-train", unit="step"
        ) as bar,
    ):
        for i in range(remaining):
            state, metrics = step(state, sampler(generator))
            if on_nonfinite == "raise" or i == 0:  # a host sync: the first step's time is real
                finite = bool(metrics["finite"])
                if on_nonfinite == "raise" and not finite:
                    raise FloatingPointError(_nonfinite_message(done + 1, state, metrics, saver))
            clock.tick()
            done += 1
            if main:
                window.add(metrics)
            bar.update(1)
            last = i == remaining - 1
            if main and (done % log_every == 0 or last):
                means = window.means(done)
                bar.set_postfix(loss=f"{means['loss']:.4f}")
                if on_log is not None:
                    on_log(Log(done, start, means, state, *clock.report()))
            # One decision for all ranks (a signal may reach only some of them).
            stopping = _any_rank(stop)
            if saver is not None and saver.due(done, last or stopping):
                saver.write(state, done)
                stopping = _any_rank(stop)  # a signal during the write: stop now, it is saved
            if stopping:
                _stop(stop, done, saver)
    return state


class _Window:
    """Sums of the scalar metrics over a log window, kept on the device until it ends."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] | None = None
        self.count = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        scalars = {k: v.detach().to(torch.float64) for k, v in metrics.items() if v.ndim == 0}
        self.sums = scalars if self.sums is None else _tree.map(torch.add, self.sums, scalars)
        self.count += 1

    def means(self, done: int) -> dict[str, float]:
        """The window's means (logged), and a fresh window."""
        means = _tree.map(lambda v: v.item() / self.count, self.sums)
        logger.info("step %d: %s", done, " ".join(f"{k}={v:.4g}" for k, v in means.items()))
        skipped = self.count - round(means["finite"] * self.count)
        if skipped:
            logger.warning(
                "step %d: skipped %d non-finite step(s) of the last %d", done, skipped, self.count
            )
        self.sums, self.count = None, 0
        return means


class _Clock:
    """Wall time of the run's first step (with a compiled step: compiling) apart from the time
    since, which covers everything the loop does per step (sampling, logging, checkpoints)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first_end: float | None = None
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1
        if self.first_end is None:
            self.first_end = time.perf_counter()

    def report(self) -> tuple[float, float, int]:
        """``(first_call_s, steady_s, steady_steps)`` so far."""
        return (
            self.first_end - self.start,
            time.perf_counter() - self.first_end,
            self.ticks - 1,
        )


class _Checkpointer:
    """Where and when ``train`` writes checkpoints (rank 0 writes, the others wait)."""

    def __init__(
        self, path: Path, every: int | None, generator: torch.Generator, metadata: Any
    ) -> None:
        self.path, self.every, self.generator, self.metadata = path, every, generator, metadata
        self.last: int | None = None  # the step of the last checkpoint written by this run

    @classmethod
    def build(
        cls, path: Any, every: Any, generator: torch.Generator, metadata: Any
    ) -> _Checkpointer | None:
        if every is not None:
            every = _checks.integer("train", "checkpoint_every", every, minimum=1)
        if path is None:
            if every is not None:
                raise ValueError(
                    "train: checkpoint_every needs checkpoint=<path> (got checkpoint=None)"
                )
            return None
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"train: checkpoint must be a path or None (got {type(path).__name__})")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(
                f"train: metadata must be a dict or None (got {type(metadata).__name__})"
            )
        check_writable(path, "train")  # now, not after the whole run
        return cls(Path(path), every, generator, metadata)

    def due(self, done: int, forced: bool) -> bool:
        return forced or (self.every is not None and done % self.every == 0)

    def write(self, state: TrainState, done: int) -> None:
        if _dist.is_main():  # save refuses a state that is not finite, naming the leaf
            save(self.path, state, generator=self.generator, metadata=self.metadata)
        _dist.barrier()
        self.last = done


def _any_rank(stop: list[int]) -> bool:
    return _dist.any_rank(bool(stop)) if _dist.active() else bool(stop)


def _stop(stop: list[int], done: int, saver: _Checkpointer | None) -> None:
    signum = stop[0] if stop else signal.SIGTERM
    saved = f", checkpoint written to {saver.path}" if saver is not None else ""
    logger.warning(  # every rank: the signal may have reached any of them
        "stopped by %s after step %d%s", signal.Signals(signum).name, done, saved
    )
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _resume_source(resume: Any, saver: _Checkpointer | None) -> Path | None:
    if resume is False:
        return None
    if resume is True:
        if saver is None:
            raise ValueError(
                "train: resume=True needs checkpoint=<path> to resume from (got checkpoint=None)"
            )
        return saver.path
    if isinstance(resume, (str, os.PathLike)):
        return Path(resume)
    raise TypeError(
        f"train: resume must be True, False or a checkpoint path (got {resume!r} of type "
        f"{type(resume).__name__})"
    )


def _nonfinite_message(
    done: int, state: TrainState, metrics: dict[str, torch.Tensor], saver: _Checkpointer | None
) -> str:
    flags = metrics["finite_leaves"].tolist()
    if not all(flags):
        name = _tree.named_leaves(state.meta, "meta")[flags.index(False)][0]
        what = f"the meta-gradient of {name} is the first that is not finite"
    elif not bool(torch.isfinite(metrics["loss"])):
        what = f"the loss is {metrics['loss'].item()}"
    else:
        what = "the gradient is finite but the update is not (is a learning rate too large?)"
    if is_guarded(state.opt_state):
        kept = "The parameters and optimizer state were left as before that step"
    else:
        kept = (
            "The optimizer applied it (it is not wrapped in mf.optim.apply_if_finite), so the "
            "parameters or optimizer state are no longer finite"
        )
    if saver is not None and saver.last is not None:
        kept += f"; the last checkpoint, {str(saver.path)!r}, is at step {saver.last}"
    return (
        f"train: step {done} is not finite: {what}. {kept}. Lower the learning rates or check "
        "the data, or wrap the optimizer in mf.optim.apply_if_finite and pass "
        "on_nonfinite='skip' to skip such steps."
    )


@contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """While active, SIGINT and SIGTERM are recorded in the yielded list instead of
    interrupting; a second one interrupts at once. Only the main thread can own signals."""
    stop: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
