"""Every measured number the README quotes is read here from the result file the measuring
command wrote, so a rerun that changes a file and not the README (or the other way) fails.

Numbers with no such file are not in the README: the sections below say where each comes from.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from metafunc.experiments import fewshot_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def results(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def medians(bench: dict, workload: str) -> dict[str, float | None]:
    """Each implementation's median ms per step on ``workload`` (None for a row that failed)."""
    return {r["impl"]: r.get("median_ms") for r in bench["workloads"][workload]["rows"]}


def load_average(bench: dict) -> tuple[float, float]:
    """A bench run's one-minute load average at its start and at its end."""
    env = bench["environment"]
    return env["load_average"][0], env["load_average_end"][0]


def _section(title):
    """The README's section (or subsection) under ``title``, its line breaks aside."""
    text = README[README.index(title) + len(title) :]
    return " ".join(text[: text.index("\n#")].split())


def ms(value: float) -> str:
    """Milliseconds as benchmarks/report.py writes them."""
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def quoted(text: str) -> None:
    assert text in README, f"the README does not quote {text!r} (from its result file)"


def test_the_demo_numbers_are_docs_maml_sine_results():
    """``make demo`` (``metafunc train``) writes docs/maml-sine-results.json's fields."""
    r = results("docs/maml-sine-results.json")
    quoted(f"| the demo itself (`metafunc train`) | {r['wall_s']:.0f} s |")
    quoted(f"| first call of the compiled step (compile) | {r['first_call_s']:.1f} s |")
    quoted(f"inner steps + SGD), compiled | {r['step_ms']:.2f} ms |")
    for label, phase in (("0", "0"), ("π", "pi")):
        got = r["grid_mse"][phase]
        quoted(
            f"| dense-grid MSE after adapting on 4 points, b = {label} | "
            f"{got['mean']:.3f} ± {got['ci95']:.3f} |"
        )
        assert got["draws"] == 1000 and "averaged over\n1000 draws" in README
    assert (r["steps"], r["meta_batch"]) == (80_000, 32)


def test_the_daml_demo_numbers_are_docs_daml_sine_results():
    r = results("docs/daml-sine-results.json")
    zero, pi = r["grid_mse"]["0"], r["grid_mse"]["pi"]
    quoted(
        f"**b = 0: MSE {zero['mean']:.4f} ± {zero['ci95']:.4f}, "
        f"b = π: {pi['mean']:.4f} ± {pi['ci95']:.4f}**"
    )
    quoted(
        f"The run took {r['wall_s']:.0f} s (compile {r['first_call_s']:.0f} s,\nthen "
        f"{r['step_ms']:.1f} ms per compiled step)"
    )
    assert zero["draws"] == pi["draws"] == 1000


NAMES = {
    "maml": "MAML",
    "meta-sgd": "Meta-SGD",
    "fomaml": "FO-MAML",
    "reptile": "Reptile (5 inner steps)",
}


def test_the_table_is_docs_sinusoid_table_and_its_claims_hold():
    t = results("docs/sinusoid-table.json")
    cells = {(r["algo"], r["shots"]): r for r in t["rows"]}
    shots = t["config"]["shots"]
    for algo, name in NAMES.items():
        row = [f"| {name} |"]
        for k in shots:
            r = cells[algo, k]
            paper = "–" if r["paper"] is None else f"{r['paper']:.2f}"
            row.append(f" {r['mse']:.2f} ± {r['ci95']:.2f} | {paper} |")
        quoted("".join(row))
    # the claims made of the table
    for k in shots:
        for algo in ("maml", "meta-sgd"):
            r = cells[algo, k]
            assert r["mse"] + r["ci95"] < r["paper"], (algo, k)  # beaten, outside our interval
        assert cells["meta-sgd", k]["mse"] < cells["maml", k]["mse"], k
    minutes = [r["train_s"] / 60 for r in t["rows"]]
    quoted(
        f"{min(minutes):.1f}–{max(minutes):.1f} min\nper cell, {sum(minutes):.0f} min of "
        "training in all"
    )
    assert t["config"]["steps"] == 70_000 and "**70,000 outer steps**" in README
    assert t["config"]["eval_tasks"] == 4000 and "scored on 4000 new tasks" in README


