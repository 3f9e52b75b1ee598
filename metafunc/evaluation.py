"""Evaluation after adaptation: adapt on fresh tasks, score on a dense grid."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.func import vmap

from . import _checks, _tree
from ._learner import Learner
from .tasks import ImageClasses, daml_sine, fewshot, sine, sinusoid


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
    with torch.no_grad():
        adapted = learner.adapt(meta, tasks.support)
    return grid_error(fn, adapted, phase=phase, support=tasks.support, step=step)


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
    with torch.no_grad():
        adapted = learner.adapt(meta, tasks.support)
    return grid_error(predict, adapted, phase=phase, support=tasks.support, step=step)


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
    (xq, yq) = batch.query
    with torch.no_grad():
        adapted = learner.adapt(meta, batch.support)
        pred = vmap(predict)(adapted, xq)
    return ((pred - yq) ** 2).mean(dim=(1, 2))


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
        xq, yq = draw.query
        with torch.no_grad():
            adapted = learner.adapt(meta, draw.support)
            logits = vmap(predict)(adapted, xq)
        scores.append((logits.argmax(dim=-1) == yq).double().mean(dim=1).cpu())
    return torch.cat(scores)


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    values = values.double()
    n = values.numel()
    half = 1.96 * values.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return values.mean().item(), half
