"""The compiled step ahead of time, on the CPU: traced once to one graph of torch's operations
(``make_fx``), compiled by AOTInductor into a shared object saved in the cache folder (a large
graph into two, compiled at once on two cores), and run from C++. A new process loads that
file and runs it without importing Dynamo or Inductor (about a millisecond, where
``torch.compile``'s own caches cost it a second and a half of imports and guards), and the step
has no Python wrapper around its kernels.

A saved step is three files named by its key: ``<key>.so`` (the compiled code), ``<key>.json``
(the operations it leaves to torch's own kernels, read by the runner) and ``<key>.pkl`` (its
key, the SHA-256 of the others, how to rebuild the output tree), and ``<key>.1.so`` and
``<key>.1.json`` for a second part. A file of another key, or damaged, is never loaded: it is
compiled afresh. Deleting the folder is always safe.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import getpass
import hashlib
import importlib
import json
import operator
import os
import pathlib
import pickle
import re
import shlex
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from unittest import mock

import torch

from . import _tree

# what this process compiled and loaded ahead of time (read by the tests and the benchmarks)
COUNTS: collections.Counter[str] = collections.Counter()
# Inductor's settings for every build (the caller's options win), and for the threads that
# prepare it (a patch of Inductor's settings holds in its own thread only)
_SETTINGS = {
    # the vector instructions the CPU lists are taken as usable: Inductor otherwise compiles
    # and loads a test program for each (about 6 s, once per cache folder)
    "cpp.vec_isa_ok": True,
    # the wrapper (allocations and calls of the kernels) at -Og, not torch's -O1: about 1.3 s
    # less to compile for the sine step, and a step no slower (-O0: 6% slower)
    "aot_inductor.compile_wrapper_opt_level": "Og",
    # torch's headers precompiled while the step is traced (_headers_precompiled_beside)
    "aot_inductor.precompile_headers": True,
}


def folder() -> pathlib.Path:
    """Where saved steps live: ``$TORCHINDUCTOR_CACHE_DIR/metafunc`` (torch's default
    ``/tmp/torchinductor_$USER``), beside torch's own caches."""
    root = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not root:
        user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
        root = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    return pathlib.Path(root) / "metafunc"


# where a step cut in parts gets its values (see _cut): for each part, its inputs' sources,
# and the step's outputs' sources; a source is (-1, i), the step's input i, or (p, k), output k
# of part p
Wiring = tuple[list[list[tuple[int, int]]], list[tuple[int, int]]]


