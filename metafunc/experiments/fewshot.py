"""N-way K-shot classification with the MAML paper's conv net.

Meta-trains on the training classes (synthetic glyphs by default, Omniglot from a folder), then
scores the query accuracy on new tasks of classes never seen in training, and adapts three
example test tasks for a figure.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

import metafunc as mf

from . import _runs
from ._runs import History
from .algorithms import EMBEDDING, STATEFUL, build_learner, build_step, outer_rate
from .scores import fewshot_accuracy


@dataclass(frozen=True)
class FewshotConfig(_runs.RunOptions):
    """One few-shot run (the ``metafunc train --task fewshot`` options)."""

    algo: str = "maml"
    steps: int = 300
    meta_batch: int = 8
    inner_steps: int = 1
    inner_lr: float = 0.4
    outer_lr: float = 1e-3
    seed: int = 0
    ways: int = 5
    shots: int = 1
    queries: int = 5
    channels: int = 32
    data_dir: Path | None = None  # Omniglot's folder; None: synthetic glyphs
    glyph_classes: int = 300
    eval_tasks: int = 600
    log_every: int = 25
    anneal_steps: int = 300  # MAML++: the outer steps its schedules span (not --steps: resumable)
    cosine: bool = True  # MAML++: the outer rate annealed by a cosine (False: constant)


class FewshotResult(NamedTuple):
    """What a few-shot run returns."""

    state: mf.TrainState
    learner: mf.Learner
    data: str  # "synthetic glyphs" or "Omniglot"
    train_classes: int
    test_classes: int
    image_size: int
    history: dict[str, list[float]]  # "step", "loss", "loss_before": one entry per log window
    accuracy: torch.Tensor  # (eval_tasks,) query accuracy per new task
    examples: mf.Tasks  # three new test tasks
    predicted: torch.Tensor  # (3, queries) the adapted net's labels for their query images
    start_step: int
    first_call_s: float
    step_ms: float
    eval_s: float


# The train and test classes, and a name for them.
Datasets = tuple[mf.tasks.ImageClasses, mf.tasks.ImageClasses, str]


def datasets(config: FewshotConfig) -> Datasets:
    """The train and test classes of ``config``, and a name for them."""
    if config.data_dir is not None:
        # The class split is fixed (the loader's seed), whatever the training seed.
        train = mf.tasks.omniglot(config.data_dir, split="train")
        test = mf.tasks.omniglot(config.data_dir, split="test")
        return train, test, "Omniglot"
    g = torch.Generator().manual_seed(config.seed)
    glyphs = mf.tasks.synthetic_glyphs(g, classes=config.glyph_classes)
    cut = max(config.glyph_classes * 2 // 3, 1)
    images, names = glyphs.images, glyphs.names
    return (
        mf.tasks.ImageClasses(images[:cut], names[:cut]),
        mf.tasks.ImageClasses(images[cut:], names[cut:]),
        "synthetic glyphs",
    )


def run(
    config: FewshotConfig,
    *,
    on_log: Callable[[mf.Log], Any] | None = None,
    data: Datasets | None = None,
) -> FewshotResult:
    """Meta-train ``config.algo`` on the training classes, then score new tasks of new classes;
    ``data``: the config's :func:`datasets`, when the caller has them loaded already."""
    train_set, test_set, data_name = datasets(config) if data is None else data
    size = train_set.images.shape[-1]
    init = torch.Generator().manual_seed(config.seed)
    stateful = config.algo in STATEFUL  # MAML++: per-step running statistics, model state
    net = mf.models.conv_net(
        config.ways,
        channels=config.channels,
        image_size=size,
        track_running_stats=stateful,
        generator=init,
    )
    # ProtoNet and ProtoMAML classify over the embedding: the net without its linear layer
    embedding = config.algo in EMBEDDING
    model_state = None
    if stateful:
        fn, params, model_state = mf.stateful(net.to(config.device))
        # scored in training mode, as MAML++'s code does: the batch's statistics (the state
        # is read only to be updated, so the first one serves)
        predict: Callable[..., Any] = lambda p, x: fn(p, model_state, x)[0]  # noqa: E731
    else:
        fn, params = mf.pure((net[:-1] if embedding else net).to(config.device))
        predict = mf.classifier(fn) if embedding else fn
    norms = [n for n, m in net.named_modules() if isinstance(m, mf.models.BatchNorm)]
    loss = mf.supervised(fn, mf.losses.cross_entropy)
    head = str(len(net) - 1)  # ANIL adapts the linear classifier, BOIL freezes it
    learner = build_learner(
        config.algo,
        loss,
        head=head,
        embed=fn,
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps,
        norms=norms,
        steps=config.anneal_steps,
    )
    learner = mf.distributed.data_parallel(learner)
    rate = outer_rate(config.algo, config.outer_lr, config.anneal_steps, cosine=config.cosine)
    opt = mf.optim.apply_if_finite(mf.optim.adam(rate))
    step = build_step(config.algo, learner, opt, steps=config.anneal_steps, compile=config.compile)
    shape: dict[str, Any] = {"ways": config.ways, "shots": config.shots, "queries": config.queries}
    sampler = functools.partial(
        mf.tasks.fewshot, dataset=train_set, tasks=config.meta_batch, device=config.device, **shape
    )
    history = History(on_log)
    g = torch.Generator().manual_seed(config.seed)  # the task stream
    start_state = mf.init_state(learner, opt, params, model_state=model_state)
    state = _runs.train(config, step, start_state, sampler, g, history)
    learner = learner.bind(state)  # the step count and model state adapting starts from
    start = torch.Generator().manual_seed(config.seed + 1)
    clock = time.perf_counter()
    accuracy = fewshot_accuracy(
        learner,
        predict,
        state.meta,
        test_set,
        start,
        tasks=config.eval_tasks,
        compile=config.compile,
        **shape,
    )
    eval_s = time.perf_counter() - clock
    dtype = next(iter(params.values())).dtype
    examples = mf.tasks.fewshot(
        torch.Generator().manual_seed(config.seed + 2),
        test_set,
        tasks=3,
        dtype=dtype,
        device=config.device,
        **shape,
    )
    with torch.no_grad():
        adapted = learner.adapt(state.meta, examples.support)
        predicted = torch.func.vmap(predict)(adapted, examples.query[0]).argmax(dim=-1)
    return FewshotResult(
        state,
        learner,
        data_name,
        len(train_set.names),
        len(test_set.names),
        size,
        history.curve,
        accuracy,
        examples,
        predicted,
        *history.timing(state),
        eval_s,
    )
