import pytest
import torch
from torch import nn

import metafunc as mf


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no cache entries or recompile counts leak between tests."""
    torch._dynamo.reset()
    yield


@pytest.fixture
def doctest_globals(tmp_path, monkeypatch):
    """The names the docstring examples use (tests/test_docs.py), built small and eagerly: a
    blog sine net as ``fn, params``, its mean-square ``loss(params, (x, y))``, a one-step MAML
    ``learner`` on it, Adam as ``opt``, its ``state``, two sine ``tasks``, the meta-gradient
    ``grads``, inputs ``x``, a generator ``g``; the examples run in an empty folder holding
    ``run/``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    g = torch.Generator().manual_seed(0)
    net = mf.models.blog_sine_net(g, hidden=8)
    fn, params = mf.pure(net)
    loss = mf.supervised(fn, mf.losses.mse)
    learner = mf.maml(loss, inner_lr=0.01, inner_steps=1)
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
        "loss": loss,
        "learner": learner,
        "opt": opt,
        "state": mf.init_state(learner, opt, params),
        "tasks": tasks,
        "grads": grads,
        "x": torch.linspace(-1.0, 1.0, 5)[:, None],
        "g": g,
    }
