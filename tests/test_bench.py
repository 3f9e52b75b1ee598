"""The benchmarks script at tiny sizes: agreement check, rows, JSON and charts (no timing
assertions, no optional extras needed)."""

import dataclasses
import json

import pytest
import torch

from metafunc import bench
from metafunc.cli import main

CPU = torch.device("cpu")
TINY = bench.Workload("tiny", "sinusoid", tasks=3, inner_steps=2, hidden=6)


@pytest.fixture(autouse=True)
def _one_thread():
    """As the script runs (``--threads 1``); the command sets it, and it is restored here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_compare_accepts_agreeing_implementations_and_refuses_a_wrong_one():
    def wrong(w, net, tasks, device):
        # the same step with first-order gradients: close, but not the meta-gradient
        return bench.metafunc_step(compile=False)(
            dataclasses.replace(w, first_order=True), net, tasks, device
        )

    factories = {
        "blog loop": bench.blog_loop,
        "metafunc eager": bench.metafunc_step(compile=False),
        "wrong": wrong,
    }
    logged = []
    rows = bench.compare(
        TINY, factories, device=CPU, repeats=2, steps_per_repeat=1, log=logged.append
    )
    by = {r["impl"]: r for r in rows}
    assert by["blog loop"]["ok"] and by["blog loop"]["meta_grad_error"] == 0
    assert by["metafunc eager"]["ok"] and by["metafunc eager"]["meta_grad_error"] < 1e-5
    assert not by["wrong"]["ok"] and by["wrong"]["meta_grad_error"] > 1e-3
    assert "median_ms" not in by["wrong"]  # refused rows are never timed or reported
    assert any("wrong: REFUSED" in line for line in logged)
    for name in ("blog loop", "metafunc eager"):
        row = by[name]
        assert row["repeats"] == 2 and row["p25_ms"] <= row["median_ms"] <= row["p75_ms"]
        assert row["tasks_per_s"] == pytest.approx(TINY.tasks / (row["median_ms"] / 1e3))
    assert "| wrong | refused: meta-gradient off by" in bench.table({"rows": rows})


def test_the_timing_budget_stops_new_rounds_after_three():
    logged = []
    rows = bench.compare(
        TINY,
        {"blog loop": bench.blog_loop},
        device=CPU,
        repeats=10,
        steps_per_repeat=1,
        budget_s=0.0,
        log=logged.append,
    )
    assert rows[0]["repeats"] == 3
    assert "  timing budget of 0 s used: 3 rounds" in logged


def test_compile_phases_come_from_torch_compiles_timers():
    torch._dynamo.reset()
    torch.compile(lambda x: x.sin() + 1, backend="eager", fullgraph=True)(torch.ones(3))
    phases = bench.compile_phases()
    assert set(phases) <= set(bench.COMPILE_PHASES)
    assert phases["_compile.compile_inner"] >= phases["bytecode_tracing"] > 0


def test_a_fresh_process_probe_reports_compile_phases_only_where_it_compiled():
    got = bench.run_probe(json.dumps(dataclasses.asdict(TINY)), "blog loop", "cpu", steps=1)
    assert got["first_call_s"] > 0 and got["peak_memory_mb"] > 0
    assert "compile_phases_s" not in got


def test_the_table_shows_where_the_first_call_went():
    entry = {
        "rows": [],
        "compile_time": {
            "cold_s": 40.0,
            "warm_s": 6.5,
            "cold": {"compile_phases_s": {"bytecode_tracing": 2.9, "Scheduler.codegen": 13.7}},
            "warm": {"compile_phases_s": {"bytecode_tracing": 2.5}},
        },
    }
    entry["baseline_compile_time"] = {"cold_s": None, "warm_s": 5.7, "cold": {}, "warm": {}}
    text = bench.table(entry)
    assert "metafunc compiled, first call in a fresh process: cold 40.0 s, warm 6.5 s" in text
    assert "torch.func compiled, first call in a fresh process: cold failed, warm 5.7 s" in text
    assert "| Dynamo: tracing the Python | 2.90 | 2.50 | - | - |" in text
    assert "| inductor: generating C++/Triton | 13.70 | - | - | - |" in text
    assert "waiting for the C++" not in text  # phases neither run took are left out


def test_the_hand_written_torch_func_step_agrees():
    rows = bench.compare(
        TINY,
        {"blog loop": bench.blog_loop, "torch.func compiled": bench.torch_func_compiled},
        device=CPU,
        repeats=1,
        steps_per_repeat=1,
        log=lambda _: None,
    )
    assert rows[1]["ok"] and rows[1]["meta_grad_error"] < 1e-5, rows[1]


def test_a_failing_implementation_is_reported_not_raised():
    def broken(w, net, tasks, device):
        raise RuntimeError("no such thing")

    rows = bench.compare(
        TINY,
        {"blog loop": bench.blog_loop, "broken": broken},
        device=CPU,
        repeats=1,
        steps_per_repeat=1,
        log=lambda _: None,
    )
    assert rows[1] == {"impl": "broken", "ok": False, "error": "RuntimeError: no such thing"}


def test_meta_grad_error_is_relative_to_the_reference():
    want = {"a": torch.tensor([2.0, -4.0]), "b": torch.tensor([1.0])}
    assert bench.meta_grad_error(want, want) == 0
    assert bench.meta_grad_error({**want, "b": torch.tensor([1.4])}, want) == pytest.approx(0.1)
    assert bench.meta_grad_error({"a": want["a"]}, want) == float("inf")


def test_missing_extras_are_skipped_with_a_reason():
    assert "no_such_module_xyz not importable" in bench._needs("no_such_module_xyz")()
    run, skipped = bench.selected(
        ["blog loop", "learn2learn", "metafunc compiled reduce-overhead"], CPU
    )
    assert list(run) == ["blog loop"]
    assert "Python 3.11" in skipped["learn2learn"]
    assert skipped["metafunc compiled reduce-overhead"] == "CUDA only (CUDA graphs)"


def test_conv_workload_agrees_with_the_blog_loop():
    w = dataclasses.replace(bench.WORKLOADS["conv-5way1shot"], tasks=2, hidden=4)
    rows = bench.compare(
        w,
        {"blog loop": bench.blog_loop, "metafunc eager": bench.metafunc_step(compile=False)},
        device=CPU,
        repeats=1,
        steps_per_repeat=1,
        log=lambda _: None,
    )
    assert rows[1]["ok"], rows[1]


def test_bench_command_writes_json_and_a_chart(tmp_path, capsys):
    code = main(
        [
            "bench",
            "--device",
            "cpu",
            "--workloads",
            "sine-1step",
            "--impls",
            "blog loop",
            "metafunc eager",
            "--repeats",
            "2",
            "--steps-per-repeat",
            "1",
            "--sweeps",
            "meta_batch",
            "--meta-batch-points",
            "1",
            "2",
            "--sweep-repeats",
            "1",
            "--no-memory",
            "--no-compile-times",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "bench-cpu.json").read_text())
    env = result["environment"]
    for key in ("device", "torch", "jax", "commit", "date", "load_average", "torch_threads"):
        assert key in env
    assert env["torch"] == torch.__version__ and env["torch_threads"] == 1
    rows = result["workloads"]["sine-1step"]["rows"]
    assert [r["impl"] for r in rows] == ["blog loop", "metafunc eager"]
    assert all(r["ok"] and r["median_ms"] > 0 for r in rows)
    points = result["sweeps"]["meta_batch"]["points"]
    assert [p["tasks"] for p in points] == [1, 2]
    assert (tmp_path / "scaling-meta_batch-cpu.png").stat().st_size > 0
    assert "| metafunc eager |" in capsys.readouterr().out
    summary = (tmp_path / "bench-cpu.md").read_text()
    assert "### sine-1step" in summary and "### sweep: meta_batch" in summary
