"""Prototypical Networks and ProtoMAML against hand-written float64 references: a
nearest-prototype classifier computed by hand, per-task autograd loops with the task's own N
classes (one_hot-free, N columns), finite differences, and the paper's linear-head identity."""

import math

import pytest
import torch
import torch.nn.functional as F
from support import assert_metrics_equal, assert_trees_close
from torch import nn
from torch.func import functional_call

import metafunc as mf
from metafunc import _tree

F64 = torch.float64
WAYS = 3


def embed_net(features=6, seed=0):
    torch.manual_seed(seed)  # test-only: fixes nn.Linear's default initialisation
    return nn.Sequential(nn.Linear(features, 5), nn.Tanh(), nn.Linear(5, 4)).double()


def class_tasks(n=3, ways=WAYS, shots=2, queries=2, d=6, seed=0):
    """Gaussian classes around random centres; labels 0..ways-1 in a random order of the
    examples (not class by class), so nothing may rely on the sampler's order."""
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(n, ways, d, generator=g, dtype=F64)

    def part(k):
        labels = torch.arange(ways).repeat(k)
        y = torch.stack([labels[torch.randperm(ways * k, generator=g)] for _ in range(n)])
        noise = torch.randn(n, ways * k, d, generator=g, dtype=F64)
        return centres.gather(1, y[..., None].expand(-1, -1, d)) + noise, y

    return mf.Tasks(part(shots), part(queries))


def one_task(tasks, i):
    return [t[i] for t in tasks.support], [t[i] for t in tasks.query]


def means(f, y, ways):
    return torch.stack([f[y == k].mean(0) for k in range(ways)])


def distance_logits(f, c):
    return -((f[:, None] - c[None]) ** 2).sum(-1)


def leaves(params):
    return {k: v.detach().clone().requires_grad_() for k, v in params.items()}


def reference_protonet(net, params, tasks, ways=WAYS):
    theta = leaves(params)
    n = tasks.support[0].shape[0]
    total = 0.0
    for i in range(n):
        (xs, ys), (xq, yq) = one_task(tasks, i)
        c = means(functional_call(net, theta, (xs,)), ys, ways)
        total = total + F.cross_entropy(distance_logits(functional_call(net, theta, (xq,)), c), yq)
    grads = torch.autograd.grad(total / n, list(theta.values()))
    losses = {"loss": total.item() / n, "loss_before": math.log(ways)}
    return dict(zip(theta, grads, strict=True)), losses


def reference_protomaml(
    net, params, tasks, *, lr, steps, adapt_body, detach_init=False, first_order=False
):
    """Per task: the head W = 2c, b = -|c|^2 from the support prototypes, then SGD on the
    support cross-entropy (N columns) with autograd.grad(create_graph=True); first order: the
    inner gradients are constants (create_graph=False), the start at the prototypes is not."""
    theta0 = leaves(params)
    n = tasks.support[0].shape[0]
    total = 0.0
    for i in range(n):
        (xs, ys), (xq, yq) = one_task(tasks, i)
        c = means(functional_call(net, theta0, (xs,)), ys, WAYS)
        w, b = 2 * c, -(c**2).sum(1)
        if detach_init:
            w, b = w.detach().requires_grad_(), b.detach().requires_grad_()
        # clones: the inner gradient is the partial one, the head held fixed (w and b also
        # depend on theta0, and a gradient with respect to theta0 itself would follow them)
        body = {k: v.clone() for k, v in theta0.items()}
        keys = sorted(body) if adapt_body else []
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(net, body, (xs,)) @ w.T + b, ys)
            grads = torch.autograd.grad(
                loss, [body[k] for k in keys] + [w, b], create_graph=not first_order
            )
            body.update({k: body[k] - lr * g for k, g in zip(keys, grads, strict=False)})
            w, b = w - lr * grads[-2], b - lr * grads[-1]
        total = total + F.cross_entropy(functional_call(net, body, (xq,)) @ w.T + b, yq)
    grads = torch.autograd.grad(total / n, list(theta0.values()))
    losses = {"loss": total.item() / n, "loss_before": math.log(WAYS)}
    return dict(zip(theta0, grads, strict=True)), losses


# ---------------------------------------------------------------- ProtoNet


