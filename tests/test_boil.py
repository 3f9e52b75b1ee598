"""BOIL against a hand-written float64 loop, and the complement selector it is built on."""

import pytest
import torch
from support import ALPHA, assert_metrics_equal, assert_trees_close, linear_tasks
from torch import nn
from torch.func import functional_call

import metafunc as mf

HEAD = ["2.bias", "2.weight"]


def body_net():
    torch.manual_seed(0)  # test-only: fixes nn.Linear's default initialisation
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def boil_reference(net, params, tasks, *, steps):
    """Per task: SGD with autograd.grad(create_graph=True) on the body only; the mean query
    loss differentiated with respect to every parameter."""
    theta0 = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    loss = lambda theta, data: ((functional_call(net, theta, (data[0],)) - data[1]) ** 2).mean()  # noqa: E731
    body = [k for k in sorted(theta0) if k not in HEAD]
    total, before, n = 0.0, 0.0, tasks.support[0].shape[0]
    for i in range(n):
        support = tuple(t[i] for t in tasks.support)
        query = tuple(t[i] for t in tasks.query)
        theta = dict(theta0)
        for _ in range(steps):
            grads = torch.autograd.grad(
                loss(theta, support), [theta[k] for k in body], create_graph=True
            )
            theta.update({k: theta[k] - ALPHA * g for k, g in zip(body, grads, strict=True)})
        total = total + loss(theta, query)
        before += loss(theta0, query).item() / n
    grads = torch.autograd.grad(total / n, list(theta0.values()))
    losses = {"loss": total.item() / n, "loss_before": before}
    return dict(zip(theta0, grads, strict=True)), losses


@pytest.mark.parametrize("head", ["2", HEAD, lambda k: k.startswith("2."), "tree"])
def test_boil_adapts_only_the_body_and_meta_learns_the_head(head):
    net = body_net()
    fn, params = mf.pure(net)
    head = {k: k in HEAD for k in params} if head == "tree" else head
    learner = mf.boil(mf.supervised(fn, mf.losses.mse), head=head, inner_lr=ALPHA, inner_steps=2)
    tasks = linear_tasks()
    meta = learner.init(params)
    adapted = learner.adapt(meta, tasks.support)
    for k in params:  # the head is where it started in every task; the body moved
        same = torch.equal(adapted[k], meta[k].expand_as(adapted[k]))
        assert same == (k in HEAD), k
    got, metrics = learner.meta_grad(meta, tasks)
    want, losses = boil_reference(net, params, tasks, steps=2)
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    assert_metrics_equal(metrics, losses)
    assert all(got[k].abs().sum() > 0 for k in HEAD)  # the head is meta-learned


def test_boil_is_maml_with_the_complement_mask():
    fn, params = mf.pure(body_net())
    loss = mf.supervised(fn, mf.losses.mse)
    tasks = linear_tasks()
    boil = mf.boil(loss, head="2", inner_lr=ALPHA)
    maml = mf.maml(loss, mask=mf.complement("2"), inner_lr=ALPHA)
    anil = mf.anil(loss, head="2", inner_lr=ALPHA)
    assert_trees_close(boil.meta_grad(params, tasks), maml.meta_grad(params, tasks), rtol=0, atol=0)
    assert not torch.allclose(
        boil.meta_grad(params, tasks)[0]["0.weight"], anil.meta_grad(params, tasks)[0]["0.weight"]
    )


def test_complement_partitions_the_other_leaves():
    params = mf.pure(body_net())[1]
    body, head = mf.partition(params, mf.complement(["2.weight", "2.bias"]))
    assert [k for k, v in head.items() if v is not None] == ["2.weight", "2.bias"]
    assert [k for k, v in body.items() if v is not None] == ["0.weight", "0.bias"]
    assert repr(mf.complement("2")) == "complement('2')"


PARAMS = mf.pure(body_net())[1]
LOSS = mf.supervised(mf.pure(body_net())[0], mf.losses.mse)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: mf.boil(LOSS, head="5").init(PARAMS),
            ValueError,
            r"^boil: head names '5', which is neither a parameter nor a module of the "
            r"parameters; their names are \['0\.weight', '0\.bias', '2\.weight', '2\.bias'\]$",
        ),
        (
            lambda: mf.boil(LOSS, head=lambda k: True).init(PARAMS),
            ValueError,
            r"^boil: head=<function .*> picks every parameter, leaving none outside it; their "
            r"names are \['0\.weight', ",
        ),
        (
            lambda: mf.boil(LOSS, head=None),
            TypeError,
            r"^boil: head must be a module name, a list of names, a predicate on parameter names "
            r"or a tree of bools \(got None\); mf\.maml adapts every parameter$",
        ),
        (
            lambda: mf.boil(LOSS, head=[]),
            TypeError,
            r"^boil: head must be a parameter or module name, a non-empty list of names, a "
            r"predicate on dotted parameter names, or a tree of bools like the parameters "
            r"\(got \[\]\)$",
        ),
        (
            lambda: mf.boil(LOSS, head={"2.weight": True}).init(PARAMS),
            ValueError,
            r"^boil: head must have the same tree structure as params",
        ),
        (
            lambda: mf.boil(LOSS, head="2", inner_steps=-1),
            ValueError,
            r"^boil: inner_steps must be an integer >= 0 \(got -1\)$",
        ),
        (
            lambda: mf.complement(None),
            TypeError,
            r"^complement: selector must be a name, a list of names, a predicate on dotted "
            r"names or a tree of bools \(got None\)$",
        ),
        (
            lambda: mf.partition(PARAMS, mf.complement("7")),
            ValueError,
            r"^partition: selector names '7', which is neither a parameter nor a module",
        ),
    ],
)
def test_boil_bad_input_is_refused_with_a_message(call, error, message):
    with pytest.raises(error, match=message):
        call()
