"""Sine-wave regression tasks, as pure functions of an explicit ``torch.Generator``."""

from __future__ import annotations

import math

import torch

from .. import _checks
from .._types import Tasks


def sine(
    generator: torch.Generator,
    *,
    tasks: int,
    shots: int = 4,
    queries: int = 4,
    phase: float | torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tasks:
    """The blog's sine: ``y = sin(x + b)``, ``b`` is 0 or π, ``x ~ U[−2π, 2π]``.

    The phase is the only thing that varies between tasks, and it must be inferred from
    ``shots`` examples.

    Args:
        generator: the only source of randomness (CPU generator).
        tasks: number of tasks in the meta-batch.
        shots, queries: support and query points per task.
        phase: ``None`` draws 0 or π per task with equal probability; a number or a
            ``(tasks,)`` tensor fixes it (for evaluation).
        dtype: of the returned tensors.
        device: of the returned tensors.

    Returns:
        ``Tasks(support=(x, y), query=(x, y))``, each tensor ``(tasks, points, 1)``.

    Example:
        >>> tasks = mf.tasks.sine(torch.Generator().manual_seed(0), tasks=32, shots=4)
        >>> x, y = tasks.support
        >>> x.shape, tasks.query[0].shape
        (torch.Size([32, 4, 1]), torch.Size([32, 4, 1]))
        >>> bool(((x >= -2 * torch.pi) & (x <= 2 * torch.pi)).all())
        True
    """
    n = _sizes("sine", tasks, shots, queries)
    if phase is None:
        phase = math.pi * torch.randint(0, 2, (n, 1, 1), generator=generator).double()
    else:
        phase = _per_task("sine", "phase", phase, n)
    return _sinusoid_points(generator, n, shots, queries, 1.0, phase, 2 * math.pi, dtype, device)


def sinusoid(
    generator: torch.Generator,
    *,
    tasks: int,
    shots: int = 10,
    queries: int = 10,
    amplitude: torch.Tensor | None = None,
    phase: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tasks:
    """The MAML paper's sinusoid: ``y = A sin(x + φ)``, ``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``,
    ``x ~ U[−5, 5]`` (Finn et al., 2017, section 5.1).

    ``amplitude`` and ``phase`` (``(tasks,)`` tensors) fix the task parameters instead of
    drawing them, e.g. to evaluate against the true curve.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> tasks = mf.tasks.sinusoid(g, tasks=25, shots=5, queries=5, dtype=torch.float64)
        >>> tasks.support[0].shape, tasks.support[0].dtype
        (torch.Size([25, 5, 1]), torch.float64)
        >>> wave = mf.tasks.sinusoid(g, tasks=1, amplitude=torch.tensor([2.0]),
        ...                          phase=torch.tensor([0.0]))
        >>> x, y = wave.query
        >>> torch.allclose(y, 2 * torch.sin(x))
        True
    """
    n = _sizes("sinusoid", tasks, shots, queries)
    if amplitude is None:
        amplitude = 0.1 + 4.9 * torch.rand(n, generator=generator, dtype=torch.float64)
    if phase is None:
        phase = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    amplitude = _per_task("sinusoid", "amplitude", amplitude, n)
    phase = _per_task("sinusoid", "phase", phase, n)
    return _sinusoid_points(generator, n, shots, queries, amplitude, phase, 5.0, dtype, device)


def daml_sine(
    generator: torch.Generator,
    *,
    tasks: int,
    sources: int = 1,
    queries: int = 10,
    phase: float | torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tasks:
    """The blog's DAML sine: the phase must be read from unlabeled source-domain inputs.

    The target domain is the blog's sine, ``y = sin(x + b)``, ``b`` 0 or π, ``x ~ U[−2π, 2π]``.
    The source domain gives only inputs, and where they lie tells the phase: ``U[π/4, π/2]``
    when ``b = 0`` and ``U[−π/2, −π/4]`` when ``b = π``.

    Args:
        generator: the only source of randomness (CPU generator).
        tasks: number of tasks in the meta-batch.
        sources: unlabeled source inputs per task (the blog uses one).
        queries: labeled target points per task.
        phase: ``None`` draws 0 or π per task; a number (0 or π) or a ``(tasks,)`` tensor of
            them fixes it.
        dtype: of the returned tensors.
        device: of the returned tensors.

    Returns:
        ``Tasks(support=x_source, query=(x, y))``; ``x_source`` is ``(tasks, sources, 1)``,
        ``x`` and ``y`` are ``(tasks, queries, 1)``.

    Example:
        >>> tasks = mf.tasks.daml_sine(torch.Generator().manual_seed(0), tasks=8, phase=0.0)
        >>> tasks.support.shape  # unlabeled source inputs only
        torch.Size([8, 1, 1])
        >>> bool(((tasks.support >= torch.pi / 4) & (tasks.support <= torch.pi / 2)).all())
        True
    """
    n = _sizes("daml_sine", tasks, sources, queries)
    if phase is None:
        phase = math.pi * torch.randint(0, 2, (n, 1, 1), generator=generator).double()
    else:
        phase = _per_task("daml_sine", "phase", phase, n)
        if not bool(((phase == 0) | (phase == math.pi)).all()):
            raise ValueError(
                f"daml_sine: phase must be 0 or math.pi (got values {torch.unique(phase).tolist()})"
            )
    u = torch.rand(n, sources, 1, generator=generator, dtype=torch.float64)
    # π/4 + u·π/4 for b = 0; the mirror image −(π/4 + u·π/4) for b = π.
    x_source = torch.where(phase == 0, 1.0, -1.0) * (math.pi / 4) * (1 + u)
    target = _sinusoid_points(generator, n, 0, queries, 1.0, phase, 2 * math.pi, dtype, device)
    return Tasks(x_source.to(dtype=dtype, device=device), target.query)


def _sizes(where: str, tasks: int, shots: int, queries: int) -> int:
    n = _checks.integer(where, "tasks", tasks, minimum=1)
    _checks.integer(where, "sources" if where == "daml_sine" else "shots", shots, minimum=1)
    _checks.integer(where, "queries", queries, minimum=1)
    return n


def _per_task(where: str, name: str, value: float | torch.Tensor, n: int) -> torch.Tensor:
    """A number or a ``(tasks,)`` tensor as a float64 ``(tasks, 1, 1)`` tensor."""
    value = torch.as_tensor(value, dtype=torch.float64)
    if value.ndim > 1 or (value.ndim == 1 and value.numel() not in (1, n)):
        raise ValueError(
            f"{where}: {name} must be a number or a tensor of shape ({n},), one per task "
            f"(got shape {tuple(value.shape)})"
        )
    return value.reshape(-1, 1, 1).expand(n, 1, 1)


def _sinusoid_points(
    generator: torch.Generator,
    n: int,
    shots: int,
    queries: int,
    amplitude: float | torch.Tensor,
    phase: torch.Tensor,
    half_width: float,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> Tasks:
    x = (
        2 * torch.rand(n, shots + queries, 1, generator=generator, dtype=torch.float64) - 1
    ) * half_width
    y = amplitude * torch.sin(x + phase)
    x, y = x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)
    return Tasks((x[:, :shots], y[:, :shots]), (x[:, shots:], y[:, shots:]))
