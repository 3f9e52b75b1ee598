"""Time to N steps from a cold start, three ways: the eager step, the compiled step, and the
step compiled in the background (``make_step(..., compile="background")``: eager steps while a
forked process compiles, then the compiled step it saved).

Each way runs in a fresh process with an empty compile cache of its own
(``TORCHINDUCTOR_CACHE_DIR``), one thread, on the bench's sine step (1-40-40-1 MLP, 25 tasks,
MAML with ``inner_steps`` second-order inner steps, Adam) or with ``--workload fewshot`` on
the step of ``metafunc train --task fewshot`` at its defaults (MAML on the 4-block conv net of
32 filters, 5-way 1-shot, 8 new tasks of synthetic glyphs a step, Adam behind
``apply_if_finite``, as the command builds them). Times count from the start of the
process, imports included, as a user waits for them. The background way uses a second core
for its compile (the others compile on the first, with the C++ compiler in a subprocess).

    OMP_NUM_THREADS=1 python -m benchmarks.studies.background [--workload sine] [--inner-steps 5]
        [--marks 1 100 1000 3000 10000] [--out benchmarks/results/background-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from . import child, graphs, write

START = time.perf_counter()
WAYS = {"eager": False, "compiled": True, "background": "background"}


def run_child(way: str, workload: str, inner_steps: int, marks: list[int]) -> dict[str, Any]:
    import torch

    import metafunc as mf

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    if workload == "sine":
        fn, params = mf.pure(mf.models.mlp([1, 40, 40, 1], generator=g))
        fixed = mf.tasks.sinusoid(g, tasks=25, shots=10, queries=10)
        sample: Any = lambda: fixed  # noqa: E731
        learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.01, inner_steps=inner_steps)
        opt = mf.optim.adam(1e-3)
    else:  # metafunc train --task fewshot at its defaults: MAML on the conv net, new tasks
        from metafunc.experiments.fewshot import FewshotConfig, datasets

        config = FewshotConfig()
        train_set = datasets(config)[0]
        net = mf.models.conv_net(
            config.ways,
            channels=config.channels,
            image_size=train_set.images.shape[-1],
            generator=g,
        )
        fn, params = mf.pure(net)
        shape = {"ways": config.ways, "shots": config.shots, "queries": config.queries}
        sample = lambda: mf.tasks.fewshot(  # noqa: E731
            g, dataset=train_set, tasks=config.meta_batch, **shape
        )
        # the learner and optimizer fewshot.run builds for MAML
        loss = mf.supervised(fn, mf.losses.cross_entropy)
        maml = mf.maml(loss, inner_lr=config.inner_lr, inner_steps=inner_steps)
        learner = mf.distributed.data_parallel(maml)
        opt = mf.optim.apply_if_finite(mf.optim.adam(config.outer_lr))
    step = mf.make_step(learner, opt, compile=WAYS[way])
    state = mf.init_state(learner, opt, params)
    times, first_loaded = {}, None
    for i in range(1, max(marks) + 1):
        state, metrics = step(state, sample())
        if first_loaded is None and graphs()[0]:
            first_loaded = i
        if i in marks:
            metrics.loss.item()
            times[str(i)] = time.perf_counter() - START
    return {
        "time_to_n_s": times,
        "first_loaded_step": first_loaded,  # background: the first compiled step
        "loss": metrics.loss.item(),
    }


def flags(args: argparse.Namespace, marks: list[int]) -> list[str]:
    workload = ["--workload", args.workload] if args.workload != "sine" else []
    return [*workload, "--inner-steps", str(args.inner_steps), "--marks", *map(str, marks)]


def table(runs: dict[str, Any], marks: list[int]) -> str:
    head = " | ".join(f"N = {n:,}" for n in marks)
    lines = [f"| time to N steps, s | {head} |", "|---" * (len(marks) + 1) + "|"]
    for way, run in runs.items():
        cells = " | ".join(f"{run['time_to_n_s'][str(n)]:.1f}" for n in marks)
        lines.append(f"| {way} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.background",
        description="time to N steps from a cold start: eager, compiled, compiled in the background",
    )
    cli.add_argument("--workload", choices=["sine", "fewshot"], default="sine")
    cli.add_argument("--inner-steps", type=int, default=5)
    cli.add_argument("--marks", type=int, nargs="+", default=[1, 100, 1000, 3000, 10000])
    cli.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    cli.add_argument("--out", type=Path, help="also write the results to this JSON file")
    cli.add_argument("--child", help=argparse.SUPPRESS)
    args = cli.parse_args(argv)
    marks = sorted(set(args.marks))
    if args.child:  # one way in this process: its JSON on stdout
        print(json.dumps(run_child(args.child, args.workload, args.inner_steps, marks)))
        return 0
    runs: dict[str, Any] = {"load_start": os.getloadavg()[0]}
    ways: dict[str, Any] = {}
    for way in args.ways:
        with tempfile.TemporaryDirectory(prefix="metafunc-background-") as cache:
            ways[way] = child("background", ["--child", way, *flags(args, marks)], cache)
        print(f"{way}: {ways[way]}", flush=True)
    runs["load_end"] = os.getloadavg()[0]
    print(table(ways, marks))
    if args.out:
        argv_out = [*flags(args, marks), "--out", str(args.out)]
        write(args.out, "background", argv_out, {**runs, "runs": ways})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