def test_the_fewshot_numbers_are_docs_fewshot_synthetic_results():
    r = results("docs/fewshot-synthetic/results.json")
    acc = r["test_accuracy"]
    quoted(f"**{100 * acc['mean']:.2f} ± {100 * acc['ci95']:.2f}%**")
    assert acc["tasks"] == 600 and "over 600 new tasks" in README
    quoted(
        f"| one outer step (8 tasks, second order), compiled; tasks per second | "
        f"{r['step_ms'] / 1000:.2f} s; {r['tasks_per_s']:.1f} |"
    )
    quoted(f"| first call of the compiled step | {r['first_call_s']:.1f} s |")
    quoted(
        f"| the whole run (data, compile, 300 steps, 600 test tasks, figures) | {r['wall_s']:.0f} s |"
    )


def test_the_fewshot_table_is_docs_fewshot_table_and_its_claims_hold():
    """``metafunc table --task fewshot`` (the command in the README) wrote docs/fewshot-table.json."""
    t = results("docs/fewshot-table.json")
    rows, config = t["rows"], t["config"]
    quoted(fewshot_table.format_table(rows))
    section = _section("## The few-shot table")
    for option in ("steps", "meta_batch", "channels", "eval_tasks"):
        assert f"--{option.replace('_', '-')} {config[option]}" in section, option
    assert config["compile"] is False and "--no-compile" in section
    assert {r["machine"]["cpu"] for r in rows} == {rows[0]["machine"]["cpu"]}
    assert f"({rows[0]['machine']['cpu']}" in section
    minutes = sum(r["wall_s"] for r in rows) / 60
    assert f"{len(rows)} cells took {minutes:.0f} min" in section
    assert {(r["train_classes"], r["test_classes"]) for r in rows} == {(200, 100)}
    assert "(200 training classes, 100 new test classes)" in section
    # every accuracy the prose quotes is a cell's or a mean over seeds
    known = {f"{100 * r['accuracy']:.2f}" for r in rows}
    known |= {f"{100 * m['mean']:.2f}" for m in fewshot_table.seed_means(rows)}
    prose = section[section.index("Best at seed 0") :]
    percents = set(re.findall(r"(\d+\.\d\d)%", prose))
    assert percents and percents <= known, percents - known
    seed0 = [r for r in rows if r["seed"] == 0]
    for ways, shots in dict.fromkeys((r["ways"], r["shots"]) for r in rows):
        best = max(
            (r for r in seed0 if (r["ways"], r["shots"]) == (ways, shots)),
            key=lambda r: r["accuracy"],
        )
        name = fewshot_table.NAMES[best["algo"]]
        assert f"{ways}-way {shots}-shot: {name} ({100 * best['accuracy']:.2f}%" in section
    _mamlpp_against_maml(rows, section)


def _mamlpp_against_maml(rows, section):
    """The section says at which seeds MAML++ did not beat MAML at 5-way 1-shot, or that it beat
    it at every seed; returns the two rows of each seed."""
    maml, mamlpp = (
        {r["seed"]: r for r in rows if (r["algo"], r["ways"], r["shots"]) == (a, 5, 1)}
        for a in ("maml", "mamlpp")
    )
    assert maml.keys() == mamlpp.keys() and len(maml) > 1
    lost = [s for s in sorted(maml) if not mamlpp[s]["accuracy"] > maml[s]["accuracy"]]
    if lost:
        seeds = ", ".join(map(str, lost))
        assert f"MAML++ did not beat MAML at 5-way 1-shot at seed {seeds}" in section
        for s in lost:
            pp, m = 100 * mamlpp[s]["accuracy"], 100 * maml[s]["accuracy"]
            assert f"({pp:.2f}% against {m:.2f}%" in section
    else:
        assert "MAML++ beat MAML at 5-way 1-shot at every seed" in section
    return {s: (maml[s], mamlpp[s]) for s in maml}


