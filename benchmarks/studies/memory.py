"""Memory and time of long inner loops, implicit MAML and chunked meta-batches (issue 17).

    OMP_NUM_THREADS=1 python -m benchmarks.studies.memory [--tables steps,imaml,conv] [--repeats 3]

Three tables, each row one configuration run in its own fresh Python process (``--probe``):

- ``steps``: MAML's step against inner steps, with and without ``remat=True``;
- ``imaml``: iMAML against inner steps, beside MAML's time;
- ``conv``: the few-shot conv workload (the MAML paper's 4-block conv net, 5-way 1-shot, 32
  tasks, one inner step) compiled with ``chunk_size`` against the whole batch and the loops
  people write by hand (the blog's, higher's and TorchOpt's where installed). Before a row is
  reported its meta-gradient (Adam's first moment after one step) must agree with the blog
  loop's.

Memory is the process's resident set (``VmHWM`` from /proc): ``peak`` over the whole process
(imports, compilation and steps) and ``step peak``, the high-water mark of the timed steps
alone (``VmHWM`` is reset through /proc/self/clear_refs after the first call, so a compiler's
own memory is not counted there). The machine's load average is recorded beside every row:
timings on a shared machine are noisy. Results are printed as a table and written as JSON to
benchmarks/results/memory-cpu.json.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import metafunc as mf

from .. import data, impls_torch, worker
from ..harness import ROOT
from ..workloads import OUTER_LR, WAYS, Workload

RESULTS = ROOT / "benchmarks" / "results"

STEPS_SWEEP = [5, 10, 20, 40, 100]
COMPILED_STEPS_SWEEP = [5, 20]  # every inner step is traced: compile time grows with them
CHUNKS = [None, 1, 4, 8]


# ---------------------------------------------------------------- workloads


def conv_setup(tasks: int, channels: int) -> tuple[torch.nn.Module, mf.Tasks]:
    """The few-shot conv workload: the conv net with its own initialisation from a fixed seed,
    and the benchmark harness's batch of random 28x28 images."""
    net = mf.models.conv_net(WAYS, channels=channels, generator=torch.Generator().manual_seed(0))
    return net, data.make_batch(Workload("conv", "conv", tasks, inner_steps=1, hidden=channels))


# the inner-steps sweep: the conv net at a size where 100 steps fit a shared CPU
SWEEP = {"tasks": 2, "channels": 32, "inner_lr": 0.1}
# the conv benchmark workload (as in the project's benchmark harness)
CONV = {"tasks": 32, "channels": 64, "inner_lr": 0.4, "inner_steps": 1}


# ---------------------------------------------------------------- implementations


def metafunc_step(net, tasks, cfg):
    fn, params = mf.pure(copy.deepcopy(net))
    loss = mf.supervised(fn, mf.losses.cross_entropy)
    common = dict(inner_lr=cfg["inner_lr"], inner_steps=cfg["inner_steps"])
    if cfg["algo"] == "imaml":
        learner = mf.imaml(loss, **common, reg=1.0, cg_steps=5)
    else:
        learner = mf.maml(loss, **common)
        learner = mf.remat(learner) if cfg.get("remat", False) else learner
    if cfg.get("chunk_size") is not None:
        learner = mf.chunked(learner, cfg["chunk_size"])
    opt = mf.optim.adam(OUTER_LR)
    step = mf.make_step(learner, opt, compile=cfg["compile"])
    held = [mf.init_state(learner, opt, params)]

    def run() -> None:
        held[0], _ = step(held[0], tasks)

    def first_moment() -> dict[str, torch.Tensor]:
        return {k: v.double() for k, v in held[0].opt_state.mu.items()}

    return run, first_moment


def _harness(factory):
    """A loop of the benchmark harness (benchmarks/impls_torch.py) on this workload."""

    def make(net, tasks, cfg):
        w = Workload(
            "conv",
            "conv",
            tasks=cfg["tasks"],
            inner_steps=cfg["inner_steps"],
            hidden=cfg["channels"],
            inner_lr=cfg["inner_lr"],
        )
        impl = factory(w, copy.deepcopy(net), tasks, torch.device("cpu"))
        return impl.step, lambda: {k: torch.from_numpy(v) for k, v in impl.first_moment().items()}

    return make


IMPLS = {
    "metafunc": metafunc_step,
    "blog loop": _harness(impls_torch.blog_loop),
    "higher": _harness(impls_torch.higher_loop),
    "torchopt": _harness(impls_torch.torchopt_loop),
}


# ---------------------------------------------------------------- one configuration, one process


