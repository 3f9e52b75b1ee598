"""Evaluation after adaptation: adapt on new tasks' support sets, score their query sets.

:func:`evaluate` scores a batch of tasks with the learner's own loss (before and after adapting)
and, given the model's ``predict``, accuracy or squared error, each per task with a mean and a
95% interval.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any, NamedTuple

import torch
from torch.func import vmap

from . import _checks, _compile
from ._learner import Learner, check, check_learner
from ._types import Tasks

# The two-sided 95% quantile of the standard normal distribution, 1.959963984540054.
_Z95 = NormalDist().inv_cdf(0.975)
_INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class Score(NamedTuple):
    """One score of a batch of tasks: a value per task, their mean and its 95% interval."""

    values: torch.Tensor  # (tasks,)
    mean: float
    ci95: float  # half-width of the normal-approximation interval; NaN for a single task


class Evaluation(NamedTuple):
    """What :func:`evaluate` returns; each field a :class:`Score` over the tasks."""

    loss: Score  # the learner's query loss after adapting on the support
    loss_before: Score  # the same loss at the meta-learned parameters, not adapted
    accuracy: Score | None  # with predict and integer labels: share of query labels predicted
    mse: Score | None  # with predict and floating-point targets: mean squared error


def evaluate(
    learner: Learner,
    meta: Any,
    tasks: Tasks,
    *,
    predict: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    compile: bool = False,
    backend: Any = "inductor",
) -> Evaluation:
    """Adapt on each task's support set and score its query set.

    Every score is per task, with the mean over the tasks and a 95% interval for it. The loss
    is the learner's own (the one it adapts and meta-learns with), after adapting and at
    ``learner.params(meta)``. With ``predict(params, x)``, the query set must be a pair
    ``(x, y)`` (or padded, ``(x, y, mask)``, scored on the examples ``mask`` keeps): integer
    labels ``y`` ``(tasks, examples)`` give the accuracy of the arg-max of ``predict``'s logits
    ``(examples, classes)``; floating-point targets give the mean squared error of
    ``predict(params, x)`` against ``y`` (same shape). All query examples of a task are
    predicted together (a network with batch normalisation uses their statistics). Nothing is
    differentiated: the scores are data.

    With ``compile=True`` adapting and scoring run as one compiled function, built as the
    training step is (:func:`metafunc.compiled`): compiled on the first call for each shape
    of ``tasks``, reused by later calls with an equal learner and ``predict`` in this process
    and, with Inductor, saved for later processes. It gives the eager scores to rounding.

    Args:
        learner: any :class:`metafunc.Learner`, e.g. ``mf.maml(loss, inner_lr=0.01)``.
        meta: its meta-parameters, e.g. ``state.meta``.
        tasks: new tasks, ``Tasks(support, query)`` with a leading task dimension.
        predict: ``predict(params, x) -> logits or prediction``, the model (e.g. ``fn`` from
            :func:`metafunc.pure`), for accuracy or squared error.
        compile: adapt and score in one function compiled with ``torch.compile``.
        backend: its ``torch.compile`` backend.

    Returns:
        an :class:`Evaluation` of :class:`Score` s (``accuracy`` and ``mse`` are ``None``
        unless ``predict`` gives them).

    Raises:
        TypeError: a learner that is not a ``Learner``, ``predict`` not callable, labels that
            are neither integer nor floating point.
        ValueError: bad tasks (as the learner refuses them), a query set that is not ``(x,
            y)`` or a prediction whose shape does not fit the targets.

    Example:
        >>> new = mf.tasks.sinusoid(torch.Generator().manual_seed(1), tasks=100)
        >>> scores = mf.evaluate(learner, state.meta, new, predict=fn)
        >>> scores.loss.values.shape, scores.accuracy is None  # regression: mse, no accuracy
        (torch.Size([100]), True)
        >>> mean, half_width = scores.mse.mean, scores.mse.ci95
    """
    where = "evaluate"
    check_learner(where, learner)
    _checks.boolean(where, "compile", compile)
    if not isinstance(tasks, Tasks):
        raise TypeError(
            f"{where}: tasks must be a metafunc.Tasks(support, query) (got {type(tasks).__name__})"
        )
    if predict is not None:
        _checks.function(where, "predict", predict, "predict(params, x)")
        query = tasks.query
        if not (isinstance(query, tuple | list) and len(query) in (2, 3)):
            raise ValueError(
                f"{where}: with predict, tasks.query must be a pair (x, y) of inputs and "
                f"targets, or (x, y, mask) for padded tasks (got {type(query).__name__}"
                f"{f' of {len(query)}' if isinstance(query, tuple | list) else ''})"
            )
    check(learner, where, meta, tasks)
    if compile:
        random = learner.batching.randomness != "error"
        run = _compile.function(
            functools.partial(scores, learner, predict),
            where=where,
            backend=backend,
            random=random,
            check=None,  # an eager check would cost as much as evaluating eagerly
        )
    else:
        run = functools.partial(scores, learner, predict)
    with torch.no_grad():
        after, before, accuracy, mse = run(meta, tasks)
    return Evaluation(
        score(after),
        score(before),
        None if accuracy is None else score(accuracy),
        None if mse is None else score(mse),
    )


def scores(
    learner: Learner,
    predict: Callable[[Any, torch.Tensor], torch.Tensor] | None,
    meta: Any,
    tasks: Tasks,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The per-task values of :func:`evaluate` (loss after and before adapting, accuracy, squared
    error), with no checks: one pure function, so that it compiles whole."""
    where = "evaluate"
    adapted, after, before = learner.per_task(meta, tasks)
    if predict is None:
        return after, before, None, None
    x, y, *keep = tasks.query
    out = vmap(predict)(adapted, x)
    if y.is_floating_point():
        if out.shape != y.shape:
            raise ValueError(
                f"{where}: predict(params, x) must have the targets' shape per task, "
                f"{tuple(y.shape[1:])} (got {tuple(out.shape[1:])})"
            )
        return after, before, None, _per_task((out - y) ** 2, keep)
    if y.dtype in _INTEGER:
        if out.shape[:-1] != y.shape:
            raise ValueError(
                f"{where}: predict(params, x) must give logits (examples, classes) per "
                f"task for labels {tuple(y.shape[1:])} (got {tuple(out.shape[1:])})"
            )
        return after, before, _per_task((out.argmax(dim=-1) == y).double(), keep), None
    raise TypeError(
        f"{where}: tasks.query[1] must hold integer labels or floating-point "
        f"targets (got {y.dtype})"
    )


