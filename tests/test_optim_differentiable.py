"""The optimizers as differentiable inner optimizers: torch.func.grad through k updates (and the
optimizer's own state) equals a hand-written torch.autograd.grad(create_graph=True) loop in
float64, per task under vmap, and eps_root keeps Adam's second-order gradient finite."""

import pytest
import torch

import metafunc as mf

F64 = torch.float64
STEPS = 3


def net(p, x):
    return torch.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def mse(p, x, y):
    return ((net(p, x) - y) ** 2).mean()


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "w1": torch.randn(1, 6, generator=g, dtype=F64),
        "b1": torch.randn(6, generator=g, dtype=F64),
        "w2": torch.randn(6, 1, generator=g, dtype=F64) / 2,
        "b2": torch.zeros(1, dtype=F64),
    }


def make_tasks(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    amp = 0.5 + torch.rand(n, 1, 1, generator=g, dtype=F64)
    phase = torch.rand(n, 1, 1, generator=g, dtype=F64)
    xs = torch.rand(n, 5, 1, generator=g, dtype=F64) * 4 - 2
    xq = torch.rand(n, 7, 1, generator=g, dtype=F64) * 4 - 2
    return xs, amp * torch.sin(xs + phase), xq, amp * torch.sin(xq + phase)


def meta_loss(opt, params, xs, ys, xq, yq):
    """The query loss after STEPS updates of ``opt`` on the support loss; the state starts here."""
    state = opt.init(params)
    theta = params
    for _ in range(STEPS):
        grads = torch.func.grad(mse)(theta, xs, ys)
        updates, state = opt.update(grads, state, theta)
        theta = mf.optim.apply_updates(theta, updates)
    return mse(theta, xq, yq)


def warmup(t):
    """linear_schedule(0.01, 0.1, 2) written out."""
    return 0.01 + (0.1 - 0.01) * min(t, 2) / 2


def hand_rule(kind, lr_at=None, **hp):
    """One update of ``theta`` by hand, as plain tensor arithmetic on graph-carrying tensors."""

    def rule(t, theta, g, slots):
        lr = lr_at(t - 1) if lr_at else hp["lr"]
        if kind == "clip-sgd":
            norm = torch.sqrt(sum((gi * gi).sum() for gi in g.values()))
            if float(norm.detach()) > hp["max_norm"]:
                g = {k: gi * hp["max_norm"] / norm for k, gi in g.items()}
        if kind in ("sgd", "clip-sgd"):
            g = {k: g[k] + hp.get("wd", 0.0) * theta[k] for k in g}
            buf = {k: hp["momentum"] * slots.get(("buf", k), 0.0) + g[k] for k in g}
            slots.update({("buf", k): buf[k] for k in g})
            d = {k: g[k] + hp["momentum"] * buf[k] for k in g} if hp.get("nesterov") else buf
            return {k: theta[k] - lr * d[k] for k in g}
        new = {}
        for k in g:
            gk = g[k] + (hp.get("wd", 0.0) * theta[k] if kind == "adam" else 0.0)
            m = hp["b1"] * slots.get(("m", k), 0.0) + (1 - hp["b1"]) * gk
            v = hp["b2"] * slots.get(("v", k), 0.0) + (1 - hp["b2"]) * gk * gk
            slots[("m", k)], slots[("v", k)] = m, v
            m_hat, v_hat = m / (1 - hp["b1"] ** t), v / (1 - hp["b2"] ** t)
            new[k] = theta[k] - lr * m_hat / (torch.sqrt(v_hat + hp.get("eps_root", 0.0)) + 1e-8)
            if kind == "adamw":
                new[k] = new[k] - lr * hp["wd"] * theta[k]
        return new

    return rule


def hand_meta_grad(rule, params, inner, outer):
    """d outer(theta_k) / d params, theta_k from STEPS updates of ``rule`` on ``inner``."""
    p0 = {k: v.clone().requires_grad_() for k, v in params.items()}
    theta, slots = dict(p0), {}
    for t in range(1, STEPS + 1):
        grads = torch.autograd.grad(inner(theta), list(theta.values()), create_graph=True)
        theta = rule(t, theta, dict(zip(theta, grads, strict=True)), slots)
    return dict(zip(p0, torch.autograd.grad(outer(theta), list(p0.values())), strict=True))


def hand_on_task(rule, params, xs, ys, xq, yq):
    return hand_meta_grad(rule, params, lambda p: mse(p, xs, ys), lambda p: mse(p, xq, yq))


CASES = {
    "sgd-momentum": (lambda: mf.optim.sgd(0.1, momentum=0.9), hand_rule("sgd", lr=0.1, momentum=0.9)),
    "sgd-nesterov-decay-schedule": (
        lambda: mf.optim.sgd(
            mf.optim.linear_schedule(0.01, 0.1, 2), momentum=0.5, nesterov=True, weight_decay=0.01
        ),
        hand_rule("sgd", lr_at=warmup, momentum=0.5, nesterov=True, wd=0.01),
    ),
    "adam": (
        lambda: mf.optim.adam(0.05, b1=0.8, b2=0.9),
        hand_rule("adam", lr=0.05, b1=0.8, b2=0.9),
    ),
    "adam-l2-schedule-eps_root": (
        lambda: mf.optim.adam(
            mf.optim.linear_schedule(0.01, 0.1, 2), weight_decay=0.1, eps_root=1e-12
        ),
        hand_rule("adam", lr_at=warmup, b1=0.9, b2=0.999, wd=0.1, eps_root=1e-12),
    ),
    "adamw": (
        lambda: mf.optim.adamw(0.05, weight_decay=0.2),
        hand_rule("adamw", lr=0.05, b1=0.9, b2=0.999, wd=0.2),
    ),
    "chain-clip-sgd-momentum": (
        lambda: mf.optim.chain(
            mf.optim.clip_by_global_norm(0.3), mf.optim.sgd(0.1, momentum=0.9)
        ),
        hand_rule("clip-sgd", lr=0.1, momentum=0.9, max_norm=0.3),
    ),
}  # fmt: skip


def assert_trees_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_grad_through_inner_updates_equals_the_hand_loop(case):
    make, rule = CASES[case]
    params, (xs, ys, xq, yq) = make_params(), make_tasks()
    ours = torch.func.grad(meta_loss, argnums=1)(make(), params, xs[0], ys[0], xq[0], yq[0])
    assert_trees_close(ours, hand_on_task(rule, params, xs[0], ys[0], xq[0], yq[0]))
    assert all(bool(v.abs().sum() > 0) for v in ours.values())


def test_the_hand_loop_tells_optimizers_apart():
    """The reference is sharp: Adam's meta-gradient is not SGD-with-momentum's."""
    params, (xs, ys, xq, yq) = make_params(), make_tasks()
    a = hand_on_task(CASES["adam"][1], params, xs[0], ys[0], xq[0], yq[0])
    b = hand_on_task(CASES["adamw"][1], params, xs[0], ys[0], xq[0], yq[0])
    assert not torch.allclose(a["w1"], b["w1"], rtol=1e-6)


@pytest.mark.parametrize(
    "case", ["sgd-momentum", "adam-l2-schedule-eps_root", "chain-clip-sgd-momentum"]
)
@pytest.mark.parametrize("per_task_params", [False, True], ids=["shared-params", "vmapped-params"])
def test_vmap_over_tasks_equals_a_loop(case, per_task_params):
    """The state is created inside vmap: from shared parameters, or from vmapped ones."""
    make, rule = CASES[case]
    tasks = make_tasks(n=3)
    params = make_params()
    if per_task_params:
        batched = {k: torch.stack([make_params(s)[k] for s in range(3)]) for k in params}
        per_task = [make_params(s) for s in range(3)]
        in_dims = (None, 0, 0, 0, 0, 0)
    else:
        batched, per_task, in_dims = params, [params] * 3, (None, None, 0, 0, 0, 0)
    meta_grad = torch.func.vmap(torch.func.grad(meta_loss, argnums=1), in_dims=in_dims)
    ours = meta_grad(make(), batched, *tasks)
    for i in range(3):
        reference = hand_on_task(rule, per_task[i], *(t[i] for t in tasks))
        assert_trees_close({k: v[i] for k, v in ours.items()}, reference)


def quadratic(p, c, a):
    """0.5 * sum(c * (p - a)^2): where c is 0 the gradient c * (p - a) is exactly 0."""
    return 0.5 * (c * (p["x"] - a) ** 2).sum()


def test_eps_root_keeps_adams_second_order_gradient_finite_at_a_zero_gradient():
    c = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    a = torch.tensor([1.0, -1.0, 0.5], dtype=F64)
    b = torch.tensor([0.3, 0.2, 0.1], dtype=F64)
    p0 = {"x": torch.tensor([2.0, 1.0, -1.0], dtype=F64)}

    def outer(opt, p):
        state, theta = opt.init(p), p
        for _ in range(STEPS):
            updates, state = opt.update(torch.func.grad(quadratic)(theta, c, a), state, theta)
            theta = mf.optim.apply_updates(theta, updates)
        return ((theta["x"] - b) ** 2).sum()

    nan = torch.func.grad(outer, argnums=1)(mf.optim.adam(0.1), p0)["x"]
    assert bool(torch.isnan(nan[0]))  # sqrt'(0) is infinite: 0 * inf

    ours = torch.func.grad(outer, argnums=1)(mf.optim.adam(0.1, eps_root=1e-16), p0)["x"]
    assert bool(torch.isfinite(ours).all())
    # x[0] never moves (its gradient is 0), so its meta-gradient is that of (x - b)^2 at x0
    assert float(ours[0]) == 2 * (2.0 - 0.3)
    rule = hand_rule("adam", lr=0.1, b1=0.9, b2=0.999, eps_root=1e-16)
    reference = hand_meta_grad(
        rule, p0, lambda p: quadratic(p, c, a), lambda p: ((p["x"] - b) ** 2).sum()
    )
    torch.testing.assert_close(ours, reference["x"], rtol=1e-10, atol=1e-12)
