"""The compiled step ahead of time, on the CPU: traced once to one graph of torch's operations
(``make_fx``), compiled by AOTInductor into one shared object saved in the cache folder, and
run from C++. A new process loads that file and runs it without importing Dynamo or Inductor
(about a millisecond, where ``torch.compile``'s own caches cost it a second and a half of
imports and guards), and the step has no Python wrapper around its kernels.

A saved step is three files named by its key: ``<key>.so`` (the compiled code), ``<key>.json``
(the operations it leaves to torch's own kernels, read by the runner) and ``<key>.pkl`` (its
key, the SHA-256 of the other two, how to rebuild the output tree). A file of another key, or damaged, is
never loaded: it is compiled afresh. Deleting the folder is always safe.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import getpass
import hashlib
import os
import pathlib
import pickle
import re
import shlex
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
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


class Compiled:
    """A step compiled ahead of time: ``self(held, leaves)`` runs it on the tensors among
    ``leaves`` (its arguments flattened; made contiguous, as they were traced) and the tensors
    its records hold (``held``, in the order the fingerprint met them; those it reads are
    inputs, so a rate held in a tensor can change), and rebuilds the output tree."""

    def __init__(self, runner: Any, manifest: dict[str, Any]) -> None:
        self.runner = runner
        self.spec = manifest["spec"]
        self.constants: dict[int, Any] = manifest["constants"]
        self.held: list[int] = manifest["held"]
        self.count = manifest["leaves"]

    def __call__(self, held: list[torch.Tensor], leaves: list[Any]) -> Any:
        inputs = [t.contiguous() for t in leaves if isinstance(t, torch.Tensor)]
        inputs += [held[i] for i in self.held]
        outputs = self.runner.run(inputs)
        if self.constants:
            given = iter(outputs)
            outputs = [
                self.constants[i] if i in self.constants else next(given) for i in range(self.count)
            ]
        return self.spec.unflatten(outputs)


def load(key: str) -> Compiled | None:
    """The step saved under ``key``, or ``None`` where there is none, or where what is there is
    another key's or damaged (its ``.so`` is not the one its manifest names)."""
    so = folder() / f"{key}.so"
    try:
        manifest = pickle.loads((folder() / f"{key}.pkl").read_bytes())
        files = {"so": so.read_bytes()}
        if (folder() / f"{key}.json").exists():
            files["json"] = (folder() / f"{key}.json").read_bytes()
    except Exception:  # none saved, or a damaged manifest
        return None
    if (
        not isinstance(manifest, dict)
        or manifest.get("key") != key
        or manifest.get("sha256") != _digest(files)
    ):
        return None
    runner = torch._C._aoti.AOTIModelContainerRunnerCpu(str(so), 1)
    COUNTS["loaded"] += 1
    return Compiled(runner, manifest)


def build(
    key: str,
    fn: Any,
    held: list[torch.Tensor],
    args: tuple[Any, ...],
    options: dict[str, Any],
) -> Compiled:
    """``fn(*args)`` traced, compiled, saved under ``key`` and loaded. Tensors met in ``held``
    (by identity) become inputs of the graph; other tensors the code reads are constants of
    it, fixed by the key (metafunc's own, and those of the user's code the fingerprint met)."""
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
        _headers_precompiled_beside(),
    ):
        with torch.no_grad():
            graph = make_fx(flat, _DECOMPOSED, tracing_mode="fake", _allow_non_fake_inputs=True)(
                *inputs
            )
        used = _lift(graph, held)
        settings = {"aot_inductor.output_path": os.path.join(work, "step.so"), **_SETTINGS}
        with (
            torch.no_grad(),
            warnings.catch_warnings(),
            _wrapper_beside_kernels(),
            _strides_by_terms(),
            _joins_where_they_can_match(),
        ):
            # torch 2.13 pickles its own tree specs with a deprecated check (FutureWarning)
            warnings.simplefilter("ignore", FutureWarning)
            example = (*inputs, *[held[i] for i in used])
            torch._inductor.aot_compile(graph, example, options={**settings, **options})
        # the operations that run outside the compiled code (torch's own kernels), which the
        # runner reads from a file beside the shared object
        files = {"so": pathlib.Path(work, "step.so").read_bytes()}
        for calls in pathlib.Path(work).glob("*.wrapper.json"):  # none, or one
            files["json"] = calls.read_bytes()
        manifest = {"key": key, "sha256": _digest(files), "held": used, **out}
        for suffix, data in files.items():
            pathlib.Path(work, f"step.{suffix}").write_bytes(data)
        pathlib.Path(work, "step.pkl").write_bytes(pickle.dumps(manifest))
        # loaded from where it was built: a process that loaded another file of the final name
        # (one it then refused) would be handed that one again by the dynamic loader
        runner = torch._C._aoti.AOTIModelContainerRunnerCpu(str(pathlib.Path(work, "step.so")), 1)
        # the manifest last: a reader that finds it finds the files it names (or, where two
        # processes saved the same key at once, files whose digest it refuses)
        (folder() / f"{key}.json").unlink(missing_ok=True)
        for suffix in (*files, "pkl"):
            os.replace(pathlib.Path(work, f"step.{suffix}"), folder() / f"{key}.{suffix}")
    COUNTS["compiled"] += 1
    return Compiled(runner, manifest)


@contextlib.contextmanager
def _headers_precompiled_beside() -> Iterator[None]:
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
    left to the next compile. A header built with other flags than a file's is ignored by the
    compiler: slower, never wrong."""
    from torch._inductor import codecache, cpp_builder, cpu_vec_isa

    original = codecache._precompile_header
    wrapper = codecache._get_cpp_wrapper_header("cpu", aot_mode=True)
    kernels = codecache._get_cpp_prefix_header("cpu")

    def prepare(header: str, **flags: Any) -> str:
        if sys.platform == "linux":  # this thread's compilers yield to the step's
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        with torch._inductor.config.patch(_SETTINGS):
            isa = cpu_vec_isa.pick_vec_isa()  # the checks, the first time
            options = cpp_builder.CppTorchDeviceOptions(
                vec_isa=isa, device_type="cpu", aot_mode=True
            )
            line = cpp_builder.CppBuilder(name="o", sources="i", BuildOption=options)
            return str(
                original(
                    header,
                    repr(line.get_command_line()),
                    aot_mode=True,
                    device_type="cpu",
                    use_mmap_weights=False,
                    use_mmap_weights_external=False,
                    use_relative_path=False,
                    vec_isa=isa,
                    **flags,
                )
            )

    pool = concurrent.futures.ThreadPoolExecutor(1)
    ready = {wrapper: pool.submit(prepare, wrapper, min_optimize=True)}
    if kernels:
        ready[kernels] = pool.submit(prepare, kernels)

    def precompiled(header: str, *args: Any, **kwargs: Any) -> str | None:
        if header in ready and ready[header].done() and not ready[header].exception():
            return ready[header].result()
        return None

    try:
        with mock.patch.object(codecache, "_precompile_header", precompiled):
            yield
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
