"""Where the eager step's time goes beside the step written by hand with ``torch.func``.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.eager [--out PATH]

``mf.make_step(..., compile=False)`` reports more than the hand-written step of the fair bench
(``benchmarks/impls_torch.py``, ``torch_func_compiled(compile=False)``) computes: the query loss
before adapting (one more forward pass per task) and the checks behind ``Metrics.finite``,
``grad_norm`` and ``finite_leaves`` (the gradient's norm, each leaf's finiteness, the new
state's, and a non-finite loss making the gradient NaN). This study times, on the bench's sine
workloads, metafunc's eager step beside the hand-written one and beside the hand-written one
with that work added, written as a user would write it. The rows run in **one** process, timed
in blocks interleaved round-robin (as ``step_variants`` does), so that the machine's load falls
on all of them alike and the differences of a few percent are measured, not drowned; the fair
bench, one process per row, gives the same ratio within its spread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, grad, vmap

from .. import impls_torch
from ..data import make_batch, make_net
from ..workloads import WORKLOADS, Workload
from . import write

WORKLOAD_NAMES = ["sine-1step", "sine-5step", "sine-5step-fo"]


def by_hand(w: Workload, net: torch.nn.Module, tasks: Any, *, checks: bool) -> Callable[[], Any]:
    """The fair bench's hand-written step, with the query loss before adapting and, with
    ``checks``, what ``mf.make_step`` reports of the gradient and the new state; each call
    returns what it reports (``loss``, ``loss_before`` and, with ``checks``, ``grad_norm``,
    ``finite_leaves`` and ``finite``)."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    crit = torch.nn.functional.mse_loss

    def task_loss(p, support, query):
        with torch.no_grad():
            before = crit(functional_call(net, p, (query[0],)), query[1])
        adapted = impls_torch.adapted_by_hand(w, net, crit, p, support)
        return crit(functional_call(net, adapted, (query[0],)), query[1]), before

    def meta_loss(p, support, query):
        after, before = vmap(task_loss, in_dims=(None, 0, 0))(p, support, query)
        return after.mean(), (after.mean(), before.mean())

    def step(p, m, v, t, support, query):
        g, (loss, before) = grad(meta_loss, has_aux=True)(p, support, query)
        report: dict[str, torch.Tensor] = {"loss": loss, "loss_before": before}
        if checks:
            leaves = list(g.values())
            report["grad_norm"] = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(leaves)))
            report["finite_leaves"] = torch.stack([torch.isfinite(x).all() for x in leaves])
            keep = torch.where(torch.isfinite(loss), 1.0, torch.nan)
            g = {k: x * keep for k, x in g.items()}
        p, m, v, t = impls_torch.adam_by_hand(p, m, v, t, g)
        if checks:
            state = [*p.values(), *m.values(), *v.values()]
            state_ok = torch.stack([torch.isfinite(x).all() for x in state]).all()
            report["finite"] = report["finite_leaves"].all() & state_ok & torch.isfinite(loss)
        return p, m, v, t, report

    m, v = ({k: torch.zeros_like(x) for k, x in params.items()} for _ in range(2))
    held: list[Any] = [params, m, v, torch.zeros(())]

    def run() -> dict[str, torch.Tensor]:
        p, m, v, t, report = step(*held, tasks.support, tasks.query)
        held[:] = [p, m, v, t]
        return report

    return run


def rows(w: Workload) -> dict[str, Callable[[], Any]]:
    net, tasks, cpu = make_net(w), make_batch(w), torch.device("cpu")
    return {
        "metafunc eager": impls_torch.metafunc_step(w, net, tasks, cpu, compile=False).step,
        "torch.func by hand": impls_torch.torch_func_compiled(
            w, net, tasks, cpu, compile=False
        ).step,
        "by hand + loss before adapting": by_hand(w, net, tasks, checks=False),
        "by hand + loss before + checks": by_hand(w, net, tasks, checks=True),
    }


def measure(w: Workload, rounds: int, block_s: float) -> dict[str, dict[str, float]]:
    """Each row's median wall and thread CPU ms per step over ``rounds`` interleaved blocks."""
    steps = rows(w)
    sizes = {}
    for name, f in steps.items():  # warm up, and size a block to about block_s
        for _ in range(5):
            f()
        t0 = time.perf_counter()
        for _ in range(10):
            f()
        sizes[name] = max(3, round(block_s / ((time.perf_counter() - t0) / 10)))
    wall: dict[str, list[float]] = {n: [] for n in steps}
    cpu: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(rounds):
        for name, f in steps.items():
            n = sizes[name]
            w0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(n):
                f()
            wall[name].append((time.perf_counter() - w0) / n * 1e3)
            cpu[name].append((time.thread_time() - c0) / n * 1e3)
    return {
        n: {"wall_ms": statistics.median(wall[n]), "cpu_ms": statistics.median(cpu[n])}
        for n in steps
    }


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.eager",
        description="metafunc's eager step beside torch.func by hand, with and without the "
        "work metafunc's step reports",
    )
    cli.add_argument("--workloads", nargs="+", default=WORKLOAD_NAMES, choices=WORKLOAD_NAMES)
    cli.add_argument("--rounds", type=int, default=15, help="interleaved blocks per row")
    cli.add_argument("--block-s", type=float, default=0.25, help="seconds per block")
    cli.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = cli.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    for name in args.workloads:
        r = measure(WORKLOADS[name], args.rounds, args.block_s)
        hand = r["torch.func by hand"]["wall_ms"]
        print(f"\n{name}: {WORKLOADS[name].describe()}")
        print("| step | ms (wall) | ms (CPU) | vs by hand |")
        print("|---|---|---|---|")
        for row, t in r.items():
            print(
                f"| {row} | {t['wall_ms']:.3f} | {t['cpu_ms']:.3f} | {t['wall_ms'] / hand:.3f}× |"
            )
        results[name] = r
    if args.out is not None:
        given = sys.argv[1:] if argv is None else argv
        record = {
            "what": "eager steps interleaved in one process",
            "torch": torch.__version__,
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "workloads": results,
        }
        write(args.out, "eager", given, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
