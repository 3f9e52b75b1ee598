"""MAML and FO-MAML meta-gradients against references, in float64.

References: a hand-written per-task loop with torch.autograd.grad(create_graph=True) (how
PyTorch tests its own MAML example), finite differences (gradcheck), and closed forms on a
linear model.
"""

import pytest
import torch
from support import (
    assert_metrics_equal,
    assert_trees_close,
    reference_meta_grad,
    sine_tasks,
    tanh_net,
)

import metafunc as mf
from metafunc import _tree

ALPHA = 0.1


def setup(steps, first_order=False, lr=ALPHA, chunk_size=None):
    net = tanh_net()
    fn, params = mf.pure(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=lr, inner_steps=steps)
    if first_order:
        learner = mf.first_order(learner)
    if chunk_size is not None:
        learner = mf.chunked(learner, chunk_size)
    return net, params, learner


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_equals_autograd_loop(steps):
    net, params, learner = setup(steps)
    tasks = sine_tasks()
    got, metrics = learner.meta_grad(learner.init(params), tasks)
    want, losses = reference_meta_grad(
        net, params, tasks, lr=ALPHA, steps=steps, first_order=False, with_losses=True
    )
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    assert metrics.loss.dtype == torch.float64
    assert_metrics_equal(metrics, losses)  # loss_before at θ0, not after adapting
    assert abs(losses["loss"] - losses["loss_before"]) > 1e-3


@pytest.mark.parametrize("steps", [1, 3])
def test_fomaml_equals_detached_loop_and_differs_from_maml(steps):
    net, params, fo = setup(steps, first_order=True)
    tasks = sine_tasks()
    got, metrics = fo.meta_grad(fo.init(params), tasks)
    want, losses = reference_meta_grad(
        net, params, tasks, lr=ALPHA, steps=steps, first_order=True, with_losses=True
    )
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    assert_metrics_equal(metrics, losses)
    # mf.fomaml is the same algorithm
    fo2 = mf.fomaml(
        mf.supervised(mf.pure(net)[0], mf.losses.mse), inner_lr=ALPHA, inner_steps=steps
    )
    assert_trees_close(fo2.meta_grad(params, tasks)[0], want, rtol=1e-10, atol=1e-12)
    # ... and the flag is wired: second order differs on a nonlinear model
    _, _, so = setup(steps)
    full, _ = so.meta_grad(so.init(params), tasks)
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(_tree.leaves(full), _tree.leaves(got), strict=True)
    )
    assert diff > 1e-3


@pytest.mark.parametrize("first_order", [False, True])
def test_zero_inner_steps_is_the_plain_query_gradient(first_order):
    net, params, learner = setup(0, first_order=first_order)
    tasks = sine_tasks()
    got, metrics = learner.meta_grad(params, tasks)
    loss = mf.supervised(mf.pure(net)[0], mf.losses.mse)
    per_task = [
        torch.func.grad(loss)(params, (tasks.query[0][i], tasks.query[1][i])) for i in range(3)
    ]
    want = _tree.map(lambda *g: torch.stack(g).mean(0), *per_task)
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    # both metrics are the query loss at θ (nothing adapts), computed here by hand
    with torch.no_grad():
        query_loss = ((net(tasks.query[0]) - tasks.query[1]) ** 2).mean().item()
    assert_metrics_equal(metrics, {"loss": query_loss, "loss_before": query_loss})


def test_learning_rate_pytree_matches_loop():
    net = tanh_net()
    _, params = mf.pure(net)
    rates = {
        k: torch.tensor(0.05 * (i + 1), dtype=torch.float64) for i, k in enumerate(sorted(params))
    }
    _, _, learner = setup(2, lr=rates)
    tasks = sine_tasks()
    got, _ = learner.meta_grad(learner.init(params), tasks)
    want = reference_meta_grad(net, params, tasks, lr=rates, steps=2, first_order=False)
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)


def test_gradcheck_meta_loss_second_order():
    _, params, learner = setup(2)
    tasks = sine_tasks(n=2, shots=3, queries=3)
    names = sorted(params)
    shapes = [params[k].shape for k in names]
    flat = torch.cat([params[k].reshape(-1) for k in names]).requires_grad_()

    def meta_loss(vec):
        chunks = torch.split(vec, [s.numel() for s in shapes])
        meta = {k: c.reshape(s) for k, c, s in zip(names, chunks, shapes, strict=True)}
        return learner.per_task(meta, tasks)[1].mean()

    assert torch.autograd.gradcheck(meta_loss, (flat,), eps=1e-6, atol=1e-7)
    # and the meta-gradient the library returns is that derivative
    got, _ = learner.meta_grad(params, tasks)
    (want,) = torch.autograd.grad(meta_loss(flat), flat)
    torch.testing.assert_close(
        torch.cat([got[k].reshape(-1) for k in names]), want, rtol=1e-10, atol=1e-12
    )


def linear_problem(seed=0, d=3, n=6, m=5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, 1, generator=g, dtype=torch.float64)
    xs, ys = (
        torch.randn(1, n, d, generator=g, dtype=torch.float64),
        torch.randn(1, n, 1, generator=g, dtype=torch.float64),
    )
    xq, yq = (
        torch.randn(1, m, d, generator=g, dtype=torch.float64),
        torch.randn(1, m, 1, generator=g, dtype=torch.float64),
    )
    loss = mf.supervised(lambda p, x: x @ p["w"], mf.losses.mse)
    return {"w": w}, mf.Tasks((xs, ys), (xq, yq)), loss