def test_mamlpp_with_five_inner_steps_is_docs_fewshot_mamlpp_5steps():
    t = results("docs/fewshot-mamlpp-5steps.json")
    rows, config = t["rows"], t["config"]
    quoted(fewshot_table.format_table(rows))
    section = _section("### MAML++ with its paper's five inner steps")
    assert (config["inner_steps"], config["inner_lr"]) == (5, 0.1)
    assert "--inner-steps 5 --inner-lr 0.1 --no-compile" in section
    table = results("docs/fewshot-table.json")["config"]
    same = ("steps", "meta_batch", "channels", "eval_tasks", "outer_lr", "queries", "compile")
    assert all(config[k] == table[k] for k in same)  # "the same budget"
    pairs = _mamlpp_against_maml(rows, section)
    if "by more than the intervals" in section:
        for maml, mamlpp in pairs.values():
            assert mamlpp["accuracy"] - mamlpp["ci95"] > maml["accuracy"] + maml["ci95"]
    means = {m["algo"]: 100 * m["mean"] for m in fewshot_table.seed_means(rows)}
    one_step = results("docs/fewshot-table.json")["rows"]
    before = [
        m
        for m in fewshot_table.seed_means(one_step)
        if (m["algo"], m["ways"], m["shots"]) == ("maml", 5, 1)
    ]
    quoted(f"MAML itself from {100 * before[0]['mean']:.2f}% to {means['maml']:.2f}%")
    minutes = sum(r["wall_s"] for r in rows) / 60
    assert f"{len(rows)} cells took {minutes:.0f} min" in section
    ms = {a: statistics.median(r["step_ms"] for r in rows if r["algo"] == a) for a in means}
    assert f"about {ms['mamlpp'] / ms['maml']:.1f} times a MAML step" in section


def test_the_throughput_is_benchmarks_results_distributed_cpu():
    r = results("benchmarks/results/distributed-cpu.json")
    text = []
    for p, unit in ((1, "process"), (2, "processes")):
        runs = [x["tasks_per_s"] for x in r["runs"] if x["processes"] == p]
        text.append(
            f"{r['median_tasks_per_s'][str(p)]:.0f} tasks/s with {p} {unit} "
            f"({min(runs):.0f}–{max(runs):.0f})"
        )
    quoted("median " + " and ".join(text))


def test_the_benchmark_numbers_are_benchmarks_results_bench_cpu():
    """``python -m benchmarks ... --name bench-cpu`` (the command in bench-cpu.md) wrote them."""
    b = results("benchmarks/results/bench-cpu.json")
    text = " ".join(README[README.index("## Benchmarks") :].split())  # line breaks aside

    def sweep(name: str, value: int) -> dict[str, float]:
        point = next(p for p in b["sweeps"][name]["points"] if p["value"] == value)
        return {r["impl"]: r["median_ms"] for r in point["rows"]}

    def says(phrase: str) -> None:
        assert phrase in text, f"the README's Benchmarks section does not say {phrase!r}"

    mf, tf, jx = "metafunc compiled", "torch.func compiled", "jax jit"
    five, one, fo = (medians(b, w) for w in ("sine-5step", "sine-1step", "sine-5step-fo"))
    one_task, many, wide = sweep("meta_batch", 1), sweep("meta_batch", 1024), sweep("hidden", 320)
    says(
        f"compiled metafunc {ms(five[mf])} ms per step, {five['blog loop'] / five[mf]:.0f}× "
        f"faster than the blog loop ({ms(five['blog loop'])} ms) and faster than `jax.jit` "
        f"({ms(five[jx])} ms)"
    )
    assert five[mf] < five[jx]
    says(f"compiled takes {ms(five[tf])} ms")
    says(
        f"With one inner step: {ms(one[mf])} ms against JAX's {ms(one[jx])} ms (by hand {ms(one[tf])} ms)"
    )
    says(f"first order: {ms(fo[mf])} ms against {ms(fo[jx])} ms")
    says(f"At 1024 tasks metafunc takes {ms(many[mf])} ms against JAX's {ms(many[jx])} ms")
    says(f"JAX is faster with a single task ({ms(one_task[jx])} against {ms(one_task[mf])} ms)")
    says(f"at width 320 ({ms(wide[jx])} against {ms(wide[mf])} ms)")
    assert one_task[jx] < one_task[mf] and wide[jx] < wide[mf] and many[mf] < many[jx]
    first = b["workloads"]["sine-5step"]["first_calls"]
    says(
        f"{first[mf]['cold_s']:.0f} s cold and {first[mf]['warm_s']:.0f} s from the cache in a "
        f"fresh process (JAX: {first[jx]['cold_s']:.0f} s)"
    )
    load = load_average(b)
    says(f"load average {load[0]:.1f} at the start and {load[1]:.1f} at the end")