class Compiled:
    """A step compiled ahead of time: ``self(held, leaves)`` runs it on the tensors among
    ``leaves`` (its arguments flattened; made contiguous, as they were traced) and the tensors
    its records hold (``held``, in the order the fingerprint met them; those it reads are
    inputs, so a rate held in a tensor can change), and rebuilds the output tree. A step cut in
    parts (:func:`_cut`) runs them in order, each on the values its wiring names."""

    def __init__(self, runners: list[Any], manifest: dict[str, Any]) -> None:
        self.runners = runners
        self.wiring: Wiring | None = manifest["wiring"]
        self.spec = manifest["spec"]
        self.constants: dict[int, Any] = manifest["constants"]
        self.held: list[int] = manifest["held"]
        self.count = manifest["leaves"]

    def __call__(self, held: list[torch.Tensor], leaves: list[Any]) -> Any:
        inputs = [t.contiguous() for t in leaves if isinstance(t, torch.Tensor)]
        inputs += [held[i] for i in self.held]
        outputs = self.runners[0].run(inputs) if self.wiring is None else self._parts(inputs)
        if self.constants:
            given = iter(outputs)
            outputs = [
                self.constants[i] if i in self.constants else next(given) for i in range(self.count)
            ]
        return self.spec.unflatten(outputs)

    def _parts(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The parts in order: ``(-1, i)`` is the step's input ``i``, ``(p, k)`` output ``k`` of
        part ``p``, made contiguous as it was compiled for."""
        assert self.wiring is not None
        sources, outputs = self.wiring
        got: list[list[torch.Tensor]] = []

        def value(p: int, k: int) -> torch.Tensor:
            return inputs[k] if p < 0 else got[p][k].contiguous()

        for runner, wires in zip(self.runners, sources, strict=True):
            got.append(runner.run([value(p, k) for p, k in wires]))
        return [inputs[k] if p < 0 else got[p][k] for p, k in outputs]


def _names(part: int) -> tuple[str, str]:
    """The suffixes of part ``part``'s files: its shared object and the calls it leaves to
    torch's own kernels."""
    return ("so", "json") if part == 0 else (f"{part}.so", f"{part}.json")


def load(key: str) -> Compiled | None:
    """The step saved under ``key``, or ``None`` where there is none, or where what is there is
    another key's or damaged (its files are not the ones its manifest names)."""
    try:
        manifest = pickle.loads((folder() / f"{key}.pkl").read_bytes())
        files = {}
        for part in range(len(manifest["wiring"][0]) if manifest["wiring"] else 1):
            so, calls = _names(part)
            files[so] = (folder() / f"{key}.{so}").read_bytes()
            if (folder() / f"{key}.{calls}").exists():
                files[calls] = (folder() / f"{key}.{calls}").read_bytes()
    except Exception:  # none saved, or a damaged manifest
        return None
    if (
        not isinstance(manifest, dict)
        or manifest.get("key") != key
        or manifest.get("sha256") != _digest(files)
    ):
        return None
    runners = [
        torch._C._aoti.AOTIModelContainerRunnerCpu(str(folder() / f"{key}.{so}"), 1)
        for so in files
        if so.endswith("so")
    ]
    COUNTS["loaded"] += 1
    return Compiled(runners, manifest)


def build(
    key: str,
    fn: Any,
    held: list[torch.Tensor],
    args: tuple[Any, ...],
    options: dict[str, Any],
    whole: bool = False,
) -> Compiled:
    """``fn(*args)`` traced, compiled, saved under ``key`` and loaded. Tensors met in ``held``
    (by identity) become inputs of the graph; other tensors the code reads are constants of
    it, fixed by the key (metafunc's own, and those of the user's code the fingerprint met).
    A large graph is compiled in two parts at once (:func:`_cut`, :func:`_at_once`), unless
    ``whole``."""
    from torch.fx.experimental.proxy_tensor import make_fx

    leaves, spec = _tree.flatten(args)
    where = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor)]
    out: dict[str, Any] = {}

    def flat(*tensors: torch.Tensor) -> list[torch.Tensor]:
        given = list(leaves)
        for i, t in zip(where, tensors, strict=True):
            given[i] = t
        result, out["spec"] = _tree.flatten(fn(*spec.unflatten(given)))
        out["constants"] = {i: v for i, v in enumerate(result) if not isinstance(v, torch.Tensor)}
        out["leaves"] = len(result)
        return [v for v in result if isinstance(v, torch.Tensor)]

    inputs = [leaves[i].contiguous() for i in where]
    folder().mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=folder(), prefix=f"{key}.") as work,
        _headers_precompiled_beside() as headers,
    ):
        # decomposed as Inductor would (see _traced_once), with metafunc's own forms; some of
        # Inductor's decompositions read torch._inductor.lowering, there once it is imported
        importlib.import_module("torch._inductor.compile_fx")
        from torch._inductor.decomposition import select_decomp_table

        table = {**select_decomp_table(), **_DECOMPOSED}
        with torch.no_grad():
            graph = make_fx(flat, table, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)
        used = _lift(graph, held)
        parts, wiring = ([graph], None) if whole else _cut(graph)
        example = [*inputs, *[held[i] for i in used]]
        jobs = [
            functools.partial(_aot, part, _examples(part, example, i, wiring), work, i, options)
            for i, part in enumerate(parts)
        ]
        _at_once(jobs, headers)
        # each part's files; the calls to torch's own kernels are read by its runner
        files: dict[str, bytes] = {}
        for i in range(len(parts)):
            so, calls = _names(i)
            files[so] = pathlib.Path(work, str(i), "step.so").read_bytes()
            for found in pathlib.Path(work, str(i)).glob("*.wrapper.json"):  # none, or one
                files[calls] = found.read_bytes()
        manifest = {"key": key, "sha256": _digest(files), "held": used, "wiring": wiring, **out}
        for suffix, data in files.items():
            pathlib.Path(work, f"step.{suffix}").write_bytes(data)
        pathlib.Path(work, "step.pkl").write_bytes(pickle.dumps(manifest))
        # loaded from where it was built: a process that loaded another file of the final name
        # (one it then refused) would be handed that one again by the dynamic loader
        runners = [
            torch._C._aoti.AOTIModelContainerRunnerCpu(
                str(pathlib.Path(work, str(i), "step.so")), 1
            )
            for i in range(len(parts))
        ]
        # the manifest last: a reader that finds it finds the files it names (or, where two
        # processes saved the same key at once, files whose digest it refuses)
        for i in range(2):
            (folder() / f"{key}.{_names(i)[1]}").unlink(missing_ok=True)
        for suffix in (*files, "pkl"):
            os.replace(pathlib.Path(work, f"step.{suffix}"), folder() / f"{key}.{suffix}")
    COUNTS["compiled"] += 1
    return Compiled(runners, manifest)


