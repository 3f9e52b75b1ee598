"""Figures drawn from the experiments' results. matplotlib is imported here only, never by
``import metafunc``; figures are built with matplotlib's object API and saved to files, so
nothing here touches pyplot or chooses a backend."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from ._types import Tasks
from .experiments.scores import SineEval


def sine_figure(
    path: str | Path,
    results: dict[float, SineEval],
    *,
    before: dict[float, SineEval] | None = None,
    title: str = "",
) -> Path:
    """The blog's figure, one panel per phase: the true sine, the net after adapting on the
    examples (the first draw), the examples, and optionally the net before adaptation."""
    fig = Figure(figsize=(6 * len(results), 4.4))
    axes = fig.subplots(1, len(results), squeeze=False, sharey=True)
    for ax, (phase, r) in zip(axes[0], results.items(), strict=True):
        grid = r.grid[:, 0].cpu()
        ax.plot(grid, r.truth[:, 0].cpu(), color="C0", label="true sine, sin(x + b)")
        if before is not None:
            ax.plot(
                grid,
                before[phase].pred[0, :, 0].cpu(),
                color="0.6",
                ls="--",
                label="net(x) before adapting",
            )
        ax.plot(grid, r.pred[0, :, 0].cpu(), color="C1", label="net(x) after adapting")
        if isinstance(r.support, tuple):
            sx, sy = r.support
            ax.plot(sx[0, :, 0].cpu(), sy[0, :, 0].cpu(), "o", color="k", label="examples")
        else:  # DAML: unlabeled source inputs, shown where they lie on the x axis
            sx = r.support[0, :, 0].cpu()
            ax.plot(sx, torch.full_like(sx, -1.25), "^", color="k", label="unlabeled source input")
        ax.set_title(
            f"b = {_phase_name(phase)}: grid MSE {r.mse.mean().item():.4f} (mean of {r.mse.numel()} draws)"
        )
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("y")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path)


def learning_curve(
    path: str | Path,
    steps: Sequence[int],
    series: dict[str, Sequence[float]],
    *,
    ylabel: str = "query loss",
    title: str = "",
) -> Path:
    """Loss against outer step, one line per series, log-scaled y."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, values in series.items():
        ax.plot(steps, values, label=name)
    ax.set_xlabel("outer step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def fewshot_figure(
    path: str | Path,
    tasks: Tasks,
    predicted: torch.Tensor,
    *,
    per_class: int = 2,
    title: str = "",
) -> Path:
    """Example N-way K-shot tasks, two rows each: the support images with their labels, then
    ``per_class`` query images of each class titled with the predicted label (green when
    right, red when wrong). ``predicted`` is ``(tasks, queries)`` like ``tasks.query[1]``."""
    (xs, ys), (xq, yq) = tasks.support, tasks.query
    n, ways = xs.shape[0], int(ys.max()) + 1
    shown = [
        i for c in range(ways) for i in (yq[0] == c).nonzero()[:per_class, 0].tolist()
    ]  # queries are grouped by class, the same way in every task
    cols = max(xs.shape[1], len(shown))
    fig = Figure(figsize=(1.1 * cols, 2.5 * n))
    axes = fig.subplots(2 * n, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for t in range(n):
        for j in range(xs.shape[1]):
            ax = axes[2 * t, j]
            ax.imshow(xs[t, j, 0].cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(f"label {int(ys[t, j])}", fontsize=8)
        axes[2 * t, 0].text(
            -0.15,
            0.5,
            f"task {t + 1}\nsupport",
            transform=axes[2 * t, 0].transAxes,
            ha="right",
            va="center",
            fontsize=9,
        )
        for j, i in enumerate(shown):
            ax = axes[2 * t + 1, j]
            ax.imshow(xq[t, i, 0].cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
            right = int(predicted[t, i]) == int(yq[t, i])
            ax.set_title(
                f"pred {int(predicted[t, i])}, true {int(yq[t, i])}",
                fontsize=8,
                color="green" if right else "red",
            )
        axes[2 * t + 1, 0].text(
            -0.15,
            0.5,
            "query",
            transform=axes[2 * t + 1, 0].transAxes,
            ha="right",
            va="center",
            fontsize=9,
        )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0.04, 0, 1, 0.97))
    return _save(fig, path)


def fewshot_table_figure(
    path: str | Path, rows: Sequence[dict[str, Any]], *, title: str = ""
) -> Path:
    """The few-shot table (rows of :func:`metafunc.experiments.fewshot_table.run_cell`): one
    panel per setting, one line per algorithm, each seed's accuracy with its 95% interval as a
    dot and bar, and a cross at the mean over the seeds of an algorithm run at several."""
    from .experiments.fewshot_table import NAMES, seed_means, setting_name

    settings = list(dict.fromkeys((r["ways"], r["shots"]) for r in rows))
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    means = {(m["algo"], m["ways"], m["shots"]): m["mean"] for m in seed_means(rows)}
    # wide enough for the title with one setting
    fig = Figure(figsize=(max(4.2 * len(settings), 7.0), 0.45 * len(algos) + 1.6))
    axes = fig.subplots(1, len(settings), squeeze=False, sharey=True)[0]
    for ax, (ways, shots) in zip(axes, settings, strict=True):
        for y, algo in enumerate(algos):
            cell = [r for r in rows if (r["algo"], r["ways"], r["shots"]) == (algo, ways, shots)]
            for k, r in enumerate(cell):
                offset = 0.0 if len(cell) == 1 else 0.3 * (k / (len(cell) - 1) - 0.5)
                ax.errorbar(
                    100 * r["accuracy"],
                    y + offset,
                    xerr=100 * r["ci95"],
                    fmt="o",
                    ms=3.5,
                    capsize=2,
                    color=f"C{y % 10}",
                )
            if (algo, ways, shots) in means:
                ax.plot(100 * means[algo, ways, shots], y, "x", ms=8, color="k")
        ax.set_title(f"{setting_name(ways, shots)} (chance {100 / ways:.0f}%)")
        ax.set_xlabel("accuracy on new tasks (%)")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(algos)), [NAMES[a] for a in algos])
    axes[0].invert_yaxis()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _phase_name(phase: float) -> str:
    return "π" if math.isclose(phase, math.pi) else f"{phase:g}"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
