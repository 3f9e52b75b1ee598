"""Compiled evaluation against eager: ``mf.evaluate`` on new few-shot tasks of the MAML conv net
(``mf.models.conv_net``, 5-way 1-shot, 15 queries a class, MAML's inner SGD steps), as a
validation pass during training runs it.

Each mode runs in its own process, as a user runs it: ``eager`` (``compile=False``), then
``compiled`` twice, first with an empty compile cache (cold) and then with the cache the first
left (warm, a new process). Each process times its first call and then ``--repeats`` further
calls on the same tasks, and the scores of every mode are compared with the eager ones.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.evaluation [--tasks 100] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import child, write

ROOT = Path(__file__).resolve().parents[2]


def measure(args: argparse.Namespace) -> dict[str, object]:
    """One mode in this process: the first call's time, the later calls' and the scores."""
    import torch

    import metafunc as mf

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    glyphs = mf.tasks.synthetic_glyphs(g, classes=100)
    net = mf.models.conv_net(args.ways, channels=args.channels, generator=g)
    fn, params = mf.pure(net)
    loss = mf.supervised(fn, mf.losses.cross_entropy)
    learner = mf.maml(loss, inner_lr=0.4, inner_steps=args.inner_steps)
    tasks = mf.tasks.fewshot(
        g, glyphs, tasks=args.tasks, ways=args.ways, shots=args.shots, queries=args.queries
    )
    compile = args.mode == "compiled"

    def run() -> mf.Evaluation:
        return mf.evaluate(learner, params, tasks, predict=fn, compile=compile)

    t0 = time.perf_counter()
    first = run()
    first_s = time.perf_counter() - t0
    later = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        later.append(time.perf_counter() - t0)
    assert first.accuracy is not None
    return {
        "first_call_s": first_s,
        "later_calls_s": later,
        "median_s": statistics.median(later),
        "loss": first.loss.values.tolist(),
        "accuracy": first.accuracy.values.tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.evaluation",
        description="mf.evaluate compiled against eager on new few-shot conv-net tasks",
    )
    cli.add_argument("--tasks", type=int, default=100, help="tasks per call (default 100)")
    cli.add_argument("--ways", type=int, default=5)
    cli.add_argument("--shots", type=int, default=1)
    cli.add_argument("--queries", type=int, default=15, help="query images per class")
    cli.add_argument("--channels", type=int, default=32, help="conv filters (default 32)")
    cli.add_argument("--inner-steps", type=int, default=5, help="inner SGD steps (default 5)")
    cli.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
    cli.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    cli.add_argument("--out", type=Path, help="also write the results to this JSON file")
    cli.add_argument("--mode", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    args = cli.parse_args(argv)
    if args.mode is not None:  # a child process: one mode, its result as JSON on stdout
        print(json.dumps(measure(args)))
        return 0
    given = sys.argv[1:] if argv is None else argv
    runs: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as cache:
        for name, mode in (
            ("eager", "eager"),
            ("compiled, cold", "compiled"),
            ("compiled, warm", "compiled"),
        ):
            runs[name] = child("evaluation", [*given, "--mode", mode], cache, threads=args.threads)
    eager = runs["eager"]
    print(
        f"mf.evaluate on {args.tasks} new {args.ways}-way {args.shots}-shot tasks, conv net "
        f"{args.channels} filters, {args.inner_steps} inner steps, {args.threads} thread(s)"
    )
    print(f"{'mode':16s} {'first call s':>13s} {'later call s':>13s} {'vs eager':>9s}  scores")
    for name, r in runs.items():
        same_accuracy = r["accuracy"] == eager["accuracy"]
        loss_gap = max(abs(a - b) for a, b in zip(r["loss"], eager["loss"], strict=True))
        r["accuracy_equals_eager"] = same_accuracy
        r["max_loss_difference"] = loss_gap
        speed = eager["median_s"] / r["median_s"]
        print(
            f"{name:16s} {r['first_call_s']:13.2f} {r['median_s']:13.3f} {speed:8.1f}x  "
            f"accuracy {'equal' if same_accuracy else 'DIFFERS'}, loss within {loss_gap:.1e}"
        )
    if args.out is not None:
        import torch

        record = {
            "what": "mf.evaluate compiled against eager, each mode in its own process",
            "torch": torch.__version__,
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "mode")},
            "runs": {
                k: {f: v for f, v in r.items() if f not in ("loss", "accuracy")}
                for k, r in runs.items()
            },
        }
        write(args.out, "evaluation", given, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
