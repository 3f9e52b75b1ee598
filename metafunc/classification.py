"""``metafunc train --task fewshot``: N-way K-shot classification with the MAML paper's conv net.

Meta-trains on the training classes (synthetic glyphs by default, Omniglot with ``--data-dir``),
then reports the query accuracy on new tasks of new classes as mean ± 95% confidence
interval, and draws example test tasks with the adapted network's predictions.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from typing import Any

import torch

import metafunc as mf

from .evaluation import adapt_tasks, fewshot_accuracy, mean_ci95


def datasets(args: argparse.Namespace) -> tuple[mf.tasks.ImageClasses, mf.tasks.ImageClasses, str]:
    """The train and test classes, and a name for them."""
    if args.data_dir is not None:
        # The class split is fixed (the loader's seed), whatever the training seed.
        train = mf.tasks.omniglot(args.data_dir, split="train")
        test = mf.tasks.omniglot(args.data_dir, split="test")
        return train, test, "Omniglot"
    glyphs = mf.tasks.synthetic_glyphs(
        torch.Generator().manual_seed(args.seed), classes=args.glyph_classes
    )
    cut = max(args.glyph_classes * 2 // 3, 1)
    split = lambda lo, hi: mf.tasks.ImageClasses(glyphs.images[lo:hi], glyphs.names[lo:hi])  # noqa: E731
    return split(0, cut), split(cut, None), "synthetic glyphs"


def learner_for(args: argparse.Namespace, loss: Any, head: str) -> mf.Learner:
    inner = {"inner_lr": args.inner_lr, "inner_steps": args.inner_steps}
    return {
        "maml": lambda: mf.maml(loss, **inner),
        "fomaml": lambda: mf.fomaml(loss, **inner),
        "reptile": lambda: mf.reptile(loss, **inner),
        "meta-sgd": lambda: mf.meta_sgd(loss, **inner),
        "anil": lambda: mf.anil(loss, head=head, **inner),  # the linear classifier adapts
    }[args.algo]()


def train(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    train_set, test_set, data_name = datasets(args)
    size = train_set.images.shape[-1]
    torch.manual_seed(args.seed)  # the conv net's default initialisation
    net = mf.models.conv_net(args.ways, channels=args.channels, image_size=size)
    fn, params = mf.functionalize(net.to(args.device))
    loss = mf.supervised(fn, mf.losses.cross_entropy)
    learner = learner_for(args, loss, head=str(len(net) - 1))
    opt = mf.optim.adam(args.outer_lr)
    state = mf.init_state(learner, opt, params)
    step = mf.make_step(learner, opt, compile=not args.no_compile)
    shape = {"ways": args.ways, "shots": args.shots, "queries": args.queries}
    sampler = functools.partial(
        mf.tasks.fewshot, dataset=train_set, tasks=args.meta_batch, device=args.device, **shape
    )
    g = torch.Generator().manual_seed(args.seed)
    if not args.no_compile:
        print("compiling the outer step (minutes with an empty cache on a CPU)...", flush=True)
    t0 = time.perf_counter()
    state, _ = step(state, sampler(g))
    first_call = time.perf_counter() - t0
    history: dict[str, list[float]] = {"step": [], "loss": [], "loss_before": []}

    def on_log(done: int, metrics: dict[str, float]) -> None:
        history["step"].append(done)
        history["loss"].append(metrics["loss"])
        history["loss_before"].append(metrics["loss_before"])

    t0 = time.perf_counter()
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

    # Meta-SGD learns its inner rates besides the net: the net's parameters sit under "params".
    params = state.meta["params"] if args.algo == "meta-sgd" else state.meta
    eval_gen = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.perf_counter()
    acc = fewshot_accuracy(
        learner, fn, state.meta, test_set, eval_gen, tasks=args.eval_tasks, **shape
    )
    eval_s = time.perf_counter() - t0
    mean, half = mean_ci95(acc)

    from . import plotting

    args.out.mkdir(parents=True, exist_ok=True)
    example = mf.tasks.fewshot(
        torch.Generator().manual_seed(args.seed + 2),
        test_set,
        tasks=3,
        dtype=next(iter(params.values())).dtype,
        device=args.device,
        **shape,
    )
    with torch.no_grad():
        adapted = adapt_tasks(learner, state.meta, example.support)
        predicted = torch.func.vmap(fn)(adapted, example.query[0]).argmax(dim=-1)
    label = f"{args.ways}-way {args.shots}-shot"
    fig = plotting.fewshot_figure(
        args.out / f"{args.algo}-fewshot.png",
        example,
        predicted,
        title=f"{args.algo.upper()} on {data_name}, {label}: new classes, adapted on the support "
        f"({args.inner_steps} SGD step{'s' if args.inner_steps != 1 else ''}); test accuracy "
        f"{100 * mean:.1f} ± {100 * half:.1f}% over {acc.numel()} tasks",
    )
    curve = plotting.learning_curve(
        args.out / "learning-curve.png",
        history["step"],
        {
            "query loss before adaptation": history["loss_before"],
            "query loss after adaptation": history["loss"],
        },
        ylabel="mean cross-entropy over the log window",
        title=f"{args.algo.upper()} meta-training on {data_name}, {label}",
    )
    summary = {
        "task": "fewshot",
        "data": data_name,
        "train_classes": len(train_set.names),
        "test_classes": len(test_set.names),
        "algo": args.algo,
        **shape,
        "channels": args.channels,
        "image_size": size,
        "steps": args.steps,
        "meta_batch": args.meta_batch,
        "inner_steps": args.inner_steps,
        "inner_lr": args.inner_lr,
        "outer_lr": args.outer_lr,
        "outer_optimizer": "adam",
        "seed": args.seed,
        "device": args.device,
        "compiled": not args.no_compile,
        "torch": torch.__version__,
        "first_call_s": first_call,
        "step_ms": 1e3 * per_step,
        "tasks_per_s": args.meta_batch / per_step,
        "eval_s": eval_s,
        "wall_s": time.perf_counter() - start,
        "history": history,
        "test_accuracy": {"mean": mean, "ci95": half, "tasks": acc.numel()},
    }
    print(
        f"\n{args.algo} on {data_name}, {label}, {args.steps} outer steps x {args.meta_batch} tasks"
    )
    print(
        f"first call {first_call:.1f} s, then {1e3 * per_step:.0f} ms per outer step "
        f"({args.meta_batch / per_step:.1f} tasks/s)"
    )
    print(
        f"test accuracy on {acc.numel()} new tasks of {len(test_set.names)} new classes: "
        f"{100 * mean:.2f} +- {100 * half:.2f}% (chance {100 / args.ways:.0f}%)"
    )
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {fig}, {curve}, {args.out / 'results.json'} ({summary['wall_s']:.0f} s in all)")
    return 0
