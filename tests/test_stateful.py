"""Stateful layers: BatchNorm's running statistics as model state threaded through the step,
against torch's BatchNorm and a hand-written per-task loop in float64."""

import copy

import pytest
import torch
from support import F64, assert_trees_close, bn_net, sine_tasks
from torch import nn
from torch.func import functional_call

import metafunc as mf
from metafunc import _learner

LR, STEPS = 0.1, 2


def stateful_maml(net, steps=STEPS):
    fn, params, state = mf.stateful(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=LR, inner_steps=steps)
    return fn, params, state, learner


# --- the layer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_running_statistics_equal_torch(momentum, affine):
    g = torch.Generator().manual_seed(0)
    theirs = nn.BatchNorm2d(3, momentum=momentum, affine=affine).double()
    ours = mf.models.BatchNorm.like(copy.deepcopy(theirs))
    ours.running_mean, ours.running_var = ours.running_mean.clone(), ours.running_var.clone()
    for _ in range(3):  # training: the batch's statistics, running ones updated
        x = torch.randn(6, 3, 4, 4, generator=g, dtype=F64) * 2 + 1
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-12, atol=0)
    ours.eval(), theirs.eval()  # eval: the running statistics
    x = torch.randn(6, 3, 4, 4, generator=g, dtype=F64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_batchnorm_without_running_statistics_keeps_no_buffers_and_uses_the_batch_in_eval():
    norm = mf.models.BatchNorm(3).double().eval()
    assert list(norm.named_buffers()) == []
    x = torch.randn(8, 3, dtype=F64)
    torch.testing.assert_close(norm(x), nn.BatchNorm1d(3, track_running_stats=False).double()(x))


def test_stateful_swaps_torch_batchnorm_and_returns_what_torch_writes():
    net = bn_net()
    fn, params, state = mf.stateful(net)
    assert sorted(state) == ["1.num_batches_tracked", "1.running_mean", "1.running_var"]
    reference = copy.deepcopy(net)
    x = torch.randn(7, 1, dtype=F64)
    out, new = fn(params, state, x)
    torch.testing.assert_close(out, reference(x), rtol=1e-12, atol=1e-12)
    for name, value in new.items():
        torch.testing.assert_close(value, reference.get_buffer(name), rtol=1e-12, atol=0)
    assert int(state["1.num_batches_tracked"]) == 0  # nothing written in place
    assert int(net[1].num_batches_tracked) == 0  # the module untouched
    predict = mf.eval_mode(fn)  # eval mode: the running statistics, the state unchanged
    out, same = predict(params, new, x)
    torch.testing.assert_close(out, reference.eval()(x), rtol=1e-12, atol=1e-12)
    assert all(same[k] is new[k] for k in new)


def test_pure_refuses_tracking_batchnorm_in_training_and_points_to_stateful():
    net = nn.Sequential(nn.Linear(1, 3), mf.models.BatchNorm(3, track_running_stats=True))
    fn, params = mf.pure(net)
    with pytest.raises(ValueError, match=r"BatchNorm layer\(s\) \['1'\].*mf\.stateful\(module\)"):
        fn(params, torch.randn(4, 1))
    fn, params = mf.pure(net.eval())  # eval mode: the stored statistics are constants
    assert fn(params, torch.randn(4, 1)).shape == (4, 3)


def test_a_state_that_is_not_the_models_is_refused():
    fn, params, state = mf.stateful(bn_net())
    with pytest.raises(ValueError, match=r"^stateful: state must be a dict of the model's state"):
        fn(params, {"1.running_mean": state["1.running_mean"]}, torch.randn(4, 1, dtype=F64))


# --- the inner loop and the step, against a hand-written loop -----------------------------------


def reference(net, params, state, tasks, *, lr=LR, steps=STEPS):
    """Per task: torch's own BatchNorm (outside vmap, where its gradients are right) updating
    a copy of the state in place at every forward pass, inner SGD with
    autograd.grad(create_graph=True), the query pass; the meta-gradient of the mean query
    loss and each task's state after the query pass."""
    names = sorted(params)
    theta0 = {k: params[k].clone().requires_grad_() for k in names}
    total, states = 0.0, []
    n = tasks.support[0].shape[0]
    for i in range(n):
        buffers = {k: v.clone() for k, v in state.items()}

        def loss(theta, data, buffers=buffers):
            x, y = data
            return ((functional_call(net, {**theta, **buffers}, (x,)) - y) ** 2).mean()

        theta = theta0
        for _ in range(steps):
            grads = torch.autograd.grad(
                loss(theta, [t[i] for t in tasks.support]), list(theta.values()), create_graph=True
            )
            theta = {k: p - lr * g for (k, p), g in zip(theta.items(), grads, strict=True)}
        total = total + loss(theta, [t[i] for t in tasks.query])
        states.append(buffers)
    grads = dict(zip(names, torch.autograd.grad(total / n, list(theta0.values())), strict=True))
    return grads, states


def test_statistics_after_the_inner_steps_and_query_pass_equal_a_hand_written_loop():
    net = bn_net()
    _fn, params, state, learner = stateful_maml(net)
    tasks = sine_tasks(n=3)
    want_grads, want_states = reference(copy.deepcopy(net), params, state, tasks)
    bound = learner._replace(context=mf.Context(state=state))
    grads, losses = bound.meta_grad(params, tasks)
    assert_trees_close(grads, want_grads, rtol=1e-10, atol=1e-12)
    mean = {k: torch.stack([s[k] for s in want_states]) for k in state}
    for k in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(losses.state[k], mean[k].mean(0), rtol=1e-12, atol=1e-14)
    assert int(losses.state["1.num_batches_tracked"]) == STEPS + 1  # k inner steps, one query


def test_per_task_statistics_under_vmap_equal_per_task_runs():
    _fn, params, state, learner = stateful_maml(bn_net())
    learner = learner._replace(context=mf.Context(state=state))
    tasks = sine_tasks(n=3)
    _, after, _, batched = _learner.per_task(learner)(params, tasks.support, tasks.query)
    for i in range(3):
        one = [tuple(t[i] for t in part) for part in tasks]
        _, loss, _, alone = _learner.task(learner, params, *one)
        torch.testing.assert_close(after[i], loss, rtol=1e-12, atol=1e-14)
        assert_trees_close({k: v[i] for k, v in batched.items()}, alone, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(batched["1.running_mean"][0], batched["1.running_mean"][1])


def test_the_step_threads_the_state_and_the_reference_agrees():
    net = bn_net()
    _fn, params, state, learner = stateful_maml(net)
    opt = mf.optim.sgd(0.05)
    s = mf.init_state(learner, opt, params, model_state=state)
    assert s.model_state is not state and torch.equal(
        s.model_state["1.running_var"], state["1.running_var"]
    )
    tasks = sine_tasks(n=3)
    new, _metrics = mf.make_step(learner, opt, compile=False)(s, tasks)
    want_grads, want_states = reference(copy.deepcopy(net), params, state, tasks)
    for k in params:
        torch.testing.assert_close(
            new.meta[k], params[k] - 0.05 * want_grads[k], rtol=1e-10, atol=1e-12
        )
    mean = torch.stack([w["1.running_mean"] for w in want_states]).mean(0)
    torch.testing.assert_close(new.model_state["1.running_mean"], mean, rtol=1e-12, atol=1e-14)
    score = mf.evaluate(learner.bind(new), new.meta, tasks)
    assert score.loss.values.shape == (3,)


@pytest.mark.compile
def test_compiled_step_with_state_equals_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    _fn, params, state, learner = stateful_maml(bn_net())
    opt = mf.optim.adam(1e-2)
    counter = CompileCounterWithBackend("aot_eager")
    eager = mf.make_step(learner, opt, compile=False)
    compiled = mf.make_step(learner, opt, backend=counter)
    a = b = mf.init_state(learner, opt, params, model_state=state)
    for seed in range(2):
        a, ma = eager(a, sine_tasks(n=2, seed=seed))
        b, mb = compiled(b, sine_tasks(n=2, seed=seed))
        assert_trees_close(b, a, rtol=1e-12, atol=1e-14)
        assert_trees_close(mb, ma, rtol=1e-12, atol=1e-14)
    assert counter.frame_count == 1
    assert int(b.model_state["1.num_batches_tracked"]) == 2 * (STEPS + 1)


def test_checkpoint_and_resume_are_bit_exact_with_state(tmp_path):
    _fn, params, state, learner = stateful_maml(bn_net())
    opt = mf.optim.adam(1e-2)
    step = mf.make_step(learner, opt, compile=False)
    sampler = lambda g: mf.tasks.sinusoid(g, tasks=2, shots=4, queries=4, dtype=F64)  # noqa: E731
    fresh = lambda: mf.init_state(learner, opt, params, model_state=state)  # noqa: E731
    straight = mf.train(step, fresh(), sampler, steps=5, progress=False)
    hooks = [mf.hooks.Checkpoints(tmp_path / "ckpt.pt", resume=True)]
    mf.train(step, fresh(), sampler, until=3, hooks=hooks, progress=False)
    resumed = mf.train(step, fresh(), sampler, until=5, hooks=hooks, progress=False)
    for (path, a), b in zip(mf._tree.named_leaves(straight), mf._tree.leaves(resumed), strict=True):
        assert torch.equal(a, b), path
    assert "1.running_mean" in mf.load(tmp_path / "ckpt.pt").model_state


# --- what is refused ----------------------------------------------------------------------------


def test_init_state_needs_the_model_state_exactly_when_the_loss_threads_one():
    _fn, params, state, learner = stateful_maml(bn_net())
    opt = mf.optim.sgd(0.1)
    with pytest.raises(ValueError, match=r"^init_state: the learner's model keeps state"):
        mf.init_state(learner, opt, params)
    plain = mf.maml(mf.supervised(mf.pure(nn.Linear(1, 1).double())[0], mf.losses.mse))
    with pytest.raises(ValueError, match=r"^init_state: the learner's loss keeps no model state"):
        mf.init_state(
            plain,
            opt,
            {"weight": torch.ones(1, 1, dtype=F64), "bias": torch.ones(1, dtype=F64)},
            model_state=state,
        )
    with pytest.raises(ValueError, match=r"^meta_grad: the learner's model keeps state"):
        learner.meta_grad(params, sine_tasks())


def test_learners_and_options_that_cannot_thread_state_say_so():
    fn, _params, _state, learner = stateful_maml(bn_net())
    loss = mf.supervised(fn, mf.losses.mse)
    with pytest.raises(TypeError, match=r"^reptile: the loss threads model state"):
        mf.reptile(loss)
    with pytest.raises(TypeError, match=r"^protonet: the loss threads model state"):
        mf.protonet(fn)
    with pytest.raises(ValueError, match=r"^chunked: the learner's model keeps state"):
        mf.chunked(learner, 2)
    with pytest.raises(ValueError, match=r"^remat: the learner's model keeps state"):
        mf.remat(learner)
    assert mf.first_order(learner).inner.first_order  # first order threads it


def test_a_step_the_guard_skips_keeps_the_model_state():
    _fn, params, state, learner = stateful_maml(bn_net())
    opt = mf.optim.apply_if_finite(mf.optim.sgd(0.1))
    start = mf.init_state(learner, opt, params, model_state=state)
    bad = sine_tasks(n=2)
    bad.query[1][0, 0] = float("nan")  # a NaN target: the loss is NaN, the statistics are not
    new, metrics = mf.make_step(learner, opt, compile=False)(start, bad)
    assert bool(metrics.skipped)
    for k in state:
        assert torch.equal(new.model_state[k], start.model_state[k]), k
    good, metrics = mf.make_step(learner, opt, compile=False)(new, sine_tasks(n=2))
    assert not bool(metrics.skipped) and int(good.model_state["1.num_batches_tracked"]) == 3