# a graph whose operations cost this much or more to compile (see _cut) is compiled in two
# parts at once. Each part's C++ costs about what the whole graph's does (AOTInductor's
# runtime, torch's headers), so only a graph whose Python phase is long gains: first calls on
# two cores, one run each: the README's few-shot conv step (MAML, cost 6,345) 27.8 -> 17.6 s,
# the sine step at 20 inner steps (7,838) 24.5 -> 18.6 s; at 5 (2,273) it would lose
# (10.2 -> 11.7 s)
_CUT_AT = 5000


def _cut(
    graph: torch.fx.GraphModule,
) -> tuple[list[torch.fx.GraphModule], Wiring | None]:
    """``graph`` whole where its operations cost less than ``_CUT_AT`` to compile (and ``None``);
    otherwise cut in two where half that cost is behind (an operation's cost taken as one more
    than its output's number of dimensions, a view's as none), with the wiring: for each part,
    where its inputs come from, and where the step's outputs do (``(-1, i)``: the step's input
    ``i``; ``(p, k)``: output ``k`` of part ``p``)."""
    from torch.fx.passes.split_module import split_module

    def cost(node: torch.fx.Node) -> int:
        value = node.meta.get("val")
        if node.target is operator.getitem or getattr(node.target, "is_view", False):
            return 0
        return 1 + (value.dim() if isinstance(value, torch.Tensor) else 0)

    operations = [n for n in graph.graph.nodes if n.op not in ("placeholder", "output")]
    total, behind, second = sum(map(cost, operations)), 0, set()
    if total < _CUT_AT:
        return [graph], None
    for node in operations:
        if behind >= total / 2:
            second.add(node)
        behind += cost(node)
    cut = split_module(graph, graph, lambda node: int(node in second))
    given = [n for n in cut.graph.nodes if n.op == "placeholder"]
    calls = [n for n in cut.graph.nodes if n.op == "call_module"]

    def source(node: torch.fx.Node) -> tuple[int, int]:
        if node.op == "placeholder":
            return -1, given.index(node)
        if node.op == "call_module":  # a part with one output returns it alone
            return calls.index(node), 0
        call, k = node.args  # an output of a part
        assert isinstance(call, torch.fx.Node) and isinstance(k, int)
        return calls.index(call), k

    (results,) = next(n for n in cut.graph.nodes if n.op == "output").args
    wiring = [[source(a) for a in call.args] for call in calls], [source(a) for a in results]
    parts = [getattr(cut, str(call.target)) for call in calls]
    for part in parts:  # each returns a tuple, as AOTInductor wants: one of one output too
        output = part.graph.output_node()
        if isinstance(output.args[0], torch.fx.Node):
            output.args = ((output.args[0],),)
            part.recompile()
    return parts, wiring


