"""Padded tasks: masked losses and scores, the variable-ways-and-shots sampler, and a padded
meta-batch that equals each task run alone."""

import pytest
import torch
from support import assert_trees_close, labelled_dataset
from torch import nn

import metafunc as mf
from metafunc import _tree

F64 = torch.float64

# ---------------------------------------------------------------- masked losses and scores


@pytest.mark.parametrize(
    ("criterion", "pred", "target"),
    [
        (mf.losses.mse, torch.randn(6, 2, dtype=F64), torch.randn(6, 2, dtype=F64)),
        (mf.losses.l1, torch.randn(6, 2, dtype=F64), torch.randn(6, 2, dtype=F64)),
        (mf.losses.cross_entropy, torch.randn(6, 4, dtype=F64), torch.tensor([0, 3, 1, 1, 2, 0])),
    ],
    ids=["mse", "l1", "cross_entropy"],
)
def test_a_masked_loss_is_the_loss_of_the_kept_examples_and_so_is_its_gradient(
    criterion, pred, target
):
    keep = torch.tensor([True, False, True, True, False, True])
    # what the dropped examples hold must not matter, not even inf or NaN
    poisoned = pred.clone()
    poisoned[1], poisoned[4] = float("inf"), float("nan")
    poisoned.requires_grad_()
    kept = pred[keep].clone().requires_grad_()
    got, want = criterion(poisoned, target, keep), criterion(kept, target[keep])
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    (g,) = torch.autograd.grad(got, poisoned)
    (w,) = torch.autograd.grad(want, kept)
    torch.testing.assert_close(g[keep], w, rtol=1e-14, atol=0)
    assert torch.equal(g[~keep], torch.zeros_like(g[~keep]))


def test_supervised_passes_the_mask_to_the_criterion():
    fn = lambda p, x: x * p["w"]  # noqa: E731
    loss = mf.supervised(fn, mf.losses.mse)
    p = {"w": torch.tensor(2.0, dtype=F64)}
    x, y = torch.arange(4.0, dtype=F64)[:, None], torch.ones(4, 1, dtype=F64)
    keep = torch.tensor([True, True, False, False])
    assert float(loss(p, (x, y, keep))) == float(loss(p, (x[:2], y[:2]))) == 1.0
    with pytest.raises(
        TypeError,
        match=r"^supervised: data must be a pair \(x, y\) or, padded, a triple \(x, y, mask\) "
        r"\(got a tuple of 4\)$",
    ):
        loss(p, (x, y, keep, keep))


@pytest.mark.parametrize(
    ("mask", "error", "message"),
    [
        (
            torch.ones(3),
            TypeError,
            r"^cross_entropy: mask must be a bool tensor, True for the examples to keep \(got a "
            r"torch\.float32 tensor\)$",
        ),
        (
            torch.ones(2, dtype=torch.bool),
            ValueError,
            r"^cross_entropy: mask must have one entry per example, shape \(3,\) \(got \(2,\)\)$",
        ),
    ],
)
def test_a_bad_mask_is_refused(mask, error, message):
    with pytest.raises(error, match=message):
        mf.losses.cross_entropy(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64), mask)


def test_evaluate_scores_only_the_kept_query_examples():
    """Accuracy and squared error per task over the kept examples, as if the rest were not there."""
    predict = lambda p, x: x @ p["w"]  # noqa: E731
    params = {"w": torch.eye(3, dtype=F64)}
    learner = mf.maml(mf.supervised(predict, mf.losses.cross_entropy), inner_steps=0)
    x = torch.eye(3, dtype=F64).expand(2, 3, 3)  # example j predicts class j
    y = torch.tensor([[0, 1, 0], [2, 1, 2]])
    keep = torch.tensor([[True, True, False], [False, True, True]])
    scores = mf.evaluate(learner, params, mf.Tasks((x, y, keep), (x, y, keep)), predict=predict)
    assert scores.accuracy.values.tolist() == [1.0, 1.0]  # the misses are padding
    regression = mf.maml(mf.supervised(predict, mf.losses.mse), inner_steps=0)
    target = torch.zeros(2, 3, 3, dtype=F64)
    scores = mf.evaluate(
        regression, params, mf.Tasks((x, target, keep), (x, target, keep)), predict=predict
    )
    torch.testing.assert_close(scores.mse.values, torch.full((2,), 1 / 3, dtype=F64))
    torch.testing.assert_close(scores.loss.values, torch.full((2,), 1 / 3, dtype=F64))


