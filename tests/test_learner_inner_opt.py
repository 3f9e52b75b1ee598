"""Learners with any inner optimizer (``inner_opt=``): the meta-gradient equals a hand-written
per-task ``torch.autograd.grad(create_graph=True)`` loop with the optimizer written out by hand
(the momentum buffer, Adam's moments) in float64; each task adapts with its own optimizer
state under vmap; the compiled step equals the eager one."""

import functools

import pytest
import torch
import torch._dynamo.testing
from support import sine_tasks, tanh_net
from torch.func import functional_call

import metafunc as mf
from metafunc import _tree

LR, STEPS = 0.1, 3


def momentum_rule(lr, momentum):
    """torch.optim.SGD's heavy ball: buf = momentum * buf + g; θ ← θ − lr · buf."""

    def init(theta):
        return {"buf": [torch.zeros_like(t) for t in theta]}

    def update(t, theta, grads, s):
        s["buf"] = [momentum * b + g for b, g in zip(s["buf"], grads, strict=True)]
        return [p - lr * b for p, b in zip(theta, s["buf"], strict=True)]

    return init, update


def adam_rule(lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0):
    """Adam with bias correction, sqrt(v_hat + eps_root) + eps in the denominator."""

    def init(theta):
        return {
            "m": [torch.zeros_like(p) for p in theta],
            "v": [torch.zeros_like(p) for p in theta],
        }

    def update(t, theta, grads, s):
        s["m"] = [b1 * m + (1 - b1) * g for m, g in zip(s["m"], grads, strict=True)]
        s["v"] = [b2 * v + (1 - b2) * g * g for v, g in zip(s["v"], grads, strict=True)]
        return [
            p - lr * (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t) + eps_root) + eps)
            for p, m, v in zip(theta, s["m"], s["v"], strict=True)
        ]

    return init, update


def hand_adapt(net, names, theta, support, rule, *, steps, first_order, adapts):
    """``steps`` updates of ``rule`` on the support MSE; only the leaves ``adapts`` picks move."""
    init, update = rule
    moving = [i for i, n in enumerate(names) if adapts(n)]
    slots = init([theta[i] for i in moving])
    for t in range(1, steps + 1):
        sub = [theta[i] for i in moving]
        grads = torch.autograd.grad(
            mse(net, names, theta, support), sub, create_graph=not first_order
        )
        new = iter(update(t, sub, list(grads), slots))
        theta = [next(new) if i in moving else p for i, p in enumerate(theta)]
    return theta


def mse(net, names, theta, data):
    x, y = data
    pred = functional_call(net, dict(zip(names, theta, strict=True)), (x,))
    return ((pred - y) ** 2).mean()


def hand_meta_grad(net, params, tasks, rule, *, first_order=False, adapts=lambda n: True):
    """The mean over tasks of the query MSE after adapting, differentiated with autograd; each
    task starts its own optimizer state."""
    names = sorted(params)
    theta0 = [params[k].clone().requires_grad_() for k in names]
    n = tasks.support[0].shape[0]
    total = 0.0
    for i in range(n):
        support = tuple(t[i] for t in tasks.support)
        query = tuple(t[i] for t in tasks.query)
        theta = hand_adapt(
            net, names, theta0, support, rule, steps=STEPS, first_order=first_order, adapts=adapts
        )
        total = total + mse(net, names, theta, query)
    return dict(zip(names, torch.autograd.grad(total / n, theta0), strict=True))


def assert_close(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)