def _examples(
    part: torch.fx.GraphModule,
    example: list[torch.Tensor],
    i: int,
    wiring: Wiring | None,
) -> list[torch.Tensor]:
    """Inputs to compile part ``i`` with: the step's own, and zeros shaped as another part's
    outputs will be (made contiguous, as the runner passes them)."""
    if wiring is None:
        return example
    placeholders = [n for n in part.graph.nodes if n.op == "placeholder"]
    return [
        example[k] if p < 0 else torch.zeros(node.meta["val"].shape, dtype=node.meta["val"].dtype)
        for (p, k), node in zip(wiring[0][i], placeholders, strict=True)
    ]


def _aot(
    graph: torch.fx.GraphModule,
    example: list[torch.Tensor],
    work: str,
    i: int,
    options: dict[str, Any],
) -> None:
    """AOTInductor's compile of ``graph`` into ``work/<i>/step.so``. A later part is traced
    again from its inputs, contiguous as the runner passes them: its graph holds the strides
    they had in the whole graph's trace (a transposed view, say), which Inductor trusts."""
    from torch.fx.experimental.proxy_tensor import make_fx

    if i > 0:
        with torch.no_grad():
            graph = make_fx(graph, tracing_mode="fake", _allow_non_fake_inputs=True)(*example)
    os.makedirs(os.path.join(work, str(i)), exist_ok=True)
    settings = {"aot_inductor.output_path": os.path.join(work, str(i), "step.so"), **_SETTINGS}
    with (
        torch.no_grad(),
        warnings.catch_warnings(),
        _wrapper_beside_kernels(),
        _strides_by_terms(),
        _joins_where_they_can_match(),
        _traced_once(graph),
    ):
        # torch 2.13 pickles its own tree specs with a deprecated check (FutureWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch._inductor.aot_compile(graph, tuple(example), options={**settings, **options})


