"""Reproduce the sine-regression table of Meta-SGD (Li et al., 2017, Table 1).

The MAML paper's sinusoid (amplitude U[0.1, 5], phase U[0, π], x ~ U[−5, 5]), a 1-40-40-1 ReLU
network, MSE, meta-batch 25, one inner step, K = 5, 10 and 20 shots; each trained model is
scored on many new tasks (adapt on K shots, MSE on fresh points) with a 95% confidence
interval. The paper reports MAML and Meta-SGD; FO-MAML and Reptile rows are added here.

Run it as ``metafunc table`` or ``python -m metafunc.reproduce`` (same options).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import metafunc as mf

from .evaluation import mean_ci95, sinusoid_error

# Li et al. 2017, Table 1: mean MSE over new tasks after one adaptation step.
PAPER = {"maml": {5: 1.13, 10: 0.77, 20: 0.48}, "meta-sgd": {5: 0.90, 10: 0.53, 20: 0.31}}
ALGORITHMS = ("maml", "meta-sgd", "fomaml", "reptile")


def learner_for(algo: str, loss: Any, *, inner_lr: float, reptile_steps: int) -> mf.Learner:
    """The learner of one table row; every row but Reptile adapts with one SGD step."""
    if algo == "reptile":  # one Reptile step is plain multi-task training: it needs a few
        return mf.reptile(loss, inner_lr=inner_lr, inner_steps=reptile_steps)
    return {
        "maml": lambda: mf.maml(loss, inner_lr=inner_lr, inner_steps=1),
        "fomaml": lambda: mf.fomaml(loss, inner_lr=inner_lr, inner_steps=1),
        "meta-sgd": lambda: mf.meta_sgd(loss, inner_lr=inner_lr, inner_steps=1),
    }[algo]()


def run_one(
    algo: str,
    shots: int,
    *,
    steps: int,
    meta_batch: int,
    inner_lr: float,
    outer_lr: float,
    reptile_steps: int,
    eval_tasks: int,
    eval_points: int,
    seed: int,
    compile: bool,
    progress: bool,
) -> dict[str, Any]:
    """Meta-train one (algorithm, shots) cell and score it; returns the JSON row."""
    torch.manual_seed(seed)  # PyTorch's default nn.Linear initialisation, as the papers use
    fn, params = mf.functionalize(mf.models.mlp([1, 40, 40, 1]))
    loss = mf.supervised(fn, mf.losses.mse)
    learner = learner_for(algo, loss, inner_lr=inner_lr, reptile_steps=reptile_steps)
    opt = mf.optim.adam(outer_lr)
    step = mf.make_step(learner, opt, compile=compile)
    sampler = functools.partial(mf.tasks.sinusoid, tasks=meta_batch, shots=shots, queries=shots)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    state = mf.train(
        step,
        mf.init_state(learner, opt, params),
        sampler,
        steps=steps,
        generator=g,
        log_every=max(steps // 10, 1),
        progress=progress,
    )
    train_s = time.perf_counter() - start
    errors = sinusoid_error(
        learner,
        fn,
        state.meta,
        torch.Generator().manual_seed(seed + 1),
        tasks=eval_tasks,
        shots=shots,
        points=eval_points,
    )
    mean, half = mean_ci95(errors)
    return {
        "algo": algo,
        "shots": shots,
        "mse": mean,
        "ci95": half,
        "paper": PAPER.get(algo, {}).get(shots),
        "inner_steps": reptile_steps if algo == "reptile" else 1,
        "train_s": train_s,
    }


def table(args: argparse.Namespace) -> int:
    """Train and score every (algorithm, shots) cell of ``args`` (``metafunc table``'s options)."""
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    rows = finished(args.out, config)
    for algo in args.algos:
        for shots in args.shots:
            if any(r["algo"] == algo and r["shots"] == shots for r in rows):
                print(f"{algo}, {shots}-shot: done in {args.out}, kept", flush=True)
                continue
            print(f"{algo}, {shots}-shot: {args.steps} outer steps", flush=True)
            rows.append(
                run_one(
                    algo,
                    shots,
                    steps=args.steps,
                    meta_batch=args.meta_batch,
                    inner_lr=args.inner_lr,
                    outer_lr=args.outer_lr,
                    reptile_steps=args.reptile_steps,
                    eval_tasks=args.eval_tasks,
                    eval_points=args.eval_points,
                    seed=args.seed,
                    compile=not args.no_compile,
                    progress=not args.no_progress,
                )
            )
            r = rows[-1]
            print(f"  MSE {r['mse']:.3f} +- {r['ci95']:.3f} ({r['train_s']:.0f} s)", flush=True)
            # Written after every cell, so an interrupted run keeps what it finished.
            write(args.out, config, rows)
    print(format_table(rows))
    print(f"wrote {args.out}")
    return 0


def finished(path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows an earlier run with the same training and evaluation settings already wrote
    to ``path`` (so an interrupted table resumes where it stopped); none otherwise."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    ignored = {"algos", "shots", "no_progress", "command"}
    same = all(earlier["config"].get(k) == v for k, v in config.items() if k not in ignored)
    return earlier["rows"] if same else []


def write(path: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "config": config,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "rows": rows,
    }
    path.write_text(json.dumps(record, indent=2))


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


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["table", *sys.argv[1:]]))
