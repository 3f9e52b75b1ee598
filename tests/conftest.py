# ruff: noqa: E402  (the compile cache is chosen before torch is imported)
import os
import shutil
import tempfile

# The suite compiles into a compile cache of its own, made here by the first pytest process
# (xdist's workers inherit it) and deleted when it ends: what a test compiles, loads and counts
# never depends on what an earlier run left in torch's default cache. A cache the caller names
# in $TORCHINDUCTOR_CACHE_DIR is used as it is.
_OWN_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _OWN_CACHE = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="metafunc-tests-")

import pytest
import torch
from torch import nn

import metafunc as mf
from metafunc import _ahead

# xdist's two workers already use both cores: a large step's second part would compile in a
# third process, two C++ compiles more for nothing. The cut is tested on its own
# (tests/test_compile_cache.py), with the limit lowered.
_ahead._CUT_AT = 10**9


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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
