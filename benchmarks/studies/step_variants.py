"""What each change to the compiled step buys: variants of one step timed side by side.

    python -m benchmarks.studies.step_variants    # prints a table, writes results/step-variants-cpu.json

Every variant is the same MAML step (``mf.make_step`` on the benchmark's workload and batch,
Adam) compiled a different way (the default: C++ wrapper, Dynamo's identity checks of torch's
and metafunc's own objects skipped; then each change taken back in turn), in **one** process (one framework: torch), timed in blocks
interleaved round-robin so that the machine's load falls on all of them alike. Each block
records the thread's CPU time per step (``time.thread_time``: one thread, so the step's own
work, not the time spent waiting for a core on a shared machine) and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import impls_torch
from ..data import make_batch, make_net
from ..workloads import WORKLOADS, Workload, sweep_point

RESULTS = Path(__file__).resolve().parents[1] / "results"

# name -> make_step options (None: the hand-written torch.func step of impls_torch)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "metafunc (the default)": {},
    "every guard evaluated": {"guard_filter_fn": lambda entries: [True] * len(entries)},
    "every guard, Python wrapper": {
        "guard_filter_fn": lambda entries: [True] * len(entries),
        "cpp_wrapper": False,
    },
    "tensor guards only (unsafe)": {"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe},
    "torch.func by hand": None,
}


def measure(w: Workload, blocks: int, steps: int) -> dict[str, Any]:
    runs: dict[str, Callable[[], None]] = {}
    for name, options in VARIANTS.items():
        cpu = torch.device("cpu")
        if options is None:
            runs[name] = impls_torch.torch_func_compiled(w, make_net(w), make_batch(w), cpu).step
        else:
            runs[name] = impls_torch.metafunc_step(
                w, make_net(w), make_batch(w), cpu, compile=True, options=options
            ).step
        for _ in range(10):  # compile, then settle
            runs[name]()
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    load = [os.getloadavg()[0]]
    for _ in range(blocks):
        for name, run in runs.items():
            c, t = time.thread_time(), time.perf_counter()
            for _ in range(steps):
                run()
            cpu[name].append(1e3 * (time.thread_time() - c) / steps)
            wall[name].append(1e3 * (time.perf_counter() - t) / steps)
        load.append(os.getloadavg()[0])
    return {
        "workload": w.name,
        "describe": w.describe(),
        "load": load,
        "variants": {
            k: {"cpu_ms": cpu[k], "wall_ms": wall[k], "cpu_ms_median": statistics.median(cpu[k])}
            for k in runs
        },
    }


def table(results: list[dict[str, Any]]) -> str:
    names = list(VARIANTS)
    head = "| CPU ms per step, median of the blocks | " + " | ".join(names) + " |"
    lines = [head, "|---" * (len(names) + 1) + "|"]
    for r in results:
        v = r["variants"]
        cells = [f"{v[n]['cpu_ms_median']:.3g}" for n in names]
        lines.append(f"| {r['workload']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.step_variants", description=__doc__
    )
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--steps", type=int, default=30, help="steps per block")
    p.add_argument("--out", type=Path, default=RESULTS / "step-variants-cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    workloads = [WORKLOADS["sine-5step"], WORKLOADS["sine-1step"], sweep_point("tasks", 1)]
    results = []
    for w in workloads:
        results.append(measure(w, args.blocks, args.steps))
        print(f"{w.name}: done", flush=True)
    out = {
        "command": "python -m benchmarks.studies.step_variants",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "threads": 1,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(table(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
