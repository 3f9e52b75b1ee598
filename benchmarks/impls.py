"""The implementations the benchmark compares, by name.

Each one is a factory in ``benchmarks.impls_torch`` or ``benchmarks.impls_jax`` that a worker
process imports by its dotted name: this registry imports no framework, so the harness can
name a JAX row without loading JAX, and a worker loads only its own framework.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass
class Impl:
    """A ready implementation in a worker.

    Attributes:
        step: runs one outer step and returns when it is done (synchronised with the device).
        first_moment: Adam's first moment after the steps so far, name -> float64 array; after
            one step from zero it is ``(1 - b1) * meta-gradient``.
        peak_memory_mb: the device's peak memory where the framework reports it (CUDA);
            ``None`` means the process's peak resident memory is used.
    """

    step: Callable[[], None]
    first_moment: Callable[[], dict[str, np.ndarray]]
    peak_memory_mb: Callable[[], float | None] = lambda: None


@dataclasses.dataclass(frozen=True)
class ImplSpec:
    """Where an implementation lives and what it needs.

    Attributes:
        framework: ``"torch"`` (built from the shared ``nn.Module`` and ``mf.Tasks``) or
            ``"jax"`` (built from the shared numpy arrays).
        factory: ``"module:function"``; the function returns an ``Impl`` (``impls_torch``).
        kwargs: passed to the factory.
        compiled: it compiles on its first call (cold and warm first calls are measured).
        cuda_only: it only makes sense on a GPU (CUDA graphs).
        needs: modules that must be installed (the optional ``bench`` extra).
    """

    framework: str
    factory: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    compiled: bool = False
    cuda_only: bool = False
    needs: tuple[str, ...] = ()


_TORCH = "benchmarks.impls_torch"
IMPLS: dict[str, ImplSpec] = {
    "blog loop": ImplSpec("torch", f"{_TORCH}:blog_loop"),
    "metafunc eager": ImplSpec("torch", f"{_TORCH}:metafunc_step", {"compile": False}),
    "metafunc compiled": ImplSpec(
        "torch", f"{_TORCH}:metafunc_step", {"compile": True}, compiled=True
    ),
    "metafunc compiled reduce-overhead": ImplSpec(
        "torch",
        f"{_TORCH}:metafunc_step",
        {"compile": True, "mode": "reduce-overhead"},
        compiled=True,
        cuda_only=True,
    ),
    "metafunc compiled max-autotune": ImplSpec(
        "torch",
        f"{_TORCH}:metafunc_step",
        {"compile": True, "mode": "max-autotune"},
        compiled=True,
        cuda_only=True,
    ),
    "torch.func compiled": ImplSpec("torch", f"{_TORCH}:torch_func_compiled", compiled=True),
    "torch.func eager": ImplSpec("torch", f"{_TORCH}:torch_func_compiled", {"compile": False}),
    "higher": ImplSpec("torch", f"{_TORCH}:higher_loop", needs=("higher",)),
    "torchopt loop": ImplSpec("torch", f"{_TORCH}:torchopt_loop", needs=("torchopt",)),
    "torchopt vmap": ImplSpec("torch", f"{_TORCH}:torchopt_vmap", needs=("torchopt",)),
    "parallel-metalearn": ImplSpec("torch", f"{_TORCH}:parallel_metalearn", needs=("metalearn",)),
    "jax jit": ImplSpec("jax", "benchmarks.impls_jax:jax_jit", needs=("jax", "optax")),
}

# named in every result so a reader knows they were considered
NOT_BENCHMARKED = {
    "learn2learn": "not benchmarked: learn2learn 0.2.0 does not build on Python 3.11 "
    "(its Cython sources include longintrepr.h, removed in 3.11)",
}

REFERENCE = "blog loop"  # every other row must agree with its meta-gradient


def unavailable(spec: ImplSpec, device: str) -> str | None:
    """Why ``spec`` cannot run on ``device`` here, or ``None`` (found without importing it)."""
    if spec.cuda_only and not device.startswith("cuda"):
        return "CUDA only (CUDA graphs)"
    for module in spec.needs:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed; pip install -e .[bench]"
    return None


def selected(
    names: list[str] | None, device: str, *, allow_cuda_only: bool = False
) -> tuple[dict[str, ImplSpec], dict[str, str]]:
    """The implementations to run here (all by default, in registry order) and why the
    others are skipped. ``allow_cuda_only`` runs the CUDA-graph rows on any device (the GPU
    script's CPU dry run, where they compile but record no graph)."""
    run, skipped = {}, dict(NOT_BENCHMARKED) if names is None else {}
    for name in names or IMPLS:
        if name not in IMPLS:
            skipped[name] = NOT_BENCHMARKED.get(
                name, f"unknown implementation (known: {list(IMPLS)})"
            )
            continue
        spec = IMPLS[name]
        if allow_cuda_only:
            spec = dataclasses.replace(spec, cuda_only=False)
        reason = unavailable(spec, device)
        if reason is None:
            run[name] = spec
        else:
            skipped[name] = reason
    return run, skipped
