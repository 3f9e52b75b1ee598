"""The ``metafunc`` command."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

import metafunc as mf

from .evaluation import mean_ci95, sine_grid_error


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (got {text})")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metafunc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="meta-train on the blog's sine task, evaluate, plot")
    t.add_argument("--algo", choices=["maml", "fomaml"], default="maml")
    t.add_argument(
        "--steps", type=_positive_int, default=50_000, help="outer steps (default 50000)"
    )
    t.add_argument(
        "--meta-batch", type=_positive_int, default=32, help="tasks per outer step (default 32)"
    )
    t.add_argument("--inner-steps", type=int, default=5, help="inner SGD steps (default 5)")
    t.add_argument(
        "--inner-lr", type=float, default=3e-2, help="inner SGD step size (default 3e-2)"
    )
    t.add_argument(
        "--outer-lr", type=float, default=1e-2, help="outer SGD step size (default 1e-2)"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--eval-draws",
        type=_positive_int,
        default=1000,
        help="fresh tasks per phase in the evaluation",
    )
    t.add_argument("--log-every", type=_positive_int, default=500)
    t.add_argument(
        "--device", default="cpu", help="torch device for parameters and data, e.g. cuda"
    )
    t.add_argument("--no-compile", action="store_true", help="run the eager step")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument(
        "--out", type=Path, default=Path("out"), help="directory for figures and results.json"
    )
    b = sub.add_parser(
        "bench",
        help="time the outer step against the alternatives; JSON, tables and charts",
        description="Benchmarks: see benchmarks/README.md.",
    )
    from . import bench

    bench.add_arguments(b)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.run(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return _train_sine(args)


def _train_sine(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    g = torch.Generator().manual_seed(args.seed)
    fn, params = mf.functionalize(mf.models.blog_sine_net(g).to(args.device))
    loss = mf.supervised(fn, mf.losses.l1)
    learner = mf.maml(
        loss,
        inner_lr=args.inner_lr,
        inner_steps=args.inner_steps,
        first_order=args.algo == "fomaml",
    )
    opt = mf.optim.sgd(args.outer_lr)
    state = mf.init_state(learner, opt, params)
    step = mf.make_step(learner, opt, compile=not args.no_compile)
    # Tasks are drawn on the CPU generator (deterministic everywhere), then moved.
    sampler = functools.partial(mf.tasks.sine, tasks=args.meta_batch, device=args.device)

    # The first call compiles; time it apart from the steady state.
    if not args.no_compile:
        print(
            "compiling the outer step (a minute with an empty cache, seconds on reruns)...",
            flush=True,
        )
    t0 = time.perf_counter()
    state, _ = step(state, sampler(g))
    first_call = time.perf_counter() - t0
    history: dict[str, list[float]] = {"step": [], "loss": [], "loss_before": []}

    def on_log(done: int, metrics: dict[str, float]) -> None:
        history["step"].append(done)
        history["loss"].append(metrics["loss"])
        history["loss_before"].append(metrics["loss_before"])

    t0 = time.perf_counter()
    with logging_redirect_tqdm():  # periodic log lines print above the progress bar
        state = mf.train(
            step,
            state,
            sampler,
            steps=args.steps - 1,
            generator=g,
            log_every=args.log_every,
            on_log=on_log,
            progress=not args.no_progress,
        )
    per_step = (time.perf_counter() - t0) / max(args.steps - 1, 1)

    eval_gen = torch.Generator().manual_seed(args.seed + 1)
    # No inner steps: the meta-learned net itself, for the dashed "before" curve.
    frozen = mf.maml(loss, inner_steps=0)
    results, before = {}, {}
    for phase in (0.0, math.pi):
        results[phase] = sine_grid_error(
            learner, fn, state.meta, eval_gen, phase=phase, draws=args.eval_draws
        )
        before[phase] = sine_grid_error(
            frozen, fn, state.meta, torch.Generator().manual_seed(0), phase=phase, draws=1
        )

    from . import plotting

    args.out.mkdir(parents=True, exist_ok=True)
    fig = plotting.sine_figure(
        args.out / "maml-sine.png",
        results,
        before=before,
        title=f"{args.algo.upper()} on the blog's sine: adapted on 4 points ({args.inner_steps} SGD steps)",
    )
    curve = plotting.learning_curve(
        args.out / "learning-curve.png",
        history["step"],
        {
            "query L1 before adaptation": history["loss_before"],
            "query L1 after adaptation": history["loss"],
        },
        ylabel="mean L1 loss over the log window",
        title=f"{args.algo.upper()} meta-training on the blog's sine",
    )
    summary = {
        "algo": args.algo,
        "steps": args.steps,
        "meta_batch": args.meta_batch,
        "inner_steps": args.inner_steps,
        "inner_lr": args.inner_lr,
        "outer_lr": args.outer_lr,
        "seed": args.seed,
        "device": args.device,
        "compiled": not args.no_compile,
        "torch": torch.__version__,
        "first_call_s": first_call,
        "step_ms": 1e3 * per_step,
        "wall_s": time.perf_counter() - start,
        "history": history,
        "grid_mse": {},
    }
    print(f"\n{args.algo} on the blog's sine, {args.steps} outer steps x {args.meta_batch} tasks")
    print(f"first call (compile) {first_call:.1f} s, then {1e3 * per_step:.2f} ms per outer step")
    print(
        f"dense-grid MSE over [-2pi, 2pi] after adapting on 4 fresh points ({args.eval_draws} draws each):"
    )
    for phase, r in results.items():
        mean, half = mean_ci95(r.mse)
        name = "pi" if phase else "0"
        summary["grid_mse"][name] = {"mean": mean, "ci95": half, "draws": r.mse.numel()}
        print(f"  b = {name:<2}  MSE {mean:.4f} +- {half:.4f}")
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {fig}, {curve}, {args.out / 'results.json'} ({summary['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
