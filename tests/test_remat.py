"""Rematerialised inner steps (``mf.remat``): the same meta-gradient, bit for bit in float64,
eager and compiled, with memory that does not grow with the inner steps."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from support import assert_compiled_step_equals_eager, daml_setup, peak_bytes, sine_tasks, tanh_net

import metafunc as mf
from metafunc import _tree

ALPHA = 0.1


def _pairs():
    """(learner without remat, the same with remat, params, tasks) per configuration."""
    fn, params = mf.pure(tanh_net())
    loss = mf.supervised(fn, mf.losses.mse)
    tasks = sine_tasks(n=3)
    *_, d_params, _, _, d_tasks = daml_setup()
    configs = {
        "maml": (mf.maml, dict(inner_lr=ALPHA, inner_steps=3)),
        "maml-zero-steps": (mf.maml, dict(inner_lr=ALPHA, inner_steps=0)),
        "fomaml": (mf.fomaml, dict(inner_lr=ALPHA, inner_steps=3)),
        # Adam's state holds an int64 counter; momentum SGD's holds None for it
        "maml-adam": (mf.maml, dict(inner_opt=mf.optim.adam(0.05), inner_steps=3)),
        "maml-momentum": (mf.maml, dict(inner_opt=mf.optim.sgd(0.05, momentum=0.9), inner_steps=2)),
        "maml-rate-tree": (
            mf.maml,
            dict(inner_lr=_tree.map(lambda p: torch.full_like(p, 0.05), params), inner_steps=2),
        ),
        "anil": (mf.anil, dict(head="2", inner_lr=ALPHA, inner_steps=3)),
        "meta_sgd": (mf.meta_sgd, dict(inner_lr=ALPHA, inner_steps=2)),
        "meta_sgd-first-order": (
            lambda loss, **kw: mf.first_order(mf.meta_sgd(loss, **kw)),
            dict(inner_lr=ALPHA, inner_steps=2),
        ),
    }
    out = {
        name: (make(loss, **kw), mf.remat(make(loss, **kw)), params, tasks)
        for name, (make, kw) in configs.items()
    }
    out["daml"] = (
        daml_setup(inner_steps=3)[4],
        mf.remat(daml_setup(inner_steps=3)[4]),
        d_params,
        d_tasks,
    )
    return out


PAIRS = list(_pairs())


@pytest.mark.parametrize("name", PAIRS)
def test_remat_meta_gradient_equals_the_exact_one_bit_for_bit(name):
    plain, remat, params, tasks = _pairs()[name]
    want, want_metrics = plain.meta_grad(plain.init(params), tasks)
    got, got_metrics = remat.meta_grad(remat.init(params), tasks)
    assert _tree.structure(got) == _tree.structure(want)
    for (path, g), w in zip(_tree.named_leaves(got), _tree.leaves(want), strict=True):
        assert torch.equal(g, w), f"{name} {path}: {(g - w).abs().max().item()}"
    for key in ("loss", "loss_before"):
        assert torch.equal(getattr(got_metrics, key), getattr(want_metrics, key))


def test_remat_is_not_first_order():
    # the Hessian terms are there: MAML's meta-gradient differs from FO-MAML's
    _, remat, params, tasks = _pairs()["maml"]
    fo = _pairs()["fomaml"][1]
    a = _tree.leaves(remat.meta_grad(params, tasks)[0])
    b = _tree.leaves(fo.meta_grad(params, tasks)[0])
    assert max((x - y).abs().max().item() for x, y in zip(a, b, strict=True)) > 1e-4


@pytest.mark.compile
@pytest.mark.parametrize("name", ["maml-adam", "meta_sgd"])
def test_compiled_remat_step_equals_eager_with_one_graph(name):
    _, learner, params, _ = _pairs()[name]
    assert_compiled_step_equals_eager(learner, params, tasks=2)


def test_remat_memory_does_not_grow_with_the_inner_steps():
    fn, params = mf.pure(tanh_net(width=16))
    loss = mf.supervised(fn, mf.losses.mse)
    tasks = sine_tasks(n=4, shots=50, queries=10)

    def peak(steps, remat):
        learner = mf.maml(loss, inner_lr=0.01, inner_steps=steps)
        learner = mf.remat(learner) if remat else learner
        return peak_bytes(lambda: learner.meta_grad(params, tasks))

    plain = peak(16, False) - peak(2, False)
    remat = peak(16, True) - peak(2, True)
    # measured: plain grows by 0.77 MB (every step's activations; 2.6 MB when the outer
    # gradient was torch.func.grad's), remat by 21952 bytes: the parameters carried between
    # steps, 14 steps x 4 tasks x 49 float64
    assert plain > 500_000
    assert remat < plain / 20


def _learners():
    loss = mf.supervised(lambda p, x: x, mf.losses.mse)
    outer = {"w": torch.ones(1)}
    daml = partial(mf.daml, lambda p, x: (x, x), lambda *a: a[1].sum(), outer, F.mse_loss)
    return [
        mf.maml(loss, inner_lr=ALPHA),
        mf.fomaml(loss, inner_lr=ALPHA),
        mf.anil(loss, head="2", inner_lr=ALPHA),
        mf.meta_sgd(loss, inner_lr=ALPHA),
        daml(inner_lr=ALPHA),
    ]


def test_remat_with_random_draws_is_refused_by_name():
    # the recomputed steps would draw new dropout masks: the gradient of another forward pass
    for learner in _learners():
        with pytest.raises(
            ValueError,
            match=r"^remat: recomputing each inner step .* \(got a learner with randomness='different'\)$",
        ):
            mf.remat(mf.stochastic(learner))
        with pytest.raises(ValueError, match=r"^stochastic: recomputing each inner step"):
            mf.stochastic(mf.remat(learner))


def test_remat_is_refused_where_nothing_differentiates_through_the_inner_loop():
    loss = mf.supervised(lambda p, x: x, mf.losses.mse)
    for learner in (
        mf.reptile(loss, inner_lr=ALPHA),
        mf.imaml(loss, inner_lr=ALPHA),
        mf.chunked(mf.maml(loss, inner_lr=ALPHA), 2),  # already chunked: remat goes first
    ):
        with pytest.raises(
            ValueError, match=r"^remat: the learner's meta-gradient is not the exact one"
        ):
            mf.remat(learner)
    with pytest.raises(TypeError, match=r"^remat: learner must be a metafunc\.Learner"):
        mf.remat("maml")
