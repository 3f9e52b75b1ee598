"""The training loop: steps, hooks (logging, checkpoints, validation), the non-finite policy,
and stopping cleanly on a hook's request, Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from tqdm.auto import tqdm

from . import _checks
from . import distributed as _dist
from ._nonfinite import Policy
from ._types import Tasks, TrainState
from .hooks import Hook, Log, Run

__all__ = ["Log", "train"]

logger = logging.getLogger("metafunc")

Sampler = Callable[[torch.Generator], Tasks]


def train(
    step: Callable[[TrainState, Tasks], Any],
    state: TrainState,
    data: Sampler | Iterable[Any],
    *,
    steps: int | None = None,
    until: int | None = None,
    generator: torch.Generator | None = None,
    hooks: Sequence[Hook] = (),
    on_nonfinite: str = "raise",
    progress: bool = True,
) -> TrainState:
    """Run ``step`` until the step counter reaches ``until`` (or ``state.step + steps``), each
    step on the next meta-batch of ``data``, and return the last state.

    ``data`` is a sampler, ``data(generator) -> Tasks`` (e.g.
    ``functools.partial(mf.tasks.sine, tasks=32)``), which draws from ``generator`` (default
    ``torch.Generator().manual_seed(0)``; checkpoints keep its state, so a resumed run draws the
    same tasks), or any iterable of batches (a ``DataLoader``, a list), each a
    :class:`metafunc.Tasks` or a pair ``(support, query)``; a run on an iterable ends early if
    it runs out. ``hooks`` (:mod:`metafunc.hooks`) log, checkpoint, resume, validate, keep their
    own state in ``state.extra`` and may stop the run. SIGINT (Ctrl-C) and SIGTERM finish the
    current step, run every hook's ``end`` (the checkpoint is written), then raise
    ``KeyboardInterrupt`` or ``SystemExit(143)``; a second signal interrupts at once. The
    handlers are installed only while ``train`` runs, in the main thread.

    A step that is not finite raises ``FloatingPointError`` naming the step and what was not
    finite (``on_nonfinite="raise"``), or, with a step whose optimizer is wrapped in
    :func:`metafunc.optim.apply_if_finite`, is skipped (``"skip"``, no host sync per step).

    Distributed (under torchrun, with :func:`metafunc.distributed.data_parallel`): every rank
    runs this loop with the same seed; rank 0 logs, shows progress and writes checkpoints, and
    a signal that reaches any rank stops every rank after the same step.

    Args:
        step: from :func:`metafunc.make_step`.
        state: from :func:`metafunc.init_state` (or a previous run); with a resuming
            :class:`metafunc.hooks.Checkpoints`, the template the checkpoint is loaded into.
        data: a sampler ``data(generator) -> Tasks``, or an iterable of batches.
        steps: steps to run from ``state``; or give ``until``.
        until: the step count to run to: a run of several phases (first order, then second)
            gives each phase its own ``until``, and resuming in any phase is exact.
        generator: the sampler's generator (not with an iterable).
        hooks: :class:`metafunc.hooks.Hook` objects, e.g. ``Logger``, ``Checkpoints``,
            ``Every``.
        on_nonfinite: ``"raise"`` or ``"skip"``.
        progress: show a progress bar.

    Returns:
        the state after the last step.

    Example:
        >>> import functools
        >>> step = mf.make_step(learner, opt, compile=False)
        >>> sampler = functools.partial(mf.tasks.sine, tasks=2)
        >>> hooks = [mf.hooks.Logger(5), mf.hooks.Checkpoints("run/ckpt.pt", every=5, resume=True)]
        >>> done = mf.train(step, state, sampler, steps=10, hooks=hooks, progress=False)
        >>> int(done.step)
        10
        >>> again = mf.train(step, state, sampler, until=10, hooks=hooks, progress=False)
        >>> int(again.step)  # resumed from run/ckpt.pt at step 10: nothing left to run
        10
        >>> int(mf.train(step, state, [tasks] * 3, steps=3, progress=False).step)  # a list of batches
        3
    """
    run, batches = _begin(step, state, data, steps, until, generator, hooks)
    policy = Policy(on_nonfinite, getattr(step, "guarded", False))
    run.check_finite = lambda: policy.verify(run)
    _checks.boolean("train", "progress", progress)
    for hook in hooks:
        hook.start(run)
    show = progress and _dist.is_main()
    bar = tqdm(total=max(run.until - run.done, 0), disable=not show, desc="meta-train", unit="step")
    with _stop_signals() as signals, bar:
        run.begin()
        while run.done < run.until and run.stopped is None:
            batch = next(batches, None)
            if batch is None:
                run.stop(f"the data ran out after step {run.done}")
                logger.warning("train: %s, before step %d", run.stopped, run.until)
                break
            run.tick(*step(run.state, batch))
            policy.after_step(run)
            for hook in hooks:
                hook.step(run)
            bar.update(1)
            bar.set_postfix(run.postfix, refresh=False)
            if _any_rank(signals):
                run.stop(signal.Signals(signals[0] if signals else signal.SIGTERM).name)
        policy.verify(run)
        for hook in hooks:
            hook.end(run)
    if run.stopped in ("SIGINT", "SIGTERM"):
        _interrupt(run, signals)
    return run.state


def _begin(
    step: Any,
    state: Any,
    data: Any,
    steps: Any,
    until: Any,
    generator: Any,
    hooks: Any,
) -> tuple[Run, Iterator[Tasks]]:
    """The run's checks, its target step and its stream of batches."""
    if not isinstance(state, TrainState):
        raise TypeError(f"train: state must be a metafunc.TrainState (got {type(state).__name__})")
    _checks.function("train", "step", step, "step(state, tasks)")
    if (steps is None) == (until is None):
        raise TypeError(
            f"train: give steps (to run from state) or until (the step to run to), one of them "
            f"(got steps={steps!r}, until={until!r})"
        )
    if until is None:
        until = int(state.step) + _checks.integer("train", "steps", steps, minimum=0)
    until = _checks.integer("train", "until", until, minimum=0)
    for i, hook in enumerate(hooks if isinstance(hooks, (list, tuple)) else [hooks]):
        if not all(callable(getattr(hook, m, None)) for m in ("start", "step", "end")):
            raise TypeError(
                f"train: hooks must be a list of hooks with start, step and end methods (e.g. "
                f"mf.hooks.Logger(100)); hooks[{i}] is a {type(hook).__name__}"
            )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"train: generator must be a torch.Generator or None (got {type(generator).__name__})"
        )
    if isinstance(data, Tasks):
        raise TypeError(
            "train: data must be a sampler, data(generator) -> Tasks, or an iterable of batches; "
            "one Tasks is one meta-batch: pass a sampler that returns it, or [tasks] * n (got "
            "Tasks)"
        )
    if callable(data):
        generator = torch.Generator().manual_seed(0) if generator is None else generator
        batches: Iterator[Tasks] = (data(generator) for _ in iter(int, 1))
    elif isinstance(data, Iterable):
        if generator is not None:
            raise ValueError(
                "train: generator is for a sampler, data(generator); an iterable of batches "
                "(a DataLoader) draws with its own (got both)"
            )
        batches = (_as_tasks(b) for b in data)
    else:
        raise TypeError(
            "train: data must be a sampler, data(generator) -> Tasks, or an iterable of batches "
            f"(got {type(data).__name__})"
        )
    run = Run(state, until, generator)
    return run, batches


def _as_tasks(batch: Any) -> Tasks:
    if isinstance(batch, Tasks):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return Tasks(*batch)
    raise TypeError(
        f"train: each batch of data must be a metafunc.Tasks or a pair (support, query) (got "
        f"{type(batch).__name__}{f' of {len(batch)}' if isinstance(batch, (tuple, list)) else ''})"
    )


def _any_rank(stop: list[int]) -> bool:
    return _dist.any_rank(bool(stop)) if _dist.active() else bool(stop)


def _interrupt(run: Run, signals: list[int]) -> None:
    signum = signals[0] if signals else signal.SIGTERM
    saved = f", checkpoint written to {run.checkpoint[0]}" if run.checkpoint else ""
    logger.warning(  # every rank: the signal may have reached any of them
        "stopped by %s after step %d%s", signal.Signals(signum).name, run.done, saved
    )
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


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