def test_the_guard_cost_is_quoted_only_from_its_result_file():
    """``python -m benchmarks.studies.nonfinite_guard 1 --out
    benchmarks/results/nonfinite-guard-cpu.json`` writes the guard's cost; until that file is
    committed the README quotes no timing of it."""
    path = ROOT / "benchmarks/results/nonfinite-guard-cpu.json"
    section = README[README.index("What the guard costs") :][:1200]
    if not path.exists():
        assert not re.search(r"\d ms\b", section), section
        return
    r = json.loads(path.read_text())["median_ms"]
    for key in ("plain", "guard", "+read"):
        quoted(f"{r[key]:.2f} ms")


@pytest.mark.parametrize(
    "stale",
    [
        r"\d+ passed",  # the suite's count changes with every test
        r"took \d+ min \d+ s",  # make test / make demo wall times: no result file
        r"The four took \d+ s",  # the notebooks' runtime: no result file
    ],
)
def test_no_number_without_a_result_file(stale):
    assert not re.search(stale, README), re.search(stale, README)


def test_the_start_up_tables_are_benchmarks_results_startup_cpu():
    """``OMP_NUM_THREADS=1 python -m benchmarks.studies.startup --out
    benchmarks/results/startup-cpu.json`` wrote them; the README shows its tables as printed."""
    from benchmarks.studies.startup import tables

    r = results("benchmarks/results/startup-cpu.json")
    for line in tables(r["runs"]).splitlines():
        quoted(line)
    imports = r["runs"]["imports"]
    quoted(f"compiler (Dynamo and Inductor, {imports['dynamo_inductor_s']:.1f} s on their own)")
    load = r["load_average"]
    quoted(f"load average {load['start'][0]:.1f} at the start and {load['end'][0]:.1f} at the end")
    assert r["cpu"] in README[README.index("## Start-up") :][:2000]
    for name, run in r["runs"].items():  # every warm row loaded its step and traced nothing
        if name != "imports":
            assert run["warm"]["loaded_graphs"] > 0 and run["warm"]["traced_graphs"] == 0, name
            assert run["cold"]["traced_graphs"] > 0 and run["new"]["traced_graphs"] > 0, name
    # the same day's run of the commit before this start-up work, for the comparison
    before = results("benchmarks/results/startup-cpu-c5a1533.json")["runs"]
    now = r["runs"]
    quoted(
        f"took {before['sine S=5']['cold']['first_call_s']:.1f} s at S=5 and "
        f"{before['fewshot maml']['cold']['first_call_s']:.0f} s for MAML, cold, where this "
        f"commit's study took {now['sine S=5']['cold']['first_call_s']:.1f} s and "
        f"{now['fewshot maml']['cold']['first_call_s']:.0f} s"
    )


def test_the_compiled_evaluation_numbers_are_benchmarks_results_evaluation_cpu():
    """``OMP_NUM_THREADS=1 python -m benchmarks.studies.evaluation --out
    benchmarks/results/evaluation-cpu.json``."""
    e = results("benchmarks/results/evaluation-cpu.json")["runs"]
    eager, cold, warm = e["eager"], e["compiled, cold"], e["compiled, warm"]
    text = " ".join(README.split())
    for phrase in (
        f"a compiled evaluation takes {cold['median_s']:.1f} s a call against "
        f"{eager['median_s']:.1f} s eager ({eager['median_s'] / cold['median_s']:.1f}×)",
        f"its first call {cold['first_call_s']:.0f} s cold and {warm['first_call_s']:.1f} s warm",
    ):
        assert phrase in text, phrase
    assert cold["accuracy_equals_eager"] and warm["accuracy_equals_eager"]