def test_protonet_accuracy_equals_a_hand_computed_nearest_prototype_classifier():
    """On fixed embeddings (an untrained conv net without its head): each query's label is the
    class of the nearest support mean, counted by hand, and mf.evaluate counts the same."""
    torch.manual_seed(0)  # test-only: fixes the layers' default initialisation
    body = mf.models.conv_net(4, channels=4, blocks=2, image_size=8).double()[:-1]
    embed, params = mf.pure(body)
    glyphs = mf.tasks.synthetic_glyphs(
        torch.Generator().manual_seed(0), classes=12, examples=6, image_size=8
    )
    tasks = mf.tasks.fewshot(
        torch.Generator().manual_seed(1), glyphs, tasks=8, ways=4, shots=2, queries=3, dtype=F64
    )
    got = mf.evaluate(mf.protonet(embed), params, tasks, predict=mf.classifier(embed))
    hand = []
    with torch.no_grad():
        for i in range(8):
            (xs, ys), (xq, yq) = one_task(tasks, i)
            fs, fq = body(xs).flatten(1), body(xq).flatten(1)
            prototypes = [fs[ys == k].mean(0) for k in range(4)]
            right = 0
            for f, label in zip(fq, yq.tolist(), strict=True):
                distances = [float(((f - c) ** 2).sum()) for c in prototypes]
                right += distances.index(min(distances)) == label
            hand.append(right / len(yq))
    assert got.accuracy.values.tolist() == hand
    assert 0.25 < got.accuracy.mean < 1  # better than chance, not trivially perfect
    torch.testing.assert_close(got.loss_before.values, torch.full((8,), math.log(4), dtype=F64))


def test_protonet_meta_gradient_equals_the_autograd_loop():
    net = embed_net()
    embed, params = mf.pure(net)
    learner = mf.protonet(embed)
    tasks = class_tasks()
    got, metrics = learner.meta_grad(learner.init(params), tasks)
    want, losses = reference_protonet(net, params, tasks)
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    assert_metrics_equal(metrics, losses)


def test_protonet_prototypes_are_the_class_means_in_their_label_slots():
    net = embed_net()
    embed, params = mf.pure(net)
    tasks = class_tasks(shots=3)
    adapted = mf.protonet(embed).adapt(params, tasks.support)
    assert adapted.prototypes.shape == (3, 9, 4)  # one slot per support example
    for i in range(3):
        (xs, ys), _ = one_task(tasks, i)
        with torch.no_grad():
            want = means(net(xs), ys, WAYS)
        torch.testing.assert_close(adapted.prototypes[i, :WAYS], want, rtol=1e-12, atol=1e-14)
        assert adapted.present[i].tolist() == [True] * WAYS + [False] * 6
        assert torch.equal(adapted.prototypes[i, WAYS:], torch.zeros(6, 4, dtype=F64))


# ---------------------------------------------------------------- ProtoMAML


@pytest.mark.parametrize(("steps", "adapt_body"), [(1, True), (2, True), (2, False)])
def test_protomaml_equals_the_autograd_loop(steps, adapt_body):
    net = embed_net()
    embed, params = mf.pure(net)
    learner = mf.protomaml(embed, inner_lr=0.3, inner_steps=steps, adapt_body=adapt_body)
    tasks = class_tasks()
    got, metrics = learner.meta_grad(learner.init(params), tasks)
    want, losses = reference_protomaml(
        net, params, tasks, lr=0.3, steps=steps, adapt_body=adapt_body
    )
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    assert_metrics_equal(metrics, losses)
    # second order through the head's initialisation: without it the gradient differs
    detached, _ = reference_protomaml(
        net, params, tasks, lr=0.3, steps=steps, adapt_body=adapt_body, detach_init=True
    )
    assert not torch.allclose(got["0.weight"], detached["0.weight"], rtol=1e-6)


@pytest.mark.parametrize("adapt_body", [True, False])
def test_first_order_protomaml_equals_the_autograd_loop_with_constant_inner_gradients(adapt_body):
    net = embed_net()
    embed, params = mf.pure(net)
    learner = mf.first_order(
        mf.protomaml(embed, inner_lr=0.3, inner_steps=2, adapt_body=adapt_body)
    )
    tasks = class_tasks()
    got, metrics = learner.meta_grad(learner.init(params), tasks)
    want, losses = reference_protomaml(
        net, params, tasks, lr=0.3, steps=2, adapt_body=adapt_body, first_order=True
    )
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    assert_metrics_equal(metrics, losses)
    exact, _ = reference_protomaml(net, params, tasks, lr=0.3, steps=2, adapt_body=adapt_body)
    assert not torch.allclose(got["0.weight"], exact["0.weight"], rtol=1e-6)


def test_protomaml_adapts_the_head_alone_or_with_the_body():
    embed, params = mf.pure(embed_net())
    tasks = class_tasks()
    for adapt_body in (True, False):
        learner = mf.protomaml(embed, inner_lr=0.3, inner_steps=1, adapt_body=adapt_body)
        adapted = learner.adapt(params, tasks.support)
        moved = not torch.equal(adapted.params["0.weight"][0], params["0.weight"])
        assert moved == adapt_body