@contextlib.contextmanager
def _traced_once(graph: torch.fx.GraphModule) -> Iterator[None]:
    """AOTInductor traces the graph it is given again (AOTAutograd's export: a pass that
    collects what the outputs alias and one that functionalizes the graph and decomposes it
    with Inductor's table; 1.5-2 s of the sine step's first call). ``graph`` is traced from a
    pure function with that table already, so where none of its operations mutates, the export
    is ``graph`` as it is, with a signature of inputs and outputs only (no parameters,
    buffers or mutations). torch 2.13's ``aot_export_module``, replaced while it compiles."""
    from torch._functorch._aot_autograd.schemas import (
        GraphInputName,
        GraphOutputName,
        GraphSignature,
    )
    from torch._inductor import compile_fx

    if any(
        isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable
        for node in graph.graph.nodes
    ):
        yield  # functionalized by AOTAutograd
        return

    def export(module: torch.fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
        inputs = [GraphInputName(n.name) for n in module.graph.find_nodes(op="placeholder")]
        (results,) = module.graph.output_node().args
        assert isinstance(results, tuple | list)
        outputs = [GraphOutputName(n.name) for n in results if isinstance(n, torch.fx.Node)]
        signature = GraphSignature(
            parameters=[],
            buffers=[],
            user_inputs=inputs,
            user_outputs=outputs,
            inputs_to_parameters={},
            inputs_to_buffers={},
            buffers_to_mutate={},
            parameters_to_mutate={},
            user_inputs_to_mutate={},
            in_spec=None,  # type: ignore[arg-type]
            out_spec=None,  # type: ignore[arg-type]
            backward_signature=None,
            input_tokens=[],
            output_tokens=[],
        )
        return module, signature

    with mock.patch.object(compile_fx, "aot_export_module", export):
        yield


def _at_once(jobs: Sequence[Callable[[], None]], headers: Callable[[], dict[str, str]]) -> None:
    """``jobs`` (one or two), the second in a forked process while the first runs here: two
    cores for the two parts of a large graph (Linux, where this process may use two CPUs and
    has not started CUDA; otherwise one after the other). The forked process (:func:`forked`)
    uses the precompiled headers ready when it began (``headers()``) and no others."""
    alone = sys.platform != "linux" or len(os.sched_getaffinity(0)) < 2
    # a forked process cannot use CUDA where this one started it (Inductor may ask it)
    if len(jobs) == 1 or alone or torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        for job in jobs:
            job()
        return
    first, second = jobs
    ready = headers()

    def second_here() -> None:  # the parent's thread that prepares headers is not here
        from torch._inductor import codecache

        mock.patch.object(codecache, "_precompile_header", lambda h, *_, **__: ready.get(h)).start()
        second()

    pid, read = forked(second_here)
    try:
        first()
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        with os.fdopen(read, "rb") as pipe:
            report = pipe.read().decode(errors="replace")  # at its end
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0:
        why = report or f"its process ended with code {code}"
        raise RuntimeError(f"the second part of the step's graph did not compile ({why})")


def forked(call: Callable[[], Any]) -> tuple[int, int]:
    """A child process that runs ``call()`` (on a new thread: :func:`on_new_thread`) and never
    returns into the caller's code; ``(pid, pipe)``, the pipe's read end, on which the child
    reports in one write: ``ok``, or what it raised. Nothing of the caller's output: a pipe
    the child writes to closes when the caller ends, and the child may outlive it."""
    threads = torch.get_num_threads()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read)
            quiet = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(quiet, fd)
            on_new_thread(call, threads)
            os.write(write, b"ok")
        except BaseException as e:  # reported to the parent
            os.write(write, f"{type(e).__name__}: {e}".encode()[:4096])
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def on_new_thread(call: Callable[[], Any], threads: int) -> None:
    """``call()`` on a thread started in this (forked) process, with ``threads`` threads for
    torch's operations, as the caller had: GNU OpenMP keeps its worker threads with the thread
    that started them, which a fork does not copy, so a compiled kernel run on the forking
    thread waits for them forever once the caller has run a parallel operation; a new thread
    starts workers of its own."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            torch.set_num_threads(threads)
            call()
        except BaseException as e:
            raised.append(e)

    thread = threading.Thread(target=target, name="metafunc-compile")
    thread.start()
    thread.join()
    if raised:
        raise raised[0]


@contextlib.contextmanager
def _headers_precompiled_beside() -> Iterator[Callable[[], dict[str, str]]]:
    """A step's compile checks the CPU's extra vector instructions (three small programs
    compiled and loaded, about 0.8 s, once per cache folder) and parses torch's headers in each
    of its two C++ files (1.2-1.6 s each). Here, in a thread while the step is traced and
    Inductor works in Python on the other core: the checks, then torch's headers precompiled
    (the wrapper's first; about 3 s each, once per machine, torch and flags, in Inductor's
    ``$TMPDIR/torchinductor_$USER/precompiled_headers``) with the arguments Inductor gives them.
    The thread's compilers run at the lowest priority, so they never slow the step's own.
    Inductor's ``_precompile_header`` (torch 2.13), replaced meanwhile, hands over a header
    only if it is ready: a file whose header is not compiles without it; a header already
    building is finished in the background (a process exits after it), one not yet begun is
    left to the next compile. Yields what is ready (for a forked process, which has not the
    thread). A header built with other flags than a file's is ignored by the
    compiler: slower, never wrong."""
    from torch._inductor import codecache, cpp_builder, cpu_vec_isa

    original = codecache._precompile_header
    wrapper = codecache._get_cpp_wrapper_header("cpu", aot_mode=True)
    kernels = codecache._get_cpp_prefix_header("cpu")

    memo = folder() / "headers.json"  # where earlier processes found each header's file

    def prepare(header: str, **flags: Any) -> str:
        with torch._inductor.config.patch(_SETTINGS):
            isa = cpu_vec_isa.pick_vec_isa()  # the checks, the first time
            options = cpp_builder.CppTorchDeviceOptions(
                vec_isa=isa, device_type="cpu", aot_mode=True
            )
            line = repr(
                cpp_builder.CppBuilder(
                    name="o", sources="i", BuildOption=options
                ).get_command_line()
            )
            # Inductor names the file by the preprocessed header (a second of the compiler):
            # a file found before for this torch, header and command is taken at once
            name = repr((torch.__version__, header, line, sorted(flags.items())))
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                if os.path.exists(path := json.loads(memo.read_text())[name]):
                    return str(path)
            if sys.platform == "linux":  # this thread's compilers yield to the step's
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            path = str(
                original(
                    header,
                    line,
                    aot_mode=True,
                    device_type="cpu",
                    use_mmap_weights=False,
                    use_mmap_weights_external=False,
                    use_relative_path=False,
                    vec_isa=isa,
                    **flags,
                )
            )
        found: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            found = dict(json.loads(memo.read_text()))
        with tempfile.NamedTemporaryFile("w", dir=folder(), delete=False) as f:
            json.dump({**found, name: path}, f)  # another process's entry lost: found again
        os.replace(f.name, memo)
        return path

    pool = concurrent.futures.ThreadPoolExecutor(1)
    ready = {wrapper: pool.submit(prepare, wrapper, min_optimize=True)}
    if kernels:
        ready[kernels] = pool.submit(prepare, kernels)

    def precompiled(header: str, *args: Any, **kwargs: Any) -> str | None:
        if header in ready and ready[header].done() and not ready[header].exception():
            return ready[header].result()
        return None

    def now() -> dict[str, str]:  # the headers ready now (for a forked process)
        return {h: path for h in ready if (path := precompiled(h)) is not None}

    try:
        with mock.patch.object(codecache, "_precompile_header", precompiled):
            yield now
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def _wrapper_beside_kernels() -> Iterator[None]:
    """AOTInductor compiles the step's C++ wrapper, then its kernels, one after the other (3-4 s
    each for the sine step); here the wrapper's compiler runs in a thread while the kernels'
    runs, on another core, and the kernels' build returns when both are done (before they are
    linked). torch 2.13's ``CppBuilder.build``, replaced while the step compiles; builds on
    other threads (the precompiled headers) run as they would."""
    from torch._inductor import cpp_builder

    build = cpp_builder.CppBuilder.build
    pending: list[concurrent.futures.Future[None]] = []
    owner = threading.get_ident()  # other threads' builds (precompiled headers) are their own

    def beside(self: Any) -> None:
        if threading.get_ident() != owner:
            return build(self)
        if self.get_target_file_path().endswith(".wrapper.o"):
            pending.append(pool.submit(build, self))
            return
        try:
            if not (self.get_target_file_path().endswith(".kernel.o") and _kernels_in_halves(self)):
                build(self)
        finally:
            while pending:
                pending.pop().result()  # its error, if it failed

    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        mock.patch.object(cpp_builder.CppBuilder, "build", beside),
    ):
        try:
            yield
        finally:
            while pending:
                pending.pop().result()


# kernels' file at least this large is compiled as two halves at once, beside the wrapper:
# the few-shot conv step's (1.4 MB, 11.7 s to compile) is, the sine step's (0.5 MB, 3.4 s,
# shorter than its wrapper's) is not
_HALVES_FROM = 1_000_000


def _kernels_in_halves(builder: Any) -> bool:
    """Compile the kernels' file of ``builder`` as two halves at once and join their objects
    into the one object file the link expects (``-r``); False where the file is small or not
    made of Inductor's kernels, each a whole unit that starts with the same ``#include``."""
    from torch._inductor import cpp_builder

    line = shlex.split(builder.get_command_line())
    sources = [i for i, word in enumerate(line) if word.endswith(".kernel.cpp")]
    if len(sources) != 1 or line.count("-o") != 1:
        return False
    source = pathlib.Path(line[sources[0]])
    if source.stat().st_size < _HALVES_FROM:
        return False
    text = source.read_text()
    lines = text.splitlines(keepends=True)
    first = next((row for row in lines if row.startswith("#include")), None)
    starts = {i for i, row in enumerate(lines) if row == first}
    if len(starts) < 2:
        return False
    size, cut = 0, max(starts, default=0)
    for i, row in enumerate(lines):
        if i in starts and size >= len(text) / 2:
            cut = i
            break
        size += len(row)
    target = line[line.index("-o") + 1]
    cwd = os.path.dirname(target)
    objects = [f"{target}.{i}.o" for i in range(2)]
    commands = []
    for i, half in enumerate(("".join(lines[:cut]), "".join(lines[cut:]))):
        path = source.with_suffix(f".{i}.cpp")
        path.write_text(half)
        words = list(line)
        words[sources[0]] = str(path)
        words[words.index("-o") + 1] = objects[i]
        commands.append(shlex.join(words))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        other = pool.submit(cpp_builder.run_compile_cmd, commands[0], cwd)
        cpp_builder.run_compile_cmd(commands[1], cwd)
        other.result()
    joined = [line[0], "-r", "-nostdlib", *objects, "-o", target]
    cpp_builder.run_compile_cmd(shlex.join(joined), cwd)
    return True


