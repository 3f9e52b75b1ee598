"""The compiled step's cache: keyed by a fingerprint of what decides its graph, reused in the
process, saved for later processes and never loaded into another configuration's step."""

import gc
import importlib
import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest
import torch
from support import graphs, sine_tasks
from torch import nn
from torch._dynamo.types import GuardFilterEntry

import metafunc as mf
from metafunc import _ahead, _compile, _fingerprint
from metafunc.experiments.fewshot_table import ALGORITHMS as FEWSHOT

ACT = torch.relu  # a global the loss below reads; a test rebinds it


def _net():
    return nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _steps(fn):
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.sgd(0.1)
    compiled = mf.make_step(learner, opt, backend="aot_eager")
    eager = mf.make_step(learner, opt, compile=False)
    return learner, opt, compiled, eager


def _same(a, b):
    for x, y in zip(mf._tree.leaves(a), mf._tree.leaves(b), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


@pytest.mark.compile
def test_a_step_is_a_snapshot_of_what_the_loss_reads_and_a_new_step_sees_a_rebound_global():
    """As with jax.jit, a compiled step computes what the loss's globals were when it was
    built: it is keyed by them (and saved under that key for later processes), not guarded by
    their identity on every call. make_step again gives the step of the new binding; with
    cache=False, Dynamo's own identity guards recompile the same step."""
    global ACT
    fn, params = mf.pure(_net())
    learner, opt, compiled, eager = _steps(lambda p, x: ACT(fn(p, x)))
    unkeyed = mf.make_step(learner, opt, backend="aot_eager", cache=False)
    state, tasks = mf.init_state(learner, opt, params), sine_tasks(n=2)
    try:
        relu = eager(state, tasks)
        _same(compiled(state, tasks), relu)
        _same(unkeyed(state, tasks), relu)
        ACT = torch.tanh  # relu and tanh differ on the negative outputs of the net
        tanh = eager(state, tasks)
        assert not torch.equal(relu[1].loss, tanh[1].loss)
        _same(compiled(state, tasks), relu)  # the snapshot
        _same(mf.make_step(learner, opt, backend="aot_eager")(state, tasks), tanh)
        _same(unkeyed(state, tasks), tanh)
    finally:
        ACT = torch.relu


class _Doubles(nn.Module):
    """Doubles its input in training mode only."""

    def forward(self, x):
        return x * 2 if self.training else x


@pytest.mark.compile
def test_a_model_switched_to_eval_mode_recompiles():
    # the user's own functional model around a module they keep (mf.pure holds a private copy)
    net = nn.Sequential(nn.Linear(1, 4), _Doubles(), nn.Linear(4, 1)).double()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    learner, opt, compiled, eager = _steps(lambda p, x: torch.func.functional_call(net, p, (x,)))
    state, tasks = mf.init_state(learner, opt, params), sine_tasks(n=2)
    trained = compiled(state, tasks)
    _same(trained, eager(state, tasks))
    net.eval()
    evaluated = compiled(state, tasks)
    _same(evaluated, eager(state, tasks))
    assert not torch.equal(trained[1].loss, evaluated[1].loss)


def _entry(name, guard_type, derived=()):
    return GuardFilterEntry(
        name=name,
        has_value=True,
        value=None,
        guard_type=guard_type,
        derived_guard_types=derived,
        is_global=name.startswith("G["),
        orig_guard=None,
    )


# One case per rule of the keyed step's guard filter, written out by hand: (rule, entry,
# kept?). The compile tests compare compiled runs with eager ones and cannot tell a wrong rule.
RULES = [
    # identity checks: no other process shares the ids; the fingerprint stands for them
    ("id-match", _entry("L['learner'].outer", "ID_MATCH"), False),
    ("closure-match", _entry("L['learner'].inner.setup", "CLOSURE_MATCH"), False),
    ("class-match", _entry("L['learner'].inner.__class__", "CLASS_MATCH"), False),
    ("aliasing", _entry("L['learner'].inner.embed", "DUPLICATE_INPUT"), False),
    ("weakref", _entry("L['optimizer'].update", "WEAKREF_ALIVE"), False),
    ("dict-version", _entry("L['learner'].outer.__closure__[0].cell_contents", "DICT_VERSION"), False),
    ("derived-id", _entry("L['tasks'].support", "TYPE_MATCH", ("ID_MATCH",)), False),
    # guards on the globals traced code reads: libraries (fixed by the versions in the key) and
    # the user's (in the fingerprint); torch cannot load them outside a trace
    ("global-constant", _entry("G['EPS']", "CONSTANT_MATCH"), False),
    ("global-tensor", _entry("G['mask']", "TENSOR_MATCH"), False),
    ("imported-module", _entry("__import__('torch').nn", "CONSTANT_MATCH"), False),
    ("imported-global", _entry("G['__import_torch_dot_nn'].functional", "TYPE_MATCH"), False),
    # value, type and tensor guards on the step's arguments and global state: kept
    ("tensor", _entry("L['state'].meta['0.weight']", "TENSOR_MATCH"), True),
    ("constant", _entry("L['learner'].inner.steps", "CONSTANT_MATCH"), True),
    ("training-flag", _entry("L['learner'].outer.__closure__[0].cell_contents._module.training", "CONSTANT_MATCH"), True),
    ("dict-keys", _entry("L['state'].meta", "DICT_KEYS_MATCH"), True),
    ("type", _entry("L['tasks'].support", "TYPE_MATCH"), True),
    ("grad-mode", _entry("", "GRAD_MODE"), True),
    ("global-state", _entry("", "GLOBAL_STATE"), True),
]  # fmt: skip


def test_the_guard_filter_follows_each_rule_against_a_hand_written_expectation():
    got = _compile._portable([entry for _, entry, _ in RULES])
    wrong = [
        f"{rule}: kept={k} (want {want})"
        for (rule, _, want), k in zip(RULES, got, strict=True)
        if k != want
    ]
    assert not wrong, wrong
    for rule, entry, want in RULES:  # each entry is judged on its own
        assert _compile._portable([entry]) == [want], rule


# ---------------------------------------------------------------- the fingerprint


def _maml(lr=0.1, steps=1, width=3, act=torch.tanh, loss=None):
    torch.manual_seed(0)  # test-only: nn.Linear's default initialisation
    net = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1)).double()
    fn, params = mf.pure(net)
    loss = loss or mf.supervised(lambda p, x: act(fn(p, x)), mf.losses.mse)
    return mf.maml(loss, inner_lr=lr, inner_steps=steps), params


