"""Evaluation after adaptation: adapt on new tasks' support sets, score their query sets.

:func:`evaluate` scores a batch of tasks with the learner's own loss (before and after adapting)
and, given the model's ``predict``, accuracy or squared error, each per task with a mean and a
95% interval; the helpers below draw the tasks of the project's experiments and score them
with it (or on a dense grid, for the sine figures).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any, NamedTuple

import torch
from torch.func import vmap

from . import _checks, _tree
from ._learner import Learner
from ._types import Tasks
from .tasks import ImageClasses, daml_sine, fewshot, sine, sinusoid

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
) -> Evaluation:
    """Adapt on each task's support set and score its query set.

    Every score is per task, with the mean over the tasks and a 95% interval for it. The loss
    is the learner's own (the one it adapts and meta-learns with), after adapting and at
    ``learner.params(meta)``. With ``predict(params, x)``, the query set must be a pair
    ``(x, y)``: integer labels ``y`` ``(tasks, examples)`` give the accuracy of the arg-max of
    ``predict``'s logits ``(examples, classes)``; floating-point targets give the mean squared
    error of ``predict(params, x)`` against ``y`` (same shape). All query examples of a task
    are predicted together (a network with batch normalisation uses their statistics). Nothing
    is differentiated: the scores are data.

    Args:
        learner: any :class:`metafunc.Learner`, e.g. ``mf.maml(loss, inner_lr=0.01)``.
        meta: its meta-parameters, e.g. ``state.meta``.
        tasks: new tasks, ``Tasks(support, query)`` with a leading task dimension.
        predict: ``predict(params, x) -> logits or prediction``, the model (e.g. ``fn`` from
            :func:`metafunc.pure`), for accuracy or squared error.

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
    if not isinstance(learner, Learner):
        raise TypeError(
            f"{where}: learner must be a metafunc.Learner, e.g. mf.maml(loss) (got "
            f"{type(learner).__name__})"
        )
    if not isinstance(tasks, Tasks):
        raise TypeError(
            f"{where}: tasks must be a metafunc.Tasks(support, query) (got {type(tasks).__name__})"
        )
    if predict is not None:
        _checks.function(where, "predict", predict, "predict(params, x)")
        query = tasks.query
        if not (isinstance(query, tuple | list) and len(query) == 2):
            raise ValueError(
                f"{where}: with predict, tasks.query must be a pair (x, y) of inputs and "
                f"targets (got {type(query).__name__}"
                f"{f' of {len(query)}' if isinstance(query, tuple | list) else ''})"
            )
    with torch.no_grad():
        adapted, after, before = learner.per_task(meta, tasks)
        accuracy = mse = None
        if predict is not None:
            x, y = tasks.query
            out = vmap(predict)(adapted, x)
            if y.is_floating_point():
                if out.shape != y.shape:
                    raise ValueError(
                        f"{where}: predict(params, x) must have the targets' shape per task, "
                        f"{tuple(y.shape[1:])} (got {tuple(out.shape[1:])})"
                    )
                mse = score(((out - y) ** 2).flatten(1).mean(dim=1))
            elif y.dtype in _INTEGER:
                if out.shape[:-1] != y.shape:
                    raise ValueError(
                        f"{where}: predict(params, x) must give logits (examples, classes) per "
                        f"task for labels {tuple(y.shape[1:])} (got {tuple(out.shape[1:])})"
                    )
                hits = (out.argmax(dim=-1) == y).flatten(1)
                accuracy = score(hits.double().mean(dim=1))
            else:
                raise TypeError(
                    f"{where}: tasks.query[1] must hold integer labels or floating-point "
                    f"targets (got {y.dtype})"
                )
    return Evaluation(score(after), score(before), accuracy, mse)


def score(values: torch.Tensor) -> Score:
    """A :class:`Score` of per-task ``values``: they, their mean and its 95% half-width."""
    return Score(values, *mean_ci95(values))


class SineEval(NamedTuple):
    """Per-draw results of :func:`sine_grid_error` for one phase."""

    mse: torch.Tensor  # (draws,) mean squared error over the grid, per draw
    grid: torch.Tensor  # (points, 1)
    truth: torch.Tensor  # (points, 1)
    pred: torch.Tensor  # (draws, points, 1) after adaptation
    support: Any  # (x, y), each (draws, shots, 1); DAML: unlabeled x (draws, sources, 1)


def grid_error(
    predict: Callable[..., torch.Tensor],
    adapted: Any,
    *,
    phase: float,
    support: Any = None,
    step: float = 0.01,
) -> SineEval:
    """Score each of a batch of parameters, ``adapted`` (leading task dimension, e.g. from
    ``learner.adapt``), as ``predict(params, x)`` by its MSE against ``sin(x + phase)`` on the
    grid ``arange(−2π, 2π, step)``; ``support`` is recorded with the scores (for figures)."""
    ref = _tree.leaves(adapted)[0]
    grid = torch.arange(-2 * math.pi, 2 * math.pi, step, dtype=ref.dtype, device=ref.device)[
        :, None
    ]
    truth = torch.sin(grid + phase)
    with torch.no_grad():
        pred = vmap(predict, in_dims=(0, None))(adapted, grid)
    mse = ((pred - truth) ** 2).mean(dim=(1, 2))
    return SineEval(mse, grid, truth, pred, support)


