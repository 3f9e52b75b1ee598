"""The few-shot table: the few-shot family on N-way K-shot classification of new classes.

Every algorithm of the few-shot run (MAML, FO-MAML, ANIL, BOIL, Meta-SGD, Reptile, MAML++,
ProtoNet, ProtoMAML) on each setting (5-way 1-shot, 5-way 5-shot, 20-way 1-shot), with the
same conv net, task stream, outer steps, meta-batch and inner steps; synthetic glyphs by
default, Omniglot from a folder. A cell is one :func:`metafunc.experiments.fewshot.run`,
scored as the query accuracy on new tasks of classes never seen in training, mean ± 95%
interval over the tasks; some rows run at several seeds (each seed also draws its own glyphs).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from metafunc.evaluation import mean_ci95

from . import fewshot

ALGORITHMS = (
    "maml",
    "fomaml",
    "anil",
    "boil",
    "meta-sgd",
    "reptile",
    "mamlpp",
    "protonet",
    "protomaml",
)
NAMES = {
    "maml": "MAML",
    "fomaml": "FO-MAML",
    "anil": "ANIL",
    "boil": "BOIL",
    "meta-sgd": "Meta-SGD",
    "reptile": "Reptile",
    "mamlpp": "MAML++",
    "protonet": "ProtoNet",
    "protomaml": "ProtoMAML",
}
SETTINGS = ((5, 1), (5, 5), (20, 1))


@dataclass(frozen=True)
class FewshotTableConfig:
    """The table's cells (``algos`` × ``settings``, the ``seeded_algos`` rows at every one of
    ``seeds`` and the others at the first) and the settings every cell shares (the
    ``metafunc table --task fewshot`` options). Sized for one core of a small CPU: the 45
    cells, eager, in under an hour."""

    algos: tuple[str, ...] = ALGORITHMS
    settings: tuple[tuple[int, int], ...] = SETTINGS  # (ways, shots)
    seeds: tuple[int, ...] = (0, 1, 2)
    seeded_algos: tuple[str, ...] = ("maml", "mamlpp", "protonet")
    steps: int = 300
    meta_batch: int = 4
    inner_steps: int = 1
    reptile_steps: int = 5  # one Reptile step is plain multi-task training: it needs a few
    inner_lr: float = 0.4
    outer_lr: float = 1e-3
    queries: int = 5
    channels: int = 8
    glyph_classes: int = 300
    eval_tasks: int = 300
    # MAML++'s cosine annealing of the outer rate: off, so that every row has the same
    # constant rate and the rows differ by their algorithm only
    mamlpp_cosine: bool = False
    data_dir: Path | None = None  # Omniglot's folder; None: synthetic glyphs
    device: str = "cpu"
    compile: bool = True
    progress: bool = True


# The options that choose which cells run; every other option is how each cell runs, which a
# table's cells must share.
CELL_OPTIONS = ("algos", "settings", "seeds", "seeded_algos", "progress")


class Cell(NamedTuple):
    algo: str
    ways: int
    shots: int
    seed: int


def cells(config: FewshotTableConfig) -> list[Cell]:
    """The cells of ``config`` in the order they run: setting by setting (the cheapest
    first), each algorithm, each of its seeds."""
    return [
        Cell(algo, ways, shots, seed)
        for ways, shots in config.settings
        for algo in config.algos
        for seed in (config.seeds if algo in config.seeded_algos else config.seeds[:1])
    ]


def cell_of(row: dict[str, Any]) -> Cell:
    """The cell a row of results is for."""
    return Cell(row["algo"], row["ways"], row["shots"], row["seed"])


def pending(config: FewshotTableConfig, done: Sequence[dict[str, Any]] = ()) -> list[Cell]:
    """The cells of ``config`` that ``done`` (rows of earlier runs) does not hold yet."""
    finished = {cell_of(r) for r in done}
    return [c for c in cells(config) if c not in finished]


def cell_config(config: FewshotTableConfig, cell: Cell) -> fewshot.FewshotConfig:
    """The few-shot run of one cell: the table's settings; Reptile with ``reptile_steps``
    inner steps; MAML++'s schedules laid over the run's ``steps`` (its cosine outer rate only
    with ``mamlpp_cosine``); a loss curve of ten points; no checkpoint."""
    return fewshot.FewshotConfig(
        algo=cell.algo,
        steps=config.steps,
        meta_batch=config.meta_batch,
        inner_steps=config.reptile_steps if cell.algo == "reptile" else config.inner_steps,
        inner_lr=config.inner_lr,
        outer_lr=config.outer_lr,
        seed=cell.seed,
        ways=cell.ways,
        shots=cell.shots,
        queries=config.queries,
        channels=config.channels,
        data_dir=config.data_dir,
        glyph_classes=config.glyph_classes,
        eval_tasks=config.eval_tasks,
        log_every=max(config.steps // 10, 1),
        anneal_steps=config.steps,
        cosine=config.mamlpp_cosine,
        device=config.device,
        compile=config.compile,
        progress=config.progress,
    )


class Data:
    """The datasets of the cells, loaded once: Omniglot's split is the same for every seed,
    the synthetic glyphs are drawn from each seed."""

    def __init__(self) -> None:
        self._loaded: dict[Any, fewshot.Datasets] = {}

    def __call__(self, config: fewshot.FewshotConfig) -> fewshot.Datasets:
        key = (config.data_dir, None if config.data_dir else (config.seed, config.glyph_classes))
        if key not in self._loaded:
            self._loaded[key] = fewshot.datasets(config)
        return self._loaded[key]


def run_cell(config: FewshotTableConfig, cell: Cell, *, data: Data | None = None) -> dict[str, Any]:
    """Meta-train and score one cell; returns its row: the accuracy (mean and 95% half-width
    over ``eval_tasks`` new tasks), the loss curve, the timings (``train_s`` covers every
    outer step, the first call included; ``wall_s`` also the data, the scoring and the example
    tasks), the cell's own configuration and the machine it ran on."""
    run = cell_config(config, cell)
    clock = time.perf_counter()
    result = fewshot.run(run, data=(data or Data())(run))
    wall = time.perf_counter() - clock
    mean, half = mean_ci95(result.accuracy)
    return {
        **cell._asdict(),
        "accuracy": mean,
        "ci95": half,
        "tasks": result.accuracy.numel(),
        "data": result.data,
        "train_classes": result.train_classes,
        "test_classes": result.test_classes,
        "steps": config.steps,
        "inner_steps": run.inner_steps if cell.algo != "protonet" else 0,
        "first_call_s": result.first_call_s,
        "step_ms": result.step_ms,
        "train_s": result.first_call_s + result.step_ms * (config.steps - 1) / 1e3,
        "eval_s": result.eval_s,
        "wall_s": wall,
        "history": result.history,
        "config": settings(config),
        "machine": machine(),
    }


