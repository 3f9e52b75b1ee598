"""The sine-wave task samplers: shapes, ranges, the functions they sample, determinism."""

from __future__ import annotations

import math

import pytest
import torch

import metafunc as mf

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def points(tasks: mf.Tasks) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query of every task joined along the example dimension."""
    (sx, sy), (qx, qy) = tasks
    return torch.cat([sx, qx], dim=1), torch.cat([sy, qy], dim=1)


def all_tensors(tasks: mf.Tasks) -> list[torch.Tensor]:
    (sx, sy), (qx, qy) = tasks
    return [sx, sy, qx, qy]


SAMPLERS = [mf.tasks.sine, mf.tasks.sinusoid]


# --- shapes, dtype and device -------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_shapes_are_tasks_by_points_by_one(sampler):
    tasks = sampler(gen(), tasks=7, shots=3, queries=5)
    assert isinstance(tasks, mf.Tasks)
    (sx, sy), (qx, qy) = tasks
    assert sx.shape == sy.shape == (7, 3, 1)
    assert qx.shape == qy.shape == (7, 5, 1)


@pytest.mark.parametrize(
    ("sampler", "shots", "queries"), [(mf.tasks.sine, 4, 4), (mf.tasks.sinusoid, 10, 10)]
)
def test_default_numbers_of_points(sampler, shots, queries):
    (sx, _), (qx, _) = sampler(gen(), tasks=2)
    assert sx.shape == (2, shots, 1)
    assert qx.shape == (2, queries, 1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_default_dtype_is_float32_on_cpu(sampler):
    for t in all_tensors(sampler(gen(), tasks=2)):
        assert t.dtype == torch.float32
        assert t.device == torch.device("cpu")


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtype_is_honoured(sampler, dtype):
    for t in all_tensors(sampler(gen(), tasks=2, dtype=dtype)):
        assert t.dtype == dtype


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_device_is_honoured(sampler):
    # The meta device exists on every machine and is not the default, so it shows the argument
    # reaches the tensors.
    for t in all_tensors(sampler(gen(), tasks=2, dtype=F64, device="meta")):
        assert t.device == torch.device("meta")
        assert t.dtype == F64


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_dtype_changes_precision_not_values(sampler):
    low = sampler(gen(3), tasks=4, dtype=torch.float32)
    high = sampler(gen(3), tasks=4, dtype=F64)
    for a, b in zip(all_tensors(low), all_tensors(high), strict=True):
        assert torch.equal(a, b.float())


# --- sine: y = sin(x + b), b in {0, π}, x in [-2π, 2π] ------------------------------------------


def test_sine_x_covers_minus_two_pi_to_two_pi():
    x, _ = points(mf.tasks.sine(gen(), tasks=500, dtype=F64))
    assert x.min() >= -2 * math.pi
    assert x.max() <= 2 * math.pi
    # The whole interval is used, not a sub-range.
    assert x.min() < -2 * math.pi + 0.05
    assert x.max() > 2 * math.pi - 0.05


def task_phases(tasks: mf.Tasks) -> torch.Tensor:
    """The b in {0, π} of each task, asserting that every point of the task (support and query)
    lies on sin(x + b) for that one b."""
    x, y = points(tasks)
    err = torch.stack(
        [(y - torch.sin(x + b)).abs().amax(dim=(1, 2)) for b in (0.0, math.pi)], dim=1
    )  # (tasks, 2)
    fits = err < 1e-12
    assert torch.all(fits.sum(dim=1) == 1), "each task must fit exactly one of b = 0, b = π"
    return torch.where(fits[:, 0], 0.0, math.pi)


def test_sine_every_task_is_one_phase_shared_by_support_and_query():
    tasks = mf.tasks.sine(gen(), tasks=64, shots=5, queries=7, dtype=F64)
    task_phases(tasks)
    # Support alone and query alone give the same phase per task.
    (sx, sy), (qx, qy) = tasks
    on_support = (sy - torch.sin(sx)).abs().amax(dim=(1, 2)) < 1e-12
    on_query = (qy - torch.sin(qx)).abs().amax(dim=(1, 2)) < 1e-12
    assert torch.equal(on_support, on_query)


def test_sine_both_phases_occur():
    phases = task_phases(mf.tasks.sine(gen(), tasks=64, dtype=F64))
    assert (phases == 0).any()
    assert (phases == math.pi).any()
    # Equal probability: 64 fair draws land far from 0 or 64.
    assert 16 <= int((phases == 0).sum()) <= 48


@pytest.mark.parametrize("phase", [0.0, math.pi])
def test_sine_fixed_phase_number_is_honoured(phase):
    tasks = mf.tasks.sine(gen(), tasks=32, phase=phase, dtype=F64)
    assert torch.all(task_phases(tasks) == phase)


def test_sine_fixed_phase_tensor_is_per_task():
    phase = torch.tensor([0.0, math.pi, 0.5, -1.0])
    x, y = points(mf.tasks.sine(gen(), tasks=4, phase=phase, dtype=F64))
    expected = torch.sin(x + phase.double().reshape(4, 1, 1))
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    # And not the same function for every task.
    assert not torch.allclose(y, torch.sin(x), atol=1e-3)


# --- sinusoid: y = A sin(x + φ), A in [0.1, 5], φ in [0, π], x in [-5, 5] -------------------------


def test_sinusoid_x_covers_minus_five_to_five():
    x, _ = points(mf.tasks.sinusoid(gen(), tasks=200, dtype=F64))
    assert x.min() >= -5
    assert x.max() <= 5
    assert x.min() < -4.9
    assert x.max() > 4.9


def test_sinusoid_with_fixed_amplitude_and_phase():
    amplitude = torch.tensor([0.1, 1.0, 2.5, 5.0], dtype=F64)
    phase = torch.tensor([0.0, 0.3, math.pi / 2, math.pi], dtype=F64)
    tasks = mf.tasks.sinusoid(gen(), tasks=4, amplitude=amplitude, phase=phase, dtype=F64)
    x, y = points(tasks)
    expected = amplitude.reshape(4, 1, 1) * torch.sin(x + phase.reshape(4, 1, 1))
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


def test_sinusoid_drawn_outputs_are_bounded_by_the_largest_amplitude():
    _, y = points(mf.tasks.sinusoid(gen(), tasks=500, dtype=F64))
    assert y.abs().max() <= 5
    assert y.abs().max() > 4  # large amplitudes are drawn too


def test_sinusoid_drawn_amplitudes_lie_in_range_with_phase_fixed():
    n = 300
    x, y = points(mf.tasks.sinusoid(gen(), tasks=n, phase=torch.zeros(n), dtype=F64))
    s = torch.sin(x)
    # y = A sin(x) exactly, so least squares recovers A with no residual.
    amp = (y * s).sum(dim=(1, 2)) / (s * s).sum(dim=(1, 2))
    torch.testing.assert_close(y, amp.reshape(n, 1, 1) * s, rtol=0, atol=1e-12)
    assert amp.min() >= 0.1
    assert amp.max() <= 5.0
    # Spread over the range, not a constant.
    assert amp.min() < 0.5
    assert amp.max() > 4.5


def test_sinusoid_drawn_phases_lie_in_zero_to_pi_with_amplitude_fixed():
    n = 300
    x, y = points(mf.tasks.sinusoid(gen(), tasks=n, amplitude=torch.ones(n), dtype=F64))
    # sin(x + φ) = cos φ · sin x + sin φ · cos x: solve for (cos φ, sin φ) per task.
    basis = torch.cat([torch.sin(x), torch.cos(x)], dim=2)  # (n, points, 2)
    coef = torch.linalg.lstsq(basis, y).solution[:, :, 0]  # (n, 2)
    phi = torch.atan2(coef[:, 1], coef[:, 0])
    torch.testing.assert_close(coef.norm(dim=1), torch.ones(n, dtype=F64))
    assert phi.min() >= -1e-9
    assert phi.max() <= math.pi + 1e-9
    assert phi.min() < 0.3
    assert phi.max() > math.pi - 0.3


# --- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_gives_identical_tensors(sampler):
    a = sampler(gen(123), tasks=5, dtype=F64)
    b = sampler(gen(123), tasks=5, dtype=F64)
    for ta, tb in zip(all_tensors(a), all_tensors(b), strict=True):
        assert torch.equal(ta, tb)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_different_seed_gives_different_tensors(sampler):
    a = sampler(gen(1), tasks=5, dtype=F64)
    b = sampler(gen(2), tasks=5, dtype=F64)
    for ta, tb in zip(all_tensors(a), all_tensors(b), strict=True):
        assert not torch.equal(ta, tb)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_only_the_given_generator_is_used(sampler):
    g = gen(7)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        a = sampler(g, tasks=5, dtype=F64)
        # Consecutive draws from one generator differ: its state advances.
        b = sampler(g, tasks=5, dtype=F64)
        # The global RNG plays no part: reseeding it differently changes nothing.
        torch.manual_seed(999)
        c = sampler(gen(7), tasks=5, dtype=F64)
    assert not torch.equal(a.support[0], b.support[0])
    for ta, tc in zip(all_tensors(a), all_tensors(c), strict=True):
        assert torch.equal(ta, tc)
