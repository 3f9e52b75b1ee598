"""The outer step: eager reference, compiled equals eager, one graph and no recompiles."""

import functools

import pytest
import torch
import torch._dynamo.testing
from support import graphs, sine_tasks, tanh_net
from torch import nn

import metafunc as mf
from metafunc import _tree


def tiny_blog_setup(algo, loss_fn, opt):
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.blog_sine_net(g, hidden=4).double())
    learner = algo(mf.supervised(fn, loss_fn), inner_lr=3e-2, inner_steps=2)
    return learner, opt, mf.init_state(learner, opt, params)


def test_eager_step_is_meta_grad_then_update():
    net = tanh_net()
    fn, params = mf.pure(net)
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
    assert isinstance(metrics, mf.Metrics) and not bool(metrics.skipped)
    assert metrics.finite_leaves.tolist() == [True] * len(params)
    torch.testing.assert_close(metrics.loss, m.loss)
    torch.testing.assert_close(metrics.grad_norm, _tree.global_norm(grads))
    assert metrics.finite.dtype == torch.bool and bool(metrics.finite)


def test_finite_flag_reports_nan_and_a_guarded_step_keeps_the_previous_state():
    fn, params = mf.pure(tanh_net())
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.apply_if_finite(mf.optim.adam(0.1))
    step = mf.make_step(learner, opt, compile=False)
    state, _ = step(mf.init_state(learner, opt, params), sine_tasks())  # non-zero moments
    tasks = sine_tasks(seed=2)
    tasks.query[1][0, 0, 0] = float("nan")
    new, metrics = step(state, tasks)
    assert not bool(metrics.finite) and bool(metrics.skipped)
    for a, b in zip(
        _tree.leaves((new.meta, new.opt_state.inner_state)),
        _tree.leaves((state.meta, state.opt_state.inner_state)),
        strict=True,
    ):
        assert torch.equal(a, b)
    assert int(new.step) == int(state.step) + 1  # a skipped step still counts
    assert int(new.opt_state.total_notfinite) == 1


@pytest.mark.parametrize("guarded", [False, True], ids=["plain", "guarded"])
def test_finite_is_false_when_the_update_overflows_though_the_gradient_is_finite(guarded):
    """sgd(1e38) on finite float32 gradients larger than 3.4: the parameters would become inf."""
    fn, params = mf.pure(tanh_net().float())
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.sgd(1e38)
    opt = mf.optim.apply_if_finite(opt) if guarded else opt
    state = mf.init_state(learner, opt, params)
    (xs, ys), (xq, yq) = sine_tasks()
    tasks = mf.Tasks((xs.float(), 100 * ys.float()), (xq.float(), 100 * yq.float()))
    new, metrics = mf.make_step(learner, opt, compile=False)(state, tasks)
    assert metrics.finite_leaves.all() and bool(torch.isfinite(metrics.loss))
    assert not bool(metrics.finite)
    assert bool(_tree.all_finite(new.meta)) == guarded  # the guard kept the state
    assert bool(metrics.skipped) == guarded
    if guarded:
        assert all(
            torch.equal(a, b)
            for a, b in zip(_tree.leaves(new.meta), _tree.leaves(state.meta), strict=True)
        )


def test_without_a_guard_a_nan_step_is_reported_and_applied():
    fn, params = mf.pure(tanh_net())
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.adam(0.1)
    tasks = sine_tasks(seed=2)
    tasks.query[1][0, 0, 0] = float("nan")
    new, metrics = mf.make_step(learner, opt, compile=False)(
        mf.init_state(learner, opt, params), tasks
    )
    assert not bool(metrics.finite) and not bool(_tree.all_finite(new.meta))
    assert not bool(metrics.skipped)  # applied: the state is no longer finite


def _two_leaf_learner():
    """``loss = mean(a * x0) + mean(b * x1)``: an inf in column 1 of the data makes only b's
    gradient non-finite."""

    def loss(p, data):
        (x,) = data
        return (p["a"] * x[:, 0]).mean() + (p["b"] * x[:, 1]).mean()

    params = {"a": torch.ones((), dtype=torch.float64), "b": torch.ones((), dtype=torch.float64)}
    return mf.maml(loss, inner_steps=0), params