def _per_task(values: torch.Tensor, keep: list[torch.Tensor]) -> torch.Tensor:
    """Per task ``(tasks, examples, ...)`` -> ``(tasks,)``: the mean, or with a mask ``keep``
    ``[(tasks, examples)]`` the mean over the examples it keeps of each example's mean."""
    if not keep:
        return values.flatten(1).mean(dim=1)
    per_example = values.flatten(2).mean(dim=2) if values.ndim > 2 else values
    kept = torch.where(keep[0], per_example, torch.zeros_like(per_example)).sum(dim=1)
    return kept / keep[0].sum(dim=1).clamp_min(1).to(kept.dtype)


def score(values: torch.Tensor) -> Score:
    """A :class:`Score` of per-task ``values``: they, their mean and its 95% half-width."""
    return Score(values, *mean_ci95(values))


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """The mean of ``values`` and the half-width of its normal-approximation 95% confidence
    interval, ``z · s / √n`` with ``s`` the sample standard deviation (``n − 1``) and ``z`` the
    normal quantile 1.95996...; the half-width is NaN for a single value.

    Example:
        >>> mf.evaluation.mean_ci95(torch.tensor([1.0, 2.0, 3.0]))  # 1.96 * 1 / sqrt(3)
        (2.0, 1.13158...)
    """
    values = values.double().flatten()
    n = values.numel()
    half = _Z95 * values.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return values.mean().item(), half
