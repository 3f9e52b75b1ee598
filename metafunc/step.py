"""The outer step: meta-gradient and optimizer update as one pure, compiled function."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from . import _checks, _guards, _tree
from . import distributed as _dist
from ._learner import Learner, Metrics
from ._types import Tasks, TrainState
from .optim import Optimizer, apply_updates, last_finite

Step = Callable[[TrainState, Tasks], tuple[TrainState, Metrics]]
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def init_state(
    learner: Learner, optimizer: Optimizer, params: Any, *, seed: int | None = None
) -> TrainState:
    """The state before the first step: meta-parameters, optimizer state, step 0, and with
    ``seed`` the random stream of the model's random operations.

    Args:
        learner: e.g. ``mf.maml(loss)``.
        optimizer: e.g. ``mf.optim.adam(1e-3)``.
        params: the model parameters to start from, e.g. from :func:`metafunc.pure`.
        seed: the seed of the model's random operations (dropout), an integer in [0, 2**63);
            needed, and only used, when the learner was built with ``randomness="different"``
            or ``"same"``. It becomes ``TrainState.rng``, saved with the checkpoints.

    Raises:
        ValueError: a learner with random operations and no ``seed``.

    Example:
        >>> state = mf.init_state(mf.maml(loss), mf.optim.adam(1e-3), params)
        >>> state = mf.init_state(mf.maml(loss, randomness="different"), opt, params, seed=0)
    """
    _check_types("init_state", learner, optimizer)
    if seed is not None:
        seed = _checks.integer("init_state", "seed", seed, minimum=0)
        if seed >= 2**63:
            raise ValueError(f"init_state: seed must be an integer < 2**63 (got {seed})")
    elif learner.randomness != "error":
        raise ValueError(
            f"init_state: the learner draws random numbers (randomness={learner.randomness!r}), "
            "so the run needs a seed for them, e.g. mf.init_state(learner, opt, params, seed=0)"
        )
    meta = learner.init(params)
    device = _tree.leaves(meta)[0].device
    step = torch.zeros((), dtype=torch.int64, device=device)
    rng = None if seed is None else torch.tensor([seed, 0], dtype=torch.int64)
    return TrainState(meta, optimizer.init(meta), step, rng)


def make_step(
    learner: Learner,
    optimizer: Optimizer,
    *,
    compile: bool = True,
    mode: str | None = None,
    backend: Any = "inductor",
    options: dict[str, Any] | None = None,
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

    Random operations in the model (dropout; a learner built with ``randomness="different"``)
    draw from torch's default generators of the CPU and of the parameters' device, which the
    step forks: it seeds them with a hash of ``state.rng``'s seed, its count of steps drawn
    and the process's rank, and puts the caller's generator states back afterwards. Each step
    thus draws a stream of its own that depends only on the seed and the step (not on what
    ran before or after, or on the global RNG), a resumed run draws exactly what the
    uninterrupted one did, and the new state's ``rng`` counts one more step. Compiled with
    Inductor, such a step uses torch's own random kernels (``fallback_random``), so it draws
    what the eager step draws.

    Args:
        learner: e.g. ``mf.maml(...)`` (or ``mf.distributed.data_parallel(mf.maml(...))``).
        optimizer: e.g. ``mf.optim.adam(1e-3)``.
        compile: compile with ``torch.compile``; ``False`` runs eagerly.
        mode: ``torch.compile`` mode, e.g. ``"reduce-overhead"`` for CUDA graphs.
        backend: ``torch.compile`` backend.
        options: ``torch.compile`` options for Inductor, over metafunc's own: with Inductor on
            the CPU the step's wrapper is C++ (``cpp_wrapper``; ``{"cpp_wrapper": False}``
            gives the Python one back), and a step with random operations uses torch's own
            random kernels (``fallback_random``).

    Example:
        >>> step = mf.make_step(learner, mf.optim.adam(1e-3))
        >>> state, metrics = step(state, tasks)
    """
    _check_types("make_step", learner, optimizer)
    _checks.boolean("make_step", "compile", compile)
    if options is not None and not isinstance(options, dict):
        raise TypeError(
            f"make_step: options must be a dict of torch.compile options, e.g. "
            f"{{'cpp_wrapper': False}} (got {type(options).__name__})"
        )

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
    cuda_graphs = compile and mode in _CUDA_GRAPH_MODES
    compiled: dict[str, Step] = {}  # per device type, compiled on its first call

    def run(state: TrainState, tasks: Tasks) -> tuple[TrainState, Metrics]:
        kind = _tree.leaves(state.meta)[0].device.type
        if kind not in compiled:
            compiled[kind] = _compile(
                step, kind, mode, backend, learner.randomness != "error", options or {}
            )
        return compiled[kind](state, tasks)

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
        _check_rng(state.rng, learner.randomness)
        _tree.check_same_structure(
            optimizer.init(state.meta),
            state.opt_state,
            where="step",
            expected_name="optimizer.init(state.meta)",
            got_name="state.opt_state",
        )
        with _random_stream(state):  # the probe draws too: never from the caller's RNG
            _probe(step, state, tasks)

    def checked(state: TrainState, tasks: Tasks) -> tuple[TrainState, Metrics]:
        check(state, tasks)
        rng = state.rng
        if rng is not None:
            # The stream lives on the CPU, outside the compiled function.
            state = state._replace(rng=None)
        try:
            with torch.no_grad(), _random_stream(state, rng):
                if not compile:
                    out = step(state, tasks)
                else:
                    if cuda_graphs:
                        torch.compiler.cudagraph_mark_step_begin()
                    try:
                        out = run(state, tasks)
                    except torch._dynamo.exc.TorchDynamoException:
                        # Tracing turns errors raised by user code (a bad loss, a refused
                        # model) into compiler messages; the eager step raises the original.
                        step(state, tasks)
                        raise
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e):
                raise _out_of_memory(e, tasks) from e
            raise
        if cuda_graphs:
            out = _tree.map(torch.clone, out)
        if rng is not None:
            out = (out[0]._replace(rng=rng + _ONE_STEP), out[1])
        return out

    return checked