@contextlib.contextmanager
def _joins_where_they_can_match() -> Iterator[None]:
    """Inductor simplifies each index with ``join_dimensions``, which tries two patterns on every
    pair of its terms with ``sympy``'s ``match`` (about 9 ms an index of the conv step; its
    cache holds 256) and joins ``c*ModularIndexing(b, d, m)`` with ``c*m*ModularIndexing(b, d*m,
    m2)`` or ``c*m*FloorDiv(b, d*m)``. An index with no such pair is returned unchanged, and
    where every term is an integer times one ``ModularIndexing`` or ``FloorDiv`` of integer
    divisors (or holds neither) the pairs are found by comparing those integers; otherwise, or
    where a pair is found, torch's own function runs. torch 2.13's function, replaced while the
    step compiles."""
    import sympy  # type: ignore[import-untyped]
    from torch._inductor import sizevars
    from torch.utils._sympy.functions import FloorDiv, ModularIndexing

    original = sizevars.join_dimensions

    def can_match(index: Any) -> bool:
        mods: list[tuple[Any, ...]] = []
        floors: list[tuple[Any, ...]] = []
        for term in index.args:
            coefficient, rest = term.as_coeff_Mul()
            if isinstance(rest, ModularIndexing | FloorDiv):
                if not (coefficient.is_Integer and all(a.is_Integer for a in rest.args[1:])):
                    return True
                (mods if isinstance(rest, ModularIndexing) else floors).append(
                    (coefficient, *rest.args)
                )
            elif rest.has(ModularIndexing, FloorDiv):
                return True  # a term of another form: torch decides
        return any(
            base2 == base and scale2 == scale * modulus and divisor2 == divisor * modulus
            for scale, base, divisor, modulus in mods
            for scale2, base2, divisor2, *_ in mods + floors
        )

    def join(expr: Any) -> Any:
        if isinstance(expr, sympy.Add) and expr.has(ModularIndexing) and can_match(expr):
            return original(expr)
        return expr

    with mock.patch.object(sizevars, "join_dimensions", join):
        yield