CASES = {
    "maml-sgd-momentum": (
        lambda loss: mf.maml(loss, inner_opt=mf.optim.sgd(LR, momentum=0.9), inner_steps=STEPS),
        momentum_rule(LR, 0.9),
        {},
    ),
    "maml-adam-eps_root": (
        lambda loss: mf.maml(loss, inner_opt=mf.optim.adam(LR, eps_root=1e-16), inner_steps=STEPS),
        adam_rule(LR, eps_root=1e-16),
        {},
    ),
    "fomaml-adam": (
        lambda loss: mf.fomaml(loss, inner_opt=mf.optim.adam(LR, b1=0.8), inner_steps=STEPS),
        adam_rule(LR, b1=0.8),
        {"first_order": True},
    ),
    "anil-sgd-momentum": (
        lambda loss: mf.anil(
            loss, head="2", inner_opt=mf.optim.sgd(LR, momentum=0.5), inner_steps=STEPS
        ),
        momentum_rule(LR, 0.5),
        {"adapts": lambda n: n.startswith("2.")},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_meta_grad_with_an_inner_optimizer_equals_the_hand_written_loop(case):
    make, rule, kw = CASES[case]
    net = tanh_net()
    fn, params = mf.pure(net)
    learner = make(mf.supervised(fn, mf.losses.mse))
    tasks = sine_tasks(n=3)
    got, _ = learner.meta_grad(learner.init(params), tasks)
    assert_close(got, hand_meta_grad(net, params, tasks, rule, **kw))


def test_the_reference_tells_inner_optimizers_apart():
    """Plain SGD, momentum and Adam give different meta-gradients: the cases above are sharp."""
    net = tanh_net()
    _, params = mf.pure(net)
    tasks = sine_tasks(n=3)
    a = hand_meta_grad(net, params, tasks, momentum_rule(LR, 0.0))
    b = hand_meta_grad(net, params, tasks, momentum_rule(LR, 0.9))
    c = hand_meta_grad(net, params, tasks, adam_rule(LR))
    for x, y in ((a, b), (b, c), (a, c)):
        assert not torch.allclose(x["0.weight"], y["0.weight"], rtol=1e-4)


def test_each_task_adapts_with_its_own_optimizer_state():
    """learner.adapt under vmap equals adapting each task alone: Adam's moments start at zero
    per task and follow that task's gradients only."""
    net = tanh_net()
    fn, params = mf.pure(net)
    learner = mf.maml(
        mf.supervised(fn, mf.losses.mse), inner_opt=mf.optim.adam(LR), inner_steps=STEPS
    )
    tasks = sine_tasks(n=4)
    adapted = learner.adapt(params, tasks.support)
    names = sorted(params)
    for i in range(4):
        support = tuple(t[i] for t in tasks.support)
        want = hand_adapt(
            net,
            names,
            [params[k].clone().requires_grad_() for k in names],
            support,
            adam_rule(LR),
            steps=STEPS,
            first_order=True,
            adapts=lambda n: True,
        )
        for k, w in zip(names, want, strict=True):
            torch.testing.assert_close(adapted[k][i], w.detach(), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(adapted["0.weight"][0], adapted["0.weight"][1])


def test_reptile_with_inner_adam_is_theta0_minus_the_mean_adapted():
    net = tanh_net()
    fn, params = mf.pure(net)
    learner = mf.reptile(
        mf.supervised(fn, mf.losses.mse), inner_opt=mf.optim.adam(LR), inner_steps=STEPS
    )
    tasks = sine_tasks(n=3)
    got, _ = learner.meta_grad(params, tasks)
    names = sorted(params)
    adapted = [
        hand_adapt(
            net,
            names,
            [params[k].clone().requires_grad_() for k in names],
            tuple(t[i] for t in tasks.support),
            adam_rule(LR),
            steps=STEPS,
            first_order=True,
            adapts=lambda n: True,
        )
        for i in range(3)
    ]
    want = {
        k: params[k] - torch.stack([a[j].detach() for a in adapted]).mean(0)
        for j, k in enumerate(names)
    }
    assert_close(got, want)


@pytest.mark.compile
def test_compiled_step_with_inner_adam_equals_eager_one_graph():
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.blog_sine_net(g, hidden=4).double())
    learner = mf.maml(
        mf.supervised(fn, mf.losses.mse),
        inner_opt=mf.optim.chain(
            mf.optim.clip_by_global_norm(1.0), mf.optim.adam(0.03, eps_root=1e-16)
        ),
        inner_steps=2,
    )
    opt = mf.optim.adam(1e-2)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = mf.make_step(learner, opt, backend=counter)
    eager = mf.make_step(learner, opt, compile=False)
    sampler = functools.partial(mf.tasks.sine, tasks=3, dtype=torch.float64)
    s_eager = s_comp = mf.init_state(learner, opt, params)
    for _ in range(3):
        tasks = sampler(g)
        s_eager, m_eager = eager(s_eager, tasks)
        s_comp, m_comp = compiled(s_comp, tasks)
        for a, b in zip(
            _tree.leaves((s_comp, m_comp)), _tree.leaves((s_eager, m_eager)), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert counter.frame_count == 1
