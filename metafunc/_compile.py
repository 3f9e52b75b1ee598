"""The compile wrapper: a step compiled as one graph (ahead of time on the CPU, see
``metafunc._ahead``; with ``torch.compile`` otherwise), once per configuration and device,
reused within the process and persisted across processes."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import pathlib
import platform
import re
import sys
import types
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from . import _ahead, _checks, _tree
from ._fingerprint import fingerprint
from ._types import Step, Tasks, TrainState
from ._version import __version__

logger = logging.getLogger("metafunc")

_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# Identity guards compare object ids, which no other process shares: the fingerprint stands for
# them (it keys the compiled function, and records an object met twice, DUPLICATE_INPUT's "a is
# b"). Value, type and tensor guards stay. torch 2.13 can save none of these with a graph.
_IDENTITY = frozenset(
    {"ID_MATCH", "CLASS_MATCH", "CLOSURE_MATCH", "WEAKREF_ALIVE", "DICT_VERSION", "DUPLICATE_INPUT"}
)
# The compiled functions of this process, by fingerprint, device type and shapes (the last 64).
_COMPILED: OrderedDict[str, Any] = OrderedDict()
# The steps (by name) that torch could not compile ahead of time in this process: not tried again
_NOT_AHEAD: set[str] = set()


def compiled(
    step: Step,
    *,
    mode: str | None = None,
    backend: Any = "inductor",
    options: dict[str, Any] | None = None,
    random: bool = False,
    cache: bool = True,
) -> Step:
    """``step`` (a pure step) compiled with ``torch.compile(fullgraph=True, dynamic=False)``:
    one graph, no graph breaks, compiled on the first call on each device type and reused
    while shapes, dtypes and tree structure stay the same.

    The compiled function is keyed by a fingerprint of what decides its graph
    (``metafunc._fingerprint``: the learner's and optimizer's code and settings, the model,
    the options, the torch and metafunc versions and metafunc's own code), so a step built
    again from an equal configuration reuses it, and a step whose numbers live in 0-d tensors
    (learning rates) runs with new values without a new graph. With ``cache=True`` (and the
    default backend) the compiled step is also saved under ``$TORCHINDUCTOR_CACHE_DIR``
    (default ``/tmp/torchinductor_$USER``), and a new process loads it instead of compiling:
    the key names the saved step, so another configuration's is never loaded, and a damaged
    file is compiled afresh. Deleting the folder is always safe. On the CPU (no CUDA-graph
    ``mode``) the step is compiled ahead of time (``metafunc._ahead``): traced to one graph,
    compiled by AOTInductor into a shared object (two for a large graph, compiled at once) in
    the folder's ``metafunc/``, and run from C++, so a new process loads it without importing
    torch's compiler; a step that cannot be traced that way, and every other case, is compiled
    by ``torch.compile`` and saved with torch's own caches.

    It runs under ``torch.no_grad`` (``grad`` inside it still differentiates). With a
    CUDA-graph ``mode`` (``"reduce-overhead"``, ``"max-autotune"``) each call marks the start
    of a step for the graph trees and returns copies of the outputs, which the next replay
    would otherwise overwrite. ``state.extra`` (the user's own tree) does not enter the graph.
    An error that Dynamo turned into a compiler message is raised again as the eager step
    raises it. ``random``: the step draws random numbers, so Inductor uses torch's own random
    kernels (``fallback_random``), which draw what the eager step draws. A batch of another
    shape compiles another graph, with a warning that says so.

    Example:
        >>> pure = mf.outer_step(learner, opt)
        >>> fast = mf.compiled(pure)  # compiles on its first call
        >>> step = mf.validated(mf.seeded(fast), learner, opt, probe=mf.seeded(pure))  # make_step
        >>> step.guarded  # the optimizer is not wrapped in mf.optim.apply_if_finite
        False
    """
    call = function(
        step.fn,
        where="step",
        mode=mode,
        backend=backend,
        options=options,
        random=random,
        cache=cache,
        check=_step_numbers,
    )

    def run(state: TrainState, tasks: Tasks) -> tuple[TrainState, Any]:
        extra, state = state.extra, state._replace(extra=None)
        new, metrics = call(state, tasks)
        return new._replace(extra=extra), metrics

    return dataclasses.replace(step, fn=run)


def background(step: Step, eager: Step) -> Step:
    """``eager`` while a forked process compiles ``step`` (a :func:`compiled` step with the
    compile cache on) and saves it in torch's compile caches, then ``step``, which loads what
    that process saved: a cold start compiles on another core while the run goes on, instead
    of waiting (``make_step(..., compile="background")``).

    The first call forks; each call after it checks, without waiting, whether the compiling
    process is done, and the first call after that loads the compiled step (a warm first call,
    about a second). Which step is the first compiled one depends on how long the compile took,
    and the eager and compiled steps differ in their last bits, so a run is no longer
    reproducible to the last bit (a resumed run is not bit-identical to an uninterrupted one);
    use ``compile=True`` where that matters. A compile that fails leaves the step eager, with a
    warning that says why. It needs ``os.fork`` (Linux, macOS) and a process where CUDA has
    not started (a forked process cannot use it). A compile still running when the process
    ends, or when the step is dropped, finishes on its own and fills the cache for the next
    run (the next background step's calls reap it).

    Example:
        >>> pure = mf.outer_step(learner, opt)
        >>> step = mf.background(mf.compiled(pure), pure)  # forks on its first call
        >>> step.guarded  # make_step(..., compile="background") wraps it as make_step does
        False
    """
    process: dict[str, Any] = {}  # "pid" and "pipe" while compiling, then "ready" or "failed"

    def run(state: TrainState, tasks: Tasks) -> tuple[TrainState, Any]:
        if _ABANDONED:
            _reap()
        if not process:
            process.update(_fork(step, state, tasks))
        if "pid" in process:
            _poll(process)
        return (step if "ready" in process else eager)(state, tasks)

    weakref.finalize(run, _abandon, process)
    return dataclasses.replace(step, fn=run)


# compiling processes of steps that are gone, reaped by any background step's calls once
# they have ended (a process seen as a zombie may still be exiting: its other threads)
_ABANDONED: set[int] = set()


def _abandon(process: dict[str, Any]) -> None:
    """A background step is gone: its compiling process, if it still has one, is left to
    finish (it fills the cache) and reaped later; the pipe it would report on is closed."""
    if "pid" in process:
        os.close(process.pop("pipe"))
        _ABANDONED.add(process.pop("pid"))


def _reap() -> None:
    """Reap, without waiting, the compiling processes of gone steps that have ended."""
    for pid in list(_ABANDONED):
        try:
            ended = os.waitpid(pid, os.WNOHANG)[0] != 0
        except ChildProcessError:  # reaped by other code
            ended = True
        if ended:
            _ABANDONED.discard(pid)


def _fork(step: Step, state: TrainState, tasks: Tasks) -> dict[str, Any]:
    """A child process that calls ``step`` once (compiling and saving it) and reports through
    a pipe, in one write: ``ok``, or what it raised (:func:`metafunc._ahead.forked`)."""
    if not hasattr(os, "fork"):
        raise ValueError(
            'step: compile="background" forks a process to compile in, which this platform '
            "cannot do; use compile=True"
        )
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        raise ValueError(
            'step: compile="background" forks a process to compile in, and CUDA has started in '
            "this one, which a forked process cannot use; use compile=True"
        )
    # compiles and saves the step; its output goes nowhere (the compile may outlive the caller)
    pid, read = _ahead.forked(lambda: step(state, tasks))
    os.set_blocking(read, False)  # polled: a read with nothing written returns at once
    return {"pid": pid, "pipe": read}


def _poll(process: dict[str, Any]) -> None:
    """If the compiling process has reported (or ended without a report, killed): ``"ready"``,
    or ``"failed"`` with a warning. The pipe tells, not the exit status, which other code may
    have collected (a SIGCHLD handler, or SIGCHLD ignored, which reaps children unasked)."""
    try:  # b"" once it has ended without writing
        report = os.read(process["pipe"], 4096).decode(errors="replace")
    except BlockingIOError:
        return  # nothing written, and its end still open: compiling
    os.close(process.pop("pipe"))
    code = _wait(process.pop("pid"))  # it has reported, so it is ending: reaped now
    if report == "ok":
        process["ready"] = True
        return
    process["failed"] = True
    ended = "without a report" if code is None else f"with code {code}"
    why = report or f"its process ended {ended}"
    warnings.warn(
        f"step: the background compile failed ({why}); the step stays eager",
        RuntimeWarning,
        stacklevel=4,
    )


def _wait(pid: int) -> int | None:
    """The exit code of child ``pid`` once it ends, or ``None`` where other code reaped it."""
    try:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except ChildProcessError:
        return None


def function(
    fn: Any,
    *,
    where: str,
    mode: str | None = None,
    backend: Any = "inductor",
    options: dict[str, Any] | None = None,
    random: bool = False,
    cache: bool = True,
    check: Callable[[Any], Any] | None = lambda out: out,
) -> Any:
    """A pure function of tensor trees ``fn(*args)`` compiled as :func:`compiled` compiles a
    step (keyed, reused, saved and loaded); when loaded, ``check(outputs)`` of its first call
    must agree with that of ``fn`` (one eager call; ``None``: not checked). ``where`` names it
    in warnings. A ``functools.partial`` of a module-level function (``pure_step`` with the
    learner and optimizer) is compiled with its bound records as arguments, so that tensors in
    their closures are graph inputs."""
    base, records = (fn.func, tuple(fn.args)) if _is_bound(fn) else (fn, ())
    held: list[torch.Tensor] = []  # the tensors the records hold, in the fingerprint's order
    key = _key(base, records, mode, backend, options, random, held) if cache else None
    persist = key is not None and backend == "inductor"  # torch saves Inductor's graphs only
    cuda_graphs = mode in _CUDA_GRAPH_MODES
    ahead = persist and mode is None  # on the CPU, compiled ahead of time (metafunc._ahead)
    # the inputs' signature (structure, shapes, dtypes, devices) -> its compiled function,
    # called as ``function(args, leaves)``
    seen: dict[Any, Any] = {}

    def run(*args: Any) -> Any:
        leaves, spec = _tree.flatten(args)  # once: it picks the function and feeds it
        signature = _checks.signature_of(leaves, spec)
        function: Any = seen.get(signature)
        if function is not None and not cuda_graphs:  # the steady state: nothing else to do
            try:
                with torch.no_grad():
                    return function(args, leaves)
            except Exception as e:
                if _from_dynamo(e):
                    _raise_eagerly(fn, args)
                raise
        if signature is None:
            raise TypeError(_unhashable_message(where, leaves))
        if function is None and seen:
            warnings.warn(_recompile_message(where, len(seen)), RuntimeWarning, stacklevel=3)
        inputs = (leaves[0].device.type, signature)  # what names its compiled function
        if function is None and key is not None and ahead and inputs[0] == "cpu":
            done, out = ahead_first_call(_full(key, inputs), signature, args, leaves)
            if done:
                return out
        loaded, first, traced = False, function is None, _traced()
        if first:
            compiled, origin = _function(key, inputs, base, mode, backend, options, random)
            seen[signature] = function = _positional(compiled, records)
            loaded = check is not None and origin == "loaded"
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]

        def afresh() -> Any:  # compiled without the key: neither loaded nor saved
            compiled, _ = _function(None, inputs, base, mode, backend, options, random)
            seen[signature] = _positional(compiled, records)
            with _precompile(False):
                return seen[signature](args, leaves)

        try:
            with torch.no_grad(), _tracing(first, persist), _rng_kept(loaded) as replay:
                out, replaced = _first_call(
                    lambda: function(args, leaves), first and persist, where, afresh
                )
                if loaded and check and not _agrees(check(out), check(replay(lambda: fn(*args)))):
                    # another function's graph saved under this key (a file copied or
                    # renamed) would have given these numbers: never trusted; compiled afresh
                    warnings.warn(_mismatch(where), RuntimeWarning, stacklevel=3)
                    out, replaced = replay(afresh), True
        except torch._dynamo.exc.TorchDynamoException:
            _raise_eagerly(fn, args)
            raise
        # saved when traced here: compiled, or loaded and refused by its guards (saved by other
        # code under this key), never an unkeyed replacement
        if first and persist and not replaced and _traced() > traced:
            _save()
        if cuda_graphs:
            out = _tree.map(torch.clone, out)
        return out

    def ahead_first_call(
        full: str, signature: Any, args: tuple[Any, ...], leaves: list[Any]
    ) -> tuple[bool, Any]:
        """``(True, outputs)`` of the first call compiled ahead of time (reused, loaded or
        built; a loaded one checked against ``fn``), or ``(False, None)`` where torch cannot
        compile it that way."""
        partial = functools.partial(base, *records)
        build = functools.partial(_ahead_build, full, partial, held, args, options, random)
        compiled, origin = _ahead_function(full, build)
        if compiled is None:
            return False, None
        seen[signature] = function = _bound(compiled, held)
        # a loaded step may be another's (files copied); one compiled in parts is checked too
        cut = origin == "compiled" and getattr(compiled, "wiring", None) is not None
        checked = (origin == "loaded" or cut) and check is not None
        with torch.no_grad(), _rng_kept(checked) as replay:
            out = function(args, leaves)
            if checked and check and not _agrees(check(out), check(replay(lambda: fn(*args)))):
                warnings.warn(_mismatch(where, cut), RuntimeWarning, stacklevel=4)
                if (again := build(whole=cut)) is not None:
                    seen[signature] = function = _bound(again, held)
                    out = replay(lambda: function(args, leaves))
        return True, out

    return run


def _ahead_function(full: str, build: Callable[[], Any]) -> tuple[Any, str]:
    """``(compiled, origin)`` on the CPU: the step compiled ahead of time (``metafunc._ahead``)
    named ``full``, this process's (``"reused"``), loaded from the cache folder (``"loaded"``)
    or compiled now by ``build()`` (``"compiled"``); ``None`` where torch cannot trace or
    compile it that way (the step is then compiled by ``torch.compile``)."""
    compiled = _COMPILED.get(full)
    if compiled is not None:
        _remember(full, compiled)
        return compiled, "reused"
    try:
        compiled = _ahead.load(full)
    except Exception as e:  # a file torch could not load: compiled afresh
        logger.warning("%s: the saved compiled step could not be loaded (%s)", full, e)
    if compiled is None:
        return build(), "compiled"
    _remember(full, compiled)
    return compiled, "loaded"


def _ahead_build(
    full: str,
    fn: Any,
    held: list[torch.Tensor],
    args: tuple[Any, ...],
    options: Any,
    random: bool,
    whole: bool = False,
) -> Any:
    """``fn(*args)`` compiled ahead of time (``whole``: in one part, however large) and saved
    as ``full``; ``None`` (with a warning in the log, once a process) where torch cannot trace
    or compile it that way."""
    if full in _NOT_AHEAD:
        return None
    settings = {k: v for k, v in (options or {}).items() if k != "guard_filter_fn"}
    if random:
        settings.setdefault("fallback_random", True)
    try:
        with torch.random.fork_rng(devices=[]):  # the trace draws nothing from the run's stream
            compiled = _ahead.build(full, fn, held, args, settings, whole=whole)
    except Exception as e:  # torch.compile's route raises the user's errors as eager does
        logger.warning("could not compile the step ahead of time (%s); using torch.compile", e)
        _NOT_AHEAD.add(full)
        return None
    _remember(full, compiled)
    return compiled


def _full(key: str, signature: tuple[str, Any]) -> str:
    """The name of a step compiled ahead of time: its key, its inputs, and what its kernels
    were built for (torch's thread count, the CPU's vector instructions)."""
    machine = (torch.get_num_threads(), torch.backends.cpu.get_cpu_capability())
    return hashlib.sha256(f"ahead{key}{signature!r}{machine!r}".encode()).hexdigest()[:40]


def _bound(compiled: Any, held: list[torch.Tensor]) -> Any:
    """A function compiled ahead of time, called as ``function(args, leaves)``."""

    def function(args: tuple[Any, ...], leaves: list[Any]) -> Any:
        return compiled(held, leaves)

    return function


def _positional(compiled: Any, records: tuple[Any, ...]) -> Any:
    """A function compiled by ``torch.compile``, called as ``function(args, leaves)``."""

    def function(args: tuple[Any, ...], leaves: list[Any]) -> Any:
        return compiled(*records, *args)

    return function


def _remember(full: str, function: Any) -> None:
    _COMPILED[full] = function
    _COMPILED.move_to_end(full)
    if len(_COMPILED) > 64:
        _COMPILED.popitem(last=False)


def _from_dynamo(e: BaseException) -> bool:
    """``e`` is Dynamo's (without importing Dynamo where nothing has)."""
    exc = sys.modules.get("torch._dynamo.exc")
    return exc is not None and isinstance(e, exc.TorchDynamoException)


def _raise_eagerly(fn: Any, args: tuple[Any, ...]) -> None:
    """Tracing turns errors raised by user code (a bad loss, a refused model) into compiler
    messages; the eager function raises the original."""
    with torch.no_grad():
        fn(*args)


def _first_call(call: Any, saving: bool, where: str, afresh: Any) -> tuple[Any, bool]:
    """``(call(), False)``, or where torch 2.13 fails to save the graph it traced (it asserts
    "check_fn.guards_state must not be None" after giving up on a guard), ``(afresh(), True)``
    with a warning in the log."""
    try:
        return call(), False
    except AssertionError as e:
        if not (saving and "guards_state" in str(e)):
            raise
        logger.warning("%s: torch could not save the compiled %s (%s)", where, where, e)
        return afresh(), True


def _traced() -> int:
    """The graphs Dynamo traced in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _is_bound(fn: Any) -> bool:
    """``fn`` is records bound to a module-level function (``partial(pure_step, learner,
    optimizer)``)."""
    return (
        isinstance(fn, functools.partial)
        and isinstance(fn.func, types.FunctionType)
        and fn.func.__closure__ is None
        and "<locals>" not in fn.func.__qualname__
        and not fn.keywords
    )


def _key(
    base: Any,
    records: tuple[Any, ...],
    mode: Any,
    backend: Any,
    options: Any,
    random: bool,
    tensors: list[torch.Tensor] | None = None,
) -> str | None:
    if not isinstance(backend, str) or mode in _CUDA_GRAPH_MODES:
        return None  # a backend object or CUDA graphs: compiled on its own, not persisted
    versions = (
        torch.__version__,
        torch.version.git_version,
        __version__,
        _own_source(),
        sys.version,
    )
    return fingerprint(
        base, records, mode, backend, options, random, versions, platform.machine(), tensors=tensors
    )


@functools.cache
def _own_source() -> str:
    """A digest of metafunc's own code: a saved graph inlined it, and code edited under the same
    version (a checkout in development) must not load the graph of the code before."""
    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _function(
    key: str | None,
    signature: tuple[str, Any],
    base: Any,
    mode: Any,
    backend: Any,
    options: Any,
    random: bool,
) -> tuple[Any, str]:
    """``(function, origin)``: the compiled function for ``key`` and these inputs, this
    process's (``"reused"``) or a new one, loaded from torch's caches (saved by an earlier
    process, ``"loaded"``) or to be compiled on its first call (``"compiled"``). Each has a
    code object of its own: Dynamo keeps its graphs (and counts recompiles) per code object,
    and names a saved graph after the function's qualified name, which holds the key and the
    inputs' shapes."""
    kind = signature[0]
    full = None
    if key is not None:
        full = hashlib.sha256(f"{key}{signature!r}".encode()).hexdigest()[:40]
        if full in _COMPILED:
            _COMPILED.move_to_end(full)
            return _COMPILED[full], "reused"
    persist = full is not None and backend == "inductor"
    settings = _options(kind, mode, backend, random, full is not None, options or {})
    hits = torch._dynamo.utils.counters["dynamo_cache"]["dynamo_cache_hit"]
    try:
        function = _compile(base, full, backend, settings, persist)
    except Exception as e:  # a saved graph torch could not install: compile afresh
        logger.warning("the saved compiled step could not be loaded (%s); compiling it", e)
        function, persist = _compile(base, None, backend, settings, False), False
    loaded = persist and torch._dynamo.utils.counters["dynamo_cache"]["dynamo_cache_hit"] > hits
    if full is not None:
        _remember(full, function)
    return function, "loaded" if loaded else "compiled"


def _compile(base: Any, name: str | None, backend: Any, options: Any, persist: bool) -> Any:
    _past_installed_names(base.__globals__)
    private = types.FunctionType(base.__code__.replace(), base.__globals__, base.__name__)
    private.__qualname__ = f"metafunc_{base.__name__}_{name or id(private)}"
    with _tracing(True, persist), _loading_guards() if persist else contextlib.nullcontext():
        function = torch.compile(
            private, fullgraph=True, dynamic=False, backend=backend, options=options
        )
    _past_installed_names(base.__globals__)  # those of a graph it loaded
    return function


def _past_installed_names(scope: dict[str, Any]) -> None:
    """Move Dynamo's counter of the helper names it installs in a module's globals
    (``__builtins_dict___0``...) past those a loaded graph installed there: it numbers them
    from 0 in every process, so a graph traced after one was loaded would reuse a name and
    fail ("Name '__builtins_dict___0' already exists in scope", torch 2.13)."""
    from torch._dynamo import bytecode_transformation

    numbers = [int(m.group(1)) for n in scope if (m := _INSTALLED.match(n))]
    if numbers:
        start = max(max(numbers) + 1, next(bytecode_transformation._unique_id_counter))
        bytecode_transformation._unique_id_counter = itertools.count(start)


_INSTALLED = re.compile(r"^__\w+?_(\d+)$")


def _mismatch(where: str, cut: bool = False) -> str:
    if cut:
        return (
            f"{where}: the {where} compiled in two parts gave other numbers than the eager "
            f"{where} on its first call; it was compiled again in one part"
        )
    return (
        f"{where}: the compiled {where} loaded from the compile cache gave other numbers "
        f"than the eager {where} on its first call, so it was not this {where}'s (a cache file "
        "copied or renamed); it was compiled afresh"
    )


def _step_numbers(out: tuple[TrainState, Any]) -> Any:
    """What a loaded step is checked on: of its ``(state, metrics)``, the metrics (losses and
    gradient norm, from before the update) and the state's integers and flags. Adam's first
    update moves a parameter whose gradient is rounding noise (a conv bias before a batch norm)
    by plus or minus its rate either way, so updated parameters differ by more than rounding."""
    state, metrics = out
    return metrics, [t for t in _tree.leaves(state) if not t.is_floating_point()]


def _agrees(compiled: Any, eager: Any) -> bool:
    """A loaded function's checked outputs agree with the eager function's: the same shapes,
    integers and flags, and each floating-point output's mean within 1% (another function's
    graph is off by far more; per-task scores after a few float32 inner steps on a conv net
    differ by rounding that adds up, 0.2% measured)."""
    pairs = zip(_tree.leaves(compiled), _tree.leaves(eager), strict=True)
    return all(
        a.shape == b.shape
        and (
            torch.allclose(
                a.double().mean(), b.double().mean(), rtol=1e-2, atol=1e-5, equal_nan=True
            )
            if a.is_floating_point()
            else torch.equal(a, b)
        )
        for a, b in pairs
    )


@contextlib.contextmanager
def _rng_kept(on: bool) -> Any:
    """While ``on``, a ``replay(f)`` that runs ``f`` with torch's generators where they were at
    the start (the check of a loaded step draws what the step drew) and leaves them where the
    step left them."""
    if not on:
        yield lambda f: f()
        return
    start = torch.random.get_rng_state()
    initialized = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    cuda = torch.cuda.get_rng_state_all() if initialized else None

    def replay(f: Any) -> Any:
        end = torch.random.get_rng_state()
        end_cuda = torch.cuda.get_rng_state_all() if cuda is not None else None
        torch.random.set_rng_state(start)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        try:
            return f()
        finally:
            torch.random.set_rng_state(end)
            if end_cuda is not None:
                torch.cuda.set_rng_state_all(end_cuda)

    yield replay


def _options(
    device: str, mode: str | None, backend: Any, random: bool, keyed: bool, given: dict[str, Any]
) -> dict[str, Any]:
    """``torch.compile`` options of the step. With Inductor on the CPU the graph's wrapper is
    C++ (``cpp_wrapper``): one shared object for the graph compiles faster than one per
    kernel, and calling each kernel from Python costs the small steps up to a third of their
    time (``python -m benchmarks.studies.step_variants``). A step with random operations uses
    torch's own random kernels (``fallback_random``): Inductor's draw other numbers than the
    eager step does. ``given`` (the caller's options) wins."""
    options: dict[str, Any] = {"guard_filter_fn": _portable if keyed else _all}
    if backend == "inductor":
        if random:
            options["fallback_random"] = True
        if device == "cpu":
            options["cpp_wrapper"] = True
    options.update(given)
    if mode is not None and backend == "inductor":
        options = {**torch._inductor.list_mode_options(mode), **options}
    return options


def _portable(entries: Any) -> list[bool]:
    """Dynamo's ``guard_filter_fn`` for a keyed step: the guards on the step's arguments (the
    learner and optimizer records, the state, the tasks) and on global state (grad mode, the
    default device), but no identity checks (the fingerprint stands for them) and none on the
    globals the traced code reads (torch's and metafunc's modules are fixed by the versions in
    the key, the user's globals are in the fingerprint; torch 2.13 cannot load those guards
    outside a trace)."""
    return [
        e.guard_type not in _IDENTITY
        and not (_IDENTITY & set(e.derived_guard_types))
        and not e.name.startswith("G[")
        and "__import_" not in e.name
        for e in entries
    ]


def _all(entries: Any) -> list[bool]:
    return [True] * len(entries)


def _tracing(first: bool, keyed: bool) -> Any:
    """Dynamo's settings for a call that may trace (the first with these shapes): numbers read
    from the records are constants of the graph from the start (unspecialised, a float that
    cannot become a tensor makes Dynamo trace the step twice), and a keyed step is saved."""
    if not first:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch._dynamo.config.patch(specialize_float=True))
    stack.enter_context(_precompile(keyed))
    return stack


@contextlib.contextmanager
def _precompile(on: bool) -> Any:
    """While ``on``: Dynamo's caching precompile (saving and loading whole compiled graphs with
    the compile caches), and Inductor told, rather than asking a compiler in a subprocess in
    every process, that the CPU's vector instructions work (it still reads which the CPU has)
    and not to precompile torch's headers (cheaper to compile without, and checking them costs
    every new process a subprocess)."""
    if not on:  # off, also inside a call where it was on
        with torch._dynamo.config.patch(caching_precompile=False):
            yield
        return
    inductor = {"cpp.vec_isa_ok": True, "cpp_cache_precompile_headers": False}
    with (
        torch._dynamo.config.patch(caching_precompile=True),
        torch._inductor.config.patch(inductor),
    ):
        yield


@contextlib.contextmanager
def _loading_guards() -> Any:
    """A tracing context for Dynamo's loading of a saved graph's guards: torch 2.13 rebuilds
    some of them (on imported modules) as if it were tracing, and fails outside a trace."""
    if torch._guards.TracingContext.try_get() is not None:
        yield
        return
    with torch._guards.tracing(torch._guards.TracingContext(None)):
        yield


def _save() -> None:
    """Write the graphs compiled in this process into Dynamo's cache, where a new process
    finds them; a failure to write loses nothing but the next process's time."""
    from torch._dynamo.precompile_context import PrecompileContext

    try:
        PrecompileContext.save_to_dynamo_cache()
    except Exception as e:  # the cache is an optimisation; the step has already run
        logger.warning("could not save the compiled step for later processes: %s", e)


def _unhashable_message(where: str, leaves: list[Any]) -> str:
    kinds = sorted({type(t).__name__ for t in leaves if t.__hash__ is None})
    return (
        f"{where}: the compiled {where} takes trees of tensors and hashable values (numbers, "
        f"strings); got leaves of type {', '.join(kinds)}"
    )


def _recompile_message(where: str, compiled: int) -> str:
    return (
        f"{where}: a meta-batch of new shapes (a last, smaller batch from a DataLoader, or new "
        f"shots) compiles the {where} again, which takes about as long as its first call; keep "
        f"batches of one shape (DataLoader(..., drop_last=True)) to avoid it ({compiled} "
        "shape(s) compiled before)"
    )