def test_the_epyc_benchmark_numbers_are_its_two_result_files():
    """``benchmarks/results/bench-cpu-epyc.json`` (every row) and
    ``bench-cpu-epyc-compiled.json`` (the compiled and eager rows after the foreach change),
    each written by the command in its Markdown."""
    full = results("benchmarks/results/bench-cpu-epyc.json")
    comp = results("benchmarks/results/bench-cpu-epyc-compiled.json")

    c1, c5, cf = (medians(comp, w) for w in ("sine-1step", "sine-5step", "sine-5step-fo"))
    f1, f5 = medians(full, "sine-1step"), medians(full, "sine-5step")
    mf, tf, jx, me, te = (
        "metafunc compiled",
        "torch.func compiled",
        "jax jit",
        "metafunc eager",
        "torch.func eager",
    )
    first = comp["workloads"]["sine-5step"]["first_calls"]
    cold, warm, jfirst = first[mf]["cold_s"], first[mf]["warm_s"], first[jx]["cold_s"]
    load, lc = load_average(full), load_average(comp)
    text = " ".join(README[README.index("## Benchmarks") :].split())
    for phrase in (
        f"load average {load[0]:.1f} at the start and {load[1]:.1f} at the end",
        f"load average {lc[0]:.1f} and {lc[1]:.1f}",
        f"compiled metafunc {ms(c5[mf])} ms per step at S=5 against JAX's {ms(c5[jx])} ms "
        f"and {ms(c5[tf])} ms by hand with torch.func",
        f"{ms(c1[mf])} ms against {ms(c1[jx])} ms ({ms(c1[tf])} ms by hand) with one inner step",
        f"first order {ms(cf[mf])} ms against {ms(cf[jx])} ms ({ms(cf[tf])} ms)",
        f"metafunc takes {ms(c1[me])} and {ms(c5[me])} ms at S=1 and S=5 against "
        f"{ms(c1[te])} and {ms(c5[te])} ms",
        f"TorchOpt's vmapped example took {ms(f1['torchopt vmap'])} and "
        f"{ms(f5['torchopt vmap'])} ms and parallel-metalearn {ms(f1['parallel-metalearn'])} "
        f"and {ms(f5['parallel-metalearn'])} ms",
        f"{cold:.1f} s cold and {warm:.1f} s warm (JAX: {jfirst:.1f} s)",
        f"first call + 1,000 steps warm {warm + c5[mf]:.1f} s against JAX's "
        f"{jfirst + c5[jx]:.1f} s",
    ):
        assert phrase in text, phrase
    assert full["environment"]["cpu"] == comp["environment"]["cpu"] == "AMD EPYC"


def test_the_conv_benchmark_numbers_are_benchmarks_results_bench_cpu_epyc_conv():
    """``OMP_NUM_THREADS=1 python -m benchmarks --workloads conv-5way1shot conv-5way1shot-fo
    --sweeps --name bench-cpu-epyc-conv`` (stopped after the second-order workload), then
    ``--workloads conv-5way1shot-fo --name bench-cpu-epyc-conv-fo``."""
    b = results("benchmarks/results/bench-cpu-epyc-conv.json")
    r = medians(b, "conv-5way1shot")
    assert "conv-5way1shot-fo" not in b["workloads"]  # the README says it was stopped
    fo_bench = results("benchmarks/results/bench-cpu-epyc-conv-fo.json")
    fo = medians(fo_bench, "conv-5way1shot-fo")
    load = load_average(fo_bench)
    text = " ".join(README[README.index("## Benchmarks") :].split())
    for phrase in (
        "stopped after the second-order workload",
        f"compiled metafunc takes {ms(r['metafunc compiled'])} ms per step against "
        f"{ms(r['torch.func compiled'])} ms by hand with torch.func and {ms(r['blog loop'])} ms",
        f"TorchOpt's loop {ms(r['torchopt loop'])} ms, higher {ms(r['higher'])} ms, "
        f"parallel-metalearn {ms(r['parallel-metalearn'])} ms",
        f"JAX's vmapped step takes {ms(r['jax jit'])} ms",
        f"load average {load[0]:.1f} at its start and {load[1]:.1f} at its end",
        f"compiled metafunc takes {ms(fo['metafunc compiled'])} ms against "
        f"{ms(fo['torch.func compiled'])} ms by hand and {ms(fo['blog loop'])} ms",
        f"TorchOpt's loop {ms(fo['torchopt loop'])} ms, parallel-metalearn "
        f"{ms(fo['parallel-metalearn'])} ms), JAX {ms(fo['jax jit'])} ms",
    ):
        assert phrase in text, phrase
    assert fo["higher"] is None and "higher has no first-order MAML" in text
    assert "compiled (metafunc's and by hand) it is within 4% of the second-order step" in text
    for row in ("metafunc compiled", "torch.func compiled"):
        assert abs(fo[row] / r[row] - 1) < 0.04, row
    assert "and eager it is slower" in text
    for row in ("metafunc eager", "torch.func eager"):
        assert fo[row] > r[row], row


