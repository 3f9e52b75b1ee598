"""The sine-regression table of Meta-SGD (Li et al., 2017, Table 1), with FO-MAML and Reptile rows.

The MAML paper's sinusoid (amplitude U[0.1, 5], phase U[0, π], x ~ U[−5, 5]), a 1-40-40-1 ReLU
network, MSE, meta-batch 25, one inner step (Reptile: several), K = 5, 10 and 20 shots; each
trained model is scored on many new tasks (adapt on K shots, MSE on fresh points) with a 95%
confidence interval.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import metafunc as mf
from metafunc.evaluation import mean_ci95

from .algorithms import build_learner
from .scores import sinusoid_error

# Li et al. 2017, Table 1: mean MSE over new tasks after one adaptation step.
PAPER = {"maml": {5: 1.13, 10: 0.77, 20: 0.48}, "meta-sgd": {5: 0.90, 10: 0.53, 20: 0.31}}
ALGORITHMS = ("maml", "meta-sgd", "fomaml", "reptile")


@dataclass(frozen=True)
class TableConfig:
    """The table's cells and settings (the ``metafunc table`` options)."""

    algos: tuple[str, ...] = ALGORITHMS
    shots: tuple[int, ...] = (5, 10, 20)
    steps: int = 70_000  # the MAML paper's budget
    meta_batch: int = 25
    inner_lr: float = 0.01
    outer_lr: float = 1e-3
    reptile_steps: int = 5  # one Reptile step is plain multi-task training: it needs a few
    eval_tasks: int = 4000
    eval_points: int = 100
    seed: int = 0
    compile: bool = True
    progress: bool = True


def run_cell(config: TableConfig, algo: str, shots: int) -> dict[str, Any]:
    """Meta-train one (algorithm, shots) cell and score it; returns its row."""
    init = torch.Generator().manual_seed(config.seed)  # PyTorch's default nn.Linear init
    fn, params = mf.pure(mf.models.mlp([1, 40, 40, 1], generator=init))
    loss = mf.supervised(fn, mf.losses.mse)
    inner_steps = config.reptile_steps if algo == "reptile" else 1
    learner = build_learner(algo, loss, head="4", inner_lr=config.inner_lr, inner_steps=inner_steps)
    opt = mf.optim.apply_if_finite(mf.optim.adam(config.outer_lr))
    step = mf.make_step(learner, opt, compile=config.compile)
    sampler = functools.partial(
        mf.tasks.sinusoid, tasks=config.meta_batch, shots=shots, queries=shots
    )
    start = time.perf_counter()
    state = mf.train(
        step,
        mf.init_state(learner, opt, params),
        sampler,
        steps=config.steps,
        generator=torch.Generator().manual_seed(config.seed),
        hooks=[mf.hooks.Logger(max(config.steps // 10, 1))],
        progress=config.progress,
    )
    train_s = time.perf_counter() - start
    errors = sinusoid_error(
        learner,
        fn,
        state.meta,
        torch.Generator().manual_seed(config.seed + 1),
        tasks=config.eval_tasks,
        shots=shots,
        points=config.eval_points,
    )
    mean, half = mean_ci95(errors)
    return {
        "algo": algo,
        "shots": shots,
        "mse": mean,
        "ci95": half,
        "paper": PAPER.get(algo, {}).get(shots),
        "inner_steps": inner_steps,
        "train_s": train_s,
    }


def run(
    config: TableConfig,
    *,
    done: Sequence[dict[str, Any]] = (),
    on_cell: Callable[[list[dict[str, Any]]], Any] | None = None,
) -> list[dict[str, Any]]:
    """Every cell of ``config`` not already in ``done`` (rows of an earlier run with the same
    settings), one after another; ``on_cell(rows)`` after each, so the caller can save them."""
    rows = list(done)
    for algo in config.algos:
        for shots in config.shots:
            if not any(r["algo"] == algo and r["shots"] == shots for r in rows):
                rows.append(run_cell(config, algo, shots))
                if on_cell is not None:
                    on_cell(rows)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per algorithm, one column per shot count, paper beside."""
    shots = sorted({r["shots"] for r in rows})
    cell = {(r["algo"], r["shots"]): r for r in rows}
    lines = [
        "| algorithm | " + " | ".join(f"{k}-shot (ours) | {k}-shot (paper)" for k in shots) + " |",
        "|---|" + "---|---|" * len(shots),
    ]
    for algo in dict.fromkeys(r["algo"] for r in rows):
        parts = []
        for k in shots:
            r = cell.get((algo, k))
            ours = f"{r['mse']:.2f} ± {r['ci95']:.2f}" if r else "–"
            paper = PAPER.get(algo, {}).get(k)
            parts.append(f"{ours} | {f'{paper:.2f}' if paper else '–'}")
        lines.append(f"| {algo} | " + " | ".join(parts) + " |")
    return "\n".join(lines)
