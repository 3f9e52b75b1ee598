"""The outer step: eager reference, compiled equals eager, one graph and no recompiles."""

import functools

import pytest
import torch
import torch._dynamo.testing
from conftest import sine_tasks, tanh_net
from torch import nn

import metafunc as mf
from metafunc import _tree


def tiny_blog_setup(algo, loss_fn, opt):
    g = torch.Generator().manual_seed(0)
    fn, params = mf.functionalize(mf.models.blog_sine_net(g, hidden=4).double())
    learner = algo(mf.supervised(fn, loss_fn), inner_lr=3e-2, inner_steps=2)
    return learner, opt, mf.init_state(learner, opt, params)


def test_eager_step_is_meta_grad_then_update():
    net = tanh_net()
    fn, params = mf.functionalize(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1, inner_steps=2)
    opt = mf.optim.adam(1e-2)
    state = mf.init_state(learner, opt, params)
    tasks = sine_tasks()
    new, metrics = mf.make_step(learner, opt, compile=False)(state, tasks)
    grads, m = learner.meta_grad(params, tasks)
    updates, _ = opt.update(grads, opt.init(params), params)
    for a, b in zip(
        _tree.leaves(new.meta), _tree.leaves(mf.optim.apply_updates(params, updates)), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert int(new.step) == 1 and int(state.step) == 0
    assert set(metrics) == {"loss", "loss_before", "grad_norm", "finite"}
    torch.testing.assert_close(metrics["loss"], m["loss"])
    torch.testing.assert_close(metrics["grad_norm"], _tree.global_norm(grads))
    assert metrics["finite"].dtype == torch.bool and bool(metrics["finite"])


def test_finite_flag_reports_nan():
    fn, params = mf.functionalize(tanh_net())
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.sgd(0.1)
    tasks = sine_tasks()
    tasks.query[1][0, 0, 0] = float("nan")
    _, metrics = mf.make_step(learner, opt, compile=False)(
        mf.init_state(learner, opt, params), tasks
    )
    assert not bool(metrics["finite"])


@pytest.mark.parametrize(
    "algo, loss_fn, make_opt",
    [
        # the blog's configuration: second order through an L1 loss, plain SGD
        (mf.maml, mf.losses.l1, lambda: mf.optim.sgd(1e-2)),
        (mf.fomaml, mf.losses.mse, lambda: mf.optim.adam(1e-2)),
    ],
    ids=["maml-l1-sgd", "fomaml-mse-adam"],
)
def test_compiled_equals_eager_one_graph_no_recompiles(algo, loss_fn, make_opt):
    learner, opt, state = tiny_blog_setup(algo, loss_fn, make_opt())
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = mf.make_step(learner, opt, compile=True, backend=counter)
    eager = mf.make_step(learner, opt, compile=False)
    sampler = functools.partial(mf.tasks.sine, tasks=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    s_eager = s_comp = state
    for _ in range(4):
        tasks = sampler(g)  # new tensors every step: no recompile may follow
        s_eager, m_eager = eager(s_eager, tasks)
        s_comp, m_comp = compiled(s_comp, tasks)
        for a, b in zip(
            _tree.leaves((s_comp, m_comp)), _tree.leaves((s_eager, m_eager)), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert counter.frame_count == 1  # compiled once, never again
    assert int(s_comp.step) == 4


def test_compiled_step_surfaces_readable_model_errors():
    net = nn.Sequential(nn.Linear(1, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double()
    fn, params = mf.functionalize(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.sgd(0.1)
    step = mf.make_step(learner, opt, compile=True, backend="aot_eager")
    with pytest.raises(ValueError, match="track_running_stats=False"):
        step(mf.init_state(learner, opt, params), sine_tasks())
