"""The outer step: the meta-gradient and the optimizer update as one pure function, and the
wrappers that make it a training step (``make_step``)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from . import _checks, _diagnose, _nonfinite, _random, _state, _tree
from ._compile import _CUDA_GRAPH_MODES, background, compiled
from ._learner import Context, Learner, check, check_learner, check_state
from ._random import seeded
from ._state import Stateful
from ._types import Metrics, Step, Tasks, TrainState
from .optim import Optimizer, apply_updates
from .optim._base import check_optimizer

__all__ = ["background", "compiled", "init_state", "make_step", "outer_step", "seeded", "validated"]


def init_state(
    learner: Learner,
    optimizer: Optimizer,
    params: Any,
    *,
    seed: int | None = None,
    model_state: Any = None,
) -> TrainState:
    """The state before the first step: meta-parameters, optimizer state, step 0, with
    ``seed`` the random stream of the model's random operations, and with ``model_state`` the
    model's state.

    Args:
        learner: e.g. ``mf.maml(loss)``.
        optimizer: e.g. ``mf.optim.adam(1e-3)``.
        params: the model parameters to start from, e.g. from :func:`metafunc.pure`.
        seed: the seed of the model's random operations (dropout), an integer in [0, 2**63);
            needed, and only used, when the learner draws random numbers
            (:func:`metafunc.stochastic`). It becomes ``TrainState.rng``, saved with the
            checkpoints.
        model_state: the state of a model from :func:`metafunc.stateful` (its third
            result), needed, and only allowed, when the learner's loss threads it. It becomes
            ``TrainState.model_state`` in the learner's layout (``learner.outer.init``: MAML++
            keeps a copy per inner step), copied.

    Raises:
        ValueError: a learner with random operations and no ``seed``; a model state missing
            or given where the loss keeps none.

    Example:
        >>> state = mf.init_state(mf.maml(loss), mf.optim.adam(1e-3), params)
        >>> int(state.step), state.rng is None
        (0, True)
        >>> state = mf.init_state(mf.stochastic(mf.maml(loss)), opt, params, seed=0)
        >>> state.rng  # (seed, steps drawn)
        tensor([0, 0])
    """
    _check_types("init_state", learner, optimizer)
    randomness = learner.batching.randomness
    if seed is not None:
        seed = _checks.integer("init_state", "seed", seed, minimum=0)
        if seed >= 2**63:
            raise ValueError(f"init_state: seed must be an integer < 2**63 (got {seed})")
    elif randomness != "error":
        raise ValueError(
            f"init_state: the learner draws random numbers (randomness={randomness!r}), "
            "so the run needs a seed for them, e.g. mf.init_state(learner, opt, params, seed=0)"
        )
    meta = learner.init(params)
    device = _tree.leaves(meta)[0].device
    step = torch.zeros((), dtype=torch.int64, device=device)
    rng = None if seed is None else torch.tensor([seed, 0], dtype=torch.int64)
    if isinstance(learner.outer, Stateful) and model_state is not None:
        model_state = learner.outer.init(_tree.copy(model_state))
    check_state(learner._replace(context=Context(step, model_state)), "init_state")
    return TrainState(meta, optimizer.init(meta), step, rng, model_state=model_state)


def make_step(
    learner: Learner,
    optimizer: Optimizer,
    *,
    compile: bool | str = True,
    mode: str | None = None,
    backend: Any = "inductor",
    options: dict[str, Any] | None = None,
    cache: bool = True,
) -> Step:
    """The training step ``step(state, tasks) -> (state, metrics)``: the pure
    :func:`outer_step`, :func:`compiled` (unless ``compile=False``), drawing from the run's
    random stream (:func:`seeded`) and :func:`validated`.

    The eager step is the reference and gives the same numbers as the compiled one. Metrics
    are a :class:`metafunc.Metrics` of tensors (no host sync). Random operations in the model
    (a learner wrapped in :func:`metafunc.stochastic`) draw from a stream seeded from
    ``state.rng`` for each step, so a resumed run draws what an uninterrupted one did;
    compiled with Inductor, such a step uses torch's own random kernels, so it draws what the
    eager step draws.

    Args:
        learner: e.g. ``mf.maml(...)`` (or ``mf.distributed.data_parallel(mf.maml(...))``).
        optimizer: e.g. ``mf.optim.adam(1e-3)``.
        compile: compile with ``torch.compile``; ``False`` runs eagerly; ``"background"`` runs
            eagerly while a forked process compiles (:func:`background`), for a cold start
            that does not wait, at the cost of bit-reproducibility.
        mode: ``torch.compile`` mode, e.g. ``"reduce-overhead"`` for CUDA graphs.
        backend: ``torch.compile`` backend.
        options: ``torch.compile`` options for Inductor, over metafunc's own: with Inductor on
            the CPU the step's wrapper is C++ (``cpp_wrapper``; ``{"cpp_wrapper": False}``
            gives the Python one back), and a step with random operations uses torch's own
            random kernels (``fallback_random``).
        cache: reuse a compiled step of an equal configuration, in this process and from
            torch's compile caches on disk (see :func:`compiled`); ``False`` compiles afresh.

    Example:
        >>> step = mf.make_step(learner, opt, compile=False)  # eager; compiled by default
        >>> state, metrics = step(state, tasks)
        >>> int(state.step), metrics.loss.shape, bool(metrics.finite)
        (1, torch.Size([]), True)
    """
    _check_types("make_step", learner, optimizer)
    if not (isinstance(compile, bool) or compile == "background"):
        raise TypeError(f'make_step: compile must be True, False or "background" (got {compile!r})')
    _checks.boolean("make_step", "cache", cache)
    if compile == "background" and not (
        cache and backend == "inductor" and mode not in _CUDA_GRAPH_MODES
    ):
        raise ValueError(
            'make_step: compile="background" hands the compiled step over through the compile '
            "cache, which needs cache=True, backend='inductor' and no CUDA-graph mode (got "
            f"cache={cache!r}, backend={backend!r}, mode={mode!r})"
        )
    if options is not None and not isinstance(options, dict):
        raise TypeError(
            f"make_step: options must be a dict of torch.compile options, e.g. "
            f"{{'cpp_wrapper': False}} (got {type(options).__name__})"
        )
    pure = outer_step(learner, optimizer)
    random = learner.batching.randomness != "error"
    fast = compiled(pure, mode=mode, backend=backend, options=options, random=random, cache=cache)
    chosen = background(fast, pure) if compile == "background" else fast if compile else pure
    return validated(seeded(chosen), learner, optimizer, probe=seeded(pure))


def outer_step(learner: Learner, optimizer: Optimizer) -> Step:
    """The pure outer step: the meta-gradient over the meta-batch, the optimizer update and the
    metrics, with no checks (see :func:`validated`), no random stream (see :func:`seeded`) and
    nothing outside the graph, so it compiles whole (:func:`compiled`).

    Example:
        >>> pure = mf.outer_step(learner, opt)
        >>> new, metrics = pure(state, tasks)
        >>> int(new.step), int(state.step)  # a new state; the one given is unchanged
        (1, 0)
        >>> norm = torch.cat([g.flatten() for g in grads.values()]).norm()
        >>> torch.allclose(metrics.grad_norm, norm)  # the meta-gradient's norm
        True
    """
    return Step(functools.partial(pure_step, learner, optimizer), guarded=optimizer.guarded)


def pure_step(
    learner: Learner, optimizer: Optimizer, state: TrainState, tasks: Tasks
) -> tuple[TrainState, Metrics]:
    """One outer step of ``learner`` with ``optimizer`` (what :func:`outer_step` binds); the
    records are arguments, so that what their closures hold in tensors (learning rates) is an
    input of the compiled graph, not a constant of it."""
    # the step count and the model state, for the rule to read
    learner = learner._replace(context=Context(state.step, state.model_state))
    grads, losses = learner.rule(learner, state.meta, tasks)
    # over all leaves at once (foreach): the step is outside every vmap
    grad_norm, leaf_ok = _tree.norm_and_finite_leaves(grads)
    # The gradient of a loss that is not finite is no gradient, even where it came out
    # finite (L1's at a NaN target is): make it NaN (times 1, or NaN), so a guard refuses it.
    # Eagerly on the CPU, where reading a tensor costs no wait, a finite loss skips the product.
    loss_ok = torch.isfinite(losses.loss)
    if not (_tree.readable(loss_ok) and bool(loss_ok)):
        keep = torch.where(loss_ok, 1.0, torch.nan)
        grads = _tree.unflatten(grads, list(torch._foreach_mul(_tree.leaves(grads), keep)))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.meta)
    meta = apply_updates(state.meta, updates)
    finite, skipped = _nonfinite.verdict(leaf_ok, loss_ok, meta, opt_state)
    new = state._replace(meta=meta, opt_state=opt_state, step=state.step + 1)
    new = new._replace(model_state=_state.after(skipped, state.model_state, losses.state))
    return new, Metrics(losses.loss, losses.loss_before, grad_norm, finite, skipped, leaf_ok)


def validated(step: Step, learner: Learner, optimizer: Optimizer, *, probe: Step) -> Step:
    """``step`` with its inputs checked eagerly before a call whose signature (structures,
    shapes, dtypes, devices) it has not seen, and ``probe`` (the eager step) run once then on
    one task, so that a model, loss or data that cannot work fails with a message that says
    why (``metafunc._diagnose``); an allocation that fails says what to do about it. Calls
    run under ``torch.no_grad``, so task tensors that require grad leave no graph behind.

    Example:
        >>> pure = mf.outer_step(learner, opt)
        >>> step = mf.validated(pure, learner, opt, probe=pure)
        >>> step(state, mf.Tasks(tasks.support, tasks.query[0]))  # the query without its y
        Traceback (most recent call last):
            ...
        ValueError: step: tasks.query must have the same tree structure as tasks.support; ...
    """

    @_checks.once_per_signature
    def check_call(state: TrainState, tasks: Tasks) -> None:
        if not isinstance(state, TrainState):
            raise TypeError(
                "step: state must be a metafunc.TrainState from init_state (got "
                f"{type(state).__name__})"
            )
        bound = learner._replace(context=Context(state.step, state.model_state))
        check(bound, "step", state.meta, tasks, meta_name="state.meta")
        _check_counter(state.step)
        _random.check_rng(state.rng, learner.batching.randomness)
        _check_opt_state(optimizer.init(state.meta), state.opt_state)
        _diagnose.probe(probe, state, tasks)

    def run(state: TrainState, tasks: Tasks) -> tuple[TrainState, Metrics]:
        check_call(state, tasks)
        try:
            with torch.no_grad():
                return step(state, tasks)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if _diagnose.is_out_of_memory(e):
                raise _diagnose.out_of_memory(e, tasks) from e
            raise

    return dataclasses.replace(step, fn=run)


def _check_opt_state(expected: Any, got: Any) -> None:
    try:
        _tree.check_same_structure(
            expected,
            got,
            where="step",
            expected_name="optimizer.init(state.meta)",
            got_name="state.opt_state",
        )
    except ValueError as e:
        classes = _tree.named_tuples(expected)
        if not classes or _tree.named_tuples(got):
            raise
        raise ValueError(
            f"{e}\nstate.opt_state holds dicts where the optimizer's state holds named tuples "
            f"({classes[0]}), as in a state that mf.load read without like=: load the "
            "checkpoint with like=mf.init_state(learner, optimizer, params), which also checks "
            "that it holds this model and optimizer"
        ) from None


def _check_counter(counter: Any) -> None:
    if not (
        isinstance(counter, torch.Tensor) and counter.dtype == torch.int64 and counter.ndim == 0
    ):
        got = (
            f"{counter.dtype} of shape {tuple(counter.shape)}"
            if isinstance(counter, torch.Tensor)
            else type(counter).__name__
        )
        raise TypeError(f"step: state.step must be an int64 scalar tensor (got {got})")


def _check_types(where: str, learner: Any, optimizer: Any) -> None:
    check_learner(where, learner)
    check_optimizer(where, "optimizer", optimizer)
