"""What every algorithm shares: the ``Learner`` record and the one vmapped meta-loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch._higher_order_ops.scan import scan
from torch.func import grad, vmap

from . import _checks, _tree
from ._types import Tasks

Metrics = dict[str, torch.Tensor]
# per_task(meta, support, query) -> (adapted, query loss after, query loss before), vmapped
PerTask = Callable[[Any, Any, Any], tuple[Any, torch.Tensor, torch.Tensor]]
Scores = Callable[[Any, Tasks], tuple[Any, torch.Tensor, torch.Tensor]]
MetaGrad = Callable[[Any, Tasks], tuple[Any, Metrics]]


class Learner(NamedTuple):
    """A meta-learning algorithm as a record of pure functions (optax's pattern).

    Every function that takes task data takes a batch: a leading task dimension on every
    tensor (one task is a batch of one, ``x[None]``).

    Attributes:
        name: the algorithm, used in messages.
        init: ``init(params) -> meta``, the meta-parameters (copies) to learn.
        adapt: ``adapt(meta, support) -> adapted``: the model parameters adapted to each task
            of the batched ``support``, each leaf with a leading task dimension.
        meta_loss: ``meta_loss(meta, tasks) -> scalar``, the query loss after adaptation,
            averaged over the tasks.
        meta_grad: ``meta_grad(meta, tasks) -> (grads, metrics)``; ``grads`` is shaped like
            ``meta``; ``metrics`` holds tensors ``loss`` (query loss after adaptation) and
            ``loss_before`` (query loss at the meta-learned parameters), means over the tasks.
        params: ``params(meta) -> params``, where the model parameters sit inside the
            meta-parameters (the only place that knows an algorithm's layout).
        check: ``check(where, meta, tasks, meta_name="meta")`` validates the meta-parameters
            and a meta-batch eagerly, naming ``where`` and ``meta_name`` in its messages; a
            signature (structure, shapes, dtypes, devices) it has passed is not checked again.
        per_task: ``per_task(meta, tasks) -> (adapted, loss, loss_before)``, task by task (a
            leading task dimension on each): the parameters adapted on each support set, and
            the query loss after adapting and at ``params(meta)``, the learner's own loss;
            ``meta_loss`` is the mean of ``loss`` (:func:`metafunc.evaluate` scores with it).
        randomness: what random operations in the model do under ``vmap`` over tasks (see
            :func:`check_randomness`): ``"error"`` refuses them; ``"different"`` and ``"same"`` draw
            them from torch's generator (``make_step`` seeds it from ``TrainState.rng``).
    """

    name: str
    init: Callable[[Any], Any]
    adapt: Callable[[Any, Any], Any]
    meta_loss: Callable[[Any, Tasks], torch.Tensor]
    meta_grad: MetaGrad
    params: Callable[[Any], Any]
    check: Callable[..., None]
    per_task: Scores
    randomness: str = "error"


def exact(per_task: PerTask) -> MetaGrad:
    """The meta-gradient differentiated through adaptation (MAML and its relatives)."""

    def objective(meta: Any, tasks: Tasks) -> tuple[torch.Tensor, Metrics]:
        _, after, before = per_task(meta, tasks.support, tasks.query)
        mean = after.mean()
        return mean, {"loss": mean, "loss_before": before.mean()}

    return grad(objective, has_aux=True)


def chunked(meta_grad: MetaGrad, size: int | None) -> MetaGrad:
    """``meta_grad`` over a meta-batch ``size`` tasks at a time, averaged over the tasks.

    Each chunk's meta-gradient is computed, its intermediates freed, and added to the total
    before the next chunk starts, so memory is bounded by one chunk whatever the meta-batch.
    (``vmap``'s own ``chunk_size`` would not bound it under an outer ``grad``: the backward pass
    starts after every chunk's forward pass.) Compiled, the full chunks are one ``scan``
    (``torch._higher_order_ops``), which the compiler keeps as a loop: the graph holds one
    chunk's computation however many chunks there are (a last, smaller chunk is a second
    copy). Eager, a Python loop does the same arithmetic.
    """
    if size is None:
        return meta_grad

    def run(meta: Any, tasks: Tasks) -> tuple[Any, Metrics]:
        n = _tree.leaves(tasks)[0].shape[0]
        if n <= size:
            return meta_grad(meta, tasks)
        full, rest = divmod(n, size)
        weight = size / n  # each chunk's meta-gradient is a mean over its tasks

        def add(total: Any, chunk: Tasks) -> tuple[Any, Metrics]:
            grads, metrics = meta_grad(meta, chunk)
            return _tree.map(lambda t, g: t + weight * g, total, grads), metrics

        zeros = _tree.zeros_like(meta)
        if torch.compiler.is_compiling():
            # contiguous: scan traces its body for contiguous slices (a strided task tensor,
            # e.g. a sampler's slice, then fails a view inside the body)
            stacked = _tree.map(
                lambda t: t[: full * size].reshape(full, size, *t.shape[1:]).contiguous(), tasks
            )
            total, per_chunk = scan(add, zeros, stacked)
        else:
            total, each = zeros, []
            for i in range(full):
                total, metrics = add(total, _slice(tasks, i * size, (i + 1) * size))
                each.append(metrics)
            per_chunk = {k: torch.stack([m[k] for m in each]) for k in each[0]}
        metrics = {k: (weight * v).sum() for k, v in per_chunk.items()}
        if rest:
            grads, last = meta_grad(meta, _slice(tasks, full * size, n))
            total = _tree.map(lambda t, g: t + (rest / n) * g, total, grads)
            metrics = {k: v + (rest / n) * last[k] for k, v in metrics.items()}
        return total, metrics

    return run


def _slice(tasks: Tasks, start: int, stop: int) -> Tasks:
    return _tree.map(lambda t: t[start:stop], tasks)


def build(
    name: str,
    *,
    init: Callable[[Any], Any],
    adapt: Callable[[Any, Any], Any],
    loss: Callable[[Any, Any], torch.Tensor],
    params: Callable[[Any], Any] = lambda meta: meta,
    chunk_size: int | None,
    gradient: Callable[[PerTask], MetaGrad] = exact,
    paired: bool = True,
    check_meta: Callable[[str, str, Any], None] | None = None,
    randomness: str = "error",
) -> Learner:
    """Build a :class:`Learner` from one task's pure ``adapt`` and query ``loss``.

    This adds the vmap over tasks, the meta-gradient (``gradient(per_task)``: :func:`exact` by
    default; Reptile and iMAML bring their own rule) and the eager validation at the public
    entry points; ``adapt`` and ``loss`` stay unchecked pure functions of one task.

    Args:
        params: the model parameters inside the meta-parameters.
        paired: support and query hold the same kind of data (checked to match); DAML's
            unlabeled support is not paired with its labeled query.
        check_meta: ``check_meta(where, meta_name, meta)`` checks the algorithm's own layout
            of the meta-parameters (e.g. Meta-SGD's ``{"params", "lr"}``).
        randomness: ``vmap``'s randomness over tasks, checked by :func:`check_randomness`.
    """

    def task(meta: Any, support: Any, query: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
        adapted = adapt(meta, support)
        return adapted, loss(adapted, query), loss(params(meta), query)

    per_task = vmap(task, in_dims=(None, 0, 0), randomness=randomness)
    raw_grad = chunked(gradient(per_task), chunk_size)
    batched = {"chunk_size": chunk_size, "randomness": randomness}
    scored = vmap(task, in_dims=(None, 0, 0), **batched)
    adapt_all = vmap(adapt, in_dims=(None, 0), **batched)

    def check_params(where: str, meta: Any, meta_name: str) -> None:
        _checks.params_tree(where, meta_name, meta)
        if check_meta is not None:
            check_meta(where, meta_name, meta)

    @_checks.once_per_signature
    def check(where: str, meta: Any, tasks: Tasks, meta_name: str = "meta") -> None:
        check_params(where, meta, meta_name)
        _checks.tasks(where, tasks, like=meta, paired=paired)

    @_checks.once_per_signature
    def check_support(where: str, meta: Any, support: Any) -> None:
        check_params(where, meta, "meta")
        _checks.batch(where, {"support": support}, like=meta)

    def scores(meta: Any, tasks: Tasks) -> tuple[Any, torch.Tensor, torch.Tensor]:
        return eager_checked(
            name, check, lambda: scored(meta, tasks.support, tasks.query), meta, tasks
        )

    def meta_loss(meta: Any, tasks: Tasks) -> torch.Tensor:
        return scores(meta, tasks)[1].mean()

    def meta_grad(meta: Any, tasks: Tasks) -> tuple[Any, Metrics]:
        return eager_checked(name, check, lambda: raw_grad(meta, tasks), meta, tasks)

    def adapt_tasks(meta: Any, support: Any) -> Any:
        where = f"{name}.adapt"
        return eager_checked(where, check_support, lambda: adapt_all(meta, support), meta, support)

    return Learner(name, init, adapt_tasks, meta_loss, meta_grad, params, check, scores, randomness)


def eager_checked(
    where: str, check: Callable[..., None], run: Callable[[], Any], *args: Any
) -> Any:
    """``run()``, after ``check(where, *args)`` when not compiling (compiled code is checked by
    its eager caller); torch's vmap error for a random operation is said in metafunc's terms."""
    if torch.compiler.is_compiling():
        return run()
    check(where, *args)
    try:
        return run()
    except RuntimeError as e:
        if "randomness error mode" not in str(e):
            raise
        raise RuntimeError(
            f"{where}: the model draws random numbers (dropout or another random operation), "
            "which a learner refuses by default; say so with randomness='different' (each "
            "task its own draws) when building the learner, and give mf.init_state a seed for "
            "the run's random stream, e.g. mf.maml(loss, randomness='different') and "
            "mf.init_state(learner, opt, params, seed=0); score with mf.eval_mode(fn), which "
            "turns dropout off"
        ) from e


def check_randomness(where: str, value: Any) -> str:
    """A learner's ``randomness``, checked: what random operations in the model (dropout) do
    when the tasks of a batch are ``vmap``-ed.

    ``"error"`` (the default) refuses them with torch's vmap error; ``"different"`` gives every
    task its own draws (its own dropout masks); ``"same"`` gives all tasks the same draws.
    The draws come from torch's default generator: inside a step from :func:`metafunc.make_step`
    it is seeded for the step from the run's seed in ``TrainState.rng`` (and put back after),
    so a run is reproducible and resumes bit-exactly; called directly, ``meta_grad`` and
    ``adapt`` draw from it as any torch module in training mode does.
    """
    if value not in ("error", "different", "same"):
        raise ValueError(
            f"{where}: randomness must be 'error', 'different' or 'same' (got {value!r}); "
            "'different' gives each task its own random draws (dropout masks)"
        )
    return value
