"""The outer step: meta-gradient and optimizer update as one pure, compiled function."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import _checks, _tree
from . import distributed as _dist
from ._learner import Learner, Metrics
from ._types import Tasks, TrainState
from .optim import Optimizer, apply_updates, last_finite

Step = Callable[[TrainState, Tasks], tuple[TrainState, Metrics]]
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def init_state(learner: Learner, optimizer: Optimizer, params: Any) -> TrainState:
    """The state before the first step: meta-parameters, optimizer state, step 0.

    Example:
        >>> state = mf.init_state(mf.maml(loss), mf.optim.adam(1e-3), params)
    """
    _check_types("init_state", learner, optimizer)
    meta = learner.init(params)
    device = _tree.leaves(meta)[0].device
    return TrainState(meta, optimizer.init(meta), torch.zeros((), dtype=torch.int64, device=device))


def make_step(
    learner: Learner,
    optimizer: Optimizer,
    *,
    compile: bool = True,
    mode: str | None = None,
    backend: Any = "inductor",
) -> Step:
    """The outer step ``step(state, tasks) -> (state, metrics)``, compiled once.

    One pure function computes the meta-gradient over the whole meta-batch (vmapped over
    tasks) and applies the optimizer update. With ``compile=True`` it is wrapped in
    ``torch.compile(fullgraph=True, dynamic=False)``: one graph, no graph breaks, compiled on
    the first call and reused while shapes, dtypes and tree structure stay the same. The
    eager function is the reference and gives the same numbers. Inputs are validated eagerly
    before a call whose signature (structures, shapes, dtypes, devices) has not been seen, and
    the step runs under ``torch.no_grad`` (``grad`` inside it still differentiates), so task
    tensors that require grad leave no autograd graph behind.

    Metrics are tensors (no host sync): ``loss`` and ``loss_before`` (mean query loss after and
    before adaptation), ``grad_norm`` (of the meta-gradient), ``finite`` and ``finite_leaves``
    (a bool vector, one entry per leaf of ``meta`` in the order of ``metafunc._tree.leaves``:
    its gradient is finite; it lets the training loop name the first bad parameter without
    computing anything more per step).

    ``finite`` says whether the step's numbers were all finite: the loss, and with an optimizer
    wrapped in :func:`metafunc.optim.apply_if_finite` the guard's verdict on the gradient and
    the update (the guard then kept the previous state: only the step counter advanced);
    without a guard, the gradient and the new ``meta`` and ``opt_state`` themselves (which a
    non-finite update has then written into the state). A loss that is not finite makes the
    gradient NaN before the optimizer sees it, so a guard refuses that step too.

    With a CUDA-graph ``mode`` (``"reduce-overhead"``, ``"max-autotune"``) each call marks the
    start of a step for the graph trees and returns copies of the outputs, which the next replay
    would otherwise overwrite.

    Args:
        learner: e.g. ``mf.maml(...)`` (or ``mf.distributed.data_parallel(mf.maml(...))``).
        optimizer: e.g. ``mf.optim.adam(1e-3)``.
        compile: compile with ``torch.compile``; ``False`` runs eagerly.
        mode: ``torch.compile`` mode, e.g. ``"reduce-overhead"`` for CUDA graphs.
        backend: ``torch.compile`` backend.

    Example:
        >>> step = mf.make_step(learner, mf.optim.adam(1e-3))
        >>> state, metrics = step(state, tasks)
    """
    _check_types("make_step", learner, optimizer)
    _checks.boolean("make_step", "compile", compile)

    def step(state: TrainState, tasks: Tasks) -> tuple[TrainState, Metrics]:
        grads, metrics = learner.meta_grad(state.meta, tasks)
        leaf_ok = _tree.finite_leaves(grads)
        grad_norm = _tree.global_norm(grads)
        # The gradient of a loss that is not finite is no gradient, even where it came out
        # finite (L1's at a NaN target is): make it NaN, so a guard refuses the update.
        loss_ok = torch.isfinite(metrics["loss"])
        grads = _tree.map(lambda g: torch.where(loss_ok, g, torch.nan), grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.meta)
        meta = apply_updates(state.meta, updates)
        # A guarded optimizer (optim.apply_if_finite) judged the update and kept the state if
        # it was not finite; without a guard the new state itself must be finite.
        verdict = last_finite(opt_state)
        if verdict is None:
            verdict = leaf_ok.all() & _tree.all_finite((meta, opt_state))
        metrics = {
            **metrics,
            "grad_norm": grad_norm,
            "finite": verdict & loss_ok,
            "finite_leaves": leaf_ok,
        }
        return TrainState(meta, opt_state, state.step + 1), metrics

    # Dynamo caches compiled graphs on the function's code object, which every make_step
    # shares: after 8 steps (learners, shapes) one process would hit its recompile limit. A
    # private copy of the code object gives each step its own cache.
    step.__code__ = step.__code__.replace()
    run = step
    if compile:
        run = torch.compile(step, fullgraph=True, dynamic=False, mode=mode, backend=backend)
    cuda_graphs = compile and mode in _CUDA_GRAPH_MODES

    @_checks.once_per_signature
    def check(state: TrainState, tasks: Tasks) -> None:
        if not isinstance(state, TrainState):
            raise TypeError(
                f"step: state must be a metafunc.TrainState from init_state (got {type(state).__name__})"
            )
        learner.check("step", state.meta, tasks, meta_name="state.meta")
        counter = state.step
        if not (
            isinstance(counter, torch.Tensor) and counter.dtype == torch.int64 and counter.ndim == 0
        ):
            got = (
                f"{counter.dtype} of shape {tuple(counter.shape)}"
                if isinstance(counter, torch.Tensor)
                else type(counter).__name__
            )
            raise TypeError(f"step: state.step must be an int64 scalar tensor (got {got})")
        _tree.check_same_structure(
            optimizer.init(state.meta),
            state.opt_state,
            where="step",
            expected_name="optimizer.init(state.meta)",
            got_name="state.opt_state",
        )
        _probe(step, state, tasks)

    def checked(state: TrainState, tasks: Tasks) -> tuple[TrainState, Metrics]:
        check(state, tasks)
        try:
            with torch.no_grad():
                if not compile:
                    return step(state, tasks)
                if cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                try:
                    out = run(state, tasks)
                except torch._dynamo.exc.TorchDynamoException:
                    # Tracing turns errors raised by user code (a bad loss, a refused model)
                    # into compiler messages; the eager step raises the original, readable one.
                    step(state, tasks)
                    raise
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e):
                raise _out_of_memory(e, tasks) from e
            raise
        return _tree.map(torch.clone, out) if cuda_graphs else out

    return checked


def _probe(step: Step, state: TrainState, tasks: Tasks) -> None:
    """Run the eager step once on copies of the state and of as few tasks as the process group
    allows (one without torchrun), so that a model or loss that cannot run as a pure function
    fails here with a message that says what it must not do, with the data it was given
    (compiled, the same mistake surfaces as a compiler message), and so that one that writes
    into its inputs or parameters in place is caught before it changes the caller's tensors."""
    given = tasks
    n = min(_tree.leaves(tasks.support)[0].shape[0], _dist.world_size())
    state = _tree.map(torch.clone, state)
    tasks = _tree.map(lambda t: t[:n].clone(), tasks)
    watched = _tree.named_leaves(state, "state") + _tree.named_leaves(tasks, "tasks")
    versions = [t._version for _, t in watched]
    try:
        with torch.no_grad():
            step(state, tasks)
    except Exception as e:
        if _raised_by_metafunc(e):
            raise
        raise _user_code_error(e, state, given) from e
    for (name, t), version in zip(watched, versions, strict=True):
        if t._version != version:
            raise ValueError(
                f"step: the model or loss wrote in place into {name} during the step; under "
                "vmap and grad they must be pure functions: compute new tensors (x = x * 2) "
                "instead of modifying the ones they are given (x *= 2, x.mul_(2), "
                "x[0] = ..., param.data.copy_(...))"
            )


