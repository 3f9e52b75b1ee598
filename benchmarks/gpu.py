"""The GPU check: the CUDA tests and the GPU benchmarks in one run, one JSON with the device name.

Run it with ``bash benchmarks/gpu.sh`` (``make gpu-check``), which first brings what the
machine's Python lacks. Stages, most important first, the JSON rewritten after each so a run
cut short keeps what it measured:

1. ``tests/test_cuda.py`` (compiled equals eager on CUDA, CUDA graphs included; float64 on the
   GPU equals the CPU float64 reference; checkpoints stay on the device);
2. the sinusoid (``sine-5step``): blog loop, metafunc eager, compiled and compiled with
   ``mode="reduce-overhead"`` (CUDA graphs), hand-written torch.func compiled and JAX, with
   kernels per step (torch.profiler) and peak memory (``max_memory_allocated``);
3. the meta-batch sweep 25 -> 200 -> 1024 tasks (25 is stage 2's run);
4. the few-shot conv workload (``conv-5way1shot``);
5. the compiled rows' first call cold and warm, and JAX's, in fresh processes.

Every stage stops when the time limit (``--time-limit``, 420 s) is reached: no new timing
round starts and a worker still compiling is stopped, so the whole check, set-up included,
ends within 8 minutes.

``--dry-run`` runs the same stages on the CPU at tiny sizes, as the test suite does so the
script cannot rot: one inner step, 2 and 3 tasks, width 4, a one-block conv net on 8x8
images; the compiled rows use torch.compile's ``eager`` backend (Dynamo traces the step;
inductor's code generation and the C++ compiler, which would take most of the time, do not
run); the CUDA-graph row runs without graphs; the CUDA tests skip; the profiler counts ATen
operators instead of GPU kernels. Its numbers measure nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from . import harness, impls, report
from .workloads import WORKLOADS, Workload, sweep_point

ROWS = [
    "blog loop",
    "metafunc eager",
    "metafunc compiled",
    "metafunc compiled reduce-overhead",
    "torch.func compiled",
    "jax jit",
]
SWEEP_ROWS = [r for r in ROWS if r != "metafunc eager"]
SWEEP_POINTS = [25, 200, 1024]  # 25 is sine-5step itself, measured in stage 2
DRY_RUN_POINTS = [2, 3]
DRY_RUN_NOTE = (
    "CPU dry run at tiny sizes (every workload: 1 inner step, 2 tasks, width or channels 4, the "
    "conv net one block on 8x8 images; sweep 2 and 3 tasks); the compiled rows use "
    "torch.compile's eager backend (Dynamo traces the step, nothing is generated or compiled), "
    "the CUDA-graph row runs without graphs, the profiler counts ATen operators, the CUDA tests "
    "skip. It checks that the script runs; its numbers measure nothing."
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/gpu.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same stages on a CPU, tiny sizes")
    p.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results (dry run: out/)"
    )
    p.add_argument("--time-limit", type=float, default=420.0, help="seconds (default 420)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    deadline = time.monotonic() + args.time_limit
    dry = args.dry_run
    settings = harness.Settings(
        device="cpu" if dry else "cuda",
        rounds=2 if dry else 10,
        block_s=0.01 if dry else 0.2,
        budget_s=5 if dry else 30,
        backend="eager" if dry else None,
        parallel_build=True,  # compilation is on the CPU cores; timing stays round-robin
        profile=True,
        warmup_s=0.01 if dry else 0.5,
        deadline=deadline,
    )
    out = args.out or (Path("out/gpu-check-dry-run") if dry else Path("benchmarks/results"))
    path = out / "gpu-check.json"
    chosen, skipped = impls.selected(ROWS, settings.device, allow_cuda_only=dry)
    result: dict[str, Any] = {
        "environment": harness.environment(settings),
        "dry_run": dry,
        "skipped": skipped,
        "cuda_tests": {},
        "workloads": {},
        "sweeps": {},
    }
    env = result["environment"]
    env["command"] = shlex.join(["bash", "benchmarks/gpu.sh", *(argv or sys.argv[1:])])
    env["device"] = "CPU dry run: " + env["cpu"] if dry else None
    if dry:
        result["note"] = DRY_RUN_NOTE
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {line}", flush=True)

    def save() -> None:
        env["wall_s"] = time.perf_counter() - started
        env["load_average_end"] = list(os.getloadavg())
        report.write(result, path)

    def tiny(w: Workload, tasks: int = DRY_RUN_POINTS[0]) -> Workload:
        if not dry:
            return w
        w = dataclasses.replace(w, tasks=tasks, hidden=4, inner_steps=1)
        return dataclasses.replace(w, blocks=1, image_size=8) if w.kind == "conv" else w

    def benchmark(w: Workload, rows: dict[str, impls.ImplSpec]) -> dict[str, Any]:
        entry = harness.compare(w, rows, settings, log=log)
        if env["device"] is None:  # the workers name the GPU; this process never touches CUDA
            env["device"] = next(
                (r["device_name"] for r in entry["rows"] if "device_name" in r), None
            )
        return entry

    log("stage 1: tests/test_cuda.py")
    result["cuda_tests"] = cuda_tests(settings)
    save()
    log(f"  {result['cuda_tests'].get('summary')}")

    log("stage 2: sine-5step")
    result["workloads"]["sine-5step"] = benchmark(tiny(WORKLOADS["sine-5step"]), chosen)
    save()

    log("stage 3: meta-batch sweep")
    sweep_rows = {k: v for k, v in chosen.items() if k in SWEEP_ROWS}
    sweep = result["sweeps"]["meta_batch"] = {"field": "tasks", "points": []}
    first, *rest = DRY_RUN_POINTS if dry else SWEEP_POINTS
    stage2 = result["workloads"]["sine-5step"]
    rows = [r for r in stage2["rows"] if r["impl"] in sweep_rows]
    sweep["points"].append({"value": first, **stage2, "rows": rows, "from": "sine-5step"})
    for value in rest:
        w = tiny(sweep_point("tasks", value), tasks=value)
        sweep["points"].append({"value": value, **benchmark(w, sweep_rows)})
        save()

    log("stage 4: conv-5way1shot")
    result["workloads"]["conv-5way1shot"] = benchmark(tiny(WORKLOADS["conv-5way1shot"]), chosen)
    save()

    log("stage 5: first calls in fresh processes, sine-5step")
    if settings.time_left() > 0:
        entry = result["workloads"]["sine-5step"]
        entry["first_calls"] = harness.first_calls(
            tiny(WORKLOADS["sine-5step"]), chosen, settings, log=log
        )
    save()
    chart = report.scaling_chart(path.with_name("gpu-check-scaling-meta_batch.png"), sweep)
    log(f"wrote {path}, {path.with_suffix('.md')} and {chart}")
    return 0


def cuda_tests(settings: harness.Settings) -> dict[str, Any]:
    """``pytest tests/test_cuda.py`` in a subprocess: each test's outcome and message.

    Warnings are shown, not raised (``-W default``): the GPU image's torch is not the pinned
    one, and a deprecation inside it must not read as a failed CUDA test.
    """
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            "-W",
            "default",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "tests/test_cuda.py",
        ]
        try:
            done = subprocess.run(
                cmd,
                cwd=harness.ROOT,
                capture_output=True,
                text=True,
                timeout=max(1.0, min(240.0, settings.time_left())),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"summary": "timed out", "returncode": None}
        tests = {}
        if junit.exists():
            for case in ET.parse(junit).getroot().iter("testcase"):
                outcome, message = "passed", ""
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome = {"failure": "failed"}.get(child.tag, child.tag)
                        message = (child.get("message") or "")[:2000]
                tests[case.get("name")] = {"outcome": outcome, "message": message}
    lines = done.stdout.strip().splitlines()
    return {
        "returncode": done.returncode,
        "summary": lines[-1] if lines else done.stderr.strip()[-500:],
        "tests": tests,
        "output_tail": "\n".join(lines[-40:]),
    }


if __name__ == "__main__":
    sys.exit(main())