def test_the_background_compile_table_is_benchmarks_results_background_cpu():
    """``OMP_NUM_THREADS=1 python -m benchmarks.studies.background --out
    benchmarks/results/background-cpu.json`` wrote it; the README shows its table as printed,
    and the claims beside it hold: the background way is as quick to start as the eager step,
    never the slowest of the three, and as close to the faster as the README says."""
    from benchmarks.studies.background import table

    r = results("benchmarks/results/background-cpu.json")
    runs, marks = r["runs"], [1, 100, 1000, 3000, 10000]
    for line in table(runs, marks).splitlines():
        quoted(line)
    section = _section("- **Or both: compile in the background.**")
    assert f"load average {r['load_start']:.1f} at the start and {r['load_end']:.1f}" in section
    assert f"took over at step {runs['background']['first_loaded_step']:,}" in section
    assert r["cpu"] in section and r["command"] in section
    time_to = {way: run["time_to_n_s"] for way, run in runs.items()}
    assert time_to["background"]["1"] < time_to["compiled"]["1"] / 5
    gap = 0.0
    for m in map(str, marks):  # never the slowest, and the gap to the faster as the README says
        others = time_to["eager"][m], time_to["compiled"][m]
        assert time_to["background"][m] <= max(others), m
        gap = max(gap, time_to["background"][m] - min(others))
    assert f"within {gap:.1f} s of the faster at every mark" in section


def test_the_quiet_epyc_numbers_are_benchmarks_results_bench_cpu_epyc_quiet():
    """``benchmarks/results/bench-cpu-epyc-quiet.json``, written by the command in its
    Markdown with the second core free: wall and CPU time per step, and JAX's share of a CPU
    above one thread."""
    quiet = results("benchmarks/results/bench-cpu-epyc-quiet.json")
    rows = {
        w: {r["impl"]: r for r in quiet["workloads"][w]["rows"]}
        for w in ("sine-1step", "sine-5step", "sine-5step-fo")
    }
    one, five, fo = rows["sine-1step"], rows["sine-5step"], rows["sine-5step-fo"]
    mf, tf, jx = "metafunc compiled", "torch.func compiled", "jax jit"

    def wall(r):
        return ms(r["median_ms"])

    def cpu(r):
        return ms(r["cpu_ms_median"])

    first = quiet["workloads"]["sine-5step"]["first_calls"]
    thousand = {
        impl: n["seconds"]["1000"]["warm"]
        for impl, n in quiet["workloads"]["sine-5step"]["time_to_n"].items()
    }
    text = " ".join(README[README.index("## Benchmarks") :].split())
    me, te = "metafunc eager", "torch.func eager"

    eager = [(one[me], one[te]), (five[me], five[te]), (fo[me], fo[te])]
    for phrase in (
        f"({100 * one[jx]['on_cpu_median']:.0f}% of a CPU at S=1, "
        f"{100 * five[jx]['on_cpu_median']:.0f}% at S=5,",
        f"{wall(one[mf])} ms at S=1 against JAX's {wall(one[jx])} ms "
        f"({one[mf]['median_ms'] / one[jx]['median_ms']:.2f}×; {wall(one[tf])} ms by hand",
        f"{wall(five[mf])} ms at S=5 against {wall(five[jx])} ms "
        f"({five[mf]['median_ms'] / five[jx]['median_ms']:.2f}×; {wall(five[tf])} ms by hand)",
        f"first order against {wall(fo[jx])} ms "
        f"({fo[mf]['median_ms'] / fo[jx]['median_ms']:.2f}×; {wall(fo[tf])} ms by hand)",
        f"in CPU time a step costs metafunc {cpu(one[mf])} and {cpu(five[mf])} ms and "
        f"JAX {cpu(one[jx])} and {cpu(five[jx])} ms",
        "Eager, metafunc takes "
        + ", ".join(wall(m) for m, _ in eager[:2])
        + f" and {wall(eager[2][0])} ms against "
        + ", ".join(wall(t) for _, t in eager[:2])
        + f" and {wall(eager[2][1])} ms by hand ("
        + ", ".join(f"{m['median_ms'] / t['median_ms']:.2f}×" for m, t in eager)
        + ")",
        f"took {first[mf]['cold_s']:.1f} s cold and {first[mf]['warm_s']:.2f} s warm "
        f"(JAX: {first[jx]['cold_s']:.1f} s), and the first call + 1,000 steps warm "
        f"{thousand[mf]:.1f} s against JAX's {thousand[jx]:.1f} s",
    ):
        assert phrase in text, phrase
    assert all(r["background_cores_median"] < 0.1 for w in rows.values() for r in w.values())
    assert quiet["environment"]["cpu"] == "AMD EPYC"