# ---------------------------------------------------------------- the sampler


def test_variable_fewshot_draws_ways_and_shots_in_their_ranges_padded_to_the_largest():
    data = labelled_dataset(classes=7, examples=6)
    g = torch.Generator().manual_seed(0)
    tasks = mf.tasks.variable_fewshot(
        g, data, tasks=200, ways=(2, 4), shots=(1, 3), queries=2, dtype=F64
    )
    (xs, ys, ks), (xq, yq, kq) = tasks
    assert xs.shape == (200, 12, 1, 3, 3) and ys.shape == ks.shape == (200, 12)
    assert xq.shape == (200, 8, 1, 3, 3) and yq.shape == kq.shape == (200, 8)
    assert ks.dtype == kq.dtype == torch.bool and ys.dtype == torch.int64
    cls = lambda x: (x[:, 0, 0, 0] * 255).round().long()  # noqa: E731
    ex = lambda x: (x[:, 0, 0, 1] * 255).round().long()  # noqa: E731
    seen = set()
    for t in range(200):
        ways = len(set(ys[t][ks[t]].tolist()))
        shots = int(ks[t].sum()) // ways
        seen.add((ways, shots))
        # class by class: slot k * 3 + s holds shot s of class k while k < ways and s < shots
        slots = torch.arange(12)
        assert ks[t].tolist() == ((slots // 3 < ways) & (slots % 3 < shots)).tolist()
        assert kq[t].tolist() == (torch.arange(8) // 2 < ways).tolist()
        assert ys[t][ks[t]].tolist() == [k for k in range(ways) for _ in range(shots)]
        assert yq[t][kq[t]].tolist() == [k for k in range(ways) for _ in range(2)]
        # padding is inert: zero images, label 0
        assert not xs[t][~ks[t]].any() and not ys[t][~ks[t]].any()
        assert not xq[t][~kq[t]].any() and not yq[t][~kq[t]].any()
        # the kept examples: one dataset class per label, no image in both sets
        pairs = {}
        for x, y in ((xs[t][ks[t]], ys[t][ks[t]]), (xq[t][kq[t]], yq[t][kq[t]])):
            for c, label in zip(cls(x).tolist(), y.tolist(), strict=True):
                assert pairs.setdefault(label, c) == c
        assert len(set(pairs.values())) == ways
        support = set(zip(cls(xs[t][ks[t]]).tolist(), ex(xs[t][ks[t]]).tolist(), strict=True))
        query = set(zip(cls(xq[t][kq[t]]).tolist(), ex(xq[t][kq[t]]).tolist(), strict=True))
        assert len(support) == ways * shots and support.isdisjoint(query)
    assert seen == {(w, s) for w in (2, 3, 4) for s in (1, 2, 3)}  # every combination drawn
    again = mf.tasks.variable_fewshot(
        torch.Generator().manual_seed(0),
        data,
        tasks=200,
        ways=(2, 4),
        shots=(1, 3),
        queries=2,
        dtype=F64,
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.support + again.query, tasks.support + tasks.query, strict=True)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"ways": (3, 2)},
            ValueError,
            r"^variable_fewshot: ways\[1\] must be an integer >= 3 \(got 2\)$",
        ),
        (
            {"shots": [1, 2]},
            TypeError,
            r"^variable_fewshot: shots must be an integer or a range \(low, high\) of integers "
            r"\(got \[1, 2\]\)$",
        ),
        ({"ways": (0, 2)}, ValueError, r"^variable_fewshot: ways\[0\] must be an integer >= 1"),
        (
            {"ways": (2, 8)},
            ValueError,
            r"^variable_fewshot: ways must be at most the dataset's 7 classes \(got 8\)$",
        ),
        (
            {"shots": (1, 5), "queries": 2},
            ValueError,
            r"^variable_fewshot: shots \+ queries must be at most the dataset's 6 examples per "
            r"class \(got 5 \+ 2 = 7\)$",
        ),
    ],
)
def test_variable_fewshot_bad_input(kwargs, error, message):
    args = {"tasks": 2, "ways": (2, 3), "shots": (1, 2), "queries": 2, **kwargs}
    with pytest.raises(error, match=message):
        mf.tasks.variable_fewshot(torch.Generator(), labelled_dataset(), **args)


