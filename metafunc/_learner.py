"""The ``Learner`` record: an algorithm as pure functions of one task, and the batched,
validated operations every learner has (``adapt``, ``meta_grad``, ``per_task``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

import torch
from torch.func import vmap

from . import _checks, _nonfinite, _tree
from ._state import Stateful, combine
from ._types import Tasks, TrainState


class Losses(NamedTuple):
    """What a meta-gradient rule reports besides the gradient, as tensors (means over tasks).

    Attributes:
        loss: the query loss after adapting.
        loss_before: the query loss at the meta-learned parameters, ``learner.params(meta)``.
        state: the model state after the meta-batch, for a learner whose model keeps state
            (:func:`metafunc.stateful`), combined over the tasks (``None`` without).

    Example:
        >>> grads, losses = learner.meta_grad(params, tasks)
        >>> losses.loss.shape, bool(losses.loss < losses.loss_before)  # adapting helped
        (torch.Size([]), True)
    """

    loss: torch.Tensor
    loss_before: torch.Tensor
    state: Any = None


class Context(NamedTuple):
    """What a step hands its learner besides the meta-parameters and the tasks (set by
    :meth:`Learner.bind`; :func:`metafunc.make_step` binds each step's state).

    Attributes:
        step: the int64 count of outer steps taken (MAML++'s multi-step loss weights are a
            function of it), ``None`` outside a step.
        state: the model state the learner threads (:func:`metafunc.stateful`), ``None``
            for a model without.

    Example:
        >>> learner.bind(state).context.step
        tensor(0)
    """

    step: torch.Tensor | None = None
    state: Any = None


class Batching(NamedTuple):
    """How a learner's tasks are batched; set by :func:`metafunc.chunked` and
    :func:`metafunc.stochastic`.

    Attributes:
        chunk_size: ``vmap`` this many tasks at a time (``None``: all at once).
        randomness: what random operations in the model do under ``vmap`` over tasks:
            ``"error"`` refuses them; ``"different"`` and ``"same"`` draw them from torch's
            generator (``make_step`` seeds it from ``TrainState.rng``).

    Example:
        >>> learner.batching
        Batching(chunk_size=None, randomness='error')
        >>> mf.stochastic(mf.chunked(learner, 4)).batching
        Batching(chunk_size=4, randomness='different')
    """

    chunk_size: int | None = None
    randomness: str = "error"


T = TypeVar("T")
# rule(learner, meta, tasks) -> (grads like meta, Losses), over a batch of tasks
Rule = Callable[["Learner", Any, Tasks], tuple[Any, Losses]]
Check = Callable[[str, Tasks, Any], None]


def task(learner: Learner, meta: Any, support: Any, query: Any) -> tuple[Any, ...]:
    """One task: ``(adapted, query loss after adapting, query loss at params(meta))``, and the
    model state after the inner steps and the query pass for a learner that threads one. The
    loss at ``params(meta)`` is a reported number, computed without gradient."""
    if not isinstance(learner.outer, Stateful):
        adapted = learner.inner(meta, support)
        with torch.no_grad():  # reported, never differentiated: no graph to record
            before = learner.outer(learner.params(meta), query)
        return adapted, learner.outer(adapted, query), before
    start = learner.context.state
    adapted, state = learner.inner(meta, support, start)
    after, state = learner.outer(adapted, state, query)
    with torch.no_grad():
        before, _ = learner.outer(learner.params(meta), start, query)
    return adapted, after, before, state


def task_losses(learner: Learner, meta: Any, support: Any, query: Any) -> tuple[Any, ...]:
    """:func:`task` without the adapted parameters, for a rule that needs only the losses (out
    of ``vmap``, each output costs a step time)."""
    return task(learner, meta, support, query)[1:]


def per_task(
    learner: Learner, chunk_size: int | None = None, each: Callable[..., Any] = task
) -> Callable[..., Any]:
    """``each`` (:func:`task`) vmapped over tasks: ``f(meta, support, query)`` (unchecked)."""
    f = functools.partial(each, learner)
    r = learner.batching.randomness
    return vmap(f, in_dims=(None, 0, 0), randomness=r, chunk_size=chunk_size)


def exact(learner: Learner, meta: Any, tasks: Tasks) -> tuple[Any, Losses]:
    """The meta-gradient differentiated through adaptation (MAML and its relatives).

    Example:
        >>> learner.rule is mf.exact  # mf.maml's rule
        True
        >>> exact_grads, losses = mf.exact(learner, params, tasks)  # meta_grad, unchecked
        >>> all(torch.equal(exact_grads[k], grads[k]) for k in grads)
        True
    """
    batched = per_task(learner, each=task_losses)

    def objective(meta: Any) -> tuple[torch.Tensor, tuple[Any, ...]]:
        after, before, *state = batched(meta, tasks.support, tasks.query)
        mean = after.mean()
        # grad's aux holds tensors only: no None for a model without state
        return mean, (mean, before.mean(), *(combine(learner.context.state, s) for s in state))

    grads, losses = _tree.grad_and_aux(objective, meta)
    return grads, Losses(*losses)


def paired(where: str, tasks: Tasks, like: Any) -> None:
    """The default task check: support and query hold the same kind of data."""
    _checks.tasks(where, tasks, like=like, paired=True)


def _identity(meta: Any) -> Any:
    return meta


class Learner(NamedTuple):
    """A meta-learning algorithm as a record of pure functions of one task (optax's pattern);
    the methods batch them over a leading task dimension and validate their inputs.

    A learner adapts the model parameters to a task with ``inner`` and scores them with
    ``outer``; ``rule`` says how the meta-parameters get their gradient. Options that change
    how this is computed, not what, are wrappers: :func:`metafunc.chunked`,
    :func:`metafunc.remat`, :func:`metafunc.first_order`, :func:`metafunc.stochastic`,
    :func:`metafunc.distributed.data_parallel`.

    Attributes:
        init: ``init(params) -> meta``, the meta-parameters (copies) to learn; checks
            ``params``.
        inner: ``inner(meta, support) -> adapted``, the model parameters adapted to one task's
            support data; a :class:`metafunc.Loop` for learners that take gradient steps.
        outer: ``outer(params, query) -> scalar``, one task's query loss.
        params: ``params(meta) -> params``, where the model parameters sit inside the
            meta-parameters (the only place that knows an algorithm's layout).
        rule: ``rule(learner, meta, tasks) -> (grads, Losses)``, the meta-gradient over a
            batch of tasks: :func:`exact` (through adaptation) unless the algorithm has its
            own (Reptile's pseudo-gradient, iMAML's implicit gradient).
        check: ``check(where, tasks, params)``, the algorithm's own eager check of a
            meta-batch (by default: support and query hold the same kind of data, like the
            parameters).
        batching: how tasks are batched (:class:`Batching`).

    Example:
        >>> def init(params):
        ...     return {name: p.clone() for name, p in params.items()}
        >>> def inner(meta, support):
        ...     return mf.inner_loop(meta, support, loss=loss, lr=0.1, steps=1)
        >>> custom = mf.Learner(init, inner, loss)
        >>> meta = custom.init(params)
        >>> grads, losses = custom.meta_grad(meta, tasks)  # shaped like meta
        >>> grads["0.weight"].shape
        torch.Size([8, 1])
        >>> adapted, after, before = custom.per_task(meta, tasks)  # task by task
        >>> adapted["0.weight"].shape, after.shape
        (torch.Size([2, 8, 1]), torch.Size([2]))
        >>> torch.allclose(losses.loss, after.mean())
        True
        >>> custom.adapt(meta, tasks.support)["0.weight"].shape
        torch.Size([2, 8, 1])
    """

    init: Callable[[Any], Any]
    inner: Callable[[Any, Any], Any]
    outer: Callable[[Any, Any], torch.Tensor]
    params: Callable[[Any], Any] = _identity
    rule: Rule = exact
    check: Check = paired
    batching: Batching = Batching()
    context: Context = Context()

    def bind(self, state: TrainState) -> Learner:
        """This learner with ``state``'s step count and model state as its :class:`Context`:
        what ``adapt``, ``meta_grad``, ``per_task`` and :func:`metafunc.evaluate` of a learner
        whose model keeps state (:func:`metafunc.stateful`) start from, e.g.
        ``mf.evaluate(learner.bind(state), state.meta, tasks)``."""
        if not isinstance(state, TrainState):
            raise TypeError(
                f"bind: state must be a metafunc.TrainState (got {type(state).__name__})"
            )
        return self._replace(context=Context(state.step, state.model_state))

    def adapt(self, meta: Any, support: Any) -> Any:
        """The model parameters adapted to each task of the batched ``support`` (each leaf
        with a leading task dimension)."""
        inner: Any = self.inner
        if isinstance(self.outer, Stateful):
            start = self.context.state
            inner = lambda meta, support: self.inner(meta, support, start)[0]  # noqa: E731
        run = vmap(inner, in_dims=(None, 0), **self.batching._asdict())
        if torch.compiler.is_compiling():
            return run(meta, support)
        _check_support(self, meta, support)
        return _explain_randomness("adapt", lambda: run(meta, support))

    def meta_grad(self, meta: Any, tasks: Tasks) -> tuple[Any, Losses]:
        """``(grads, losses)``: the meta-gradient over the batch of ``tasks``, shaped like
        ``meta``, and the mean query losses after and before adapting.

        Called eagerly (not compiled, not inside a ``torch.func`` transform), it warns with a
        ``RuntimeWarning`` when the loss or the meta-gradient is not finite, naming the first
        leaf that is not and the likely cause (one host sync per call; a training step calls
        ``rule``, not this)."""
        if torch.compiler.is_compiling():
            return self.rule(self, meta, tasks)
        check(self, "meta_grad", meta, tasks)
        grads, losses = _explain_randomness("meta_grad", lambda: self.rule(self, meta, tasks))
        if torch._C._functorch.peek_interpreter_stack() is None:
            _nonfinite.warn("meta_grad", meta, grads, losses.loss)
        return grads, losses

    def per_task(self, meta: Any, tasks: Tasks) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """``(adapted, loss, loss_before)`` task by task (a leading task dimension on each):
        the parameters adapted on each support set and the query loss after adapting and at
        ``params(meta)`` (what :func:`metafunc.evaluate` scores; the second without gradient)."""
        vmapped = per_task(self, self.batching.chunk_size)

        def run() -> tuple[Any, torch.Tensor, torch.Tensor]:
            return cast(tuple[Any, torch.Tensor, torch.Tensor], vmapped(meta, *tasks)[:3])

        if torch.compiler.is_compiling():
            return run()
        check(self, "per_task", meta, tasks)
        return _explain_randomness("per_task", run)


def check_learner(where: str, learner: Any) -> Learner:
    """``learner`` is a :class:`Learner`."""
    if not isinstance(learner, Learner):
        raise TypeError(
            f"{where}: learner must be a metafunc.Learner, e.g. mf.maml(loss) (got "
            f"{type(learner).__name__})"
        )
    return learner


@_checks.once_per_signature
def check(learner: Learner, where: str, meta: Any, tasks: Tasks, meta_name: str = "meta") -> None:
    """Eager validation of ``meta`` and a meta-batch for ``learner``, naming ``where`` and
    ``meta_name``; a signature (structure, shapes, dtypes, devices) that passed is not
    checked again."""
    params = check_meta(learner, where, meta, meta_name)
    check_state(learner, where)
    learner.check(where, tasks, params)


@_checks.once_per_signature
def _check_support(learner: Learner, meta: Any, support: Any) -> None:
    params = check_meta(learner, "adapt", meta, "meta")
    check_state(learner, "adapt")
    _checks.batch("adapt", {"support": support}, like=params)


def check_state(learner: Learner, where: str) -> None:
    """A learner whose model keeps state has one to start from, and only such a learner."""
    state = learner.context.state
    if isinstance(learner.outer, Stateful) and state is None:
        raise ValueError(
            f"{where}: the learner's model keeps state (mf.stateful), so it needs the state to "
            "start from: mf.init_state(learner, opt, params, model_state=state) for a step, "
            "learner.bind(train_state) for adapt, meta_grad, per_task and mf.evaluate"
        )
    if state is not None:
        if not isinstance(learner.outer, Stateful):
            raise ValueError(
                f"{where}: the learner's loss keeps no model state, but a model state was "
                "given (TrainState.model_state); build the loss on a model from mf.stateful"
            )
        bad = [type(t).__name__ for t in _tree.leaves(state) if not isinstance(t, torch.Tensor)]
        if bad:
            raise TypeError(
                f"{where}: the model state must be a pytree of tensors, as mf.stateful returned "
                f"it (got leaves of type {sorted(set(bad))})"
            )


def check_meta(learner: Learner, where: str, meta: Any, meta_name: str) -> Any:
    """``meta`` is a tree of tensors with the layout of this learner's meta-parameters, the one
    ``learner.init`` gives for its model parameters; returns those parameters."""
    _checks.params_tree(where, meta_name, meta)
    try:
        params = learner.params(meta)
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(
            f"{where}: {meta_name} must be this learner's meta-parameters, learner.init(params) "
            f"(got a {type(meta).__name__} for which learner.params failed: "
            f"{type(e).__name__}: {e})"
        ) from e
    _tree.check_same_structure(
        learner.init(params),
        meta,
        where=where,
        expected_name="learner.init(params)",
        got_name=meta_name,
    )
    return params


def _explain_randomness(where: str, run: Callable[[], T]) -> T:
    """``run()``; torch's vmap error for a random operation said in metafunc's terms."""
    try:
        return run()
    except RuntimeError as e:
        if "randomness error mode" not in str(e):
            raise
        raise RuntimeError(
            f"{where}: the model draws random numbers (dropout or another random operation), "
            "which a learner refuses by default; say so with mf.stochastic(learner) (each task "
            "its own draws) and give mf.init_state a seed for the run's random stream, e.g. "
            "learner = mf.stochastic(mf.maml(loss)) and mf.init_state(learner, opt, params, "
            "seed=0); score with mf.eval_mode(fn), which turns dropout off"
        ) from e
