"""Padded tasks: masked losses and scores, the variable-ways-and-shots sampler, and a padded
meta-batch that equals each task run alone."""

import pytest
import torch

import metafunc as mf

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