def test_the_background_few_shot_table_is_benchmarks_results_background_fewshot_cpu():
    """The same study with ``--workload fewshot``: its table as printed, where the compiled
    step took over, and the ratio of the steady times said beside it (from the time between
    the last two marks)."""
    from benchmarks.studies.background import table

    r = results("benchmarks/results/background-fewshot-cpu.json")
    runs, marks = r["runs"], [1, 10, 100, 300]
    for line in table(runs, marks).splitlines():
        quoted(line)
    section = _section("- **Or both: compile in the background.**")
    assert f"took over at step {runs['background']['first_loaded_step']:,}" in section
    assert f"load average {r['load_start']:.1f} at the start and {r['load_end']:.1f}" in section
    assert r["command"] in section

    def steady(way):
        t = runs[way]["time_to_n_s"]
        return (t["300"] - t["100"]) / 200

    assert f"about {steady('eager') / steady('compiled'):.1f}× faster" in section
    assert runs["background"]["time_to_n_s"]["300"] < min(
        runs["eager"]["time_to_n_s"]["300"], runs["compiled"]["time_to_n_s"]["300"]
    )


def test_the_eager_breakdown_is_benchmarks_results_eager_cpu():
    """``OMP_NUM_THREADS=1 python -m benchmarks.studies.eager --out
    benchmarks/results/eager-cpu.json``: the eager step beside the hand-written one and the
    hand-written one doing the same work, interleaved in one process."""
    r = results("benchmarks/results/eager-cpu.json")["workloads"]
    names = ("sine-1step", "sine-5step", "sine-5step-fo")
    rows = [r[n] for n in names]
    me, hand = "metafunc eager", "torch.func by hand"
    same = "by hand + loss before + checks"
    text = " ".join(README[README.index("## Benchmarks") :].split())
    phrase = (
        "metafunc's eager step takes "
        + ", ".join(f"{x[me]['wall_ms'] / x[hand]['wall_ms']:.2f}×" for x in rows)
        + " the hand-written one's time and "
        + ", ".join(f"{x[me]['wall_ms'] / x[same]['wall_ms']:.2f}×" for x in rows)
        + " that of the hand-written one that does the same work ("
        + ", ".join(ms(x[same]["wall_ms"]) for x in rows)
        + " ms)"
    )
    assert phrase in text, phrase


def test_the_eager_ablation_table_is_benchmarks_results_eager_ablation_cpu():
    """benchmarks/README.md's table of each eager-step change alone on 8daf2ae (metafunc eager
    over torch.func by hand) is ``eager-ablation-cpu.json``, its last row ``eager-cpu.json``."""
    text = (ROOT / "benchmarks" / "README.md").read_text()
    variants = results("benchmarks/results/eager-ablation-cpu.json")["variants"]
    rows = {
        "none": "base",
        "`mf.losses.mse` as `(d * d).mean()`": "mse",
        "`mf.pure`'s function places the tensors it found once": "pure",
        "`split` of a flat dict without torch's pytree walk": "split",
        "eagerly on the CPU: no NaN product for a finite loss, one norm reduction": "readable",
        "eagerly, the outer gradient by torch's autograd, not `torch.func.grad`": "autograd",
    }
    runs = {label: variants[key]["workloads"] for label, key in rows.items()}
    runs["all (`results/eager-cpu.json`)"] = results("benchmarks/results/eager-cpu.json")[
        "workloads"
    ]
    for label, w in runs.items():
        ratios = [
            w[n]["metafunc eager"]["wall_ms"] / w[n]["torch.func by hand"]["wall_ms"]
            for n in ("sine-1step", "sine-5step")
        ]
        line = f"| {label} | " + " | ".join(f"{x:.2f}×" for x in ratios) + " |"
        assert line in text, line