@contextlib.contextmanager
def _strides_by_terms() -> Iterator[None]:
    """Inductor's C++ code generation asks, for each load and store, how far an index moves
    when a loop variable steps by one (``stride_at_vec_range``), and answers with
    ``sympy.simplify`` of the whole index each time: about 0.5 ms a call, 14 s of the few-shot
    conv step's compile. The stride depends only on the terms of the index that hold the
    variable, so: terms that are the variable times an integer give that integer at once, and
    otherwise torch's own answer for those terms alone (cached, so indices that differ by an
    offset share it). torch 2.13's function, replaced while the step compiles."""
    import sympy
    from torch._inductor.codegen import cpp

    original = cpp.stride_at_vec_range  # type: ignore[attr-defined]

    @functools.lru_cache(None)
    def stride(index: Any, var: Any, vec_length: int | None = None) -> Any:
        if not isinstance(index, sympy.Expr):
            return original(index, var, vec_length)
        moving = [term for term in sympy.Add.make_args(index) if term.has(var)]
        steps = [term.as_coeff_Mul() for term in moving]
        if all(rest == var and coefficient.is_Integer for coefficient, rest in steps):
            return sympy.Integer(sum(int(coefficient) for coefficient, _ in steps))
        return original(sympy.Add(*moving), var, vec_length)

    with mock.patch.object(cpp, "stride_at_vec_range", stride):
        yield


