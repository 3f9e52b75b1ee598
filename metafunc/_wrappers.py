"""Options as wrappers around a learner (optax's ``apply_if_finite`` idea): each takes a
:class:`metafunc.Learner` and returns one that computes the same thing another way."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch._higher_order_ops.scan import scan

from . import _checks, _tree
from ._inner import Loop
from ._learner import Learner, Losses, Rule, check_learner, exact
from ._remat import remat_gradient
from ._state import Stateful
from ._types import Tasks


def chunked(learner: Learner, size: int) -> Learner:
    """``learner`` computing its meta-gradient ``size`` tasks at a time (less memory).

    Each chunk's meta-gradient is computed, its intermediates freed, and added to the total
    before the next chunk starts, so memory is bounded by one chunk whatever the meta-batch.
    (``vmap``'s own ``chunk_size`` would not bound it under an outer ``grad``: the backward pass
    starts after every chunk's forward pass.) Compiled, the full chunks are one ``scan``
    (``torch._higher_order_ops``), which the compiler keeps as a loop: the graph holds one
    chunk's computation however many chunks there are (a last, smaller chunk is a second
    copy). Eager, a Python loop does the same arithmetic. ``adapt`` and ``per_task`` vmap
    ``size`` tasks at a time too. Apply it before :func:`metafunc.distributed.data_parallel`,
    which then chunks each rank's share.

    Example:
        >>> one_at_a_time = mf.chunked(learner, 1)
        >>> chunk_grads, _ = one_at_a_time.meta_grad(params, tasks)
        >>> all(torch.allclose(chunk_grads[k], grads[k]) for k in grads)
        True
    """
    check_learner("chunked", learner)
    size = _checks.integer("chunked", "size", size, minimum=1)
    _stateless("chunked", learner)
    if learner.batching.chunk_size is not None:
        raise ValueError(
            f"chunked: the learner is already chunked (size {learner.batching.chunk_size}); "
            f"wrap the unchunked learner once (got size={size})"
        )
    batching = learner.batching._replace(chunk_size=size)
    return learner._replace(rule=_chunk_rule(learner.rule, size), batching=batching)


def _chunk_rule(rule: Rule, size: int) -> Rule:
    def run(learner: Learner, meta: Any, tasks: Tasks) -> tuple[Any, Losses]:
        n = _tree.leaves(tasks)[0].shape[0]
        if n <= size:
            return rule(learner, meta, tasks)
        full, rest = divmod(n, size)
        weight = size / n  # each chunk's meta-gradient is a mean over its tasks

        def add(total: Any, chunk: Tasks) -> tuple[Any, tuple[torch.Tensor, ...]]:
            grads, losses = rule(learner, meta, chunk)
            # a plain tuple: scan's body may return tensors only, not a named tuple of them
            return _tree.map(lambda t, g: t + weight * g, total, grads), tuple(losses)[:2]

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
                total, losses = add(total, _slice(tasks, i * size, (i + 1) * size))
                each.append(losses)
            per_chunk = _tree.map(lambda *v: torch.stack(v), *each)
        losses = Losses(*((weight * v).sum() for v in per_chunk))
        if rest:
            grads, last = rule(learner, meta, _slice(tasks, full * size, n))
            total = _tree.map(lambda t, g: t + (rest / n) * g, total, grads)
            losses = _tree.map(lambda v, w: v + (rest / n) * w, losses, last)
        return total, losses

    return run


def _slice(tasks: Tasks, start: int, stop: int) -> Tasks:
    return Tasks(*_tree.map(lambda t: t[start:stop], tuple(tasks)))


def remat(learner: Learner) -> Learner:
    """``learner`` rematerialising its inner steps: only the parameters (and inner optimizer
    state) are kept between steps, and each step's activations are recomputed in the backward
    pass (memory flat in the inner steps, about one more forward pass of the inner loop). The
    meta-gradient is the same bit for bit (see ``metafunc._remat``).

    It replaces the exact meta-gradient of a learner whose inner is a :class:`metafunc.Loop`,
    so apply it before :func:`metafunc.chunked` and
    :func:`metafunc.distributed.data_parallel`. Refused for a learner that draws random
    numbers (the recomputed steps would draw new ones) and for one whose meta-gradient does
    not differentiate through its inner loop (Reptile, iMAML).

    Example:
        >>> deep = mf.maml(loss, inner_lr=0.01, inner_steps=4)
        >>> remat_grads, _ = mf.remat(deep).meta_grad(params, tasks)
        >>> exact_grads, _ = deep.meta_grad(params, tasks)
        >>> all(torch.equal(remat_grads[k], exact_grads[k]) for k in exact_grads)
        True
        >>> learner = mf.chunked(mf.remat(deep), 4)  # remat first
    """
    _loop("remat", learner)
    _stateless("remat", learner)
    if learner.batching.randomness != "error":
        raise ValueError(_REMAT_RANDOM.format(learner.batching.randomness))
    if learner.rule is not exact:
        raise ValueError(
            "remat: the learner's meta-gradient is not the exact one through its inner loop: "
            "it has its own rule (Reptile's pseudo-gradient, iMAML's implicit gradient, which "
            "keep nothing of the inner steps), or it is already chunked or data parallel; "
            "apply remat first, e.g. mf.chunked(mf.remat(learner), 4)"
        )
    return learner._replace(rule=remat_gradient)


_REMAT_RANDOM = (
    "remat: recomputing each inner step in the backward pass would draw new random numbers "
    "(new dropout masks) there; use chunked(learner, n) to bound memory instead "
    "(got a learner with randomness={!r})"
)


def first_order(learner: Learner) -> Learner:
    """``learner`` with its inner gradients detached: the meta-gradient drops the terms that
    differentiate through them (first-order MAML, Finn et al., 2017, section 5.2: about a
    third less compute). Refused for a learner whose meta-parameters reach the outer loss only
    through the inner gradients (DAML's learned loss would get no gradient).

    Example:
        >>> learner = mf.first_order(mf.meta_sgd(loss, inner_lr=0.01))
        >>> learner.inner.first_order
        True
        >>> grads, _ = learner.meta_grad(learner.init(params), tasks)
        >>> bool(grads["lr"]["4.bias"].abs().sum() > 0)  # the rates still learn
        True
    """
    check_learner("first_order", learner)
    loop = learner.inner
    if not (dataclasses.is_dataclass(loop) and hasattr(loop, "first_order")):
        loop = _loop("first_order", learner)  # refused with the message that says why
    if loop.first_order is None:
        raise ValueError(
            "first_order: the learner's meta-parameters reach the outer loss only through the "
            "inner gradients (DAML's adaptation loss), so detaching them would leave them "
            "untrained"
        )
    return learner._replace(inner=dataclasses.replace(loop, first_order=True))  # type: ignore[type-var]


def stochastic(learner: Learner, randomness: str = "different") -> Learner:
    """``learner`` letting the model draw random numbers (dropout) under ``vmap`` over tasks:
    ``"different"`` gives each task its own draws, ``"same"`` all tasks the same draws. The
    draws come from torch's default generator: inside a step from :func:`metafunc.make_step`
    it is seeded for the step from the run's seed in ``TrainState.rng`` (and put back after),
    so a run is reproducible and resumes bit-exactly (give :func:`metafunc.init_state` a
    ``seed``); called directly, ``meta_grad`` and ``adapt`` draw from it as any torch module in
    training mode does.

    Example:
        >>> fn, params = mf.pure(nn.Sequential(nn.Linear(1, 8), nn.Dropout(0.5), nn.Linear(8, 1)))
        >>> loss = mf.supervised(fn, mf.losses.mse)
        >>> mf.maml(loss).meta_grad(params, tasks)
        Traceback (most recent call last):
            ...
        RuntimeError: meta_grad: the model draws random numbers (dropout or another random ...
        >>> learner = mf.stochastic(mf.maml(loss, inner_lr=0.05))
        >>> state = mf.init_state(learner, opt, params, seed=0)
        >>> state, metrics = mf.make_step(learner, opt, compile=False)(state, tasks)
        >>> state.rng  # (seed, steps drawn)
        tensor([0, 1])
    """
    check_learner("stochastic", learner)
    if randomness not in ("different", "same"):
        raise ValueError(
            f"stochastic: randomness must be 'different' (each task its own draws) or 'same' "
            f"(got {randomness!r})"
        )
    if learner.rule is remat_gradient:
        raise ValueError(_REMAT_RANDOM.format(randomness).replace("remat: ", "stochastic: "))
    return learner._replace(batching=learner.batching._replace(randomness=randomness))


def _stateless(where: str, learner: Learner) -> None:
    if isinstance(learner.outer, Stateful):
        raise ValueError(
            f"{where}: the learner's model keeps state (mf.stateful), which {where} does not "
            "thread yet; use the learner as it is"
        )


def _loop(where: str, learner: Learner) -> Loop:
    check_learner(where, learner)
    if not isinstance(learner.inner, Loop):
        raise TypeError(
            f"{where}: needs a learner whose inner is a metafunc.Loop (gradient steps), e.g. "
            f"mf.maml(loss) (got an inner of type {type(learner.inner).__name__})"
        )
    return learner.inner