def test_the_fingerprint_is_the_same_for_an_equal_configuration_whatever_its_rates():
    key = lambda learner, opt: _fingerprint.fingerprint(learner, opt)  # noqa: E731
    a = key(_maml(lr=0.1)[0], mf.optim.adam(1e-3))
    assert a is not None
    assert key(_maml(lr=0.1)[0], mf.optim.adam(1e-3)) == a  # rebuilt: new objects
    assert key(_maml(lr=0.3)[0], mf.optim.adam(2e-3)) == a  # rates are inputs of the graph
    differ = {
        "inner steps": key(_maml(steps=2)[0], mf.optim.adam(1e-3)),
        "model width": key(_maml(width=4)[0], mf.optim.adam(1e-3)),
        "a function the loss calls": key(_maml(act=torch.relu)[0], mf.optim.adam(1e-3)),
        "first order": key(mf.first_order(_maml()[0]), mf.optim.adam(1e-3)),
        "chunked": key(mf.chunked(_maml()[0], 2), mf.optim.adam(1e-3)),
        "Adam's b1": key(_maml()[0], mf.optim.adam(1e-3, b1=0.8)),
        "another optimizer": key(_maml()[0], mf.optim.sgd(1e-3)),
        "a guard": key(_maml()[0], mf.optim.apply_if_finite(mf.optim.adam(1e-3))),
    }
    assert len(set(differ.values()) | {a}) == len(differ) + 1, differ


def test_the_fingerprint_of_a_pure_model_is_the_same_in_every_process():
    """Nothing in the key may follow Python's per-process string hashing (a set's order): a
    process that found the step in the cache would compile it again (it did once, for the
    places ``mf.pure`` keeps of a model's tensors)."""
    script = (
        "import metafunc as mf, torch\n"
        "from metafunc import _fingerprint\n"
        "torch.manual_seed(0)\n"
        "fn, params = mf.pure(mf.models.mlp([1, 8, 8, 1]))\n"
        "learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_steps=2)\n"
        "print(_fingerprint.fingerprint(learner, mf.optim.adam(1e-3)))\n"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert len(keys) == 1 and None not in keys, keys


def test_the_fingerprint_sees_a_module_put_in_eval_mode_and_a_rebound_global():
    global ACT
    net = nn.Sequential(nn.Linear(1, 4), _Doubles(), nn.Linear(4, 1)).double()
    learner = mf.maml(lambda p, x: ACT(torch.func.functional_call(net, p, x[:1])).mean())
    trained = _fingerprint.fingerprint(learner)
    net.eval()
    evaluated = _fingerprint.fingerprint(learner)
    try:
        ACT = torch.tanh
        rebound = _fingerprint.fingerprint(learner)
    finally:
        ACT = torch.relu
    assert len({trained, evaluated, rebound}) == 3


def test_the_fingerprint_sees_the_users_code_move_in_its_file(tmp_path, monkeypatch):
    """Torch saves a graph with the lines of the user's code it inlined and will not load it once
    they moved (CI met this: a warning, a traceback and a second graph); moved code gets a new
    key instead, and code that stays where it was keeps its key."""
    source = (
        "import torch\n"
        "class Noise(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x + 1\n"
        "def loss(p, x):\n"
        "    return (x * p['w']).sum()\n"
    )
    module = tmp_path / "user_code_that_moves.py"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)

    def keys(text):
        module.write_text(text)
        sys.modules.pop(module.stem, None)
        user = importlib.import_module(module.stem)
        return _fingerprint.fingerprint(user.Noise()), _fingerprint.fingerprint(user.loss)

    before = keys(source)
    assert None not in before
    assert keys(source) == before
    moved = keys("# a comment above: every line below moves down one\n" + source)
    assert moved[0] != before[0] and moved[1] != before[1]
    sys.modules.pop(module.stem, None)


def test_the_fingerprint_reads_what_the_loss_calls_in_a_module_of_the_users(tmp_path, monkeypatch):
    """``mylib.act(x)``: the module is the user's, so ``act`` is read like any function the
    loss calls; edited and reloaded (a notebook's autoreload), it gives another key, so a step
    built again is not handed the graph traced from the old code."""
    lib = tmp_path / "user_lib_of_activations.py"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    lib.write_text("import torch\ndef act(x):\n    return torch.tanh(x)\n")
    sys.modules.pop(lib.stem, None)
    user = importlib.import_module(lib.stem)
    try:
        learner, _ = _maml(act=lambda x: user.act(x))
        before = _fingerprint.fingerprint(learner)
        assert before is not None and _fingerprint.fingerprint(learner) == before
        lib.write_text("import torch\ndef act(x):\n    return torch.relu(x)\n")
        importlib.reload(user)
        assert _fingerprint.fingerprint(learner) != before
    finally:
        sys.modules.pop(lib.stem, None)


def test_the_key_changes_with_metafuncs_own_code(monkeypatch):
    """A checkout edited under the same version must not load the graph of the code before."""
    learner, _ = _maml()
    key = lambda: _compile._key(learner, (), None, "inductor", None, False)  # noqa: E731
    assert _compile._own_source() == _compile._own_source.__wrapped__()  # read from the files
    today = key()
    monkeypatch.setattr(_compile, "_own_source", lambda: "edited")
    assert key() != today


def test_what_it_cannot_describe_makes_no_fingerprint_and_the_step_still_runs():
    lock = threading.Lock()  # a C object: neither code, value nor attributes

    def loss(p, data):
        assert lock is not None
        return mf.losses.mse(data[0] @ p["w"], data[1])

    learner = mf.maml(loss, inner_lr=0.1)
    assert _fingerprint.fingerprint(learner) is None
    params = {"w": torch.zeros(1, 1, dtype=torch.float64)}
    opt = mf.optim.sgd(0.1)
    step = mf.make_step(learner, opt, backend="eager")  # compiled on its own, not cached
    state, _ = step(mf.init_state(learner, opt, params), sine_tasks(n=2))
    assert int(state.step) == 1