def sine_grid_error(
    learner: Learner,
    fn: Callable[..., torch.Tensor],
    meta: Any,
    generator: torch.Generator,
    *,
    phase: float,
    draws: int = 1000,
    shots: int = 4,
    step: float = 0.01,
) -> SineEval:
    """Adapt on ``shots`` fresh points of the blog's sine with a fixed ``phase``, ``draws``
    times; score each adapted net by its MSE on the grid ``arange(−2π, 2π, step)``."""
    draws = _checks.integer("sine_grid_error", "draws", draws, minimum=1)
    ref = _tree.leaves(meta)[0]
    tasks = sine(
        generator,
        tasks=draws,
        shots=shots,
        queries=1,
        phase=phase,
        dtype=ref.dtype,
        device=ref.device,
    )
    return _adapted_grid_error(learner, fn, meta, tasks.support, phase=phase, step=step)


def daml_grid_error(
    learner: Learner,
    predict: Callable[..., torch.Tensor],
    meta: Any,
    generator: torch.Generator,
    *,
    phase: float,
    draws: int = 1000,
    sources: int = 1,
    step: float = 0.01,
) -> SineEval:
    """Adapt on ``sources`` fresh unlabeled source inputs of the DAML sine with a fixed
    ``phase``, ``draws`` times; score on the target grid as :func:`sine_grid_error` does."""
    draws = _checks.integer("daml_grid_error", "draws", draws, minimum=1)
    ref = _tree.leaves(meta)[0]
    tasks = daml_sine(
        generator,
        tasks=draws,
        sources=sources,
        queries=1,
        phase=phase,
        dtype=ref.dtype,
        device=ref.device,
    )
    return _adapted_grid_error(learner, predict, meta, tasks.support, phase=phase, step=step)


def _adapted_grid_error(
    learner: Learner, predict: Callable[..., torch.Tensor], meta: Any, support: Any, **grid: Any
) -> SineEval:
    """Adapt on each of a batch of ``support`` sets, score on the grid (:func:`grid_error`)."""
    with torch.no_grad():
        adapted = learner.adapt(meta, support)
    return grid_error(predict, adapted, support=support, **grid)


def sinusoid_error(
    learner: Learner,
    predict: Callable[..., torch.Tensor],
    meta: Any,
    generator: torch.Generator,
    *,
    tasks: int = 1000,
    shots: int = 10,
    points: int = 100,
) -> torch.Tensor:
    """Per-task MSE on ``points`` fresh inputs of new MAML-paper sinusoids, after adapting on
    ``shots`` examples of each; a ``(tasks,)`` tensor (see :func:`mean_ci95`)."""
    tasks = _checks.integer("sinusoid_error", "tasks", tasks, minimum=1)
    ref = _tree.leaves(meta)[0]
    batch = sinusoid(
        generator, tasks=tasks, shots=shots, queries=points, dtype=ref.dtype, device=ref.device
    )
    mse = evaluate(learner, meta, batch, predict=predict).mse
    assert mse is not None  # the sinusoid's targets are floating point
    return mse.values


def fewshot_accuracy(
    learner: Learner,
    predict: Callable[..., torch.Tensor],
    meta: Any,
    dataset: ImageClasses,
    generator: torch.Generator,
    *,
    tasks: int = 600,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    batch: int = 50,
) -> torch.Tensor:
    """Per-task query accuracy on ``tasks`` new N-way K-shot tasks of ``dataset``, after
    adapting on each task's support; a ``(tasks,)`` tensor (see :func:`mean_ci95`).

    Tasks are drawn and scored ``batch`` at a time. The query images of a task are classified
    together, so a network with batch normalisation uses their statistics, as in the MAML
    paper's evaluation.
    """
    where = "fewshot_accuracy"
    tasks = _checks.integer(where, "tasks", tasks, minimum=1)
    batch = _checks.integer(where, "batch", batch, minimum=1)
    ref = _tree.leaves(meta)[0]
    scores = []
    for start in range(0, tasks, batch):
        draw = fewshot(
            generator,
            dataset,
            tasks=min(batch, tasks - start),
            ways=ways,
            shots=shots,
            queries=queries,
            dtype=ref.dtype,
            device=ref.device,
        )
        accuracy = evaluate(learner, meta, draw, predict=predict).accuracy
        assert accuracy is not None  # fewshot's labels are int64
        scores.append(accuracy.values.cpu())
    return torch.cat(scores)


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
