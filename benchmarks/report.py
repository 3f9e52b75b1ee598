"""The report of a run: the JSON, its Markdown summary and the sweep charts.

Charts use matplotlib's object API (``matplotlib.figure.Figure``): no pyplot state and no
backend switch, so importing this module changes nothing for its caller.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .impls import IMPLS, REFERENCE
from .worker import COMPILE_PHASES


def write(result: dict[str, Any], path: Path) -> Path:
    """``path`` (JSON) and the same name with ``.md`` (the Markdown summary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    return path


def markdown(result: dict[str, Any]) -> str:
    """The Markdown summary: environment, one table per workload, sweep tables."""
    env = result["environment"]
    lines = [
        f"{env['device']} ({env['device_type']}), torch {env.get('torch')}, JAX {env.get('jax')}, "
        f"{env['threads']} thread(s) per worker, {env['date']}, commit {str(env['commit'])[:12]}, "
        f"load average {_load(env.get('load_average'))} at the start and "
        f"{_load(env.get('load_average_end'))} at the end",
    ]
    if env.get("command"):
        lines += ["", f"`{env['command']}`"]
    if result.get("note"):
        lines += ["", result["note"]]
    if result.get("skipped"):
        lines.append("")
    for name, reason in result.get("skipped", {}).items():
        lines.append(f"- skipped {name}: {reason}")
    if result.get("cuda_tests"):
        lines += ["", "### tests/test_cuda.py", "", cuda_tests_table(result["cuda_tests"])]
    for name, entry in result.get("workloads", {}).items():
        lines += ["", f"### {name}: {entry['description']}", "", workload_table(entry)]
    for name, sweep in result.get("sweeps", {}).items():
        lines += ["", f"### sweep: {name}", "", sweep_table(sweep)]
    return "\n".join(lines) + "\n"


def cuda_tests_table(got: dict[str, Any]) -> str:
    """Each CUDA test's outcome, with the reason where it did not pass."""
    lines = [f"pytest: {got.get('summary')}", "", "| test | outcome | message |", "|---|---|---|"]
    for name, t in got.get("tests", {}).items():
        message = t["message"].replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {name} | {t['outcome']} | {message} |")
    return "\n".join(lines)


def _load(values: list[float] | None) -> str:
    return "?" if not values else f"{values[0]:.1f}"


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def workload_table(entry: dict[str, Any]) -> str:
    """One workload's rows: median time per step with its interquartile range, throughput,
    speed-up over the blog loop, blocks, background load, first call, memory, threads."""
    if entry.get("skipped"):
        return f"not run: {entry['skipped']}"
    rows = entry["rows"]
    base = next((r["median_ms"] for r in rows if r["impl"] == REFERENCE and "median_ms" in r), None)
    lines = [
        "| implementation | median ms/step (IQR) | tasks/s | vs blog loop | blocks x steps "
        "| CPU ms/step | on a CPU | background load, cores (median, max) | first call s "
        "| peak memory MB | OS threads |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "median_ms" not in r:
            if "meta_grad_error" in r and not r["ok"]:
                why = (
                    f"refused: meta-gradient off by {r['meta_grad_error']:.1e} "
                    f"(tolerance {entry['tolerance']:.0e})"
                )
            else:
                why = r.get("error", "not timed")
            lines.append(f"| {r['impl']} | {why} | | | | | | | | | |")
            continue
        load = (
            f"{r['background_cores_median']:.2f}, {r['background_cores_max']:.2f}"
            if "background_cores_median" in r
            else ""
        )
        first = f"{r['first_call_s']:.2f}" + (
            " (concurrent)" if r.get("first_call_concurrent") else ""
        )
        mem = r.get("peak_memory_mb")
        speedup = f"{base / r['median_ms']:.1f}x" if base else ""
        lines.append(
            f"| {r['impl']} | {_ms(r['median_ms'])} ({_ms(r['p25_ms'])}-{_ms(r['p75_ms'])}) "
            f"| {r['tasks_per_s']:.0f} | {speedup} "
            f"| {r['blocks_timed']} x {r['steps_per_block']} | {_ms(r['cpu_ms_median'])} "
            f"| {r['on_cpu_median']:.0%} | {load} "
            f"| {first} "
            f"| {'' if mem is None else f'{mem:.0f}'} | {r.get('os_threads') or ''} |"
        )
    text = "\n".join(lines)
    if any("profile" in r for r in rows):
        text += "\n\n" + profile_table(rows)
    if entry.get("first_calls"):
        text += "\n\n" + first_call_table(entry["first_calls"])
    if any("median_ms" in r for r in rows):
        text += "\n\n" + time_to_n_table(time_to_n(entry), entry.get("time_to_n_measured"))
    return text


TIME_TO_N = (100, 1_000, 10_000)


def time_to_n(entry: dict[str, Any], steps: tuple[int, ...] = TIME_TO_N) -> dict[str, Any]:
    """The time a user waits for the first call and ``N`` more steps, for every timed row:
    ``first call + N x median step``, computed from the workload's measurements.

    The first call is taken, cold and warm, from the fresh processes of ``first_calls`` where
    they ran (compiled rows: cold with an empty compile cache, warm reusing it; JAX: its first
    call compiles every time, so warm is cold). A row that caches nothing (eager) has one first
    call, the timing worker's (a fresh process too): cold is warm. A compiled row without fresh
    processes uses the timing worker's first call for both, with whatever compile cache the
    machine had, and says so (``first_call_from``)."""
    first_calls = entry.get("first_calls") or {}
    out: dict[str, Any] = {}
    for r in entry["rows"]:
        if "median_ms" not in r:
            continue
        fresh = first_calls.get(r["impl"], {})
        if "cold" in fresh:
            cold = fresh.get("cold_s")
            warm = fresh.get("warm_s") if "warm" in fresh else cold
            source = "fresh processes" if "warm" in fresh else "a fresh process (no cache)"
        elif not r.get("compiled", getattr(IMPLS.get(r["impl"]), "compiled", False)):
            cold = warm = r["first_call_s"]
            source = "the timing worker (no cache)"
        else:
            cold = warm = r["first_call_s"]
            source = "the timing worker (the machine's compile cache)"
        if r.get("first_call_concurrent") and "cold" not in fresh:
            source += ", built beside the other rows"
        seconds = {
            str(n): {
                kind: None if first is None else first + n * r["median_ms"] / 1e3
                for kind, first in (("cold", cold), ("warm", warm))
            }
            for n in steps
        }
        out[r["impl"]] = {
            "first_call_cold_s": cold,
            "first_call_warm_s": warm,
            "first_call_from": source,
            "median_ms": r["median_ms"],
            "seconds": seconds,
        }
    return out


def time_to_n_table(computed: dict[str, Any], measured: dict[str, Any] | None = None) -> str:
    """The computed time to N steps (:func:`time_to_n`), and where ``harness.time_to_n``
    measured them end to end, each measurement beside the computed value."""
    steps = list(next(iter(computed.values()))["seconds"]) if computed else []
    head = " | ".join(f"N = {int(n):,} cold | N = {int(n):,} warm" for n in steps)
    lines = [
        "First call + N steps, s, computed as the first call + N x the median ms per step above "
        "(not run end to end). Cold: a fresh process with an empty compile cache; warm: a fresh "
        "process reusing the cache a cold one wrote; a row that caches nothing has one first "
        "call (cold = warm). * a compiled row whose first call was not measured in fresh "
        "processes (`--first-calls`): its timing worker's first call, with whatever compile "
        "cache the machine had, stands for both.",
        "",
        f"| first call + N steps, s | first call cold | first call warm | ms/step | {head} |",
        "|---" * (4 + 2 * len(steps)) + "|",
    ]
    for impl, got in computed.items():
        mark = "*" if "compile cache" in got["first_call_from"] else ""
        cells = [
            _seconds(got["first_call_cold_s"]) + mark,
            _seconds(got["first_call_warm_s"]) + mark,
            _ms(got["median_ms"]),
        ]
        for n in steps:
            cells += [_total(got["seconds"][n][kind]) + mark for kind in ("cold", "warm")]
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    if measured:
        lines += ["", measured_table(computed, measured)]
    return "\n".join(lines)


def measured_table(computed: dict[str, Any], measured: dict[str, Any]) -> str:
    """First call + N steps run end to end in fresh processes (``--measure-time-to-n``), each
    beside its computed value in brackets."""
    steps = list(dict.fromkeys(n for got in measured.values() for n in got))
    head = " | ".join(f"N = {int(n):,} cold | N = {int(n):,} warm" for n in steps)
    lines = [
        "The same, measured: a fresh process per row and N takes its first call and N steps, "
        "timed end to end (imports not counted); computed values in brackets.",
        "",
        f"| first call + N steps, measured (computed), s | {head} |",
        "|---" * (1 + 2 * len(steps)) + "|",
    ]
    for impl, got in measured.items():
        cells = []
        for n in steps:
            runs = got.get(n, {})
            for kind in ("cold", "warm"):
                run = runs.get(kind, runs.get("cold"))  # one run: nothing cached, cold = warm
                row = computed.get(impl)
                first = None if row is None else row[f"first_call_{kind}_s"]
                want = None if first is None else first + int(n) * row["median_ms"] / 1e3
                got_s = None if run is None else run.get("total_s")
                cells.append(
                    ("" if run is None else _total(got_s))
                    + ("" if want is None else f" ({_total(want)})")
                )
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _total(value: float | None) -> str:
    if value is None:
        return "failed"
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def profile_table(rows: list[dict[str, Any]]) -> str:
    """What ``torch.profiler`` counted per step, for the torch rows."""
    lines = [
        "| per step (torch.profiler) | GPU kernels | kernel launch calls | CUDA graph launches "
        "| ATen operators |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        p = r.get("profile")
        if p:
            cells = [
                "" if p.get(k) is None else f"{p[k]:.0f}"
                for k in (
                    "kernels_per_step",
                    "launch_calls_per_step",
                    "cuda_graph_launches_per_step",
                    "aten_ops_per_step",
                )
            ]
            lines.append(f"| {r['impl']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def first_call_table(first_calls: dict[str, dict[str, Any]]) -> str:
    """First call in a fresh process, cold and warm, and where the compiled ones' time went."""
    lines = [
        "| first call in a fresh process | cold s | warm s |",
        "|---|---|---|",
    ]
    for impl, got in first_calls.items():
        warm = "" if "warm" not in got else _seconds(got.get("warm_s"))
        lines.append(f"| {impl} | {_seconds(got.get('cold_s'))} | {warm} |")
    phases = {
        (impl, kind): got[kind].get("compile_phases_s", {})
        for impl, got in first_calls.items()
        for kind in ("cold", "warm")
        if kind in got
    }
    phases = {k: v for k, v in phases.items() if v}
    if phases:
        lines += [
            "",
            "| where the first call's time goes, s (the phases nest) | "
            + " | ".join(f"{impl}, {kind}" for impl, kind in phases)
            + " |",
            "|---" * (len(phases) + 1) + "|",
        ]
        for key, label in COMPILE_PHASES.items():
            if any(key in d for d in phases.values()):
                cells = [f"{d[key]:.2f}" if key in d else "-" for d in phases.values()]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "failed" if value is None else f"{value:.2f}"


def sweep_table(sweep: dict[str, Any]) -> str:
    """Median ms per step (and peak memory) of every row at every swept size."""
    field, points = sweep["field"], sweep["points"]
    impls = list(dict.fromkeys(r["impl"] for p in points for r in p.get("rows", [])))
    lines = [
        f"| {field} | " + " | ".join(f"{i} ms (MB)" for i in impls) + " | background load |",
        "|---" * (len(impls) + 2) + "|",
    ]
    for p in points:
        by = {r["impl"]: r for r in p.get("rows", [])}
        cells = []
        for impl in impls:
            r = by.get(impl, {})
            if "median_ms" in r:
                mem = r.get("peak_memory_mb")
                cells.append(_ms(r["median_ms"]) + ("" if mem is None else f" ({mem:.0f})"))
            else:
                cells.append("refused" if "meta_grad_error" in r else "failed" if r else "")
        loads = [
            r["background_cores_median"] for r in by.values() if "background_cores_median" in r
        ]
        load = f"{max(loads):.2f}" if loads else ""
        lines.append(f"| {p['value']} | " + " | ".join(cells) + f" | {load} |")
    if len(points) > 1:  # what the step costs at the last size against the first
        ratios = []
        for impl in impls:
            ends = [
                next((r.get("median_ms") for r in p.get("rows", []) if r["impl"] == impl), None)
                for p in (points[0], points[-1])
            ]
            ratios.append(f"{ends[1] / ends[0]:.1f}x" if None not in ends else "")
        span = f"{points[-1]['value']} / {points[0]['value']}"
        lines.append(f"| {span} | " + " | ".join(ratios) + " | |")
    return "\n".join(lines)


def scaling_chart(path: Path, sweep: dict[str, Any], *, device: str = "") -> Path:
    """A sweep as a figure: median time per outer step against the swept size, one line per
    implementation with the interquartile range as error bars, and each row's peak memory."""
    from matplotlib.figure import Figure

    field, points = sweep["field"], sweep["points"]
    sizes = [p["value"] for p in points]
    names = list(dict.fromkeys(r["impl"] for p in points for r in p.get("rows", [])))
    fig = Figure(figsize=(12, 4.2))
    time_ax, mem_ax = fig.subplots(1, 2)
    for name in names:
        timed = [
            (p["value"], r)
            for p in points
            for r in p.get("rows", [])
            if r["impl"] == name and "median_ms" in r
        ]
        if not timed:
            continue
        xs = [x for x, _ in timed]
        med = [r["median_ms"] for _, r in timed]
        err = [
            [r["median_ms"] - r["p25_ms"] for _, r in timed],
            [r["p75_ms"] - r["median_ms"] for _, r in timed],
        ]
        time_ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=name)
        mem = [(x, r["peak_memory_mb"]) for x, r in timed if r.get("peak_memory_mb") is not None]
        if mem:
            mem_ax.plot([x for x, _ in mem], [m for _, m in mem], marker="o", label=name)
    time_ax.set_ylabel("ms per outer step (median, IQR)")
    time_ax.set_yscale("log")
    mem_ax.set_ylabel("peak memory of the worker, MB")
    for ax in (time_ax, mem_ax):
        ax.set_xlabel(field.replace("_", " "))
        if len(sizes) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(x) for x in sizes])  # the measured sizes, not powers of two
        ax.minorticks_off()
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"scaling with {field.replace('_', ' ')}" + (f" on {device}" if device else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def rerender(path: Path) -> list[Path]:
    """Rewrite a run's JSON summaries from its recorded blocks, its Markdown and its charts
    (after a change to what the summaries hold; no number is measured again)."""
    from .harness import summarise

    result = json.loads(path.read_text())
    entries = list(result.get("workloads", {}).values())
    entries += [p for s in result.get("sweeps", {}).values() for p in s["points"]]
    for entry in entries:
        for row in entry.get("rows", []):
            if row.get("blocks"):
                row.update(summarise(row["blocks"], entry["workload"]["tasks"]))
    for entry in result.get("workloads", {}).values():
        if any("median_ms" in row for row in entry.get("rows", [])):
            entry["time_to_n"] = time_to_n(entry)
    written = [write(result, path), path.with_suffix(".md")]
    for name, sweep in result.get("sweeps", {}).items():
        chart = path.with_name(f"{path.stem}-scaling-{name}.png")
        written.append(scaling_chart(chart, sweep, device=result["environment"]["device"]))
    return written


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        for written in rerender(Path(arg)):
            print(f"wrote {written}")
