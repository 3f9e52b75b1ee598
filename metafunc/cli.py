"""The ``metafunc`` command: parse the options, run an experiment, print, plot and write files."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

import metafunc as mf
from metafunc.evaluation import mean_ci95
from metafunc.experiments import ALGORITHMS, fewshot, fewshot_table, sine, table
from metafunc.experiments._runs import identity
from metafunc.experiments.algorithms import EMBEDDING

# Options of one task only: (its defaults); None in the parser means "not given".
FEWSHOT_ONLY = (
    "data_dir",
    "ways",
    "shots",
    "queries",
    "channels",
    "glyph_classes",
    "eval_tasks",
    "anneal_steps",
    "cosine",
)
SINE_ONLY = ("eval_draws",)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)  # log lines and progress share the terminal
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("metafunc")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            if args.command == "table":
                return _table(args)
            return _train(args)
    finally:
        logger.removeHandler(handler)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(args: argparse.Namespace) -> int:
    task = args.task
    wrong = [
        n
        for n in (SINE_ONLY if task == "fewshot" else FEWSHOT_ONLY)
        if getattr(args, n) is not None
    ]
    if wrong:
        return _fail(
            f"--{wrong[0].replace('_', '-')} does not apply to --task {task} "
            f"(it is an option of --task {'sine' if task == 'fewshot' else 'fewshot'})"
        )
    if task == "fewshot" and args.algo == "daml":
        return _fail("--algo daml runs on the DAML sine only (--task sine)")
    if task == "sine" and args.algo in EMBEDDING:
        return _fail(
            f"--algo {args.algo} classifies by class prototypes and runs on few-shot "
            "classification only (--task fewshot)"
        )
    # Under torchrun: join the process group; every rank trains, rank 0 reports.
    distributed = mf.distributed.init()
    if args.meta_batch is not None and args.meta_batch % mf.distributed.world_size():
        return _fail(
            f"--meta-batch must be a multiple of the {mf.distributed.world_size()} processes, "
            f"each takes an equal share (got {args.meta_batch})"
        )
    device = args.device
    if distributed and device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    main = mf.distributed.is_main()
    if args.out.exists() and not args.out.is_dir():
        return _fail(f"--out {str(args.out)!r} is a file; it must be a folder (or not exist yet)")
    if main:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return _fail(f"--out {str(args.out)!r} cannot be created: {e.strerror}")
        if not os.access(args.out, os.W_OK):
            return _fail(f"--out {str(args.out)!r} is not writable")
        checkpoint = args.out / "checkpoint.pt"
        if checkpoint.exists() and not checkpoint.is_file():
            return _fail(
                f"{str(checkpoint)!r}, where the checkpoint is written, is not a file; move it "
                "away or give another --out"
            )
    mf.distributed.barrier()
    common = {
        "algo": args.algo,
        "seed": args.seed,
        "device": device,
        "compile": not args.no_compile,
        "progress": not args.no_progress,
        "checkpoint": args.out / "checkpoint.pt",
        "checkpoint_every": args.checkpoint_every,
        "resume": args.resume,
        "on_nonfinite": args.on_nonfinite,
    }
    given = {  # the options given; the experiment's config holds the defaults
        k: v
        for k, v in vars(args).items()
        if v is not None and k in {f.name for f in dataclasses.fields(_CONFIGS[task])}
    }
    algo_defaults = sine.ALGO_DEFAULTS.get(args.algo, {}) if task == "sine" else {}
    config = dataclasses.replace(_CONFIGS[task](), **{**algo_defaults, **given, **common})
    if main and config.compile and not config.resume:
        print("compiling the outer step (a minute with an empty cache, seconds on reruns)...")
    if config.resume:
        problem = _resume_problem(config)
        if problem:
            return _fail(f"cannot resume: {problem}")
    start, load = time.perf_counter(), os.getloadavg()
    try:
        result = (fewshot if task == "fewshot" else sine).run(config)
    except (OSError, ValueError) as e:
        if task == "fewshot" and args.data_dir is not None and str(e).startswith("omniglot: "):
            return _fail(f"--data-dir {str(args.data_dir)!r}: {e}")  # the data, not a bug
        raise
    if not main:
        return 0
    report = _report_fewshot if task == "fewshot" else _report_sine
    return report(config, result, args.out, time.perf_counter() - start, load)


_CONFIGS = {"sine": sine.SineConfig, "fewshot": fewshot.FewshotConfig}


def _resume_problem(config: Any) -> str | None:
    """Why ``config`` cannot resume from its checkpoint (missing, damaged, or trained with other
    options), or ``None``."""
    path = config.checkpoint
    if not path.is_file():
        return f"there is no checkpoint {str(path)!r}"
    try:
        saved = mf.checkpoint.read_metadata(path)
    except (OSError, ValueError) as e:
        return str(e)
    if saved is None:  # saved without options (by another program): nothing to compare
        return None
    wanted = identity(config)
    for key in sorted(set(saved) | set(wanted), key=lambda k: (k != "experiment", k)):
        was, now = saved.get(key), wanted.get(key)
        if was != now:
            option = "--task" if key == "experiment" else f"--{key.replace('_', '-')}"
            return (
                f"{str(path)!r} was trained with {option} {was} but this run has {now}; resume "
                "with the options it was started with, or give a new run another --out"
            )
    return None


def _report_sine(
    config: sine.SineConfig,
    result: sine.SineResult,
    out: Path,
    wall: float,
    load: tuple[float, float, float],
) -> int:
    from . import plotting

    task = "DAML sine" if config.algo == "daml" else "sine"
    name = "maml-sine" if config.algo in ("maml", "fomaml") else f"{config.algo}-sine"
    fig = plotting.sine_figure(
        out / f"{name}.png",
        result.grid,
        before=result.before,
        title=f"{config.algo.upper()} on the blog's {task}: adapted on {result.adapts_on} "
        f"({config.inner_steps} SGD steps)",
    )
    curve = _learning_curve(
        out, result.history, "L1", f"{config.algo.upper()} meta-training on the blog's {task}"
    )
    summary = {
        **_options(config),
        "resumed_from_step": result.start_step if config.resume else None,
        "processes": mf.distributed.world_size(),
        "torch": torch.__version__,
        "first_call_s": result.first_call_s,
        "step_ms": result.step_ms,
        "wall_s": wall,
        "load_average": _load_average(load),
        "history": result.history,
        "grid_mse": {},
    }
    print(
        f"\n{config.algo} on the blog's {task}, {config.steps} outer steps x {config.meta_batch} tasks"
    )
    print(
        f"first call (compile) {result.first_call_s:.1f} s, then {result.step_ms:.2f} ms per "
        "outer step"
    )
    print(
        f"dense-grid MSE over [-2pi, 2pi] after adapting on {result.adapts_on} "
        f"({config.eval_draws} draws each):"
    )
    for phase, r in result.grid.items():
        mean, half = mean_ci95(r.mse)
        label = "pi" if phase else "0"
        summary["grid_mse"][label] = {"mean": mean, "ci95": half, "draws": r.mse.numel()}
        print(f"  b = {label:<2}  MSE {mean:.4f} +- {half:.4f}")
    results = _write_json(out / "results.json", summary)
    print(f"wrote {fig}, {curve}, {results} ({wall:.0f} s in all)")
    return 0


def _learning_curve(out: Path, history: dict[str, Any], loss: str, title: str) -> Path:
    from . import plotting

    noun = "L1" if loss == "L1" else "loss"
    return plotting.learning_curve(
        out / "learning-curve.png",
        history["step"],
        {
            f"query {noun} before adaptation": history["loss_before"],
            f"query {noun} after adaptation": history["loss"],
        },
        ylabel=f"mean {loss}{' loss' if loss == 'L1' else ''} over the log window",
        title=title,
    )


def _report_fewshot(
    config: fewshot.FewshotConfig,
    result: fewshot.FewshotResult,
    out: Path,
    wall: float,
    load: tuple[float, float, float],
) -> int:
    from . import plotting

    mean, half = mean_ci95(result.accuracy)
    label = f"{config.ways}-way {config.shots}-shot"
    steps = "s" if config.inner_steps != 1 else ""
    adapted = (
        "classified by the support's prototypes"
        if config.algo == "protonet"
        else f"adapted on the support ({config.inner_steps} SGD step{steps})"
    )
    fig = plotting.fewshot_figure(
        out / f"{config.algo}-fewshot.png",
        result.examples,
        result.predicted,
        title=f"{config.algo.upper()} on {result.data}, {label}: new classes, {adapted}; "
        f"test accuracy {100 * mean:.1f} ± "
        f"{100 * half:.1f}% over {result.accuracy.numel()} tasks",
    )
    curve = _learning_curve(
        out,
        result.history,
        "cross-entropy",
        f"{config.algo.upper()} meta-training on {result.data}, {label}",
    )
    summary = {
        "task": "fewshot",
        "data": result.data,
        "train_classes": result.train_classes,
        "test_classes": result.test_classes,
        **_options(config),
        "image_size": result.image_size,
        "outer_optimizer": "adam",
        "resumed_from_step": result.start_step if config.resume else None,
        "torch": torch.__version__,
        "first_call_s": result.first_call_s,
        "step_ms": result.step_ms,
        "tasks_per_s": 1e3 * config.meta_batch / result.step_ms,
        "eval_s": result.eval_s,
        "wall_s": wall,
        "load_average": _load_average(load),
        "history": result.history,
        "test_accuracy": {"mean": mean, "ci95": half, "tasks": result.accuracy.numel()},
    }
    print(
        f"\n{config.algo} on {result.data}, {label}, {config.steps} outer steps x "
        f"{config.meta_batch} tasks"
    )
    print(
        f"first call {result.first_call_s:.1f} s, then {result.step_ms:.0f} ms per outer step "
        f"({1e3 * config.meta_batch / result.step_ms:.1f} tasks/s)"
    )
    print(
        f"test accuracy on {result.accuracy.numel()} new tasks of {result.test_classes} new "
        f"classes: {100 * mean:.2f} +- {100 * half:.2f}% (chance {100 / config.ways:.0f}%)"
    )
    results = _write_json(out / "results.json", summary)
    print(f"wrote {fig}, {curve}, {results} ({wall:.0f} s in all)")
    return 0


# Options of one table only; None in the parser means "not given" (the table's config holds
# the defaults).
TABLE_SINE_ONLY = ("shots", "eval_points", "seed")
TABLE_FEWSHOT_ONLY = (
    "settings",
    "seeds",
    "seeded_algos",
    "inner_steps",
    "queries",
    "channels",
    "glyph_classes",
    "data_dir",
    "mamlpp_cosine",
)
_TABLES: dict[str, Any] = {"sine": table, "fewshot": fewshot_table}


def _table(args: argparse.Namespace) -> int:
    task = args.task
    other = "sine" if task == "fewshot" else "fewshot"
    only = TABLE_SINE_ONLY if task == "fewshot" else TABLE_FEWSHOT_ONLY
    wrong = [n for n in only if getattr(args, n) is not None]
    if wrong:
        return _fail(
            f"--{wrong[0].replace('_', '-')} does not apply to --task {task} (it is an option "
            f"of the {other} table, --task {other})",
            command="table",
        )
    rows_of = _TABLES[task].ALGORITHMS
    for option in ("algos", "seeded_algos"):
        unknown = [a for a in getattr(args, option) or () if a not in rows_of]
        if unknown:
            return _fail(
                f"--{option.replace('_', '-')} {unknown[0]} is not a row of the {task} table "
                f"(its rows: {', '.join(rows_of)})",
                command="table",
            )
    config_type: Any = table.TableConfig if task == "sine" else fewshot_table.FewshotTableConfig
    given = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in vars(args).items()
        if v is not None and k in {f.name for f in dataclasses.fields(config_type)}
    }
    config = config_type(**given, compile=not args.no_compile, progress=not args.no_progress)
    out = args.out or Path(f"out/{'sinusoid' if task == 'sine' else 'fewshot'}-table.json")
    if task == "fewshot":
        return _fewshot_table(config, out, args.data_dir)
    settings = {k: v for k, v in _options(config).items() if k not in ("algos", "shots")}
    done, problem = _table_rows(out, task, settings)
    if problem:
        return _fail(problem, command="table")
    load = os.getloadavg()
    for r in done:
        print(f"{r['algo']}, {r['shots']}-shot: done in {out}, kept")

    def save(rows: list[dict[str, Any]]) -> None:
        r = rows[-1]
        print(
            f"{r['algo']}, {r['shots']}-shot: MSE {r['mse']:.3f} +- {r['ci95']:.3f} ({r['train_s']:.0f} s)"
        )
        # written after every cell, so an interrupted run keeps what it finished
        _write_json(
            out,
            {
                "config": settings,
                "torch": torch.__version__,
                "date": _now(),
                "load_average": _load_average(load),
                "rows": rows,
            },
        )

    rows = table.run(config, done=done, on_cell=save)
    print(table.format_table(rows))
    print(f"wrote {out}")
    return 0


def _fewshot_table(
    config: fewshot_table.FewshotTableConfig, out: Path, data_dir: Path | None
) -> int:
    from . import plotting

    settings = fewshot_table.settings(config)
    rows, problem = _table_rows(out, "fewshot", settings)
    if problem:
        return _fail(problem, command="table")
    todo = fewshot_table.pending(config, rows)
    total = len(fewshot_table.cells(config))
    print(
        f"{total - len(todo)} of the {total} cells are done in {out} and kept; {len(todo)} to run"
    )
    load, data = os.getloadavg(), fewshot_table.Data()
    for i, cell in enumerate(todo, start=total - len(todo) + 1):
        name = fewshot_table.NAMES[cell.algo]
        print(
            f"[{i}/{total}] {name}, {fewshot_table.setting_name(cell.ways, cell.shots)}, "
            f"seed {cell.seed}"
        )
        try:
            row = fewshot_table.run_cell(config, cell, data=data)
        except (OSError, ValueError) as e:
            if data_dir is not None and str(e).startswith("omniglot: "):
                return _fail(f"--data-dir {str(data_dir)!r}: {e}", command="table")
            raise
        rows.append(row)
        print(
            f"    accuracy {100 * row['accuracy']:.2f} +- {100 * row['ci95']:.2f}% on "
            f"{row['tasks']} new tasks; training {row['train_s']:.0f} s (first call "
            f"{row['first_call_s']:.1f} s), scoring {row['eval_s']:.0f} s"
        )
        # written after every cell, so an interrupted run keeps what it finished
        _write_json(
            out,
            {
                "task": "fewshot",
                "config": settings,
                "date": _now(),
                "load_average": _load_average(load),
                "rows": rows,
                "seed_means": fewshot_table.seed_means(rows),
            },
        )
    if not rows:
        print("no cells: nothing to write")
        return 0
    figure = plotting.fewshot_table_figure(
        out.with_suffix(".png"),
        rows,
        title=f"{rows[0]['data']}: accuracy on new tasks of new classes, mean ± 95% interval",
    )
    print(fewshot_table.format_table(rows))
    minutes = sum(r["wall_s"] for r in rows) / 60
    print(f"wrote {out} and {figure} ({minutes:.0f} min over the {len(rows)} cells)")
    return 0


def _table_rows(
    path: Path, task: str, settings: dict[str, Any]
) -> tuple[list[dict[str, Any]], str | None]:
    """``(rows, problem)``: the rows an earlier run of the same table wrote to ``path`` (none
    when there is no such file), or why they cannot be added to: another table, or cells run
    with other settings (the first option that differs, named)."""
    if not path.exists():
        return [], None
    how = "give another --out, or move it away"
    try:
        earlier = json.loads(path.read_text())
        made, rows = earlier.get("task", "sine"), earlier["rows"]
        configs = [earlier["config"], *(r["config"] for r in rows if "config" in r)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [], f"--out {str(path)!r} is not a table's JSON ({type(e).__name__}: {e}); {how}"
    if made != task:
        return [], f"--out {str(path)!r} holds the {made} table, not the {task} one; {how}"
    wanted = json.loads(json.dumps(settings))  # as JSON holds them: tuples are lists
    for config in configs:
        for key, now in wanted.items():
            if key not in config:
                return [], (
                    f"--out {str(path)!r} does not record the setting {key!r} its cells ran "
                    f"with (a file of an older format), so no cells can be added to it; {how}"
                )
            was = config[key]
            if was != now:
                return [], (
                    f"--out {str(path)!r} holds cells run with {_option(key, was)} but this "
                    f"run has {_option(key, now)}: a table's cells share their settings; "
                    f"rerun with the ones it was made with to add cells, or {how}"
                )
    return rows, None


def _option(key: str, value: Any) -> str:
    """An option as the command line spells it."""
    if key in ("compile", "compiled"):
        return "a compiled step" if value else "--no-compile"
    return f"--{key.replace('_', '-')} {value}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _load_average(start: tuple[float, float, float]) -> dict[str, list[float]]:
    """The machine's 1-, 5- and 15-minute load averages when the run started and now: how
    shared the cores were while the timings in the results were taken."""
    return {"start": list(start), "end": list(os.getloadavg())}


def _options(config: Any) -> dict[str, Any]:
    """A config as the options a results file records (paths as strings, tuples as lists)."""
    plain = dataclasses.asdict(config)
    plain["compiled"] = plain.pop("compile")
    plain.pop("progress")
    return {
        k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        for k, v in plain.items()
    }


def _write_json(path: Path, record: dict[str, Any]) -> Path:
    """Strict JSON: a NaN or infinite number (e.g. one failed evaluation draw) becomes null."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(record), indent=2, allow_nan=False))
    return path


