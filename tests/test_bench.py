"""The benchmark harness at tiny sizes: separate worker processes, the agreement check, the
round-robin order, the command's JSON, Markdown and chart, and the GPU script's CPU dry run.

No timing assertions: the numbers of a tiny run on a shared machine mean nothing. The optional
extras (JAX, optax) are used where installed; the JAX worker's test skips without them.
"""

import dataclasses
import importlib
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmarks import harness, impls, report, run
from benchmarks.workloads import Workload

pytestmark = pytest.mark.slow  # trains, or runs whole processes

ROOT = Path(__file__).resolve().parents[1]
TINY = Workload("tiny", "sinusoid", tasks=3, inner_steps=2, hidden=6)
QUICK = harness.Settings(rounds=3, block_s=0.005, warmup_s=0.0)
HAS_JAX = all(importlib.util.find_spec(m) is not None for m in ("jax", "optax"))

# an implementation that is close but wrong: the same step with first-order gradients
WRONG = textwrap.dedent(
    """
    import dataclasses

    from benchmarks import impls_torch


    def first_order_step(w, net, tasks, device):
        w = dataclasses.replace(w, first_order=True)
        return impls_torch.metafunc_step(w, net, tasks, device, compile=False)
    """
)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One comparison, shared by the tests below: the reference, metafunc eager, a wrong
    implementation, one that cannot be imported, and JAX where installed."""
    extra = tmp_path_factory.mktemp("impls")
    (extra / "wrong_impl.py").write_text(WRONG)
    rows = {
        "blog loop": impls.IMPLS["blog loop"],
        "metafunc eager": impls.IMPLS["metafunc eager"],
        "wrong": impls.ImplSpec("torch", "wrong_impl:first_order_step"),
        "missing": impls.ImplSpec("torch", "no_such_module_xyz:step"),
    }
    if HAS_JAX:
        rows["jax jit"] = impls.IMPLS["jax jit"]
    logged = []
    entry = harness.compare(
        TINY, rows, QUICK, log=logged.append, env={"PYTHONPATH": f"{ROOT}{os.pathsep}{extra}"}
    )
    return entry, {r["impl"]: r for r in entry["rows"]}, logged


def test_the_agreement_check_refuses_a_wrong_implementation(compared):
    entry, by, logged = compared
    assert entry["reference"] == "blog loop"
    assert by["blog loop"]["ok"] and by["blog loop"]["meta_grad_error"] == 0
    assert by["metafunc eager"]["ok"] and by["metafunc eager"]["meta_grad_error"] < 1e-5
    assert not by["wrong"]["ok"] and by["wrong"]["meta_grad_error"] > 1e-3
    assert "median_ms" not in by["wrong"] and "blocks" not in by["wrong"]  # never timed
    assert "wrong" not in entry["schedule"]
    assert any(line.startswith("  wrong: REFUSED") for line in logged)
    assert "| wrong | refused: meta-gradient off by" in report.workload_table(entry)


def test_a_failing_implementation_is_reported_not_raised(compared):
    _, by, _ = compared
    assert not by["missing"]["ok"]
    assert "ModuleNotFoundError: No module named 'no_such_module_xyz'" in by["missing"]["error"]


def test_every_row_runs_in_its_own_process_with_only_its_framework(compared):
    _, by, _ = compared
    pids = [r["pid"] for r in by.values() if "pid" in r]
    assert len(set(pids)) == len(pids) and os.getpid() not in pids
    for name in ("blog loop", "metafunc eager"):
        assert by[name]["modules"] == ["torch", "metafunc"]
        assert by[name]["framework"] == "torch"


@pytest.mark.skipif(not HAS_JAX, reason="JAX and optax are not installed (pip install -e .[bench])")
def test_the_jax_worker_never_loads_torch(compared):
    _, by, _ = compared
    row = by["jax jit"]
    assert row["ok"] and row["meta_grad_error"] < 1e-5
    assert "torch" not in row["modules"] and "metafunc" not in row["modules"]
    assert {"jax", "optax"} <= set(row["modules"])


def test_blocks_are_taken_round_robin(compared):
    entry, by, _ = compared
    timed = [n for n in ("blog loop", "metafunc eager", "jax jit") if n in by and by[n]["ok"]]
    assert entry["schedule"] == timed * QUICK.rounds
    # and they really ran in that order: each block started after the one before it
    blocks = sorted(
        (b["round"], timed.index(n), b["t_start"]) for n in timed for b in by[n]["blocks"]
    )
    starts = [t for _, _, t in blocks]
    assert starts == sorted(starts)
    for name in timed:
        row = by[name]
        assert row["blocks_timed"] == QUICK.rounds
        assert row["p25_ms"] <= row["median_ms"] <= row["p75_ms"]
        assert row["tasks_per_s"] == pytest.approx(TINY.tasks / (row["median_ms"] / 1e3))
        assert row["peak_memory_mb"] > 0
        for block in row["blocks"]:
            assert block["steps"] == row["steps_per_block"] >= 1
            assert 0 <= block["background_cores"] <= os.cpu_count()
            assert block["on_cpu"] >= 0 and block["loadavg_1min"] >= 0


def test_workers_share_the_thread_settings():
    env = harness.worker_env(1, "cpu")
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert "--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]
    assert env["JAX_PLATFORMS"] == "cpu"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    gpu = harness.worker_env(2, "cuda")
    assert gpu["OMP_NUM_THREADS"] == "2" and gpu["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_meta_grad_error_is_relative_to_the_reference():
    want = {"a": np.array([2.0, -4.0]), "b": np.array([1.0])}
    assert harness.meta_grad_error(want, want) == 0
    assert harness.meta_grad_error({**want, "b": np.array([1.4])}, want) == pytest.approx(0.1)
    assert harness.meta_grad_error({"a": want["a"]}, want) == float("inf")


def test_unavailable_implementations_are_skipped_with_a_reason():
    chosen, skipped = impls.selected(
        ["blog loop", "learn2learn", "metafunc compiled reduce-overhead", "nope"], "cpu"
    )
    assert list(chosen) == ["blog loop"]
    assert "Python 3.11" in skipped["learn2learn"]
    assert skipped["metafunc compiled reduce-overhead"] == "CUDA only (CUDA graphs)"
    assert skipped["nope"].startswith("unknown implementation")
    missing = impls.ImplSpec("torch", "x:y", needs=("no_such_module_xyz",))
    assert "no_such_module_xyz is not installed" in impls.unavailable(missing, "cpu")


def test_the_report_shows_where_the_first_call_went():
    first_calls = {
        "metafunc compiled": {
            "cold_s": 40.0,
            "warm_s": 6.5,
            "cold": {"compile_phases_s": {"bytecode_tracing": 2.9, "Scheduler.codegen": 13.7}},
            "warm": {"compile_phases_s": {"bytecode_tracing": 2.5}},
        },
        "jax jit": {"cold_s": None, "cold": {"error": "boom"}},
    }
    text = report.first_call_table(first_calls)
    assert "| metafunc compiled | 40.00 | 6.50 |" in text
    assert "| jax jit | failed |  |" in text
    assert "| Dynamo: tracing the Python | 2.90 | 2.50 |" in text
    assert "| inductor: generating C++/Triton | 13.70 | - |" in text
    assert "waiting for the C++" not in text  # phases neither run took are left out


def test_the_command_writes_json_markdown_and_a_chart(tmp_path, capsys):
    code = run.main(
        [
            "--workloads",
            "sine-1step",
            "--impls",
            "blog loop",
            "metafunc eager",
            "--rounds",
            "2",
            "--block-s",
            "0.005",
            "--sweeps",
            "meta_batch",
            "--meta-batch-points",
            "1",
            "--sweep-impls",
            "metafunc eager",
            "--sweep-rounds",
            "1",
            "--first-calls",
            "sine-1step",
            "--measure-time-to-n",
            "2",
            "--out",
            str(tmp_path),
            "--name",
            "tiny",
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "tiny.json").read_text())
    env = result["environment"]
    for key in ("device", "torch", "jax", "commit", "date", "load_average", "threads", "command"):
        assert key in env
    assert env["threads"] == 1 and env["command"].startswith("python -m benchmarks --workloads")
    rows = result["workloads"]["sine-1step"]["rows"]
    assert [r["impl"] for r in rows] == ["blog loop", "metafunc eager"]
    assert all(r["ok"] and r["median_ms"] > 0 for r in rows)
    point = result["sweeps"]["meta_batch"]["points"][0]
    assert point["value"] == 1 and point["workload"]["tasks"] == 1
    assert [r["impl"] for r in point["rows"]] == ["metafunc eager"]
    assert (tmp_path / "tiny-scaling-meta_batch.png").stat().st_size > 0
    summary = (tmp_path / "tiny.md").read_text()
    assert "### sine-1step" in summary and "### sweep: meta_batch" in summary
    assert "| metafunc eager |" in capsys.readouterr().out
    # time to N: computed for every row, and measured end to end in a fresh process per row
    entry = result["workloads"]["sine-1step"]
    assert entry["first_calls"] == {}  # eager rows: their timing worker's first call is it
    assert set(entry["time_to_n"]) == {"blog loop", "metafunc eager"}
    assert set(entry["time_to_n_measured"]) == {"blog loop", "metafunc eager"}
    for runs in entry["time_to_n_measured"].values():
        run_ = runs["2"]["cold"]
        assert "warm" not in runs["2"]  # an eager row caches nothing: one run
        assert run_["steps"] == 2 and run_["total_s"] == run_["first_call_s"] + run_["steps_s"]
    assert "First call + N steps, s, computed" in summary
    assert "| first call + N steps, measured (computed), s | N = 2 cold | N = 2 warm |" in summary


@pytest.mark.skipif(
    sys.platform != "linux", reason="the GPU script is a bash script for Linux machines"
)
def test_the_gpu_script_runs_on_a_cpu_at_tiny_sizes(tmp_path):
    """``benchmarks/gpu.sh --dry-run``: every stage of the GPU check, on the CPU."""
    done = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--dry-run", "--out", str(tmp_path), "--time-limit", "1500"],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert result["dry_run"] and result["environment"]["device"].startswith("CPU dry run")
    assert "eager backend" in result["note"]
    tests = result["cuda_tests"]["tests"]
    assert len(tests) == 4
    for t in tests.values():  # no GPU here: each test skips, saying why
        assert t["outcome"] == "skipped" and "needs a CUDA GPU" in t["message"]
    torch_rows = ["blog loop", "metafunc eager", "metafunc compiled"]
    torch_rows += ["metafunc compiled reduce-overhead", "torch.func compiled"]
    for name in ("sine-5step", "conv-5way1shot"):
        by = {r["impl"]: r for r in result["workloads"][name]["rows"]}
        for impl in torch_rows:
            row = by[impl]
            assert row["ok"] and row["median_ms"] > 0 and row["peak_memory_mb"] > 0, row
            assert row["profile"]["aten_ops_per_step"] > 0
            assert row["first_call_concurrent"]
        assert ("jax jit" in by) == HAS_JAX
        if HAS_JAX:  # the JAX net (lax.conv, batch statistics) computes the same meta-gradient
            assert by["jax jit"]["ok"], by["jax jit"]
    points = result["sweeps"]["meta_batch"]["points"]
    assert [p["value"] for p in points] == [2, 3]
    assert all(r["ok"] for p in points for r in p["rows"])
    first = result["workloads"]["sine-5step"]["first_calls"]
    for impl in ("metafunc compiled", "metafunc compiled reduce-overhead", "torch.func compiled"):
        assert first[impl]["cold_s"] > 0 and first[impl]["warm_s"] > 0
        assert first[impl]["cold"]["compile_phases_s"]["bytecode_tracing"] > 0
    summary = (tmp_path / "gpu-check.md").read_text()
    assert "### tests/test_cuda.py" in summary and "### sweep: meta_batch" in summary
    assert (tmp_path / "gpu-check-scaling-meta_batch.png").stat().st_size > 0


def test_the_workload_rows_are_data():
    """A sweep point is the base workload with one field changed, named after it; the conv
    workload comes second and first order, otherwise the same."""
    from benchmarks.workloads import WORKLOADS, sweep_point

    w = sweep_point("tasks", 1024)
    assert w == dataclasses.replace(
        WORKLOADS["sine-5step"], name="sine-5step/tasks=1024", tasks=1024
    )
    conv, fo = WORKLOADS["conv-5way1shot"], WORKLOADS["conv-5way1shot-fo"]
    assert fo == dataclasses.replace(conv, name=fo.name, first_order=True)
    assert (conv.tasks, conv.blocks, conv.hidden, conv.tolerance) == (32, 4, 64, 1e-3)


STUDIES = [
    "step_variants",
    "eager",
    "memory",
    "nonfinite_guard",
    "distributed",
    "evaluation",
    "startup",
    "background",
    "seeds",
]


def test_importing_any_benchmark_module_runs_nothing():
    """The harness and every study import without doing work: nothing printed, no error from
    arguments that are not theirs (a study that parsed ``sys.argv`` on import would fail here)."""
    import benchmarks
    import benchmarks.studies

    modules = [
        m.name
        for package in (benchmarks, benchmarks.studies)
        for m in pkgutil.iter_modules(package.__path__, package.__name__ + ".")
        if m.name != "benchmarks.__main__" and not m.ispkg
    ]
    assert {f"benchmarks.studies.{s}" for s in STUDIES} <= set(modules)
    if not HAS_JAX:
        modules.remove("benchmarks.impls_jax")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)",
            *modules,
        ],
        cwd=ROOT,
        env=harness.worker_env(1, "cpu"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""


@pytest.mark.parametrize("name", STUDIES)
def test_each_study_starts_one_way(name, capsys):
    study = importlib.import_module(f"benchmarks.studies.{name}")
    with pytest.raises(SystemExit) as exit_:
        study.main(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m benchmarks.studies.{name}")


TINY_CONV = Workload(
    "tiny-conv", "conv", tasks=2, inner_steps=1, hidden=4, inner_lr=0.4, blocks=1,
    image_size=8, tolerance=1e-3,
)  # fmt: skip
NEW_ROWS = {  # registry name -> what it needs installed
    "torchopt vmap": "torchopt",
    "parallel-metalearn": "metalearn",
}


def _meta_grad(name: str, w: Workload) -> dict[str, np.ndarray]:
    """One step of a registered torch row in this process; its meta-gradient (from Adam)."""
    import torch

    from benchmarks import data
    from benchmarks.workloads import B1

    spec = impls.IMPLS[name]
    module, _, factory = spec.factory.partition(":")
    impl = getattr(importlib.import_module(module), factory)(
        w, data.make_net(w), data.make_batch(w), torch.device("cpu"), **spec.kwargs
    )
    impl.step()
    return {k: v / (1 - B1) for k, v in impl.first_moment().items()}


@pytest.mark.parametrize("name", list(NEW_ROWS))
@pytest.mark.parametrize("workload", ["sine", "sine-fo", "conv", "conv-fo"])
def test_the_new_rows_agree_with_the_blog_loop(name, workload):
    """What the harness checks before it times a row, at tiny sizes, second and first order
    (two inner steps first order)."""
    if importlib.util.find_spec(NEW_ROWS[name]) is None:
        pytest.skip(f"{NEW_ROWS[name]} is not installed (pip install -e .[bench])")
    w = {"sine": TINY, "conv": TINY_CONV}[workload.removesuffix("-fo")]
    if workload.endswith("-fo"):
        w = dataclasses.replace(w, first_order=True, inner_steps=2)
    want = _meta_grad("blog loop", w)
    assert harness.meta_grad_error(_meta_grad(name, w), want) < w.tolerance / 10
    # and the check would refuse the row had it taken the other order
    other = dataclasses.replace(w, first_order=not w.first_order)
    assert harness.meta_grad_error(_meta_grad(name, other), want) > 10 * w.tolerance


def test_every_registered_row_names_a_factory_that_exists():
    for name, spec in impls.IMPLS.items():
        module, _, factory = spec.factory.partition(":")
        if spec.framework == "jax" and not HAS_JAX:
            continue
        assert callable(getattr(importlib.import_module(module), factory)), name
    assert {"torchopt loop", "torchopt vmap", "parallel-metalearn"} <= set(impls.IMPLS)


def test_the_time_to_n_table_is_first_call_plus_n_median_steps():
    rows = [
        {"impl": "eager", "compiled": False, "first_call_s": 2.0, "median_ms": 10.0},
        {"impl": "compiled", "compiled": True, "first_call_s": 9.0, "median_ms": 1.0},
        {"impl": "jax", "compiled": False, "first_call_s": 2.5, "median_ms": 2.0},
        {"impl": "compiled, no fresh runs", "compiled": True, "first_call_s": 40, "median_ms": 1.5},
        {"impl": "refused", "compiled": False, "first_call_s": 1.0, "meta_grad_error": 1.0},
    ]
    first_calls = {
        "compiled": {"cold_s": 30.0, "warm_s": 5.0, "cold": {}, "warm": {}},
        "jax": {"cold_s": 3.0, "cold": {}},
    }
    entry = {"rows": rows, "first_calls": first_calls, "tolerance": 1e-4}
    got = report.time_to_n(entry)
    assert list(got) == ["eager", "compiled", "jax", "compiled, no fresh runs"]
    firsts = {  # cold, warm: where each comes from
        "eager": (2.0, 2.0),  # the timing worker's (a fresh process; nothing cached)
        "compiled": (30.0, 5.0),  # fresh processes, cold and warm
        "jax": (3.0, 3.0),  # a fresh process; JAX caches nothing by default
        "compiled, no fresh runs": (40.0, 40.0),  # the timing worker's, flagged
    }
    for impl, (cold, warm) in firsts.items():
        row = next(r for r in rows if r["impl"] == impl)
        assert (got[impl]["first_call_cold_s"], got[impl]["first_call_warm_s"]) == (cold, warm)
        for n in report.TIME_TO_N:
            seconds = got[impl]["seconds"][str(n)]
            assert seconds["cold"] == pytest.approx(cold + n * row["median_ms"] / 1e3)
            assert seconds["warm"] == pytest.approx(warm + n * row["median_ms"] / 1e3)
    assert "compile cache" in got["compiled, no fresh runs"]["first_call_from"]
    table = report.time_to_n_table(got)
    assert "computed as the first call + N x the median ms per step" in table
    assert "| compiled | 30.00 | 5.00 | 1 | 30.1 | 5.1 | 31 | 6 | 40 | 15 |" in table
    assert "| eager | 2.00 | 2.00 | 10 | 3 | 3 | 12 | 12 | 102 | 102 |" in table
    assert "| compiled, no fresh runs | 40.00* | 40.00* | 1.5 | 40.1* |" in table
    measured = {"compiled": {"100": {"cold": {"total_s": 31.0}, "warm": {"total_s": 5.5}}}}
    text = report.time_to_n_table(got, measured)
    assert "| compiled | 31 (30.1) | 5.5 (5.1) |" in text


@pytest.mark.skipif(not HAS_JAX, reason="JAX and optax are not installed (pip install -e .[bench])")
def test_the_jax_step_compiles_once(tmp_path):
    """Its first call is its only compile: a second one on the second call (an Adam state not
    on the device as the weights are) would go uncounted in the first call and in time to N."""
    from benchmarks import data

    path = data.write(TINY, tmp_path / "data.npz")
    script = textwrap.dedent(
        f"""
        import dataclasses, jax
        from pathlib import Path
        from benchmarks import impls_jax
        from benchmarks.workloads import Workload, load_arrays

        jax.config.update("jax_log_compiles", True)
        w = Workload(**{dataclasses.asdict(TINY)!r})
        impl = impls_jax.jax_jit(w, load_arrays(Path({str(path)!r})), "cpu")
        for _ in range(3):
            impl.step()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=harness.worker_env(1, "cpu"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("Compiling jit(jstep)") == 1, done.stderr[-3000:]


def test_the_eager_studys_hand_written_extras_report_what_make_step_does():
    """``benchmarks.studies.eager`` times the hand-written step with the work metafunc's eager
    step reports: that work gives metafunc's numbers (the first step from the same weights)."""
    import torch

    import metafunc as mf
    from benchmarks import data
    from benchmarks.studies import eager
    from benchmarks.workloads import OUTER_LR, WORKLOADS

    w = WORKLOADS["sine-1step"]
    net, tasks = data.make_net(w), data.make_batch(w)
    report = eager.by_hand(w, net, tasks, checks=True)()
    fn, params = mf.pure(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=w.inner_lr, inner_steps=1)
    opt = mf.optim.adam(OUTER_LR)
    _, metrics = mf.make_step(learner, opt, compile=False)(
        mf.init_state(learner, opt, params), tasks
    )
    for name in ("loss", "loss_before", "grad_norm"):
        torch.testing.assert_close(report[name], getattr(metrics, name), rtol=1e-5, atol=0)
    assert report["finite_leaves"].tolist() == metrics.finite_leaves.tolist()
    assert bool(report["finite"]) and bool(metrics.finite)
