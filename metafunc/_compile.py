"""The compile wrapper: a step compiled with ``torch.compile`` as one graph, once per device."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from . import _guards, _tree
from ._types import Step, Tasks, TrainState

_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compiled(
    step: Step,
    *,
    mode: str | None = None,
    backend: Any = "inductor",
    options: dict[str, Any] | None = None,
    random: bool = False,
) -> Step:
    """``step`` (a pure step) compiled with ``torch.compile(fullgraph=True, dynamic=False)``:
    one graph, no graph breaks, compiled on the first call on each device type and reused
    while shapes, dtypes and tree structure stay the same.

    It runs under ``torch.no_grad`` (``grad`` inside it still differentiates). With a
    CUDA-graph ``mode`` (``"reduce-overhead"``, ``"max-autotune"``) each call marks the start
    of a step for the graph trees and returns copies of the outputs, which the next replay
    would otherwise overwrite. ``state.extra`` (the user's own tree) does not enter the graph.
    An error that Dynamo turned into a compiler message is raised again as the eager step
    raises it. ``random``: the step draws random numbers, so Inductor uses torch's own random
    kernels (``fallback_random``), which draw what the eager step draws.

    Example:
        >>> pure = mf.outer_step(learner, opt)
        >>> fast = mf.compiled(pure)  # compiles on its first call
        >>> step = mf.validated(mf.seeded(fast), learner, opt, probe=mf.seeded(pure))  # make_step
        >>> step.guarded  # the optimizer is not wrapped in mf.optim.apply_if_finite
        False
    """
    fn = step.fn

    def pure(state: TrainState, tasks: Tasks) -> Any:
        return fn(state, tasks)

    # Dynamo caches compiled graphs on the function's code object, which every make_step
    # shares: after 8 steps (learners, shapes) one process would hit its recompile limit. A
    # private copy of the code object gives each step its own cache.
    pure.__code__ = pure.__code__.replace()
    cuda_graphs = mode in _CUDA_GRAPH_MODES
    per_device: dict[str, Any] = {}  # per device type, compiled on its first call

    def run(state: TrainState, tasks: Tasks) -> tuple[TrainState, Any]:
        kind = _tree.leaves(state.meta)[0].device.type
        if kind not in per_device:
            per_device[kind] = _compile(pure, kind, mode, backend, random, options or {})
        extra = state.extra
        state = state._replace(extra=None)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        try:
            with torch.no_grad():
                out = per_device[kind](state, tasks)
        except torch._dynamo.exc.TorchDynamoException:
            # Tracing turns errors raised by user code (a bad loss, a refused model) into
            # compiler messages; the eager step raises the original.
            with torch.no_grad():
                fn(state, tasks)
            raise
        if cuda_graphs:
            out = _tree.map(torch.clone, out)
        return out[0]._replace(extra=extra), out[1]

    return dataclasses.replace(step, fn=run)


def _compile(
    fn: Any, device: str, mode: str | None, backend: Any, random: bool, given: dict[str, Any]
) -> Any:
    """``torch.compile`` of the whole step: one graph, static shapes. With Inductor on the CPU
    the graph's wrapper is C++ (``cpp_wrapper``): calling each kernel from Python costs the
    small steps up to a third of their time (``python -m benchmarks.step_variants``). A step
    with random operations uses torch's own random kernels (``fallback_random``): Inductor's
    draw other numbers than the eager step does. ``given`` (the caller's options) wins."""
    # identity checks of torch's and metafunc's own modules and functions are not repeated
    # on every call (metafunc/_guards.py); everything user code can change stays guarded
    options: dict[str, Any] = {"guard_filter_fn": _guards.keep}
    if backend == "inductor":
        if random:
            options["fallback_random"] = True
        if device == "cpu":
            options["cpp_wrapper"] = True
    options.update(given)
    if mode is not None and backend == "inductor":
        options = {**torch._inductor.list_mode_options(mode), **options}
    return torch.compile(fn, fullgraph=True, dynamic=False, backend=backend, options=options)
