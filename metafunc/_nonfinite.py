"""The one policy for steps whose numbers are not finite: the step's verdict, what the
training loop does with it, and what it says."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, NamedTuple

import torch

from . import _tree
from .optim import last_finite

logger = logging.getLogger("metafunc")


def verdict(
    leaf_ok: torch.Tensor, loss_ok: torch.Tensor, meta: Any, opt_state: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(finite, skipped)`` of a step (see :class:`metafunc.Metrics`), as tensors.

    With an optimizer wrapped in :func:`metafunc.optim.apply_if_finite` the guard judged the
    update (``finite``) and kept the state when it refused it; a guard that lets a non-finite
    update through after ``max_consecutive_errors`` leaves a non-finite state, which is not a
    skip. Without a guard the gradient and the new state must be finite themselves."""
    state_ok = _tree.all_finite((meta, opt_state), foreach=True)
    guard = last_finite(opt_state)
    if guard is None:
        return leaf_ok.all() & state_ok & loss_ok, torch.zeros_like(loss_ok)
    finite = guard & loss_ok
    return finite, ~finite & state_ok


class _Counts(NamedTuple):
    first_bad: torch.Tensor  # the step of the first non-finite step not skipped (-1: none)
    streak: torch.Tensor  # skipped steps in a row
    skipped: torch.Tensor  # skipped steps since the last check


class Policy:
    """What :func:`metafunc.train` does with a step that is not finite.

    ``"raise"`` reads each step's ``finite`` flag (one host sync per step) and raises
    ``FloatingPointError`` naming the step and what was not finite. ``"skip"`` (which needs a
    guarded step) never syncs per step: it counts on the device and checks, every
    ``CHECK_EVERY`` steps, before every checkpoint and at the end, that no step wrote a
    non-finite state (a guard that let one through after ``max_consecutive_errors``) and that
    the run still trains (fewer than ``CHECK_EVERY`` skips in a row)."""

    CHECK_EVERY = 100

    def __init__(self, mode: str, guarded: bool) -> None:
        if mode not in ("raise", "skip"):
            raise ValueError(f"train: on_nonfinite must be 'raise' or 'skip' (got {mode!r})")
        if mode == "skip" and not guarded:
            raise ValueError(
                "train: on_nonfinite='skip' needs an optimizer wrapped in "
                "mf.optim.apply_if_finite, which keeps the state when a step is not finite; "
                "without it such a step writes NaN or inf into the parameters"
            )
        self.mode, self.guarded = mode, guarded
        self.counts: _Counts | None = None  # on the device, from the first step of "skip"
        self.checked = 0  # the step of the last check

    def after_step(self, run: Any) -> None:
        m = run.metrics
        if self.mode == "raise":
            if not bool(m.finite):
                raise FloatingPointError(message(run.done, run, self.guarded))
            return
        bad = ~m.finite & ~m.skipped
        step = torch.full_like(run.state.step, run.done)
        c = self.counts
        if c is None:
            zero = torch.zeros_like(step)
            c, self.checked = _Counts(zero - 1, zero, zero), run.start_step
        self.counts = _Counts(
            torch.where(bad & (c.first_bad < 0), step, c.first_bad),
            torch.where(m.skipped, c.streak + 1, 0),
            c.skipped + m.skipped,
        )
        if run.done % self.CHECK_EVERY == 0:
            self.verify(run)

    def verify(self, run: Any) -> None:
        """Raise if a step wrote a non-finite state, or the run only skips (mode "skip")."""
        c = self.counts
        if c is None or self.checked == run.done:
            return
        skipped, steps = int(c.skipped), run.done - self.checked
        self.counts, self.checked = c._replace(skipped=torch.zeros_like(c.skipped)), run.done
        if skipped:
            logger.warning(
                "step %d: skipped %d non-finite step(s) of the last %d", run.done, skipped, steps
            )
        first = int(c.first_bad)
        if first >= 0:
            raise FloatingPointError(
                f"train: step {first} was not finite and the optimizer's guard let it through "
                "(apply_if_finite's max_consecutive_errors), so the parameters or optimizer "
                f"state are no longer finite{_last_checkpoint(run)}. Lower the learning rates or "
                "check the data; max_consecutive_errors=None never lets one through."
            )
        streak = int(c.streak)
        if streak >= self.CHECK_EVERY:
            raise FloatingPointError(
                f"train: the last {streak} steps (to step {run.done}) were all skipped as not "
                f"finite, so the run no longer trains{_last_checkpoint(run)}. "
                + _advice(run.metrics)
            )


def message(done: int, run: Any, guarded: bool) -> str:
    """Why step ``done`` is not finite, what became of the state, and what to do."""
    metrics = run.metrics
    flags = metrics.finite_leaves.tolist()
    what = _what(flags, metrics.loss.item(), run.state.meta)
    if what is None:
        what = "the gradient is finite but the update is not (is a learning rate too large?)"
    if guarded:
        kept = "The parameters and optimizer state were left as before that step"
    else:
        kept = (
            "The optimizer applied it (it is not wrapped in mf.optim.apply_if_finite), so the "
            "parameters or optimizer state are no longer finite"
        )
    skip = (
        "pass on_nonfinite='skip' to skip such steps"
        if guarded
        else "wrap the optimizer in mf.optim.apply_if_finite and pass on_nonfinite='skip' to "
        "skip such steps"
    )
    return (
        f"train: step {done} is not finite: {what}. {kept}{_last_checkpoint(run)}. "
        f"{_advice(metrics)} To go on past such steps, {skip}."
    )


def warn(where: str, meta: Any, grads: Any, loss: torch.Tensor) -> None:
    """Warn (``RuntimeWarning``) when a meta-gradient or its loss, computed eagerly outside a
    step, is not finite, naming what and the likely cause (one host sync)."""
    leaves = _tree.finite_leaves(grads, foreach=True)
    *flags, loss_ok = torch.cat(
        [leaves, torch.isfinite(loss).reshape(1).to(leaves.device)]
    ).tolist()
    if loss_ok and all(flags):
        return
    what = _what(flags, loss.item(), meta)
    warnings.warn(
        f"{where}: {what}. {_advice_for(loss_ok, all(flags))}", RuntimeWarning, stacklevel=3
    )


def _what(flags: list[bool], loss: float, meta: Any) -> str | None:
    """What is not finite: the first meta-gradient leaf by name, else the loss (``None``: both
    are finite); ``flags``, one per leaf of ``meta``, as ``_tree.finite_leaves`` gives them."""
    if not all(flags):
        name = _tree.named_leaves(meta, "meta")[flags.index(False)][0]
        return f"the meta-gradient of {name} is the first that is not finite"
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    return None


def _advice(metrics: Any) -> str:
    return _advice_for(bool(torch.isfinite(metrics.loss)), bool(metrics.finite_leaves.all()))


def _advice_for(loss_ok: bool, grads_ok: bool) -> str:
    if loss_ok and not grads_ok:
        return (
            "A finite loss with a non-finite meta-gradient comes from the backward pass: second "
            "order through an inner Adam or AdamW needs eps_root > 0 (e.g. "
            "mf.optim.adam(lr, eps_root=1e-16)) where a gradient is exactly 0 (a dead ReLU "
            "unit, a class absent from the support set); sqrt, abs or a norm at 0 in the model "
            "or loss do the same. Otherwise lower the learning rates or check the data."
        )
    return "Lower the learning rates or check the data."


def _last_checkpoint(run: Any) -> str:
    if run.checkpoint is None:
        return ""
    path, step = run.checkpoint
    return f"; the last checkpoint, {str(path)!r}, is at step {step}"