_ONE_STEP = torch.tensor([0, 1])


def _compile(
    step: Step, device: str, mode: str | None, backend: Any, random: bool, given: dict[str, Any]
) -> Step:
    """``torch.compile`` of the whole step: one graph, static shapes. With Inductor on the CPU
    the graph's wrapper is C++ (``cpp_wrapper``): calling each kernel from Python costs the
    small steps up to a third of their time (``python -m benchmarks.studies.step_variants``). A step
    with random operations uses torch's own random kernels (``fallback_random``): Inductor's
    draw other numbers than the eager step does. ``given`` (the caller's options) wins."""
    # identity checks of torch's and metafunc's own modules and functions are not repeated
    # on every call (metafunc/_guards.py); everything user code can change stays guarded
    options: dict[str, Any] = {"guard_filter_fn": _guards.keep}
    if backend == "inductor":
        if random:
            options["fallback_random"] = True
        if device == "cpu":
            options["cpp_wrapper"] = True
    options.update(given)
    if mode is not None and backend == "inductor":
        options = {**torch._inductor.list_mode_options(mode), **options}
    return torch.compile(step, fullgraph=True, dynamic=False, backend=backend, options=options)


@contextmanager
def _random_stream(state: TrainState, rng: torch.Tensor | None = None) -> Iterator[None]:
    """torch's default generators of the CPU and of the parameters' device seeded for this
    step of the stream ``rng`` (default ``state.rng``; none: nothing to do) and this rank's
    share of the tasks, their states put back on exit."""
    rng = state.rng if rng is None else rng
    if rng is None:
        yield
        return
    seed, drawn = rng.tolist()
    seed = stream_seed(seed, drawn, _dist.rank())
    device = _tree.leaves(state.meta)[0].device
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
        return
    module = torch.get_device_module(device.type)
    index = module.current_device() if device.index is None else device.index
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.default_generator.manual_seed(seed)
        with module.device(index):
            module.manual_seed(seed)
        yield


def stream_seed(*values: int) -> int:
    """A seed in [0, 2**63) mixed from ``values`` (splitmix64 over each in turn), so that
    neighbouring steps and seeds get unrelated generator seeds. torch's CPU generator keeps 32
    bits of it (CUDA's all 64), so two steps of a long run may share a stream by chance."""
    h = 0
    for v in values:
        h = (h ^ v) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


_MASK64 = 2**64 - 1


def _check_rng(rng: Any, randomness: str) -> None:
    if rng is None:
        if randomness != "error":
            raise ValueError(
                f"step: the learner draws random numbers (randomness={randomness!r}), so "
                "state.rng must hold the run's random stream: build the state with "
                "mf.init_state(learner, opt, params, seed=0) (got state.rng=None)"
            )
        return
    ok = (
        isinstance(rng, torch.Tensor)
        and rng.dtype == torch.int64
        and rng.shape == (2,)
        and rng.device.type == "cpu"
    )
    if not ok:
        got = (
            f"{rng.dtype} of shape {tuple(rng.shape)} on {rng.device}"
            if isinstance(rng, torch.Tensor)
            else type(rng).__name__
        )
        raise TypeError(
            "step: state.rng must be None or an int64 CPU tensor (seed, steps drawn) from "
            f"mf.init_state(..., seed=...) (got {got})"
        )


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
