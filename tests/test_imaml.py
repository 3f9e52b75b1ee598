"""iMAML against closed forms and dense solves, in float64.

On ridge-regularised linear regression everything is explicit: the adapted parameters solve
``(H + reg I) θ* = H θ_ls + reg θ0`` and the meta-gradient is ``reg (H + reg I)⁻¹ ∇L_q(θ*)``.
On a small MLP the conjugate-gradient solve equals ``torch.linalg.solve`` with the dense
Hessian.
"""

from __future__ import annotations

import pytest
import torch
from support import (
    assert_compiled_step_equals_eager,
    assert_trees_close,
    linear_net,
    linear_tasks,
    peak_bytes,
    sine_tasks,
    tanh_net,
)
from torch.func import grad, jacrev

import metafunc as mf
from metafunc import _tree
from metafunc._linalg import conjugate_gradient

F64 = torch.float64


def _design(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=F64)], -1)  # [x, 1]: weight, bias


def test_imaml_equals_the_ridge_closed_form():
    reg = 2.0
    fn, params = mf.pure(linear_net())
    loss = mf.supervised(fn, mf.losses.mse)
    learner = mf.imaml(loss, inner_lr=0.1, inner_steps=300, reg=reg, cg_steps=8)
    tasks = linear_tasks()
    got, metrics = learner.meta_grad(learner.init(params), tasks)

    theta0 = torch.cat([params["weight"].reshape(-1), params["bias"]])
    (xs, ys), (xq, yq) = tasks.support, tasks.query
    want, losses = [], []
    for i in range(xs.shape[0]):
        a, aq = _design(xs[i]), _design(xq[i])
        h = 2 / a.shape[0] * a.T @ a  # the support loss's Hessian (mean squared error)
        eye = torch.eye(4, dtype=F64)
        theta = torch.linalg.solve(h + reg * eye, 2 / a.shape[0] * a.T @ ys[i, :, 0] + reg * theta0)
        residual = aq @ theta - yq[i, :, 0]
        query_grad = 2 / aq.shape[0] * aq.T @ residual
        want.append(reg * torch.linalg.solve(h + reg * eye, query_grad))
        losses.append((residual**2).mean())
    want = torch.stack(want).mean(0)
    torch.testing.assert_close(got["weight"].reshape(-1), want[:3], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["bias"], want[3:], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(metrics.loss, torch.stack(losses).mean(), rtol=1e-10, atol=0)


def test_conjugate_gradient_equals_a_dense_solve_on_a_small_mlp():
    reg = 1.0
    fn, params = mf.pure(tanh_net(width=5))
    loss = mf.supervised(fn, mf.losses.mse)
    n = sum(p.numel() for p in params.values())  # 16
    learner = mf.imaml(loss, inner_lr=0.05, inner_steps=5, reg=reg, cg_steps=2 * n)
    tasks = sine_tasks(n=3)
    got, _ = learner.meta_grad(params, tasks)

    names = sorted(params)
    shapes = [params[k].shape for k in names]

    def unflat(vec):
        parts = torch.split(vec, [s.numel() for s in shapes])
        return {k: p.reshape(s) for k, p, s in zip(names, parts, shapes, strict=True)}

    adapted = learner.adapt(params, tasks.support)
    want = []
    for i in range(3):
        support = tuple(t[i] for t in tasks.support)
        query = tuple(t[i] for t in tasks.query)
        theta = torch.cat([adapted[k][i].reshape(-1) for k in names])
        # reverse over reverse: forward-mode AD (torch.func.hessian) warns on torch 2.13
        h = jacrev(grad(lambda v, s=support: loss(unflat(v), s)))(theta)
        a = torch.eye(n, dtype=F64) + h / reg
        assert torch.linalg.eigvalsh(a).min() > 0.1  # the solve is well posed
        g = grad(lambda v, q=query: loss(unflat(v), q))(theta)
        want.append(torch.linalg.solve(a, g))
    want = unflat(torch.stack(want).mean(0))
    assert_trees_close(got, want, rtol=1e-9, atol=1e-12)


def test_conjugate_gradient_stops_once_solved():
    # a 2x2 system is solved in two iterations; the next ones divide 0 by 0 unless guarded
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=F64)
    b = [torch.tensor([1.0, -1.0], dtype=F64)]
    (x,) = conjugate_gradient(lambda v: [a @ v[0]], b, steps=6)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, torch.linalg.solve(a, b[0]), rtol=1e-12, atol=1e-14)


def test_imaml_memory_does_not_grow_with_the_inner_steps():
    fn, params = mf.pure(tanh_net(width=16))
    loss = mf.supervised(fn, mf.losses.mse)
    tasks = sine_tasks(n=4, shots=50, queries=10)

    def peak(make, steps):
        learner = make(loss, inner_lr=0.01, inner_steps=steps)
        return peak_bytes(lambda: learner.meta_grad(params, tasks))

    maml = peak(mf.maml, 16) - peak(mf.maml, 2)
    imaml = peak(mf.imaml, 16) - peak(mf.imaml, 2)
    # measured: MAML grows by 0.77 MB (2.6 MB when its outer gradient was torch.func.grad's);
    # iMAML peaks at the same 193600 bytes at 2, 16 and 64 steps
    assert maml > 500_000
    assert imaml < maml / 100


@pytest.mark.compile
def test_compiled_imaml_step_equals_eager_with_one_graph():
    fn, params = mf.pure(tanh_net(width=3))
    learner = mf.imaml(
        mf.supervised(fn, mf.losses.mse), inner_lr=0.05, inner_steps=3, reg=1.0, cg_steps=3
    )
    assert_compiled_step_equals_eager(learner, params, tasks=2)


@pytest.mark.parametrize(
    ("kw", "exc", "pattern"),
    [
        (dict(reg=0.0), ValueError, r"^imaml: reg must be a positive finite number \(got 0\.0\)$"),
        (dict(cg_steps=0), ValueError, r"^imaml: cg_steps must be an integer >= 1 \(got 0\)$"),
        (
            dict(inner_steps=2.5),
            TypeError,
            r"^imaml: inner_steps must be an integer \(got 2\.5 of type float\)$",
        ),
        # not "use mf.imaml", and nothing is differentiated through iMAML's steps
        (
            dict(inner_steps=10**6),
            ValueError,
            r"^imaml: inner_steps must be at most 10000 \(got 1000000\): every step is traced "
            r"into the compiled step, so a first call would run for hours$",
        ),
        (
            dict(cg_steps=10**6),
            ValueError,
            r"^imaml: cg_steps must be at most 10000 \(got 1000000\): every step is traced into "
            r"the compiled step, so a first call would run for hours$",
        ),
    ],
)
def test_bad_hyper_parameters_are_refused_by_name(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        mf.imaml(mf.supervised(*mf.pure(tanh_net())[:1], mf.losses.mse), **kw)


def test_imaml_adapts_toward_the_support_set_and_stays_near_the_start():
    fn, params = mf.pure(tanh_net(width=5))
    loss = mf.supervised(fn, mf.losses.mse)
    tasks = sine_tasks(n=2)
    # inner_lr * reg < 1: the proximal term alone would not overshoot
    near = mf.imaml(loss, inner_lr=0.01, inner_steps=50, reg=50.0).adapt(params, tasks.support)
    far = mf.imaml(loss, inner_lr=0.01, inner_steps=50, reg=0.01).adapt(params, tasks.support)
    distance = lambda adapted: sum(  # noqa: E731
        ((a - p) ** 2).sum()
        for a, p in zip(_tree.leaves(adapted), _tree.leaves(params), strict=True)
    )
    assert distance(near) < distance(far) / 10