# ---------------------------------------------------------------- reuse in one process


# inductor: on the CPU, compiled ahead of time (metafunc._ahead); aot_eager: by torch.compile
@pytest.mark.compile
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_step_built_again_or_with_other_rates_reuses_the_compiled_graph(backend):
    learner, params = _maml(lr=0.1)
    opt = mf.optim.adam(1e-2)
    state, tasks = mf.init_state(learner, opt, params), sine_tasks(n=2)
    mf.make_step(learner, opt, backend=backend)(state, tasks)
    before = graphs()
    for lr, outer in ((0.1, 1e-2), (0.3, 5e-3)):
        other, _ = _maml(lr=lr)
        opt2 = mf.optim.adam(outer)
        got = mf.make_step(other, opt2, backend=backend)(state, tasks)
        _same(got, mf.make_step(other, opt2, compile=False)(state, tasks))
    assert graphs() == before  # no new graph for the new rates


@pytest.mark.compile
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_rate_held_in_a_tensor_can_change_in_place_between_steps(backend):
    lr = torch.tensor(0.1, dtype=torch.float64)
    learner, params = _maml(lr=lr)
    opt = mf.optim.sgd(0.1)
    state, tasks = mf.init_state(learner, opt, params), sine_tasks(n=2)
    step = mf.make_step(learner, opt, backend=backend)
    eager = mf.make_step(learner, opt, compile=False)
    _same(step(state, tasks), eager(state, tasks))
    before = graphs()
    lr.fill_(0.4)
    _same(step(state, tasks), eager(state, tasks))
    assert graphs() == before


@pytest.mark.compile
def test_a_step_torch_cannot_compile_ahead_of_time_is_tried_once_a_process(monkeypatch, caplog):
    tried = []

    def refuse(*args, **kwargs):
        tried.append(1)
        raise RuntimeError("this step refuses to be compiled ahead of time")

    monkeypatch.setattr(_ahead, "build", refuse)
    learner, params = _maml(width=5, act=torch.sin)  # a configuration no other test saves
    opt = mf.optim.sgd(0.1)
    state, tasks = mf.init_state(learner, opt, params), sine_tasks(n=2)
    eager = mf.make_step(learner, opt, compile=False)(state, tasks)
    with caplog.at_level("WARNING", logger="metafunc"):
        for _ in range(2):  # a step built twice: torch.compile's route both times
            _same(mf.make_step(learner, opt)(state, tasks), eager)
    assert len(tried) == 1
    (record,) = [r for r in caplog.records if "ahead of time" in r.getMessage()]
    assert "this step refuses to be compiled ahead of time" in record.getMessage()


@pytest.mark.compile
def test_a_batch_of_new_shapes_compiles_again_and_says_so():
    learner, params = _maml()
    opt = mf.optim.sgd(0.1)
    state = mf.init_state(learner, opt, params)
    step = mf.make_step(learner, opt, backend="eager")
    step(state, sine_tasks(n=4))
    with pytest.warns(RuntimeWarning, match=r"^step: a meta-batch of new shapes \(a last, smaller"):
        step(state, sine_tasks(n=3))
    step(state, sine_tasks(n=3))  # once per shape: no warning the second time


def test_batched_products_are_traced_in_the_form_the_cpu_computes_fastest_and_agree():
    from torch.fx.experimental.proxy_tensor import make_fx

    g = torch.Generator().manual_seed(0)

    def traced(a, b):
        graph = make_fx(torch.bmm, _ahead._DECOMPOSED, tracing_mode="fake")(a, b)
        ops = [n for n in graph.graph.nodes if n.op == "call_function"]
        bmm = [n for n in ops if n.target == torch.ops.aten.bmm.default]
        return graph, bmm

    for shapes, kind in [
        (((3, 10, 1), (3, 1, 40)), "product"),  # an outer product: no matrix product at all
        (((3, 40, 40), (3, 40, 10)), "swapped"),  # few columns: (b^T a^T)^T
        (((3, 10, 40), (3, 40, 40)), "unchanged"),
    ]:
        a, b = (torch.randn(s, generator=g, dtype=torch.float64) for s in shapes)
        graph, bmm = traced(a, b)
        want = torch.bmm(a, b)
        got = graph(a, b)
        assert got.shape == want.shape
        if kind == "product":
            assert not bmm
            assert torch.equal(got, want)  # one product per element: exactly bmm's
        else:
            assert len(bmm) == 1
            first = tuple(bmm[0].args[0].meta["val"].shape)
            (n, m, k), (_, _, cols) = shapes
            assert first == ((n, cols, k) if kind == "swapped" else (n, m, k))
            torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


def test_the_wrapper_compiles_beside_the_kernels_and_its_failure_is_raised(monkeypatch):
    from torch._inductor import cpp_builder

    spans = {}

    class Target:
        def __init__(self, path, fails=False):
            self.path, self.fails = path, fails

        def get_target_file_path(self):
            return self.path

        def get_command_line(self):  # no kernels' file to compile in halves
            return f"cc -c -o {self.path}"

    def build(self):  # a compiler that takes 0.3 s
        start = time.perf_counter()
        time.sleep(0.3)
        spans[self.path] = (start, time.perf_counter())
        if self.fails:
            raise RuntimeError(f"{self.path} did not compile")

    monkeypatch.setattr(cpp_builder.CppBuilder, "build", build)
    with _ahead._wrapper_beside_kernels():
        cpp_builder.CppBuilder.build(Target("w.wrapper.o"))  # returns at once
        assert "w.wrapper.o" not in spans
        cpp_builder.CppBuilder.build(Target("k.kernel.o"))  # returns when both are built
        assert set(spans) == {"w.wrapper.o", "k.kernel.o"}
        (w0, w1), (k0, k1) = spans["w.wrapper.o"], spans["k.kernel.o"]
        assert k0 < w1 and w0 < k1  # at once
    assert cpp_builder.CppBuilder.build is build  # put back

    with pytest.raises(RuntimeError, match=r"^w.wrapper.o did not compile$"):
        with _ahead._wrapper_beside_kernels():
            cpp_builder.CppBuilder.build(Target("w.wrapper.o", fails=True))
            cpp_builder.CppBuilder.build(Target("k.kernel.o"))
    assert cpp_builder.CppBuilder.build is build


