"""The benchmark workloads, as plain data: every process reads them, none needs a framework.

The initial weights and the batch are drawn once by the harness (``benchmarks.data``, torch)
and handed to every worker as one ``.npz`` file, so the JAX worker gets the very same numbers
without importing torch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

OUTER_LR = 1e-3
B1 = 0.9  # Adam's first-moment decay, the same in every implementation
WAYS, SHOTS, QUERIES = 5, 1, 15  # the image workload: 5-way 1-shot, 15 queries per class


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark configuration (the MAML paper's hyper-parameters by default)."""

    name: str
    kind: str  # "sinusoid": 1-h-h-1 ReLU MLP, MSE; "conv": the 4-block conv net, cross-entropy
    tasks: int
    inner_steps: int
    first_order: bool = False
    hidden: int = 40  # the MLP's hidden width, or the conv net's channels
    inner_lr: float = 0.01
    blocks: int = 4  # the conv net's conv blocks
    image_size: int = 28  # the conv workload's square images
    # how far (relative to the largest entry) a meta-gradient may be from the blog loop's
    tolerance: float = 1e-4

    def describe(self) -> str:
        order = "first" if self.first_order else "second"
        if self.kind == "sinusoid":
            net = f"1-{self.hidden}-{self.hidden}-1 MLP, 10+10 points, MSE"
        else:
            side = self.image_size
            net = (
                f"conv net {self.blocks}x{self.hidden}, {side}x{side}, {WAYS}-way {SHOTS}-shot, "
                f"{QUERIES} queries/class"
            )
        return f"{net}, {self.tasks} tasks, {self.inner_steps} inner steps {order} order"


WORKLOADS = {
    w.name: w
    for w in (
        Workload("sine-1step", "sinusoid", 25, 1),
        Workload("sine-5step", "sinusoid", 25, 5),
        Workload("sine-5step-fo", "sinusoid", 25, 5, first_order=True),
        Workload("sine-20step", "sinusoid", 25, 20),  # how compile time grows with the steps
        # float32 rounding, reassociated by inductor's fused reductions, reaches 4.3e-4 here
        # in both compiled rows (metafunc's and the hand-written one); in float64 the compiled
        # meta-gradient equals the blog loop's to 2.3e-15
        Workload("conv-5way1shot", "conv", 32, 1, hidden=64, inner_lr=0.4, tolerance=1e-3),
        Workload(
            "conv-5way1shot-fo",
            "conv",
            32,
            1,
            first_order=True,
            hidden=64,
            inner_lr=0.4,
            tolerance=1e-3,
        ),
    )
}

# name -> (the field of sine-5step that varies, its default sizes)
SWEEPS = {
    "meta_batch": ("tasks", [1, 25, 200, 1024]),
    "inner_steps": ("inner_steps", [1, 5, 10, 20]),
    "hidden": ("hidden", [40, 80, 160, 320]),
}


def sweep_point(field: str, value: int, base: str = "sine-5step") -> Workload:
    """``base`` with one field changed, named after the change (e.g. ``sine-5step/tasks=1024``)."""
    w = WORKLOADS[base]
    return dataclasses.replace(w, name=f"{w.name}/{field}={value}", **{field: value})


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The workload's shared data: ``param/<name>`` (in the network's parameter order),
    ``support/0``, ``support/1``, ``query/0``, ``query/1``."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def params_of(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.removeprefix("param/"): v for k, v in arrays.items() if k.startswith("param/")}