def _foreach_norm(
    tensors: list[torch.Tensor], ord: float = 2, dtype: torch.dtype | None = None
) -> list[torch.Tensor]:
    return [torch.linalg.vector_norm(t, ord, dtype=dtype) for t in tensors]


def _bmm(a: torch.Tensor, b: torch.Tensor) -> Any:
    """``a @ b`` (tasks' matrices, as ``vmap`` makes them) in the form the CPU computes fastest:
    an outer product (one column times one row) as a product Inductor fuses into its loops,
    and a product with few columns as the transposed product (MKL's batched GEMM is about 3x
    slower with 10 output columns than with 40; the sine step has many); others unchanged."""
    m, k, n = a.shape[1], a.shape[2], b.shape[2]
    if k == 1:
        return a * b
    if n < 16 and m > n:
        return torch.bmm(b.transpose(1, 2), a.transpose(1, 2)).transpose(1, 2)
    return NotImplemented


# Operations traced as others that Inductor compiles: it leaves ``_foreach_norm`` to torch's
# kernel, which AOTInductor's runner cannot call with an infinite order (torch 2.13 writes
# ``inf`` as a string where its reader wants a number); and the batched matrix products.
_DECOMPOSED: dict[Any, Callable[..., Any]] = {
    torch.ops.aten._foreach_norm.Scalar: _foreach_norm,
    torch.ops.aten.bmm.default: _bmm,
}


def _digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for suffix in sorted(files):
        digest.update(hashlib.sha256(files[suffix]).digest())
    return digest.hexdigest()


def _lift(graph: torch.fx.GraphModule, held: list[torch.Tensor]) -> list[int]:
    """The constants of ``graph`` that are tensors of ``held`` made inputs (placed after the
    others, in the order of ``held``); returns their indices in ``held``."""
    index: dict[int, int] = {}
    for i, t in enumerate(held):
        index.setdefault(id(t), i)
    found: dict[int, list[torch.fx.Node]] = {}
    for node in graph.graph.nodes:
        if node.op == "get_attr" and id(getattr(graph, str(node.target))) in index:
            found.setdefault(index[id(getattr(graph, str(node.target)))], []).append(node)
    last = [n for n in graph.graph.nodes if n.op == "placeholder"][-1]
    used = sorted(found)
    for i in reversed(used):
        with graph.graph.inserting_after(last):
            placeholder = graph.graph.placeholder(f"held_{i}")
        placeholder.meta = dict(found[i][0].meta)
        for node in found[i]:
            node.replace_all_uses_with(placeholder)
            graph.graph.erase_node(node)
            if hasattr(graph, str(node.target)):
                delattr(graph, str(node.target))
    graph.graph.lint()
    graph.recompile()
    return used
