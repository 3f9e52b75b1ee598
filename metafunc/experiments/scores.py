"""How the experiments score their runs: the blog's dense-grid errors, the MAML paper's
sinusoid error and few-shot accuracy on new tasks, each drawn afresh and scored with
:func:`metafunc.evaluate`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import optree
import torch
from torch.func import vmap

from metafunc import Learner, Tasks, _tree, evaluate
from metafunc.tasks import ImageClasses, daml_sine, fewshot, sine, sinusoid


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
    ref = optree.tree_leaves(adapted)[0]
    grid = torch.arange(-2 * math.pi, 2 * math.pi, step, dtype=ref.dtype, device=ref.device)[
        :, None
    ]
    truth = torch.sin(grid + phase)
    with torch.no_grad():
        pred = vmap(predict, in_dims=(0, None))(adapted, grid)
    mse = ((pred - truth) ** 2).mean(dim=(1, 2))
    return SineEval(mse, grid, truth, pred, support)


def _grid_errors(where: str, sample: Callable[..., Any], adapts_on: str) -> Callable[..., SineEval]:
    def error(
        learner: Learner,
        predict: Callable[..., torch.Tensor],
        meta: Any,
        generator: torch.Generator,
        *,
        phase: float,
        draws: int = 1000,
        step: float = 0.01,
        **size: int,
    ) -> SineEval:
        _count(where, "draws", draws)
        ref = optree.tree_leaves(meta)[0]
        tasks = sample(
            generator,
            tasks=draws,
            queries=1,
            phase=phase,
            dtype=ref.dtype,
            device=ref.device,
            **size,
        )
        with torch.no_grad():
            adapted = learner.adapt(meta, tasks.support)
        return grid_error(predict, adapted, phase=phase, support=tasks.support, step=step)

    error.__name__ = error.__qualname__ = where
    error.__doc__ = (
        f"Adapt on {adapts_on} with a fixed ``phase``, ``draws`` times; score each adapted net "
        "by its MSE on the grid ``arange(−2π, 2π, step)`` (:func:`grid_error`)."
    )
    return error


sine_grid_error = _grid_errors(
    "sine_grid_error", sine, "``shots`` (4) fresh points of the blog's sine"
)
daml_grid_error = _grid_errors(
    "daml_grid_error", daml_sine, "``sources`` (1) fresh unlabeled source inputs of the DAML sine"
)


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
    tasks = _count("sinusoid_error", "tasks", tasks)
    ref = optree.tree_leaves(meta)[0]
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
    compile: bool = False,
) -> torch.Tensor:
    """Per-task query accuracy on ``tasks`` new N-way K-shot tasks of ``dataset``, after
    adapting on each task's support; a ``(tasks,)`` tensor (see :func:`mean_ci95`).

    Tasks are drawn and scored ``batch`` at a time. The query images of a task are classified
    together, so a network with batch normalisation uses their statistics, as in the MAML
    paper's evaluation. ``compile``: score with the compiled evaluation (one graph: a last,
    smaller batch is padded with repeats of its tasks, whose scores are dropped).
    """
    where = "fewshot_accuracy"
    tasks = _count(where, "tasks", tasks)
    batch = _count(where, "batch", batch)
    ref = optree.tree_leaves(meta)[0]
    scores = []
    for start in range(0, tasks, batch):
        n = min(batch, tasks - start)
        draw = fewshot(
            generator,
            dataset,
            tasks=n,
            ways=ways,
            shots=shots,
            queries=queries,
            dtype=ref.dtype,
            device=ref.device,
        )
        if compile and n < batch:
            draw = _padded(draw, batch)
        accuracy = evaluate(learner, meta, draw, predict=predict, compile=compile).accuracy
        assert accuracy is not None  # fewshot's labels are int64
        scores.append(accuracy.values[:n].cpu())
    return torch.cat(scores)


def _padded(tasks: Tasks, size: int) -> Tasks:
    """``tasks`` repeated, in order, up to ``size`` tasks."""
    n = _tree.leaves(tasks.support)[0].shape[0]

    def pad(t: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, torch.arange(size, device=t.device) % n)

    return Tasks(*(_tree.map(pad, part) for part in tasks))


def _count(where: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {name} must be an integer >= 1 (got {value!r})")
    return value