@pytest.mark.parametrize("first_order", [False, True])
def test_one_step_closed_form_on_linear_model(first_order):
    """MAML: (I − αH_s)∇L_q(θ'); FO-MAML: ∇L_q(θ'); L(w) = mean((Xw − y)²)."""
    params, tasks, loss = linear_problem()
    (xs, ys), (xq, yq) = (
        (tasks.support[0][0], tasks.support[1][0]),
        (tasks.query[0][0], tasks.query[1][0]),
    )
    w = params["w"]
    grad_s = 2 / len(xs) * xs.T @ (xs @ w - ys)
    hess_s = 2 / len(xs) * xs.T @ xs
    w_adapted = w - ALPHA * grad_s
    grad_q = 2 / len(xq) * xq.T @ (xq @ w_adapted - yq)
    want = grad_q if first_order else (torch.eye(3, dtype=torch.float64) - ALPHA * hess_s) @ grad_q
    learner = mf.maml(loss, inner_lr=ALPHA, inner_steps=1)
    if first_order:
        learner = mf.first_order(learner)
    got, _ = learner.meta_grad(params, tasks)
    torch.testing.assert_close(got["w"], want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        learner.adapt(params, tasks.support)["w"][0], w_adapted, rtol=1e-12, atol=1e-14
    )


def test_vmap_equals_loop_over_tasks():
    """The batched meta-gradient and metrics are the mean of each task's own, each computed by
    the hand-written autograd loop on that task alone."""
    net, params, learner = setup(2)
    tasks = sine_tasks(n=4)
    batched_grad, batched_metrics = learner.meta_grad(params, tasks)
    singles = [
        reference_meta_grad(
            net,
            params,
            mf.Tasks(*(_tree.map(lambda t, i=i: t[i : i + 1], part) for part in tasks)),
            lr=ALPHA,
            steps=2,
            first_order=False,
            with_losses=True,
        )
        for i in range(4)
    ]
    want = _tree.map(lambda *g: torch.stack(g).mean(0), *[grads for grads, _ in singles])
    assert_trees_close(batched_grad, want, rtol=1e-10, atol=1e-12)
    mean = lambda key: sum(losses[key] for _, losses in singles) / 4  # noqa: E731
    assert_metrics_equal(
        batched_metrics, {"loss": mean("loss"), "loss_before": mean("loss_before")}
    )


def test_chunked_vmap_equals_unchunked():
    _, params, learner = setup(2)
    _, _, chunked = setup(2, chunk_size=2)
    tasks = sine_tasks(n=5)
    assert_trees_close(
        chunked.meta_grad(params, tasks)[0],
        learner.meta_grad(params, tasks)[0],
        rtol=1e-12,
        atol=1e-14,
    )


def test_adapt_matches_the_public_inner_loop_and_leaves_input_alone():
    net, params, learner = setup(3)
    before = _tree.copy(params)
    tasks = sine_tasks(n=1)
    a = _tree.map(lambda t: t[0], learner.adapt(params, tasks.support))  # a batch of one task
    b = mf.inner_loop(
        params,
        (tasks.support[0][0], tasks.support[1][0]),
        loss=mf.supervised(mf.pure(net)[0], mf.losses.mse),
        lr=ALPHA,
        steps=3,
    )
    assert_trees_close(a, b, rtol=1e-12, atol=1e-15)  # vmapped vs one task: rounding
    assert_trees_close(params, before, rtol=0, atol=0)
    assert not all(
        torch.equal(x, y) for x, y in zip(_tree.leaves(a), _tree.leaves(params), strict=True)
    )


def test_l1_loss_equals_torch_l1_with_gradients():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(7, 1, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(7, 1, generator=g, dtype=torch.float64)
    ours, theirs = mf.losses.l1(pred, target), torch.nn.functional.l1_loss(pred, target)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(
        torch.autograd.grad(ours, pred)[0], torch.autograd.grad(theirs, pred)[0], rtol=0, atol=0
    )


def test_maml_on_the_conv_net_equals_autograd_loop():
    """The few-shot conv net (batch norm without running statistics, max-pooling) under vmap
    gives the per-task loop's meta-gradient, second order, with cross-entropy."""
    torch.manual_seed(0)  # test-only: fixes the layers' default initialisation
    net = mf.models.conv_net(2, channels=3, blocks=2, image_size=8).double()
    fn, params = mf.pure(net)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 6, 1, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 1, 0]).expand(3, 6)
    tasks = mf.Tasks((images[:, :2], labels[:, :2]), (images[:, 2:], labels[:, 2:]))
    learner = mf.maml(mf.supervised(fn, mf.losses.cross_entropy), inner_lr=0.4, inner_steps=2)
    got, _ = learner.meta_grad(learner.init(params), tasks)
    want = reference_meta_grad(
        net,
        params,
        tasks,
        lr=0.4,
        steps=2,
        first_order=False,
        criterion=torch.nn.functional.cross_entropy,
    )
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    first, _ = mf.fomaml(
        mf.supervised(fn, mf.losses.cross_entropy), inner_lr=0.4, inner_steps=2
    ).meta_grad(params, tasks)
    assert not torch.allclose(first["0.weight"], got["0.weight"])  # second-order terms matter