def _fail(message: str, *, command: str = "train") -> int:
    print(f"metafunc {command}: {message}", file=sys.stderr)
    return 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (got {text})")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number (got {text})")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line, ``metafunc train: ...``, and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}\n")


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise argparse.ArgumentTypeError(f"is not a torch device ({e})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
    return text


def _setting(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)w(\d+)s", text)
    if match is None or min(int(match[1]), int(match[2])) < 1:
        raise argparse.ArgumentTypeError(
            f"must be N-way K-shot written NwKs, N and K at least 1, e.g. 5w1s (got {text})"
        )
    return int(match[1]), int(match[2])


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (got {text})")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metafunc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser(
        "train",
        help="meta-train on the blog's sine task (DAML: the blog's DAML sine) or on N-way "
        "K-shot image classification (--task fewshot), evaluate, plot",
    )
    t.add_argument(
        "--task",
        choices=["sine", "fewshot"],
        default="sine",
        help="sine: the blog's sine demo (default); fewshot: N-way K-shot classification with "
        "the MAML paper's conv net, on synthetic glyphs or on Omniglot (--data-dir). The "
        "few-shot defaults take 5 to 7 minutes on a 2-core CPU once the step is compiled (the "
        "first compile, with an empty cache, takes minutes more); the MAML paper's Omniglot "
        "run is --channels 64 --meta-batch 32 --queries 1 --steps 60000",
    )
    t.add_argument(
        "--algo",
        choices=ALGORITHMS,
        default="maml",
        help="the algorithm (default maml); daml runs on the sine only, protonet and protomaml "
        "on --task fewshot only (over the conv net without its linear layer); protonet takes "
        "no inner steps",
    )
    t.add_argument(
        "--steps",
        type=_positive_int,
        help="outer steps (default 80000 for maml, 50000 for the other sine algorithms; "
        "fewshot 300)",
    )
    t.add_argument(
        "--meta-batch", type=_positive_int, help="tasks per outer step (default 32; fewshot 8)"
    )
    t.add_argument("--inner-steps", type=_count, help="inner SGD steps (default 5; fewshot 1)")
    t.add_argument(
        "--inner-lr", type=_positive_float, help="inner SGD step size (default 3e-2; fewshot 0.4)"
    )
    t.add_argument(
        "--outer-lr",
        type=_positive_float,
        help="outer step size (default SGD 3e-2 for maml, the blog's 1e-2 for the other sine "
        "algorithms; fewshot Adam 1e-3 as in the MAML paper)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--eval-draws", type=_positive_int, help="fresh tasks per phase in the sine evaluation"
    )
    f = t.add_argument_group("few-shot classification (--task fewshot)")
    f.add_argument(
        "--data-dir",
        type=Path,
        help="folder holding Omniglot's images_background/ and images_evaluation/ (from "
        "https://github.com/brendenlake/omniglot, python/*.zip); default: synthetic glyphs",
    )
    f.add_argument("--ways", type=_positive_int, help="classes per task (default 5)")
    f.add_argument("--shots", type=_positive_int, help="support images per class (default 1)")
    f.add_argument("--queries", type=_positive_int, help="query images per class (default 5)")
    f.add_argument("--channels", type=_positive_int, help="conv filters (default 32; paper 64)")
    f.add_argument(
        "--glyph-classes",
        type=_positive_int,
        help="synthetic classes (default 300); two thirds train, the rest are the new test classes",
    )
    f.add_argument("--eval-tasks", type=_positive_int, help="new test tasks (default 600)")
    f.add_argument(
        "--anneal-steps",
        type=_positive_int,
        help="--algo mamlpp: the outer steps its schedules span (default 300): the cosine outer "
        "rate, the multi-step loss annealed over the first tenth, first order for the first third",
    )
    f.add_argument(
        "--cosine",
        action=argparse.BooleanOptionalAction,
        help="--algo mamlpp: anneal the outer rate by a cosine to 1%% over --anneal-steps "
        "(default), or keep it constant as the other algorithms do (--no-cosine)",
    )
    t.add_argument(
        "--log-every", type=_positive_int, help="steps per log line (default 500; fewshot 25)"
    )
    t.add_argument(
        "--device",
        type=_device,
        default="cpu",
        help="torch device for parameters and data, e.g. cuda",
    )
    t.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        help="also write OUT/checkpoint.pt every N steps (it is always written at the end and "
        "on Ctrl-C / SIGTERM)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt up to --steps (bit-identical to an uninterrupted run)",
    )
    t.add_argument(
        "--on-nonfinite",
        choices=["raise", "skip"],
        default="raise",
        help="a step with a NaN/inf loss or meta-gradient stops the run (raise, default) or is "
        "skipped",
    )
    t.add_argument("--no-compile", action="store_true", help="run the eager step")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument(
        "--out", type=Path, default=Path("out"), help="directory for figures and results.json"
    )
    r = sub.add_parser(
        "table",
        help="a table of algorithms against settings: the sine-regression table of Meta-SGD (Li "
        "et al. 2017, Table 1; default), or the few-shot table (--task fewshot)",
        description="--task sine: "
        + table.__doc__.split("\n\n")[0]
        + " --task fewshot: "
        + fewshot_table.__doc__.split("\n\n")[0]
        + " Rerunning a command keeps the cells its --out already holds.",
    )
    r.add_argument(
        "--task",
        choices=["sine", "fewshot"],
        default="sine",
        help="sine: the Meta-SGD sine table (default); fewshot: every few-shot algorithm on "
        "N-way K-shot classification of new classes, on synthetic glyphs or Omniglot (--data-dir)",
    )
    r.add_argument(
        "--algos",
        nargs="+",
        choices=list(dict.fromkeys((*table.ALGORITHMS, *fewshot_table.ALGORITHMS))),
        help=f"the rows (default: sine {' '.join(table.ALGORITHMS)}; fewshot "
        f"{' '.join(fewshot_table.ALGORITHMS)})",
    )
    r.add_argument(
        "--steps",
        type=_positive_int,
        help="outer steps per cell (default: sine 70000, the MAML paper's; fewshot "
        f"{fewshot_table.FewshotTableConfig.steps}, sized for one CPU core)",
    )
    r.add_argument(
        "--meta-batch",
        type=_positive_int,
        help="tasks per outer step (default: sine 25; fewshot 4)",
    )
    r.add_argument(
        "--inner-lr",
        type=_positive_float,
        help="inner step size; Meta-SGD's and MAML++'s initial rates (default: sine 0.01; "
        "fewshot 0.4)",
    )
    r.add_argument("--outer-lr", type=_positive_float, help="outer Adam step size (default 1e-3)")
    r.add_argument("--reptile-steps", type=_positive_int, help="Reptile's inner steps (default 5)")
    r.add_argument(
        "--eval-tasks",
        type=_positive_int,
        help="new tasks each cell is scored on (default: sine 4000; fewshot 300)",
    )
    s = r.add_argument_group("the sine table (--task sine)")
    s.add_argument(
        "--shots", nargs="+", type=_positive_int, help="the columns, K (default 5 10 20)"
    )
    s.add_argument(
        "--eval-points", type=_positive_int, help="query points per new task (default 100)"
    )
    s.add_argument("--seed", type=int, help="(default 0)")
    f = r.add_argument_group("the few-shot table (--task fewshot)")
    f.add_argument(
        "--settings",
        nargs="+",
        type=_setting,
        help="the columns, N-way K-shot as NwKs (default 5w1s 5w5s 20w1s)",
    )
    f.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help="the seeds of the --seeded-algos rows; the other rows run the first (default 0 1 2)",
    )
    f.add_argument(
        "--seeded-algos",
        nargs="+",
        choices=fewshot_table.ALGORITHMS,
        help="the rows run at every seed (default maml mamlpp protonet)",
    )
    f.add_argument(
        "--inner-steps",
        type=_positive_int,
        help="inner SGD steps of every row but Reptile's and ProtoNet's (default 1)",
    )
    f.add_argument("--queries", type=_positive_int, help="query images per class (default 5)")
    f.add_argument("--channels", type=_positive_int, help="conv filters (default 8)")
    f.add_argument(
        "--glyph-classes",
        type=_positive_int,
        help="synthetic classes (default 300); two thirds train, the rest are the new test classes",
    )
    f.add_argument(
        "--data-dir",
        type=Path,
        help="Omniglot's folder (as for metafunc train --task fewshot); default: synthetic glyphs",
    )
    f.add_argument(
        "--mamlpp-cosine",
        action=argparse.BooleanOptionalAction,
        help="anneal MAML++'s outer rate by a cosine over --steps, as its paper does over a "
        "long run (default: no, every row keeps the same constant rate)",
    )
    r.add_argument("--no-compile", action="store_true", help="run the eager steps")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument(
        "--out",
        type=Path,
        help="the JSON, written after every cell (default out/sinusoid-table.json, "
        "out/fewshot-table.json); the few-shot table's figure goes beside it (.png)",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
