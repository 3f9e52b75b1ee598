import pytest
import torch
from torch import nn

import metafunc as mf


def tanh_net(width: int = 5, seed: int = 0) -> nn.Module:
    """A small smooth network: non-zero Hessians everywhere, so second-order terms matter."""
    torch.manual_seed(seed)  # test-only: fixes nn.Linear's default initialisation
    return nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1)).double()


class TanhFeatures(nn.Module):
    """A smooth model that returns its output and its hidden activations (for DAML)."""

    def __init__(self):
        super().__init__()
        self.hidden, self.out = nn.Linear(1, 4), nn.Linear(4, 1)

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        return self.out(h), (h,)


def sine_tasks(n: int = 3, seed: int = 1, shots: int = 4, queries: int = 5) -> mf.Tasks:
    g = torch.Generator().manual_seed(seed)
    return mf.tasks.sinusoid(g, tasks=n, shots=shots, queries=queries, dtype=torch.float64)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no cache entries or recompile counts leak between tests."""
    torch._dynamo.reset()
    yield


def peak_bytes(fn) -> int:
    """The most CPU memory ``fn()`` held at once above what was allocated before it, from the
    allocator's events as torch.profiler records them (deterministic, unlike the RSS)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


@pytest.fixture
def doctest_globals(tmp_path, monkeypatch):
    """The names the docstring examples use (tests/test_docs.py), built small and eagerly: a
    blog sine net as ``fn, params``, a one-step MAML ``learner`` on it, Adam as ``opt``, its
    ``state``, two sine ``tasks``, the meta-gradient ``grads``, inputs ``x``, a generator
    ``g``; the examples run in an empty folder holding ``run/``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    g = torch.Generator().manual_seed(0)
    net = mf.models.blog_sine_net(g, hidden=8)
    fn, params = mf.pure(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.01, inner_steps=1)
    opt = mf.optim.adam(1e-3)
    tasks = mf.tasks.sine(g, tasks=2)
    grads, _ = learner.meta_grad(params, tasks)
    return {
        "mf": mf,
        "torch": torch,
        "nn": nn,
        "net": net,
        "fn": fn,
        "params": params,
        "learner": learner,
        "opt": opt,
        "state": mf.init_state(learner, opt, params),
        "tasks": tasks,
        "grads": grads,
        "x": torch.linspace(-1.0, 1.0, 5)[:, None],
        "g": g,
    }