_HINTS = (
    (
        ("inplace", "in-place", "in place"),
        "The model or loss writes in place into a tensor it was given (an input, a parameter "
        "or a buffer); under vmap and grad it must be pure: write x = x * 2, not x *= 2 or "
        "x.mul_(2).",
    ),
    (
        (".item()", "tolist", "data-dependent", "data dependent", "boolean value of tensor"),
        "The model or loss reads a tensor's value on the host (.item(), .tolist(), float(t), "
        "bool(t) or an if on a tensor); under vmap and grad values stay tensors: use "
        "torch.where instead of if.",
    ),
    (
        ("to return a scalar",),
        "The loss must return one scalar per task, e.g. the mean over the examples.",
    ),
    (
        ("shapes cannot be multiplied", "size mismatch", "must match the size", "sizes of tensors"),
        "The data does not fit the model: check the feature dimensions of the task tensors "
        "(tasks, examples, features...) against the model's input.",
    ),
    (
        ("scalar type", "same dtype", "dtype"),
        "The data's dtype does not fit the model's: convert the inputs, e.g. x.float() for "
        "uint8 images, and keep labels int64.",
    ),
    (
        ("out of bounds", "out of range"),
        "A class label is out of range for the model's outputs (labels 0..classes-1).",
    ),
)


def _raised_by_metafunc(e: BaseException) -> bool:
    """Whether the innermost frame of ``e`` is metafunc's own (its messages are already ours)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    here = Path(__file__).parent
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).is_relative_to(here)


def _user_code_error(e: Exception, state: TrainState, tasks: Tasks) -> Exception:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    low = str(e).lower()
    hint = next(
        (text for keys, text in _HINTS if any(k in low for k in keys)),
        "Under vmap and grad the model and loss must be pure functions of their arguments.",
    )
    data = ", ".join(
        f"{name} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
        for name, t in _tree.named_leaves(tasks, "tasks")
    )
    message = (
        f"step: the model or loss failed on its first call with this data (state.step "
        f"{int(state.step)}; {data}): {type(e).__name__}: {first} {hint}"
    )
    kind = type(e) if type(e) in (RuntimeError, ValueError, TypeError, IndexError) else RuntimeError
    return kind(message)


def _out_of_memory(e: Exception, tasks: Tasks) -> Exception:
    n = _tree.leaves(tasks.support)[0].shape[0]
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return type(e)(
        f"step: out of memory for a meta-batch of {n} tasks ({first}); vmap holds every task's "
        f"activations at once: give the learner chunk_size= to hold fewer, e.g. "
        f"mf.maml(loss, ..., chunk_size={max(n // 4, 1)}), or use a smaller meta-batch"
    )


def _check_types(where: str, learner: Any, optimizer: Any) -> None:
    if not isinstance(learner, Learner):
        raise TypeError(
            f"{where}: learner must be a metafunc.Learner, e.g. mf.maml(loss) (got {type(learner).__name__})"
        )
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{where}: optimizer must be a metafunc.optim.Optimizer, e.g. mf.optim.adam(1e-3) "
            f"(got {type(optimizer).__name__})"
        )