def test_another_threads_build_neither_waits_for_the_wrapper_nor_releases_the_kernels(monkeypatch):
    from torch._inductor import cpp_builder

    ends = {}

    class Target:
        def __init__(self, path, seconds):
            self.path, self.seconds = path, seconds

        def get_target_file_path(self):
            return self.path

        def get_command_line(self):  # no kernels' file to compile in halves
            return f"cc -c -o {self.path}"

    def build(self):
        time.sleep(self.seconds)
        ends[self.path] = time.perf_counter()

    monkeypatch.setattr(cpp_builder.CppBuilder, "build", build)
    with _ahead._wrapper_beside_kernels():
        cpp_builder.CppBuilder.build(Target("w.wrapper.o", 0.5))
        header = threading.Thread(
            target=cpp_builder.CppBuilder.build, args=(Target("h.gch", 0.05),)
        )
        header.start()
        header.join()
        assert "w.wrapper.o" not in ends  # the header's build returned on its own
        cpp_builder.CppBuilder.build(Target("k.kernel.o", 0.05))
        assert "w.wrapper.o" in ends  # the kernels' build still waited for the wrapper


def test_headers_are_precompiled_in_a_thread_that_yields_and_taken_only_when_ready(
    monkeypatch, tmp_path
):
    from torch._inductor import codecache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # no header found before
    (tmp_path / "metafunc").mkdir()

    wrapper = codecache._get_cpp_wrapper_header("cpu", aot_mode=True)
    kernels = codecache._get_cpp_prefix_header("cpu")
    release = threading.Event()
    seen = {}

    def precompile(header, line, **flags):  # Inductor's, faked: the kernels' waits for release
        seen[header] = (flags, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        if header == kernels:
            release.wait(10)
        return f"/pch/{header}"

    monkeypatch.setattr(codecache, "_precompile_header", precompile)
    with _ahead._headers_precompiled_beside():
        deadline = time.monotonic() + 60
        while wrapper not in seen or kernels not in seen:  # the wrapper's done, the kernels' not
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert codecache._precompile_header(wrapper, "line", min_optimize=True) == f"/pch/{wrapper}"
        assert codecache._precompile_header(kernels, "line") is None  # not ready: none
        assert codecache._precompile_header("another.h", "line") is None
        release.set()
    assert codecache._precompile_header is precompile  # put back
    assert seen[wrapper][0]["min_optimize"] and "min_optimize" not in seen[kernels][0]
    assert all(flags["aot_mode"] and flags["device_type"] == "cpu" for flags, _ in seen.values())
    if sys.platform == "linux":
        assert {nice for _, nice in seen.values()} == {19}
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # the caller's own priority is untouched


def _ready(headers, count):
    deadline = time.monotonic() + 60
    while len(headers()) < count:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return headers()


def test_a_header_file_found_before_is_taken_at_once_while_it_is_there(monkeypatch, tmp_path):
    """Inductor names a precompiled header's file by the preprocessed header (a second of the
    compiler each process); the file a process found is remembered for the next, so a forked
    compile that starts before the thread is done has it too."""
    from torch._inductor import codecache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    (tmp_path / "metafunc").mkdir()
    made = []

    def precompile(header, line, **flags):
        made.append(header)
        (tmp_path / f"{len(made)}.gch").write_bytes(b"")
        return str(tmp_path / f"{len(made)}.gch")

    monkeypatch.setattr(codecache, "_precompile_header", precompile)
    with _ahead._headers_precompiled_beside() as headers:
        first = _ready(headers, 2)
    assert len(made) == 2
    with _ahead._headers_precompiled_beside() as headers:
        assert _ready(headers, 2) == first
    assert len(made) == 2  # found, not made again
    os.remove(first[made[0]])  # gone: made again
    with _ahead._headers_precompiled_beside() as headers:
        again = _ready(headers, 2)
    assert made[2:] == made[:1] and again[made[0]] != first[made[0]]


@pytest.mark.compile
def test_a_large_graph_is_compiled_in_two_parts_at_once_with_the_whole_graphs_numbers(
    monkeypatch,
):
    learner, params = _maml(lr=0.1, steps=2)
    opt = mf.optim.adam(1e-2)
    state, tasks = mf.init_state(learner, opt, params), sine_tasks(n=2)
    whole = mf.make_step(learner, opt)(state, tasks)
    monkeypatch.setattr(_ahead, "_CUT_AT", 1)  # every graph is large
    monkeypatch.setattr(_compile, "_own_source", lambda: "cut")  # another key
    forked, fork = [], os.fork
    monkeypatch.setattr(os, "fork", lambda: forked.append(1) or fork())
    saved = set((_ahead.folder()).glob("*.1.so"))
    cut = mf.make_step(learner, opt)(state, tasks)
    (second,) = set(_ahead.folder().glob("*.1.so")) - saved
    assert forked == [1] or len(os.sched_getaffinity(0)) < 2  # one core: one after the other
    _same(cut, whole)
    assert _ahead.load(second.name.removesuffix(".1.so")).wiring is not None
    # a new process's step (none in this process's memory) loads both parts
    monkeypatch.setattr(_compile, "_COMPILED", type(_compile._COMPILED)())
    loaded = _ahead.COUNTS["loaded"]
    _same(mf.make_step(learner, opt)(state, tasks), whole)
    assert _ahead.COUNTS["loaded"] == loaded + 1
    # the second part damaged (a new file: this process has the old one loaded): refused
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0x10
    second.with_suffix(".new").write_bytes(bytes(data))
    os.replace(second.with_suffix(".new"), second)
    assert _ahead.load(second.name.removesuffix(".1.so")) is None


@pytest.mark.compile
def test_a_step_compiled_in_parts_that_disagrees_with_eager_is_compiled_whole(monkeypatch):
    learner, params = _maml(lr=0.2, steps=2)
    opt = mf.optim.sgd(0.1)
    state, tasks = mf.init_state(learner, opt, params), sine_tasks(n=2)
    monkeypatch.setattr(_ahead, "_CUT_AT", 1)
    monkeypatch.setattr(_compile, "_own_source", lambda: "wrong parts")  # a key of its own
    parts = _ahead.Compiled._parts  # the parts' outputs made wrong: half again
    monkeypatch.setattr(
        _ahead.Compiled, "_parts", lambda self, inputs: [t * 1.5 for t in parts(self, inputs)]
    )
    with pytest.warns(RuntimeWarning, match="compiled in two parts gave other numbers"):
        out = mf.make_step(learner, opt)(state, tasks)
    _same(out, mf.make_step(learner, opt, compile=False)(state, tasks))


def test_a_part_compiles_for_the_strides_its_inputs_arrive_with(monkeypatch, tmp_path):
    """The second part's inputs arrive contiguous; one that was a transposed view when the
    whole graph was traced (``cos`` of a transpose keeps its strides) is compiled as the
    contiguous tensor it arrives as (a part's graph keeps the strides of the trace: Inductor,
    trusting them, read the transposed elements)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_ahead, "_CUT_AT", 1)

    def fn(x, w):  # cut after the cosine: half the cost is behind it
        return ((x.sin().t().cos()) * w).sum(dim=1)

    x = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)
    w = torch.linspace(0, 1, 12, dtype=torch.float64).reshape(3, 4)
    compiled = _ahead.build("transposed", fn, [], (x, w), {})
    assert compiled.wiring is not None
    torch.testing.assert_close(compiled([], [x, w]), fn(x, w), rtol=1e-12, atol=1e-14)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to compile at once")
def test_the_second_parts_failure_is_raised_and_the_first_parts_kills_the_second(monkeypatch):
    ran = []

    def fails():
        raise ValueError("no such operation")

    with pytest.raises(RuntimeError, match=r"second part .*\(ValueError: no such operation\)"):
        _ahead._at_once([lambda: ran.append(1), fails], dict)
    assert ran == [1]  # the first part ran here
    with pytest.raises(RuntimeError, match=r"its process ended with code 3"):
        _ahead._at_once([lambda: None, lambda: os._exit(3)], dict)
    # where this process has started CUDA, which a forked one could not use: here, in order
    with monkeypatch.context() as patched:
        patched.setattr(torch.cuda, "is_initialized", lambda: True)
        _ahead._at_once([lambda: ran.append(2), lambda: ran.append(3)], dict)
    assert ran == [1, 2, 3]
    begun = time.monotonic()
    with pytest.raises(KeyError):  # raised at once: the second's process killed, not awaited
        _ahead._at_once([lambda: {}["x"], lambda: time.sleep(600)], dict)
    assert time.monotonic() - begun < 120


def test_strides_by_terms_are_torchs_own_strides_for_the_conv_steps_indices():
    import sympy
    from torch._inductor import sizevars
    from torch._inductor.codegen import cpp
    from torch.utils._sympy.functions import FloorDiv, ModularIndexing

    x0, x1, x2, x1_inner, tmp = sympy.symbols("x0 x1 x2 x1_inner tmp51", integer=True)
    inner = x1 + x1_inner
    indices = [  # forms of index the few-shot conv step's compile asks about
        6272 * x0 + x2 + 156800 * FloorDiv(inner, 32) + 196 * ModularIndexing(inner, 1, 32),
        1568 * x0 + x2 + 448 * FloorDiv(x1, 3) + 64 * ModularIndexing(x1, 1, 3) + 224,
        1568 * x0 + x2 + 448 * FloorDiv(x1, 3) + 64 * ModularIndexing(x1, 1, 3) + 32,
        784 * x0 + 56 * FloorDiv(x1, 14) + 2 * ModularIndexing(x1, 1, 14),
        25088 * x0 + 784 * x1 + ModularIndexing(tmp + 26 * FloorDiv(tmp, 2), 1, 28),
        x1 + 32 * FloorDiv(x0, 5) + 200704 * ModularIndexing(x0, 1, 5) + 16 * x1,
        16 * FloorDiv(x2, 16) + ModularIndexing(x2, 1, 16),  # the variable within a vector
        7 * x0 + 5,
        sympy.Integer(3),
    ]
    original = cpp.stride_at_vec_range
    with _ahead._strides_by_terms():
        replaced = cpp.stride_at_vec_range
        assert replaced is not original
        for index in indices:
            for var in (x0, x1, x2):
                for vec_length in (16, None):
                    want = sizevars.stride_at_vec_range(index, var, vec_length)
                    assert replaced(index, var, vec_length) == want, (index, var, vec_length)
    assert cpp.stride_at_vec_range is original  # put back
    # the integer strides come at once; the others are torch's answer for the moving terms
    with _ahead._strides_by_terms():
        assert cpp.stride_at_vec_range(indices[0], x2, 16) == 1
        assert cpp.stride_at_vec_range(indices[5], x1, 16) == 17
        assert cpp.stride_at_vec_range(indices[7], x1, 16) == 0


def test_joins_where_they_can_match_are_torchs_own_joins(monkeypatch):
    import sympy
    from torch._inductor import sizevars
    from torch.utils._sympy.functions import FloorDiv, ModularIndexing

    x0, x1, x2, s0 = sympy.symbols("x0 x1 x2 s0", integer=True)
    indices = [  # forms of index the few-shot conv step's compile simplifies, and joinable ones
        1568 * x0 + x2 + 448 * FloorDiv(x1, 3) + 64 * ModularIndexing(x1, 1, 3),
        x1 + 32 * FloorDiv(x0, 5) + 200704 * ModularIndexing(x0, 1, 5),
        7 * ModularIndexing(x0, 1, 32) + 224 * ModularIndexing(x0, 32, 4) + x1,  # pattern one
        3 * ModularIndexing(x0, 2, 8) + 24 * FloorDiv(x0, 16) + 5,  # pattern two
        ModularIndexing(x0, 1, 4) + 4 * ModularIndexing(x0, 4, 2) + 8 * FloorDiv(x0, 8),  # both
        ModularIndexing(x0, 1, s0) + s0 * FloorDiv(x0, s0),  # a symbolic size: torch decides
        x2 * ModularIndexing(x0, 1, 4) + 4 * x2 * FloorDiv(x0, 4),  # another form: torch decides
        64 * ModularIndexing(x1, 1, 3) + 7,
        x0 + 2 * x1,
    ]
    calls = []
    original = sizevars.join_dimensions

    def counted(expr):
        calls.append(expr)
        return original(expr)

    monkeypatch.setattr(sizevars, "join_dimensions", counted)
    with _ahead._joins_where_they_can_match():
        joined = [sizevars.join_dimensions(index) for index in indices]
    assert sizevars.join_dimensions is counted  # put back
    for index, got in zip(indices, joined, strict=True):
        assert got == original(index), index  # torch's own answer
    assert joined[2] != indices[2] and joined[3] != indices[3] and joined[4] == x0  # joined
    # torch's function ran only where a pair could match or a term is not of the simple form
    assert indices[0] not in calls and indices[1] not in calls and indices[7] not in calls
    assert all(indices[i] in calls for i in (2, 3, 4, 5, 6))


def test_a_large_kernels_file_is_compiled_as_two_halves_joined_into_one_object(
    tmp_path, monkeypatch
):
    import shutil

    compiler = shutil.which("g++") or shutil.which("c++")
    kernels = [
        f'#include <cstdint>\nextern "C" int64_t kernel_{i}() {{ return {i}; }}\n' for i in range(3)
    ]
    source = tmp_path / "k.kernel.cpp"
    source.write_text("// the kernels\n" + "".join(kernels))
    target = tmp_path / "k.kernel.o"

    class Builder:
        def get_command_line(self):
            return f"{compiler} {source} -O1 -fPIC -c -o {target}"

    monkeypatch.setattr(_ahead, "_HALVES_FROM", 10**9)
    assert not _ahead._kernels_in_halves(Builder())  # small: compiled as it is
    monkeypatch.setattr(_ahead, "_HALVES_FROM", 0)
    assert _ahead._kernels_in_halves(Builder())
    halves = [tmp_path / f"k.kernel.{i}.cpp" for i in range(2)]
    assert "".join(h.read_text() for h in halves) == source.read_text()  # cut between kernels
    assert all(h.read_text().count("#include") in (1, 2) for h in halves)
    symbols = subprocess.run(["nm", str(target)], capture_output=True, text=True, check=True)
    assert {f"kernel_{i}" for i in range(3)} <= {w for w in symbols.stdout.split()}
    source.write_text('extern "C" int one() { return 1; }\n')  # not Inductor's kernels: as is
    assert not _ahead._kernels_in_halves(Builder())


def test_a_compiled_function_refuses_an_unhashable_leaf_by_name():
    import numpy as np

    run = _compile.function(lambda x, y: x, where="evaluation", backend="eager")
    with pytest.raises(
        TypeError,
        match=r"^evaluation: the compiled evaluation takes trees of "
        r"tensors and hashable values .*got leaves of type ndarray$",
    ):
        run(torch.zeros(2), np.zeros(2))


# ---------------------------------------------------------------- across processes

SCRIPT = """
import json, sys, warnings
import torch
import metafunc as mf
from torch import nn
steps, ACT = int(sys.argv[1]), getattr(torch, sys.argv[2])
torch.manual_seed(0)
fn, params = mf.pure(nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)).double())
learner = mf.maml(
    mf.supervised(lambda p, x: ACT(fn(p, x)), mf.losses.mse), inner_lr=0.1, inner_steps=steps
)
opt = mf.optim.adam(1e-2)
state = mf.init_state(learner, opt, params)
tasks = mf.tasks.sinusoid(torch.Generator().manual_seed(1), tasks=2, dtype=torch.float64)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    new, _ = mf.make_step(learner, opt)(state, tasks)
want, _ = mf.make_step(learner, opt, compile=False)(state, tasks)
from metafunc import _ahead
dynamo = sys.modules.get("torch._dynamo.utils")
traced = dynamo.counters["stats"]["unique_graphs"] if dynamo else 0
print(json.dumps({
    "hit": _ahead.COUNTS["loaded"],
    "traced": _ahead.COUNTS["compiled"] + traced,
    "meta": [t.tolist() for t in mf._tree.leaves(new.meta)],
    "close": all(torch.allclose(a, b, rtol=1e-9, atol=1e-12)
                 for a, b in zip(mf._tree.leaves(new), mf._tree.leaves(want))),
    "warnings": [str(w.message) for w in caught if str(w.message).startswith("step:")],
    "inductor": "torch._inductor.compile_fx" in sys.modules,
}))
"""


def _process(cache, steps, act="tanh"):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(steps), act], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _saved(cache):
    return {p.stem for p in (cache / "metafunc").glob("*.pkl")}


def _copy(cache, source, target, key=None):
    """The files saved under ``source`` written under ``target``; with ``key``, a manifest
    that claims that key (a forgery, which only the step's numbers can catch)."""
    folder = cache / "metafunc"
    for suffix in ("so", "json"):
        if (folder / f"{source}.{suffix}").exists():
            (folder / f"{target}.{suffix}").write_bytes(
                (folder / f"{source}.{suffix}").read_bytes()
            )
    manifest = pickle.loads((folder / f"{source}.pkl").read_bytes())
    if key is not None:
        manifest["key"] = key
    (folder / f"{target}.pkl").write_bytes(pickle.dumps(manifest))


@pytest.mark.slow
def test_a_new_process_loads_the_saved_step_and_never_another_configurations(tmp_path):
    cache = tmp_path / "cache"
    first = _process(cache, 1)
    assert (first["hit"], first["traced"], first["close"]) == (0, 1, True)
    (mine,) = _saved(cache)
    again = _process(cache, 1)  # loaded, not traced: bit-identical to the process that compiled
    assert (again["hit"], again["traced"], again["meta"]) == (1, 0, first["meta"])
    assert first["inductor"] and not again["inductor"]  # loaded without torch's compiler
    other = _process(cache, 2)  # another configuration finds nothing of the first's
    assert (other["hit"], other["traced"], other["close"]) == (0, 1, True)
    (theirs,) = _saved(cache) - {mine}
    # foreign: another key's files copied in its place; its manifest names its own key
    _copy(cache, mine, theirs)
    caught = _process(cache, 2)
    assert (caught["hit"], caught["traced"], caught["close"]) == (0, 1, True)
    healed = _process(cache, 2)  # the step compiled in its place was saved over it
    assert (healed["hit"], healed["traced"], healed["close"]) == (1, 0, True)
    # foreign, with a manifest forged to claim this key (the loss calls another function of
    # the same code): loaded, found to give other numbers than the eager step on its first
    # call, replaced
    relu = _process(cache, 1, "relu")
    (slot,) = _saved(cache) - {mine, theirs}
    _copy(cache, mine, slot, key=slot)
    fooled = _process(cache, 1, "relu")
    assert fooled["hit"] == 1 and fooled["close"] and fooled["meta"] == relu["meta"], fooled
    assert any("gave other numbers than the eager step" in w for w in fooled["warnings"])
    assert _process(cache, 1, "relu")["hit"] == 1  # and saved over
    # damaged: one byte of the compiled code changed, or the manifest overwritten
    so = cache / "metafunc" / f"{mine}.so"
    data = bytearray(so.read_bytes())
    data[len(data) // 2] ^= 0x10
    so.write_bytes(bytes(data))
    damaged = _process(cache, 1)
    assert (damaged["hit"], damaged["traced"], damaged["close"]) == (0, 1, True)
    assert damaged["meta"] == first["meta"]
    (cache / "metafunc" / f"{mine}.pkl").write_bytes(b"not a manifest")
    damaged = _process(cache, 1)
    assert (damaged["hit"], damaged["traced"], damaged["meta"]) == (0, 1, first["meta"])


def test_a_loaded_step_is_checked_on_its_metrics_and_counts_not_on_updated_parameters():
    """Adam's first update moves a parameter whose gradient is rounding noise (a conv bias
    before a batch norm) by plus or minus its rate in either direction: a loaded step whose
    parameters differ from the eager step's by that much is still this step (its conv steps
    were once all compiled afresh for it); other metrics or counts are not."""
    fn, params = mf.pure(_net())
    learner, opt, _, eager = _steps(fn)
    out = eager(mf.init_state(learner, opt, params), sine_tasks())
    moved = out[0]._replace(meta=mf._tree.map(lambda p: p + 2e-3, out[0].meta))
    numbers = _compile._step_numbers
    assert _compile._agrees(numbers(out), numbers((moved, out[1])))
    other_loss = out[1]._replace(loss=out[1].loss * 1.05)
    assert not _compile._agrees(numbers(out), numbers((out[0], other_loss)))
    later = out[0]._replace(step=out[0].step + 1)
    assert not _compile._agrees(numbers(out), numbers((later, out[1])))
    # other outputs (evaluate's per-task scores): each one's mean, to 1%
    scores = torch.linspace(0.5, 1.5, 100, dtype=torch.float64)
    assert _compile._agrees((scores,), (scores * (1 + 2e-3),))  # rounding, adding up
    assert not _compile._agrees((scores,), (scores * 1.05,))
    assert not _compile._agrees((scores,), (scores[:50],))


@pytest.mark.parametrize("algo", FEWSHOT)
def test_every_few_shot_learner_has_a_fingerprint_so_its_step_is_saved(algo):
    """A learner the fingerprint cannot read is compiled in every process (BOIL's complement
    of the head was such a learner: its warm first call took as long as a trace)."""
    from metafunc.experiments.algorithms import EMBEDDING, STATEFUL, build_learner

    g = torch.Generator().manual_seed(0)
    net = mf.models.conv_net(
        5, channels=2, image_size=28, track_running_stats=algo in STATEFUL, generator=g
    )
    fn = mf.stateful(net)[0] if algo in STATEFUL else mf.pure(net)[0]
    norms = [n for n, m in net.named_modules() if isinstance(m, mf.models.BatchNorm)]
    learner = build_learner(
        algo,
        mf.supervised(fn, mf.losses.cross_entropy),
        head=str(len(net) - 1),
        embed=mf.pure(net[:-1])[0] if algo in EMBEDDING else fn,
        inner_lr=0.4,
        inner_steps=1,
        norms=norms,
        steps=10,
    )
    assert _fingerprint.fingerprint(learner, mf.optim.adam(1e-3)) is not None


CONV_SCRIPT = """
import json, sys
import torch
import metafunc as mf
from metafunc import _ahead, _compile
g = torch.Generator().manual_seed(0)
net = mf.models.conv_net(3, channels=2, blocks=1, image_size=4, generator=g).double()
fn, params = mf.pure(net)
learner = mf.maml(mf.supervised(fn, mf.losses.cross_entropy), inner_lr=0.4, inner_steps=1)
opt = mf.optim.adam(1e-3)
data = mf.tasks.synthetic_glyphs(g, classes=6, examples=4, image_size=4)
tasks = mf.tasks.fewshot(g, data, tasks=2, ways=3, shots=1, queries=2, dtype=torch.float64)
state = mf.init_state(learner, opt, params)
new, _ = mf.make_step(learner, opt)(state, tasks)
want, _ = mf.make_step(learner, opt, compile=False)(state, tasks)
dynamo = sys.modules.get("torch._dynamo.utils")
print(json.dumps({
    "ahead": _ahead.COUNTS["compiled"],
    "refused": len(_compile._NOT_AHEAD),
    "dynamo": dynamo.counters["stats"]["unique_graphs"] if dynamo else 0,
    "close": all(torch.allclose(a, b, rtol=1e-9, atol=1e-11)
                 for a, b in zip(mf._tree.leaves(new), mf._tree.leaves(want))),
}))
"""


@pytest.mark.compile
def test_a_conv_step_compiles_ahead_of_time_in_a_fresh_process(tmp_path):
    """A conv step's decompositions read Inductor's lowerings, which a fresh process has not
    imported: once, the step fell back to torch.compile with only a line in the log. In a new
    process it must be compiled ahead of time, by make_fx and AOTInductor, with no Dynamo."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CONV_SCRIPT], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"ahead": 1, "refused": 0, "dynamo": 0, "close": True}, got


# ---------------------------------------------------------------- compiled in the background


def _until(condition, step, state, tasks, seconds=180):
    """Steps until ``condition()``, polling; the last step's output. A compiling process still
    there at the deadline is killed: it would hold this process's pipes (pytest's, xdist's)."""
    deadline = time.monotonic() + seconds
    out = step(state, tasks)
    while not condition():
        if time.monotonic() > deadline:
            for children in pathlib.Path("/proc/self/task").glob("*/children"):
                for pid in children.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            raise AssertionError("the background compile did not end in time")
        time.sleep(0.05)
        out = step(state, tasks)
    return out


@pytest.fixture
def two_threads():
    """Two threads for torch's operations, with the caller's OpenMP workers started, as in a
    process that ran a parallel operation before its first step (the suite runs on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.ones(1 << 20).add_(1)  # parallel: OpenMP starts its workers (which a fork loses)
    yield
    torch.set_num_threads(threads)


@pytest.mark.compile
def test_a_background_step_is_eager_until_the_forked_compile_is_saved_then_loads_it(two_threads):
    # a net of its own: a step of this configuration compiled earlier in this process would
    # be reused without loading; wide enough (2 x 4 x 128 hidden values) that Inductor runs
    # some of its loops on both threads
    fn, params = mf.pure(nn.Sequential(nn.Linear(1, 128), nn.Tanh(), nn.Linear(128, 1)).double())
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.adam(1e-2)
    step = mf.make_step(learner, opt, compile="background")
    eager = mf.make_step(learner, opt, compile=False)
    state, tasks = mf.init_state(learner, opt, params), sine_tasks(n=2)
    counts = _ahead.COUNTS
    loaded, compiled, traced = counts["loaded"], counts["compiled"], _compile._traced()
    want = eager(state, tasks)
    first = step(state, tasks)
    for a, b in zip(mf._tree.leaves(first), mf._tree.leaves(want), strict=True):
        assert torch.equal(a, b)  # the eager step itself
    out = _until(lambda: counts["loaded"] > loaded, step, state, tasks)
    # loaded what the forked process compiled and saved, and compiled nothing here
    assert (counts["compiled"], _compile._traced()) == (compiled, traced)
    _same(out, want)
    _same(step(state, tasks), want)


def _breaks(y):
    # eager: nothing; traced for a compiled graph (where its tensors are fake): refused
    if torch._subclasses.fake_tensor.is_fake(y):
        raise RuntimeError("this loss refuses to be traced into a graph")
    return y


def _failing():
    """A learner whose compile fails in seconds (a graph break), its optimizer, state and
    tasks."""
    fn, params = mf.pure(_net())
    learner = mf.maml(mf.supervised(lambda p, x: _breaks(fn(p, x)), mf.losses.mse))
    opt = mf.optim.sgd(0.1)
    return learner, opt, mf.init_state(learner, opt, params), sine_tasks(n=2)


def _warned_once(step, state, tasks):
    """Steps a background step whose compile fails until it warns; its one warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _until(lambda: caught, step, state, tasks)
    (warned,) = [str(w.message) for w in caught]
    assert warned.startswith("step: the background compile failed (") and "graph" in warned
    return warned


@pytest.mark.compile
def test_a_background_compile_that_fails_warns_once_and_the_step_stays_eager():
    learner, opt, state, tasks = _failing()
    step = mf.make_step(learner, opt, compile="background")
    eager = mf.make_step(learner, opt, compile=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _until(lambda: caught, step, state, tasks)
        step(state, tasks)
    (warned,) = [str(w.message) for w in caught]
    assert warned.startswith("step: the background compile failed (") and "graph" in warned
    assert warned.endswith("; the step stays eager")
    for a, b in zip(mf._tree.leaves(out), mf._tree.leaves(eager(state, tasks)), strict=True):
        assert torch.equal(a, b)


@pytest.mark.compile
def test_a_background_step_hears_its_compile_where_sigchld_is_ignored():
    # ignoring SIGCHLD (a common way to avoid zombies) makes the kernel reap children unasked:
    # the report comes through the pipe, not the exit status
    learner, opt, state, tasks = _failing()
    step = mf.make_step(learner, opt, compile="background")
    handler = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        _warned_once(step, state, tasks)
    finally:
        signal.signal(signal.SIGCHLD, handler)


@pytest.mark.compile
def test_a_background_step_polls_a_pipe_numbered_above_select_s_limit():
    # a process with many files open (sockets, a loader's pipes) gets pipes numbered past
    # FD_SETSIZE (1024), which select() refuses
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.fail(f"this test needs 1,200 open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        learner, opt, state, tasks = _failing()
        _warned_once(mf.make_step(learner, opt, compile="background"), state, tasks)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _children():
    return {
        int(pid)
        for children in pathlib.Path("/proc/self/task").glob("*/children")
        for pid in children.read_text().split()
    }


def _ended(pid):
    """Whether child ``pid`` has ended and can be reaped; it is left to be reaped. (A process
    seen as a zombie may not be yet: its other threads may still be exiting.)"""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


@pytest.mark.compile
def test_the_compiling_process_of_a_dropped_background_step_is_reaped_by_another_ones_calls():
    learner, opt, state, tasks = _failing()
    other = mf.make_step(learner, opt, compile="background")
    _warned_once(other, state, tasks)  # its own compile failed: it polls nothing of its own
    gc.collect()  # earlier tests' steps, in reference cycles, are dropped here, not below
    step, before = mf.make_step(learner, opt, compile="background"), set(_compile._ABANDONED)
    step(state, tasks)  # forks; its compile fails in a few seconds
    del step  # dropped while compiling: nothing will poll it
    gc.collect()
    (pid,) = _compile._ABANDONED - before  # its compiling process, left to finish
    assert pid in _children()
    deadline = time.monotonic() + 120
    while not _ended(pid):
        assert time.monotonic() < deadline, "the background compile did not end in time"
        time.sleep(0.05)
    other(state, tasks)  # any call of a background step reaps the gone step's process
    assert pid not in _compile._ABANDONED
    with pytest.raises(ChildProcessError):  # no such child: reaped
        os.waitpid(pid, os.WNOHANG)


def test_a_background_step_refuses_what_cannot_hand_it_over(monkeypatch):
    learner, params = _maml()
    opt = mf.optim.sgd(0.1)
    with pytest.raises(TypeError, match=r'compile must be True, False or "background" \(got'):
        mf.make_step(learner, opt, compile="yes")
    with pytest.raises(ValueError, match=r"needs cache=True.*got cache=False"):
        mf.make_step(learner, opt, compile="background", cache=False)
    with pytest.raises(ValueError, match=r"backend='inductor'.*got .*backend='eager'"):
        mf.make_step(learner, opt, compile="background", backend="eager")
    step = mf.make_step(learner, opt, compile="background")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(ValueError, match=r"CUDA has started in this one"):
        step(mf.init_state(learner, opt, params), sine_tasks(n=2))