def _status(field: str) -> float:
    """A ``/proc/self/status`` size in MB."""
    kib = worker.status_field(field)
    if kib is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return kib / 1024


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def probe(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this process: the first call, then ``repeats`` timed steps."""
    size = SWEEP if cfg["table"] in ("steps", "imaml") else CONV
    net, tasks = conv_setup(size["tasks"], size["channels"])
    cfg = {**size, **cfg}
    run, first_moment = IMPLS[cfg["impl"]](net, tasks, cfg)
    load = [_load()]
    t0 = time.perf_counter()
    run()
    first_call = time.perf_counter() - t0
    if cfg.get("moment_path"):
        torch.save(first_moment(), cfg["moment_path"])
    process_peak = _status("VmHWM")
    rss = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    times = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    load.append(_load())
    return {
        "first_call_s": first_call,
        "step_s": statistics.median(times),
        "step_s_all": times,
        "peak_mb": max(process_peak, _status("VmHWM")),
        "step_peak_mb": _status("VmHWM"),
        "rss_before_steps_mb": rss,
        "load": load,
    }


def run_probe(cfg: dict[str, Any]) -> dict[str, Any]:
    """``probe(cfg)`` in a fresh process (this one's environment, the checkout on the path)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.studies.memory", "--probe", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
    )
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the tables


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The configurations of the tables asked for, in that order."""
    out: list[dict[str, Any]] = []
    for name in args.tables.split(","):
        if name == "steps":
            for compile_, sweep in ((False, args.steps), (True, args.compiled_steps)):
                for steps in sweep:
                    for remat in (False, True):
                        out.append(
                            dict(table="steps", impl="metafunc", algo="maml", compile=compile_,
                                 inner_steps=steps, remat=remat)
                        )  # fmt: skip
        elif name == "imaml":
            for steps in args.steps:
                out.append(
                    dict(table="imaml", impl="metafunc", algo="imaml", compile=False, inner_steps=steps)
                )  # fmt: skip
        elif name == "conv":
            out.append(dict(table="conv", impl="blog loop"))
            for impl in ("higher", "torchopt"):
                try:
                    __import__(impl)
                except ImportError:
                    continue
                out.append(dict(table="conv", impl=impl))
            for chunk in args.chunks:
                out.append(
                    dict(table="conv", impl="metafunc", algo="maml", compile=True, chunk_size=chunk)
                )
        else:
            raise SystemExit(f"--tables: unknown table {name!r} (steps, imaml, conv)")
    return [{**c, "repeats": args.repeats} for c in out]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _chunks(text: str) -> list[int | None]:
    return [None if v == "none" else int(v) for v in text.split(",") if v]


def label(cfg: dict[str, Any]) -> str:
    if cfg["impl"] != "metafunc":
        return cfg["impl"]
    parts = [cfg["algo"], "compiled" if cfg["compile"] else "eager"]
    if cfg.get("remat"):
        parts.append("remat")
    if cfg.get("chunk_size"):
        parts.append(f"chunk_size={cfg['chunk_size']}")
    return " ".join(parts)


def agreement(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """The largest difference between two meta-gradients, relative to the largest entry."""
    scale = max(float(w.abs().max()) for w in want.values())
    return max(float((got[k] - want[k]).abs().max()) for k in want) / scale


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| table | configuration | inner steps | first call s | step s (median) | peak MB "
        "| step peak MB | meta-grad vs blog loop | load (before, after) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cfg, res = r["config"], r["result"]
        steps = cfg.get("inner_steps", CONV["inner_steps"])
        if "error" in res:
            lines.append(f"| {cfg['table']} | {label(cfg)} | {steps} | error: {res['error']} |")
            continue
        agree = r.get("agreement")
        lines.append(
            f"| {cfg['table']} | {label(cfg)} | {steps} | {res['first_call_s']:.1f} "
            f"| {res['step_s']:.3f} | {res['peak_mb']:.0f} | {res['step_peak_mb']:.0f} "
            f"| {'' if agree is None else f'{agree:.1e}'} "
            f"| {res['load'][0]:.1f}, {res['load'][1]:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--tables", default="conv,imaml,steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--steps", type=_ints, default=STEPS_SWEEP, help="eager inner steps")
    parser.add_argument("--compiled-steps", type=_ints, default=COMPILED_STEPS_SWEEP)
    parser.add_argument("--chunks", type=_chunks, default=CHUNKS, help="e.g. none,1,4,8")
    parser.add_argument("--out", type=Path, default=RESULTS / "memory-cpu.json")
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return 0
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "command": " ".join(
            ["python", "-m", "benchmarks.studies.memory", *(sys.argv[1:] if argv is None else argv)]
        ),
        "rows": [],
    }
    rows = report["rows"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for i, cfg in enumerate(configurations(args)):
            if cfg["table"] == "conv":
                cfg = {**cfg, "moment_path": str(Path(tmp) / f"{i}.pt")}
            result = run_probe(cfg)
            row = {"config": {k: v for k, v in cfg.items() if k != "moment_path"}, "result": result}
            if cfg["table"] == "conv" and "error" not in result:
                moment = torch.load(cfg["moment_path"])
                if cfg["impl"] == "blog loop":
                    reference = moment
                if reference is not None:
                    row["agreement"] = agreement(moment, reference)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            # after every row: an interrupted run keeps what it measured
            args.out.write_text(json.dumps(report, indent=1))
            args.out.with_suffix(".md").write_text(markdown(report))
    print(table(rows))
    print(f"written: {args.out} and {args.out.with_suffix('.md')}")
    return 0


def markdown(report: dict[str, Any]) -> str:
    """The table with what it was measured on."""
    return (
        f"# Memory and time: `{report['command']}`\n\n"
        f"{report['date']}, {report['machine']} ({report['cpus']} CPUs), torch {report['torch']}, "
        f"OMP_NUM_THREADS={report['threads']}. Peak: the process's VmHWM (imports, compilation, "
        "steps); step peak: VmHWM over the timed steps only (reset after the first call). "
        "Load: the 1-minute load average before and after the configuration.\n\n"
        f"{table(report['rows'])}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
