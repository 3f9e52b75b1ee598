"""Throughput of data-parallel meta-training (tasks per second) against the number of processes.

The demo's problem (blog net 1-32-32-1, MAML with 5 second-order inner steps, L1, SGD) at a fixed
global meta-batch (strong scaling): with N processes each computes the meta-gradient of
meta_batch / N tasks and the ranks all-reduce it (gloo on CPU, NCCL on GPU). For each N the
script launches ``torchrun --standalone --nproc_per_node N`` on itself, times ``--steps`` outer
steps after ``--warmup`` steps (compilation included in the warm-up), and writes one JSON file.

Usage:
  OMP_NUM_THREADS=1 python -m benchmarks.studies.distributed --procs 1 2 \\
      --out benchmarks/results/distributed-cpu.json
  python -m benchmarks.studies.distributed --device cuda --procs 1 2 4 8 --compile \\
      --out benchmarks/results/distributed-cuda.json        # one GPU per process, NCCL
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def worker(args: argparse.Namespace) -> None:
    import metafunc as mf

    mf.distributed.init(timeout=300)
    device = "cpu"
    if args.device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.blog_sine_net(g).to(device))
    learner = mf.maml(mf.supervised(fn, mf.losses.l1), inner_lr=3e-2, inner_steps=5)
    opt = mf.optim.sgd(1e-2)
    state = mf.init_state(learner, opt, params)
    step = mf.make_step(learner, opt, compile=args.compile)
    batches = [mf.tasks.sine(g, tasks=args.meta_batch, device=device) for _ in range(4)]

    def run(n: int) -> float:
        nonlocal state
        mf.distributed.barrier()
        t0 = time.perf_counter()
        for i in range(n):
            state, metrics = step(state, batches[i % len(batches)])
        metrics.loss.item()  # wait for the device
        mf.distributed.barrier()
        return time.perf_counter() - t0

    warmup = run(args.warmup)
    seconds = run(args.steps)
    if mf.distributed.is_main():
        result = {
            "processes": mf.distributed.world_size(),
            "warmup_s": warmup,
            "seconds": seconds,
            "step_ms": 1e3 * seconds / args.steps,
            "tasks_per_s": args.meta_batch * args.steps / seconds,
        }
        Path(args.result).write_text(json.dumps(result))
    if mf.distributed.active():
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.distributed", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="runs per process count (median)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--compile", action="store_true", help="compiled step (default: eager)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/distributed-cpu.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)  # the ranks import this checkout's benchmarks package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    runs = []
    for repeat in range(args.repeats):  # interleaved: a shared machine's load drifts
        for n in args.procs:
            result_file = args.out.resolve().with_suffix(f".{n}.tmp")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            cmd += ["--nproc_per_node", str(n), "--module", "benchmarks.studies.distributed"]
            cmd += ["--worker", "--result", str(result_file)]
            cmd += ["--meta-batch", str(args.meta_batch), "--steps", str(args.steps)]
            cmd += ["--warmup", str(args.warmup), "--device", args.device]
            cmd += ["--compile"] if args.compile else []
            subprocess.run(cmd, check=True, cwd=ROOT, env=env)
            runs.append({"repeat": repeat, **json.loads(result_file.read_text())})
            result_file.unlink()
            print(json.dumps(runs[-1]), flush=True)
    median = {}
    for n in args.procs:
        rates = sorted(r["tasks_per_s"] for r in runs if r["processes"] == n)
        median[str(n)] = rates[len(rates) // 2]
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    out = {
        "what": "tasks per second vs processes, fixed global meta-batch (strong scaling)",
        "problem": "blog sine net 1-32-32-1, MAML 5 second-order inner steps, L1, SGD",
        "meta_batch": args.meta_batch,
        "steps": args.steps,
        "compiled": args.compile,
        "device": args.device,
        "backend": "nccl" if args.device == "cuda" else "gloo",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "note": "the machine may be shared with other work; its load is not controlled",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
        "torch": torch.__version__,
        "commit": commit,
        "median_tasks_per_s": median,
        "runs": runs,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(median))


if __name__ == "__main__":
    main()
