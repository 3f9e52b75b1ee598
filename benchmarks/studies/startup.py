"""What a user waits for before the compiled step runs: first calls cold and warm, and the
changes a notebook makes in one process.

Every measurement runs in a fresh process, as a user's would, with its own compile cache
(``TORCHINDUCTOR_CACHE_DIR``) and temporary folder (``TMPDIR``, where torch keeps the headers
it precompiles, once per machine): **cold** with both empty (the first compile on a machine),
**new configuration** with an empty compile cache and the headers the cold run left (what each
new configuration costs after that), **warm** in a new process with what the cold one left.
Two kinds of run:

* ``sine``: the bench's sine step (1-40-40-1 MLP, 25 tasks, MAML with ``inner_steps`` second
  order steps, Adam), through ``mf.make_step``: the time to import torch and metafunc, the first
  call, then in the same process a step built again from an equal configuration, a learner with
  another ``inner_lr`` (a new ``mf.maml``), and 1,000 steps.
* ``fewshot``: ``metafunc train --task fewshot`` with each algorithm at the command's defaults
  (conv net, 32 filters, 5-way 1-shot, 8 tasks), a few outer steps and a compiled evaluation of
  50 tasks: its first call, and the whole run's wall time (MAML++ switches from first to second
  order during it, so it compiles two steps).

    OMP_NUM_THREADS=1 python -m benchmarks.studies.startup [--sine 1 5 20] [--fewshot maml ...]
        [--out benchmarks/results/startup-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import child, graphs, write

ROOT = Path(__file__).resolve().parents[2]
# the few-shot table's rows (metafunc.experiments.fewshot_table.ALGORITHMS), written out:
# importing metafunc here would load torch before a child times its imports
FEWSHOT = [
    "maml",
    "fomaml",
    "anil",
    "boil",
    "meta-sgd",
    "reptile",
    "mamlpp",
    "protonet",
    "protomaml",
]


def sine_child(inner_steps: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    import torch

    imported_torch = time.perf_counter() - t0
    import metafunc as mf

    imported = time.perf_counter() - t0
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.mlp([1, 40, 40, 1], generator=g))
    tasks = mf.tasks.sinusoid(g, tasks=25, shots=10, queries=10)
    opt = mf.optim.adam(1e-3)

    def learner(inner_lr: float) -> mf.Learner:
        loss = mf.supervised(fn, mf.losses.mse)
        return mf.maml(loss, inner_lr=inner_lr, inner_steps=inner_steps)

    def first_call(inner_lr: float) -> tuple[float, Any]:
        t = time.perf_counter()
        chosen = learner(inner_lr)
        step = mf.make_step(chosen, opt)
        state = mf.init_state(chosen, opt, params)
        state, metrics = step(state, tasks)
        metrics.loss.item()
        return time.perf_counter() - t, (step, state)

    first, (step, state) = first_call(0.01)
    loaded, traced = graphs()
    rebuilt, _ = first_call(0.01)
    new_lr, _ = first_call(0.02)
    t = time.perf_counter()
    for _ in range(1000):
        state, metrics = step(state, tasks)
    metrics.loss.item()
    thousand = time.perf_counter() - t
    return {
        "import_torch_s": imported_torch,
        "import_s": imported,
        "first_call_s": first,
        "loaded_graphs": loaded,
        "traced_graphs": traced,
        "rebuilt_first_call_s": rebuilt,
        "new_inner_lr_first_call_s": new_lr,
        "graphs_after_changes": sum(graphs()),
        "steps_1000_s": thousand,
    }


def imports_child() -> dict[str, Any]:
    """How long a new process takes to import torch, metafunc and torch's compiler (which the
    first compiled call imports)."""
    times = {}
    t = time.perf_counter()
    import torch

    times["torch_s"] = time.perf_counter() - t
    t = time.perf_counter()
    import metafunc  # noqa: F401

    times["metafunc_s"] = time.perf_counter() - t
    t = time.perf_counter()
    import torch._dynamo
    import torch._inductor.compile_fx  # noqa: F401

    times["dynamo_inductor_s"] = time.perf_counter() - t
    return times


def fewshot_child(algo: str, steps: int) -> dict[str, Any]:
    import torch

    from metafunc.experiments import fewshot

    torch.set_num_threads(1)
    config = fewshot.FewshotConfig(
        algo=algo,
        steps=steps,
        anneal_steps=steps + steps // 2,  # MAML++: first order for the first third, then second
        eval_tasks=50,
        log_every=steps,
        compile=True,
        progress=False,
    )
    t = time.perf_counter()
    result = fewshot.run(config)
    wall = time.perf_counter() - t
    loaded, traced = graphs()
    return {
        "first_call_s": result.first_call_s,
        "run_s": wall,
        "eval_s": result.eval_s,
        "step_ms": result.step_ms,
        "loaded_graphs": loaded,
        "traced_graphs": traced,
    }


def tables(runs: dict[str, Any]) -> str:
    """The README's tables of a run's ``runs``: the sine steps, then the few-shot runs."""
    sine = [k for k in runs if k.startswith("sine")]
    fewshot = [k for k in runs if k.startswith("fewshot")]
    lines = [
        "| sine step | first call, cold | first call, new configuration | first call, warm | "
        "built again, same process | new `inner_lr`, same process | "
        "first call + 1,000 steps, cold / warm |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in sine:
        cold, new, warm = runs[k]["cold"], runs[k]["new"], runs[k]["warm"]
        lines.append(
            f"| {k.removeprefix('sine ')} | {cold['first_call_s']:.1f} s | "
            f"{new['first_call_s']:.1f} s | "
            f"{warm['first_call_s']:.2f} s | {warm['rebuilt_first_call_s']:.2f} s | "
            f"{warm['new_inner_lr_first_call_s']:.2f} s | "
            f"{cold['first_call_s'] + cold['steps_1000_s']:.1f} s / "
            f"{warm['first_call_s'] + warm['steps_1000_s']:.1f} s |"
        )
    if fewshot:
        lines += [
            "",
            "| few-shot conv step | first call, cold | first call, new configuration | "
            "first call, warm |",
            "|---|---|---|---|",
        ]
        for k in fewshot:
            cold, new, warm = runs[k]["cold"], runs[k]["new"], runs[k]["warm"]
            lines.append(
                f"| {k.removeprefix('fewshot ')} | {cold['first_call_s']:.0f} s | "
                f"{new['first_call_s']:.0f} s | {warm['first_call_s']:.1f} s |"
            )
    return "\n".join(lines)


def _child(args: list[str], cache: str, tmp: str | None = None) -> dict[str, Any]:
    return child("startup", ["--child", *args], cache, tmp=tmp)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.startup",
        description="first calls of the compiled step, cold and warm, and in-process changes",
    )
    cli.add_argument("--sine", type=int, nargs="*", default=[1, 5, 20], help="inner steps")
    cli.add_argument("--fewshot", nargs="*", default=FEWSHOT, choices=FEWSHOT)
    cli.add_argument("--fewshot-steps", type=int, default=6, help="outer steps of each run")
    cli.add_argument("--out", type=Path, help="also write the results to this JSON file")
    cli.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = cli.parse_args(argv)
    if args.child:  # one measurement in this process: its JSON on stdout
        kind, *rest = args.child
        if kind == "imports":
            result = imports_child()
        elif kind == "sine":
            result = sine_child(int(rest[0]))
        else:
            result = fewshot_child(rest[0], int(rest[1]))
        print(json.dumps(result))
        return 0
    given = sys.argv[1:] if argv is None else argv
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as cache:
        imports = [_child(["imports"], cache) for _ in range(3)]
    runs["imports"] = {k: min(i[k] for i in imports) for k in imports[0]}
    print("imports (best of 3): " + ", ".join(f"{k} {v:.2f}" for k, v in runs["imports"].items()))
    plan = [(f"sine S={s}", ["sine", str(s)]) for s in args.sine]
    plan += [(f"fewshot {a}", ["fewshot", a, str(args.fewshot_steps)]) for a in args.fewshot]
    load = os.getloadavg()
    for name, measured in plan:
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as other:
            machine = os.path.join(cache, "tmp")  # a new machine's temporary folder
            os.mkdir(machine)
            cold = _child(measured, cache, machine)
            new = _child(measured, other, machine)
            warm = _child(measured, cache, machine)
        runs[name] = {"cold": cold, "new": new, "warm": warm}
        if args.out is not None:  # after every run: a failing one keeps those before it
            _write(args.out, given, runs, load)
        fields = ["first_call_s", "run_s", "new_inner_lr_first_call_s", "rebuilt_first_call_s"]
        shown = "  ".join(
            f"{f.removesuffix('_s')} {cold[f]:.2f}/{new[f]:.2f}/{warm[f]:.2f} s"
            for f in fields
            if f in cold
        )
        print(f"{name:20s} cold/new/warm: {shown}", flush=True)
    print(tables(runs))
    return 0


def _write(out: Path, given: list[str], runs: dict[str, Any], load: tuple[float, ...]) -> None:
    import torch

    record = {
        "what": "first calls of compiled steps, cold (empty compile cache and temporary "
        "folder: the first compile on a machine), new configuration (empty compile cache, the "
        "headers the cold run precompiled) and warm (a new process, the cache the cold one "
        "left), each in its own process, 1 thread",
        "torch": torch.__version__,
        "load_average": {"start": list(load), "end": list(os.getloadavg())},
        "runs": runs,
    }
    write(out, "startup", given, record)


if __name__ == "__main__":
    sys.exit(main())