def test_protomaml_without_steps_is_protonet():
    """W_k = 2 c_k, b_k = -|c_k|^2 gives logits -|f - c_k|^2 + |f|^2: the same softmax."""
    embed, params = mf.pure(embed_net())
    tasks = class_tasks()
    proto, p_losses = mf.protonet(embed).meta_grad(params, tasks)
    head, h_losses = mf.protomaml(embed, inner_steps=0).meta_grad(params, tasks)
    assert_trees_close(head, proto, rtol=1e-10, atol=1e-12)
    assert_trees_close(h_losses, p_losses, rtol=1e-12, atol=1e-14)


def test_gradcheck_protomaml_meta_loss():
    embed, params = mf.pure(embed_net())
    learner = mf.protomaml(embed, inner_lr=0.3, inner_steps=2)
    tasks = class_tasks(n=2)
    flat, spec = _tree.leaves(params), _tree.structure(params)
    sizes = [t.numel() for t in flat]

    def meta_loss(vector):
        parts = torch.split(vector, sizes)
        meta = spec.unflatten([p.view_as(t) for p, t in zip(parts, flat, strict=True)])
        return learner.per_task(meta, tasks)[1].mean()

    vector = torch.cat([t.reshape(-1) for t in flat]).detach().requires_grad_()
    assert torch.autograd.gradcheck(meta_loss, (vector,), eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------- bad input

EMBED, PARAMS = mf.pure(embed_net())
TASKS = class_tasks()


def relabel(part, labels=None, mask=None):
    x, y = getattr(TASKS, part)
    data = (x, y if labels is None else labels) + (() if mask is None else (mask,))
    other = getattr(TASKS, "query" if part == "support" else "support")
    other = other + (() if mask is None else (torch.ones_like(other[1], dtype=torch.bool),))
    return mf.Tasks(data, other) if part == "support" else mf.Tasks(other, data)


ERRORS = [
    (
        lambda: mf.protonet("net"),
        TypeError,
        r"^protonet: embed must be callable as embed\(params, x\) -> features \(got 'net'\)$",
    ),
    (
        lambda: mf.protonet(EMBED).meta_grad(PARAMS, relabel("support", TASKS.support[1] + 4)),
        ValueError,
        r"^meta_grad: tasks\.support\[1\] must hold labels in 0\.\.5, fewer than the 6 support "
        r"examples of a task: a task's k-th class is labelled k \(got labels in 4\.\.6\)$",
    ),
    (
        lambda: mf.protonet(EMBED).meta_grad(
            PARAMS, relabel("support", TASKS.support[1].clamp(max=1))
        ),
        ValueError,
        r"^meta_grad: every query label must have a support example of its class in its task; "
        r"task 0 has query label 2 and no support example labelled 2$",
    ),
    (
        lambda: mf.protonet(EMBED).meta_grad(PARAMS, relabel("query", TASKS.query[1].int())),
        TypeError,
        r"^meta_grad: tasks\.query\[1\] must hold int64 class labels of shape \(tasks, "
        r"examples\) \(got torch\.int32 of shape \(3, 6\)\)$",
    ),
    (
        lambda: mf.protonet(EMBED).meta_grad(
            PARAMS, relabel("support", mask=torch.ones(3, 6, dtype=torch.int64))
        ),
        TypeError,
        r"^meta_grad: tasks\.support\[2\], the mask, must be bool of the labels' shape \(3, 6\) "
        r"\(got torch\.int64 of shape \(3, 6\)\)$",
    ),
    (
        lambda: mf.protonet(EMBED).meta_grad(PARAMS, mf.Tasks(TASKS.support[0], TASKS.query[0])),
        ValueError,
        r"^meta_grad: tasks\.support must be \(x, y\) with class labels y, or \(x, y, mask\) for "
        r"padded tasks \(got a Tensor\)$",
    ),
    (
        lambda: mf.protomaml(EMBED, inner_lr={"0.weight": torch.tensor(0.1)}),
        TypeError,
        r"^protomaml: inner_lr must be a number or a 0-d tensor: the head is made per task, so "
        r"a tree of rates has nothing to match \(got a dict\)$",
    ),
    (
        lambda: mf.protomaml(EMBED, adapt_body="yes"),
        TypeError,
        r"^protomaml: adapt_body must be True or False \(got 'yes'\)$",
    ),
    (
        lambda: mf.protomaml(EMBED, inner_lr=-1.0),
        ValueError,
        r"^protomaml: inner_lr must be a positive finite number \(got -1\.0\)$",
    ),
    (
        lambda: mf.first_order(mf.protonet(EMBED)),
        TypeError,
        r"^first_order: needs a learner whose inner is a metafunc\.Loop \(gradient steps\)",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_bad_input_is_refused_with_a_message(call, error, message):
    with pytest.raises(error, match=message):
        call()
