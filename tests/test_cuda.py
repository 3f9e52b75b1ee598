"""On a CUDA GPU: the compiled step equals the eager one (CUDA graphs included), float64 on the
GPU equals the CPU float64 reference, and a run and its checkpoints stay on the device.

Every test here skips, its reason printed (``-ra``), where no GPU is available.
``benchmarks/gpu.sh`` runs this file on the GPU machine and records the outcome; it imports
only pytest, torch and metafunc, so it runs on an image without the dev extra.
"""

import functools

import pytest
import torch
from torch.func import functional_call

import metafunc as mf
from metafunc import _tree

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)


def sinusoid(device, dtype, tasks=25):
    """The MAML paper's sinusoid step (1-40-40-1 MLP, 5 second-order inner steps) on ``device``."""
    g = torch.Generator().manual_seed(0)
    net = mf.models.mlp([1, 40, 40, 1], generator=g).to(device=device, dtype=dtype)
    fn, params = mf.pure(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.01, inner_steps=5)
    batch = mf.tasks.sinusoid(
        torch.Generator().manual_seed(1), tasks=tasks, dtype=dtype, device=device
    )
    return net, learner, params, batch


def train(learner, params, batch, steps=3, **options):
    opt = mf.optim.adam(1e-3)
    state = mf.init_state(learner, opt, params)
    step = mf.make_step(learner, opt, **options)
    for _ in range(steps):
        state, metrics = step(state, batch)
    return state, metrics


def assert_trees_close(got, want, **tolerance):
    assert _tree.structure(got) == _tree.structure(want)
    for (path, a), b in zip(_tree.named_leaves(got, "state"), _tree.leaves(want), strict=True):
        torch.testing.assert_close(
            a.cpu(), b.cpu(), msg=lambda m, path=path: f"{path}: {m}", **tolerance
        )


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_the_compiled_step_equals_the_eager_one_on_cuda(mode):
    """With ``reduce-overhead`` (CUDA graphs) the caller does nothing special: ``make_step``
    marks each step's start and copies what it returns (issue 14)."""
    _, learner, params, batch = sinusoid("cuda", torch.float32)
    eager, _ = train(learner, params, batch, compile=False)
    compiled, metrics = train(learner, params, batch, compile=True, mode=mode)
    assert {t.device.type for t in _tree.leaves((compiled, metrics))} == {"cuda"}
    assert_trees_close(compiled, eager, rtol=1e-4, atol=1e-6)


def test_float64_on_cuda_equals_the_cpu_float64_reference():
    net, learner, params, batch = sinusoid("cpu", torch.float64, tasks=4)
    # the reference: a per-task loop with autograd.grad(create_graph=True) on the CPU
    names = sorted(params)
    theta0 = [params[k].clone().requires_grad_() for k in names]

    def loss(theta, data):
        pred = functional_call(net, dict(zip(names, theta, strict=True)), (data[0],))
        return ((pred - data[1]) ** 2).mean()

    total = 0.0
    for i in range(4):
        theta = theta0
        for _ in range(5):
            support = (batch.support[0][i], batch.support[1][i])
            grads = torch.autograd.grad(loss(theta, support), theta, create_graph=True)
            theta = [p - 0.01 * g for p, g in zip(theta, grads, strict=True)]
        total = total + loss(theta, (batch.query[0][i], batch.query[1][i]))
    want = dict(zip(names, torch.autograd.grad(total / 4, theta0), strict=True))

    _, cuda_learner, cuda_params, cuda_batch = sinusoid("cuda", torch.float64, tasks=4)
    got, _ = cuda_learner.meta_grad(cuda_learner.init(cuda_params), cuda_batch)
    assert {t.device.type for t in _tree.leaves(got)} == {"cuda"}
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    cpu_state, _ = train(learner, params, batch, compile=False)
    for compile in (False, True):
        cuda_state, _ = train(cuda_learner, cuda_params, cuda_batch, compile=compile)
        assert_trees_close(cuda_state, cpu_state, rtol=1e-9, atol=1e-12)


def test_cuda_run_stays_on_the_device_and_checkpoints_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.blog_sine_net(g, hidden=4).cuda())
    learner = mf.maml(mf.supervised(fn, mf.losses.l1), inner_lr=3e-2, inner_steps=2)
    opt = mf.optim.adam(1e-2)
    sampler = functools.partial(mf.tasks.sine, tasks=3, device="cuda")
    for compile in (False, True):
        state = mf.init_state(learner, opt, params)
        step = mf.make_step(learner, opt, compile=compile)
        state = mf.train(
            step,
            state,
            sampler,
            steps=3,
            generator=g,
            progress=False,
            hooks=[mf.hooks.Checkpoints(tmp_path / "c.pt")],
        )
        _, metrics = step(state, sampler(g))
        assert {t.device.type for t in _tree.leaves((state, metrics))} == {"cuda"}
        loaded = mf.load(tmp_path / "c.pt", like=mf.init_state(learner, opt, params))
        assert _tree.structure(loaded) == _tree.structure(state)
        for (path, a), b in zip(
            _tree.named_leaves(loaded, "state"), _tree.leaves(state), strict=True
        ):
            assert a.dtype == b.dtype and a.device == b.device, path
            assert torch.equal(a, b), path
