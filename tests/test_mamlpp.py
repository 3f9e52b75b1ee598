"""MAML++ (Antoniou et al., 2019): each piece against the paper's formulas and a hand-written
float64 loop; compiled against eager; derivative-order annealing and resume."""

import copy

import numpy as np
import pytest
import torch
from support import F64, assert_trees_close, bn_net, sine_tasks, tanh_net
from torch.func import functional_call

import metafunc as mf
from metafunc import _tree

S = 3


def authors_weights(steps, epoch, anneal_epochs):
    """HowToTrainYourMAMLPytorch's get_per_step_loss_importance_vector, and only the last step
    once the annealing is over (its forward uses the vector only while epoch < N)."""
    if epoch >= anneal_epochs:
        return np.eye(steps)[-1]
    w = np.ones(steps) * (1.0 / steps)
    decay = 1.0 / steps / anneal_epochs
    floor = 0.03 / steps
    for i in range(steps - 1):
        w[i] = np.maximum(w[i] - epoch * decay, floor)
    w[-1] = np.minimum(w[-1] + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return w


@pytest.mark.parametrize("steps", [1, 3, 5])
@pytest.mark.parametrize("anneal", [1, 4, 15])
def test_multi_step_weights_are_the_papers(steps, anneal):
    weights = mf.multi_step_weights(steps, anneal_epochs=anneal, epoch_steps=7)
    for count in range(0, 7 * (anneal + 2)):
        want = authors_weights(steps, count // 7, anneal)
        got = weights(torch.tensor(count)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-15, err_msg=str(count))


# --- a hand-written MAML++ step in float64 --------------------------------------------------------


def reference(net, meta, state, tasks, *, weights, per_step=(), first_order=False, fixed_lr=None):
    """Per task, per inner step k: the model's parameters with slot k of the per-step leaves,
    torch's BatchNorm updating slot k of a copy of the model state in place (outside vmap,
    where its gradients are right), θ ← θ − lr[name][k]·∇L_support (autograd.grad,
    create_graph unless first order), then the query pass (updating slot k again); the
    meta-gradient of the weighted query losses averaged over tasks, and each task's state."""
    leaves = {("params", n): p for n, p in meta["params"].items()}
    leaves.update({("lr", n): r for n, r in meta.get("lr", {}).items()})
    live = {k: v.clone().requires_grad_() for k, v in leaves.items()}
    total, states = 0.0, []
    n = tasks.support[0].shape[0]
    for i in range(n):
        bufs = [{k: v[j].clone() for k, v in state.items()} for j in range(S)]
        theta = {k[1]: v for k, v in live.items() if k[0] == "params" and k[1] not in per_step}
        for k in range(S):
            fixed = {m: live["params", m][k] for m in per_step}

            def loss(theta, data, i=i, buf=bufs[k], fixed=fixed):
                pred = functional_call(net, {**theta, **fixed, **buf}, (data[0][i],))
                return ((pred - data[1][i]) ** 2).mean()

            g = torch.autograd.grad(
                loss(theta, tasks.support), list(theta.values()), create_graph=not first_order
            )
            rate = lambda m, k=k: fixed_lr if fixed_lr is not None else live["lr", m][k]  # noqa: E731
            theta = {m: p - rate(m) * d for (m, p), d in zip(theta.items(), g, strict=True)}
            total = total + weights[k] * loss(theta, tasks.query) / n
        states.append({key: torch.stack([b[key] for b in bufs]) for key in state})
    grads = torch.autograd.grad(total, list(live.values()), allow_unused=True)
    out = {"params": {}, "lr": {}}
    for (kind, name), g in zip(live, grads, strict=True):
        out[kind][name] = torch.zeros_like(live[kind, name]) if g is None else g
    return {k: v for k, v in out.items() if v}, states


@pytest.mark.parametrize("first_order", [False, True])
def test_msl_and_lslr_equal_a_hand_written_loop(first_order):
    net = tanh_net()
    fn, params = mf.pure(net)
    loss = mf.supervised(fn, mf.losses.mse)
    learner = mf.mamlpp(loss, inner_lr=0.1, inner_steps=S, msl_epochs=4, epoch_steps=1)
    learner = mf.first_order(learner) if first_order else learner
    meta = learner.init(params)
    meta["lr"] = {k: r * torch.tensor([1.0, 0.5, 2.0], dtype=F64) for k, r in meta["lr"].items()}
    tasks = sine_tasks(n=3)
    count = torch.tensor(2)
    weights = mf.multi_step_weights(S, anneal_epochs=4)(count)
    assert not torch.equal(weights, torch.full((S,), 1 / S, dtype=F64))  # mid-annealing
    grads, losses = learner._replace(context=mf.Context(count)).meta_grad(meta, tasks)
    want, _ = reference(net, meta, {}, tasks, weights=weights, first_order=first_order)
    assert_trees_close(grads, want, rtol=1e-10, atol=1e-12)
    assert losses.state is None


def test_per_step_batchnorm_weights_and_statistics_equal_a_hand_written_loop():
    net = bn_net()
    fn, params, state = mf.stateful(net)
    loss = mf.supervised(fn, mf.losses.mse)
    learner = mf.mamlpp(loss, inner_lr=0.1, inner_steps=S, per_step="1", msl_epochs=2)
    opt = mf.optim.sgd(1.0)
    start = mf.init_state(learner, opt, params, model_state=state)
    meta = start.meta
    assert meta["params"]["1.weight"].shape == (S, 4) and "1.weight" not in meta["lr"]
    assert start.model_state["1.running_mean"].shape == (S, 4)
    g = torch.Generator().manual_seed(3)
    meta["params"]["1.weight"] = 1 + 0.1 * torch.randn(S, 4, generator=g, dtype=F64)  # distinct
    tasks = sine_tasks(n=3)
    weights = mf.multi_step_weights(S, anneal_epochs=2)(start.step)
    new, metrics = mf.make_step(learner, opt, compile=False)(start._replace(meta=meta), tasks)
    want, states = reference(
        copy.deepcopy(net),
        meta,
        start.model_state,
        tasks,
        weights=weights,
        per_step=("1.weight", "1.bias"),
    )
    want_meta = _tree.map(lambda p, d: p - d, meta, want)
    assert_trees_close(new.meta, want_meta, rtol=1e-10, atol=1e-12)
    for key in ("1.running_mean", "1.running_var"):
        mean = torch.stack([s[key] for s in states]).mean(0)
        torch.testing.assert_close(new.model_state[key], mean, rtol=1e-12, atol=1e-14)
    assert new.model_state["1.num_batches_tracked"].tolist() == [2] * S  # support, query
    assert not torch.allclose(
        new.model_state["1.running_mean"][0], new.model_state["1.running_mean"][1]
    )
    # the reported loss is the last step's query loss; adapt gives the model's layout
    adapted = learner.bind(new).adapt(new.meta, tasks.support)
    assert adapted["1.weight"].shape == (3, 4)
    assert metrics.loss.shape == ()


def test_without_its_pieces_it_is_maml():
    fn, params = mf.pure(tanh_net())
    loss = mf.supervised(fn, mf.losses.mse)
    plain = mf.mamlpp(loss, inner_lr=0.1, inner_steps=S, learn_lr=False, msl_epochs=0)
    assert set(plain.init(params)) == {"params"}
    grads, losses = plain.meta_grad(plain.init(params), sine_tasks())
    want, want_losses = mf.maml(loss, inner_lr=0.1, inner_steps=S).meta_grad(params, sine_tasks())
    assert_trees_close(grads["params"], want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(losses.loss, want_losses.loss, rtol=1e-12, atol=0)


# --- derivative-order annealing and resume --------------------------------------------------------


def stateful_setup():
    fn, params, state = mf.stateful(bn_net())
    loss = mf.supervised(fn, mf.losses.mse)
    learner = mf.mamlpp(
        loss, inner_lr=0.1, inner_steps=S, per_step="1", msl_epochs=2, epoch_steps=2
    )
    opt = mf.optim.adam(mf.optim.cosine_decay_schedule(1e-2, decay_steps=10))
    return learner, opt, lambda: mf.init_state(learner, opt, params, model_state=state)


def sampler(g):
    return mf.tasks.sinusoid(g, tasks=2, shots=4, queries=4, dtype=F64)


def test_derivative_annealing_is_first_order_then_second_order():
    learner, opt, fresh = stateful_setup()
    first = mf.make_step(mf.first_order(learner), opt, compile=False)
    second = mf.make_step(learner, opt, compile=False)
    g = torch.Generator().manual_seed(0)
    by_hand = fresh()
    for i in range(4):
        by_hand, _ = (first if i < 2 else second)(by_hand, sampler(g))
    joined = mf.derivative_annealing(learner, opt, first_order_steps=2, compile=False)
    state = mf.train(joined, fresh(), sampler, steps=4, progress=False)
    for (path, a), b in zip(_tree.named_leaves(state), _tree.leaves(by_hand), strict=True):
        assert torch.equal(a, b), path
    second_only = mf.train(second, fresh(), sampler, steps=4, progress=False)
    assert not torch.equal(second_only.meta["params"]["0.weight"], state.meta["params"]["0.weight"])


def test_resume_across_the_switch_is_bit_exact(tmp_path):
    learner, opt, fresh = stateful_setup()
    step = mf.derivative_annealing(learner, opt, first_order_steps=3, compile=False)
    straight = mf.train(step, fresh(), sampler, steps=6, progress=False)
    hooks = [mf.hooks.Checkpoints(tmp_path / "ckpt.pt", resume=True)]
    step = mf.derivative_annealing(learner, opt, first_order_steps=3, compile=False)
    mf.train(step, fresh(), sampler, until=2, hooks=hooks, progress=False)
    step = mf.derivative_annealing(learner, opt, first_order_steps=3, compile=False)  # new process
    resumed = mf.train(step, fresh(), sampler, until=6, hooks=hooks, progress=False)
    for (path, a), b in zip(_tree.named_leaves(straight), _tree.leaves(resumed), strict=True):
        assert torch.equal(a, b), path


def test_join_steps_counts_on_the_host_and_resyncs_on_a_foreign_state(monkeypatch):
    calls = []

    def step(name):
        return mf.Step(lambda s, t: (calls.append(name) or s._replace(step=s.step + 1), None))

    joined = mf.join_steps([step("a"), step("b")], boundaries=[2])
    state = mf.TrainState({}, (), torch.tensor(0))
    reads = []
    real = int
    monkeypatch.setattr("builtins.int", lambda x: reads.append(1) or real(x))
    for _ in range(4):
        state, _ = joined(state, None)
    monkeypatch.undo()
    assert calls == ["a", "a", "b", "b"] and len(reads) == 1
    joined(mf.TrainState({}, (), torch.tensor(1)), None)  # a state it did not return: read
    assert calls[-1] == "a"


def test_bad_arguments_are_refused_by_name():
    fn, _ = mf.pure(tanh_net())
    loss = mf.supervised(fn, mf.losses.mse)
    with pytest.raises(ValueError, match=r"^mamlpp: inner_steps must be an integer >= 1"):
        mf.mamlpp(loss, inner_steps=0)
    with pytest.raises(ValueError, match=r"^mamlpp: inner_lr must be a positive"):
        mf.mamlpp(loss, inner_lr=-1.0)
    with pytest.raises(ValueError, match=r"^join_steps: give one step more than boundaries"):
        mf.join_steps([mf.Step(lambda s, t: (s, None))], boundaries=[3])
    with pytest.raises(ValueError, match=r"^multi_step_weights: anneal_epochs must be an integer"):
        mf.multi_step_weights(3, anneal_epochs=0)


# --- compiled ---------------------------------------------------------------------------------------


@pytest.mark.compile
def test_compiled_mamlpp_step_equals_eager_across_the_switch():
    from torch._dynamo.testing import CompileCounterWithBackend

    learner, opt, fresh = stateful_setup()
    counter = CompileCounterWithBackend("aot_eager")
    eager = mf.derivative_annealing(learner, opt, first_order_steps=2, compile=False)
    compiled = mf.derivative_annealing(learner, opt, first_order_steps=2, backend=counter)
    a = b = fresh()
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # the weights anneal (epochs of 2 steps), the order switches at 2
        batch = sampler(g)
        a, ma = eager(a, batch)
        b, mb = compiled(b, batch)
        assert_trees_close(b, a, rtol=1e-10, atol=1e-12)
        assert_trees_close(mb, ma, rtol=1e-10, atol=1e-12)
    assert counter.frame_count == 2  # one graph per order, none for the weights' changes


@pytest.mark.slow
def test_train_fewshot_mamlpp_command_resumes_bit_exact_across_the_switch(tmp_path, capsys):
    """The command: MAML++ on a net with per-step running statistics, derivative-order
    annealing at 4 // 3 = 1 step, checkpoints, resume and scoring."""
    from metafunc.cli import main

    args = ["train", "--task", "fewshot", "--algo", "mamlpp", "--meta-batch", "2"]
    args += ["--channels", "4", "--glyph-classes", "15", "--eval-tasks", "2", "--inner-steps", "2"]
    args += ["--anneal-steps", "4", "--no-compile", "--no-progress"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*args, "--steps", "4", "--out", str(straight)]) == 0
    assert "test accuracy on 2 new tasks" in capsys.readouterr().out
    assert main([*args, "--steps", "1", "--checkpoint-every", "1", "--out", str(split)]) == 0
    assert main([*args, "--steps", "4", "--resume", "--out", str(split)]) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    assert a.keys() == b.keys() and int(b["state.step"]) == 4
    assert "state.model_state['1.running_mean']" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