def settings(config: FewshotTableConfig) -> dict[str, Any]:
    """The options every cell of a table shares, as JSON values."""
    return {
        f.name: str(v) if isinstance(v, Path) else v
        for f in dataclasses.fields(config)
        if f.name not in CELL_OPTIONS
        for v in [getattr(config, f.name)]
    }


def machine() -> dict[str, Any]:
    """Where a cell ran: the CPU model (``/proc/cpuinfo``'s "model name"; the platform's
    processor name elsewhere), torch's threads and version."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    except OSError:
        pass
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def seed_means(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per algorithm and setting with more than one seed: the seeds, each seed's accuracy and
    their mean."""
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["algo"], r["ways"], r["shots"]), []).append(r)
    return [
        {
            "algo": algo,
            "ways": ways,
            "shots": shots,
            "seeds": [r["seed"] for r in group],
            "accuracy": [r["accuracy"] for r in group],
            "mean": sum(r["accuracy"] for r in group) / len(group),
        }
        for (algo, ways, shots), group in groups.items()
        if len(group) > 1
    ]


def setting_name(ways: int, shots: int) -> str:
    return f"{ways}-way {shots}-shot"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table, accuracy in %: one line per algorithm and seed (mean ± 95% interval
    over the new tasks), and for algorithms with several seeds a line with the mean over
    them; one column per setting."""
    settings_ = list(dict.fromkeys((r["ways"], r["shots"]) for r in rows))
    cell = {cell_of(r): r for r in rows}
    means = {(m["algo"], m["ways"], m["shots"]): m for m in seed_means(rows)}
    lines = [
        "| algorithm | seed | " + " | ".join(setting_name(*s) for s in settings_) + " |",
        "|---|---|" + "---|" * len(settings_),
    ]
    for algo in dict.fromkeys(r["algo"] for r in rows):
        seeds = sorted({r["seed"] for r in rows if r["algo"] == algo})
        for seed in seeds:
            parts = []
            for ways, shots in settings_:
                r = cell.get(Cell(algo, ways, shots, seed))
                parts.append(f"{100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f}" if r else "–")
            lines.append(f"| {NAMES[algo]} | {seed} | " + " | ".join(parts) + " |")
        if len(seeds) > 1:
            parts = []
            for ways, shots in settings_:
                m = means.get((algo, ways, shots))
                parts.append(f"**{100 * m['mean']:.2f}**" if m else "–")
            lines.append(f"| {NAMES[algo]} | mean of {len(seeds)} | " + " | ".join(parts) + " |")
    return "\n".join(lines)