# ---------------------------------------------------------------- a padded batch is each task alone


def padded_setup(algo):
    torch.manual_seed(0)  # test-only: fixes nn.Linear's default initialisation
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    glyphs = mf.tasks.synthetic_glyphs(
        torch.Generator().manual_seed(0), classes=12, examples=6, image_size=8
    )
    tasks = mf.tasks.variable_fewshot(
        torch.Generator().manual_seed(2),
        glyphs,
        tasks=5,
        ways=(2, 4),
        shots=(1, 3),
        queries=2,
        dtype=F64,
    )
    if algo in ("protonet", "protomaml"):
        embed, params = mf.pure(net[:-1])
        learner = (
            mf.protonet(embed)
            if algo == "protonet"
            else mf.protomaml(embed, inner_lr=0.3, inner_steps=2)
        )
        return learner, params, mf.classifier(embed), tasks
    fn, params = mf.pure(net)  # 4 outputs: the largest task's ways
    return (
        mf.maml(mf.supervised(fn, mf.losses.cross_entropy), inner_lr=0.3, inner_steps=2),
        params,
        fn,
        tasks,
    )


def alone(tasks, i):
    """Task ``i`` without its padding, as a meta-batch of one."""
    cut = lambda part: tuple(t[i][part[2][i]][None] for t in part[:2])  # noqa: E731
    return mf.Tasks(cut(tasks.support), cut(tasks.query))


def one(tasks, i):
    return _tree.map(lambda t: t[i : i + 1], tasks)


@pytest.mark.parametrize("algo", ["maml", "protonet", "protomaml"])
def test_a_padded_meta_batch_equals_each_task_run_alone(algo):
    learner, params, predict, tasks = padded_setup(algo)
    sizes = {(int(k.sum()),) for k in tasks.support[2]}
    assert len(sizes) > 2  # the tasks differ in ways and shots
    n = tasks.support[0].shape[0]
    each = [learner.meta_grad(params, alone(tasks, i)) for i in range(n)]
    for i in range(n):  # each task's own meta-gradient, padded or not
        got, losses = learner.meta_grad(params, one(tasks, i))
        assert_trees_close(got, each[i][0], rtol=1e-10, atol=1e-12)
        assert_trees_close(losses, each[i][1], rtol=1e-10, atol=1e-12)
    got, losses = learner.meta_grad(params, tasks)  # the batch: their mean
    mean = lambda *v: sum(v) / n  # noqa: E731
    assert_trees_close(got, _tree.map(mean, *[g for g, _ in each]), rtol=1e-10, atol=1e-12)
    assert_trees_close(losses, _tree.map(mean, *[m for _, m in each]), rtol=1e-10, atol=1e-12)
    # and the scores: per task, padded as alone
    scores = mf.evaluate(learner, params, tasks, predict=predict)
    for i in range(n):
        single = mf.evaluate(learner, params, alone(tasks, i), predict=predict)
        assert scores.accuracy.values[i] == single.accuracy.values[0]
        torch.testing.assert_close(scores.loss.values[i], single.loss.values[0], rtol=1e-10, atol=0)
