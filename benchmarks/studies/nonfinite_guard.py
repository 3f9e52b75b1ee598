"""What the non-finite guard costs on the demo's compiled step (blog net 1-32-32-1, 32 tasks,
5 second-order inner steps, L1, outer SGD), in ms per step, all through the public step:

  plain    mf.make_step(learner, mf.optim.sgd(1e-2))
  guarded  mf.make_step(learner, mf.optim.apply_if_finite(mf.optim.sgd(1e-2)))
  +read    the guarded step, reading its finite flag on the host after every step (what
           train(on_nonfinite="raise") does)

Runs are interleaved and repeated because shared machines are noisy; medians are reported,
with the machine's load average at the start and the end. With ``--out`` the numbers are also
written as JSON (the README quotes benchmarks/results/nonfinite-guard-cpu.json).

    python -m benchmarks.studies.nonfinite_guard [threads] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import metafunc as mf

from . import write

REPEATS = 11
STEPS = 200  # per timed run


def measure() -> dict[str, list[float]]:
    """ms per step of each of ``plain``, ``guarded`` and ``+read``, ``REPEATS`` interleaved runs
    of ``STEPS`` steps each (after one compiling call per step)."""
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.blog_sine_net(g))
    learner = mf.maml(mf.supervised(fn, mf.losses.l1), inner_lr=3e-2, inner_steps=5)
    optimizers = {
        "plain": mf.optim.sgd(1e-2),
        "guarded": mf.optim.apply_if_finite(mf.optim.sgd(1e-2)),
    }
    steps = {k: mf.make_step(learner, opt) for k, opt in optimizers.items()}
    states = {k: mf.init_state(learner, opt, params) for k, opt in optimizers.items()}
    batches = [mf.tasks.sine(g, tasks=32) for _ in range(STEPS)]
    for k, step in steps.items():
        step(states[k], batches[0])  # compile

    def run(name: str, read: bool) -> float:
        step, state = steps[name], states[name]
        t0 = time.perf_counter()
        for b in batches:
            state, m = step(state, b)
            if read:
                bool(m.finite)
        return (time.perf_counter() - t0) / len(batches) * 1e3

    plan = {"plain": ("plain", False), "guarded": ("guarded", False), "+read": ("guarded", True)}
    times: dict[str, list[float]] = {k: [] for k in plan}
    for _ in range(REPEATS):
        for k, (name, read) in plan.items():
            times[k].append(run(name, read))
    return times


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.nonfinite_guard",
        description="the non-finite guard's cost per compiled step",
    )
    cli.add_argument("threads", nargs="?", type=int, help="torch threads (default: torch's)")
    cli.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = cli.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    times = measure()
    load_end = os.getloadavg()
    for k, v in times.items():
        print(
            f"{k:7s} median {statistics.median(v):.3f} ms/step  "
            f"(min {min(v):.3f}, {REPEATS} x {STEPS} steps)"
        )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end")
    if args.out is not None:
        record = {
            "what": "ms per compiled step of the demo's MAML step: plain, guarded, "
            "guarded + flag read",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "steps_per_run": STEPS,
            "repeats": REPEATS,
            "load_average": {"start": list(load_start), "end": list(load_end)},
            "median_ms": {k: statistics.median(v) for k, v in times.items()},
            "min_ms": {k: min(v) for k, v in times.items()},
            "runs_ms": times,
        }
        write(args.out, "nonfinite_guard", sys.argv[1:] if argv is None else argv, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