@pytest.mark.compile
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_finite_leaves_flag_the_parameter_with_a_bad_gradient(compile):
    learner, params = _two_leaf_learner()
    opt = mf.optim.apply_if_finite(mf.optim.sgd(0.1))
    step = mf.make_step(learner, opt, compile=compile)
    x = torch.ones(2, 3, 2, dtype=torch.float64)
    state, m = step(mf.init_state(learner, opt, params), mf.Tasks((x,), (x,)))
    assert bool(m.finite) and m.finite_leaves.tolist() == [True, True]
    assert float(state.meta["a"]) == 0.9  # applied
    x = x.clone()
    x[1, 2, 1] = float("inf")
    new, m = step(state, mf.Tasks((x,), (x,)))
    assert not bool(m.finite)
    assert m.finite_leaves.tolist() == [True, False]  # leaves in sorted key order: a, b
    assert _tree.named_leaves(new.meta, "meta")[1][0] == "meta['b']"
    assert torch.equal(new.meta["a"], state.meta["a"]) and torch.equal(
        new.meta["b"], state.meta["b"]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_step_keeps_the_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.blog_sine_net(g, hidden=4).to(dtype))
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.adam(1e-2)
    state, metrics = mf.make_step(learner, opt, compile=False)(
        mf.init_state(learner, opt, params), mf.tasks.sine(g, tasks=2, dtype=dtype)
    )
    assert {
        t.dtype for t in _tree.leaves((state.meta, state.opt_state.mu, state.opt_state.nu))
    } == {dtype}
    assert metrics.loss.dtype == dtype and metrics.grad_norm.dtype == dtype
    assert state.step.dtype == torch.int64 and state.opt_state.count.dtype == torch.int64


def test_same_seed_same_result_other_seed_differs():
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        fn, params = mf.pure(mf.models.blog_sine_net(g, hidden=4))
        learner = mf.maml(mf.supervised(fn, mf.losses.l1), inner_lr=3e-2)
        opt = mf.optim.adam(1e-2)
        sampler = functools.partial(mf.tasks.sine, tasks=3)
        step = mf.make_step(learner, opt, compile=False)
        return mf.train(
            step, mf.init_state(learner, opt, params), sampler, steps=5, generator=g, progress=False
        )

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(x, y) for x, y in zip(_tree.leaves(a), _tree.leaves(b), strict=True))
    assert not torch.equal(a.meta["0.weight"], c.meta["0.weight"])


@pytest.mark.parametrize(
    "algo, loss_fn, make_opt, backend",
    [
        # the blog's configuration: second order through an L1 loss, plain SGD, compiled with
        # the default backend as users get it (Inductor, with the C++ wrapper on the CPU)
        (mf.maml, mf.losses.l1, lambda: mf.optim.sgd(1e-2), "inductor"),
        (mf.fomaml, mf.losses.mse, lambda: mf.optim.adam(1e-2), "aot_eager"),
    ],
    ids=["maml-l1-sgd", "fomaml-mse-adam"],
)
@pytest.mark.compile
def test_compiled_equals_eager_one_graph_no_recompiles(algo, loss_fn, make_opt, backend):
    learner, opt, state = tiny_blog_setup(algo, loss_fn, make_opt())
    before = graphs()
    compiled = mf.make_step(learner, opt, compile=True, backend=backend)
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
    assert graphs() - before == 1  # once, never again
    assert int(s_comp.step) == 4


@pytest.mark.compile
def test_compiled_step_surfaces_readable_model_errors():
    net = nn.Sequential(nn.Linear(1, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double()
    fn, params = mf.pure(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.sgd(0.1)
    step = mf.make_step(learner, opt, compile=True, backend="aot_eager")
    with pytest.raises(ValueError, match=r"Use mf\.models\.BatchNorm \(per-batch statistics"):
        step(mf.init_state(learner, opt, params), sine_tasks())


@pytest.mark.compile
def test_many_steps_in_one_process_each_compile_on_their_own():
    # Dynamo's recompile limit is per code object; every make_step gets its own. With the
    # limit at 2, three steps of other shapes in one process would hit it if they shared one.
    fn, params = mf.pure(tanh_net())
    loss = mf.supervised(fn, mf.losses.mse)
    with torch._dynamo.config.patch(recompile_limit=2):
        for shots in range(1, 4):
            learner, opt = mf.maml(loss, inner_lr=0.1), mf.optim.sgd(0.1)
            step = mf.make_step(learner, opt, backend="eager")
            state, _ = step(mf.init_state(learner, opt, params), sine_tasks(n=2, shots=shots))
            assert int(state.step) == 1
