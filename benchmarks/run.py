"""The benchmark command: ``python -m benchmarks [options]`` (``make bench`` runs the default).

Times one full outer step (meta-gradient and Adam update) of every implementation, each in its
own fresh worker process with the same thread settings, after checking that its meta-gradient
agrees with the blog-style loop's; writes ``<out>/<name>.json``, ``<name>.md`` and a chart per
sweep. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import harness, impls, report
from .workloads import SWEEPS, WORKLOADS, sweep_point

SWEEP_IMPLS = ["blog loop", "metafunc eager", "metafunc compiled", "torch.func compiled", "jax jit"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--workloads", nargs="*", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument(
        "--impls",
        nargs="+",
        default=None,
        help=f"default: all that can run here ({list(impls.IMPLS)})",
    )
    p.add_argument("--rounds", type=int, default=15, help="timed blocks per row (default 15)")
    p.add_argument(
        "--block-s", type=float, default=0.25, help="target seconds per timed block (default 0.25)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=300.0,
        help="seconds of timing rounds per workload; no new round after it once 3 are done "
        "(default 300)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/OpenMP/MKL/XLA threads per worker (default 1: tiny ops, shared cores)",
    )
    p.add_argument("--sweeps", nargs="*", choices=list(SWEEPS), default=list(SWEEPS))
    for name, (_, values) in SWEEPS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}-points",
            type=int,
            nargs="+",
            default=values,
            help=f"sizes of the {name} sweep (default {' '.join(map(str, values))})",
        )
    p.add_argument("--sweep-impls", nargs="+", default=SWEEP_IMPLS)
    p.add_argument("--sweep-rounds", type=int, default=5)
    p.add_argument(
        "--first-calls",
        nargs="*",
        choices=list(WORKLOADS),
        default=["sine-5step"],
        help="workloads whose compiled rows' first call is measured cold and warm in fresh "
        "processes, with JAX's (default sine-5step; none: leave it out)",
    )
    p.add_argument(
        "--measure-time-to-n",
        nargs="*",
        type=int,
        default=None,
        metavar="N",
        help="for the workloads of --first-calls, also run the first call + N steps end to end "
        "in fresh processes (cold and warm), beside the computed time-to-N table "
        "(bare: 100 1000)",
    )
    p.add_argument(
        "--backend",
        default=None,
        help="torch.compile backend of the compiled torch rows (default: torch's, inductor)",
    )
    p.add_argument(
        "--parallel-build",
        action="store_true",
        help="build a workload's workers at once (first calls overlap and are marked so)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="count kernels (CUDA) or ATen operators per step with torch.profiler",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default=None, help="file name stem (default bench-<device>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(args, argv if argv is not None else sys.argv[1:])


def log(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    torch.set_num_threads(args.threads)  # this process only draws the shared data
    settings = harness.Settings(
        device=args.device,
        threads=args.threads,
        rounds=args.rounds,
        block_s=args.block_s,
        budget_s=args.budget,
        backend=args.backend,
        parallel_build=args.parallel_build,
        profile=args.profile,
    )
    chosen, skipped = impls.selected(args.impls, args.device)
    for name, reason in skipped.items():
        log(f"skipped {name}: {reason}")
    result: dict[str, Any] = {
        "environment": harness.environment(settings),
        "skipped": skipped,
        "workloads": {},
        "sweeps": {},
    }
    result["environment"]["command"] = shlex.join(["python", "-m", "benchmarks", *argv])
    stem = args.name or "bench-" + settings.device.partition(":")[0]
    path = args.out / f"{stem}.json"
    started = time.perf_counter()

    def save() -> None:  # after every workload and sweep: an interrupted run keeps its data
        env = result["environment"]
        env["wall_s"] = time.perf_counter() - started
        env["load_average_end"] = list(os.getloadavg())
        report.write(result, path)

    for name in args.workloads:
        w = WORKLOADS[name]
        log(f"\n{name}: {w.describe()}")
        entry = harness.compare(w, chosen, settings, log=log)
        _name_device(result, entry)
        if name in args.first_calls:
            log(f"{name}: first calls in fresh processes")
            entry["first_calls"] = harness.first_calls(w, chosen, settings, log=log)
            if args.measure_time_to_n is not None:
                steps = args.measure_time_to_n or [100, 1000]
                log(f"{name}: first call + {steps} steps in fresh processes")
                agreed = {r["impl"]: chosen[r["impl"]] for r in entry["rows"] if r["ok"]}
                entry["time_to_n_measured"] = harness.time_to_n(w, agreed, settings, steps, log=log)
        entry["time_to_n"] = report.time_to_n(entry)
        result["workloads"][name] = entry
        save()
        log(report.workload_table(entry))
    sweep_impls = {k: v for k, v in chosen.items() if k in args.sweep_impls}
    sweep_settings = harness.Settings(**{**vars(settings), "rounds": args.sweep_rounds})
    for name in args.sweeps:
        field = SWEEPS[name][0]
        points = result["sweeps"][name] = {"field": field, "points": []}
        for value in getattr(args, f"{name}_points"):
            log(f"\nsweep {name}: {field} = {value}")
            entry = harness.compare(sweep_point(field, value), sweep_impls, sweep_settings, log=log)
            _name_device(result, entry)
            points["points"].append({"value": value, **entry})
            save()
        log(report.sweep_table(points))
    save()
    log(f"\nwrote {path} and {path.with_suffix('.md')}")
    for name, sweep in result["sweeps"].items():
        chart = path.with_name(f"{path.stem}-scaling-{name}.png")
        log(f"wrote {report.scaling_chart(chart, sweep, device=result['environment']['device'])}")
    return 0


def _name_device(result: dict[str, Any], entry: dict[str, Any]) -> None:
    """On a GPU the workers name it (this process never touches CUDA)."""
    env = result["environment"]
    if env["device"] is None:
        names = [r["device_name"] for r in entry["rows"] if r.get("framework") == "torch"]
        env["device"] = next((n for n in names if n), None)
