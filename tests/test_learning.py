"""It learns: a seeded MAML run on the blog's sine infers the phase from 4 points.

A model that ignores the examples predicts the same curve for b = 0 and b = π; since
sin(x + π) = −sin(x), its grid MSE averaged over the two phases is at least mean(sin²) = 0.5.
"""

import functools
import math

import pytest
import torch

import metafunc as mf
from metafunc.evaluation import daml_grid_error, sine_grid_error, sinusoid_error


def test_maml_learns_the_blog_sine():
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.blog_sine_net(g))
    learner = mf.maml(mf.supervised(fn, mf.losses.l1), inner_lr=3e-2, inner_steps=5)
    opt = mf.optim.adam(3e-3)
    state = mf.init_state(learner, opt, params)
    step = mf.make_step(learner, opt, compile=False)
    sampler = functools.partial(mf.tasks.sine, tasks=8)
    state = mf.train(step, state, sampler, steps=1500, generator=g, progress=False)

    frozen = mf.maml(mf.supervised(fn, mf.losses.l1), inner_steps=0)
    ignoring = 0.0
    for phase in (0.0, math.pi):
        adapted = sine_grid_error(
            learner, fn, state.meta, torch.Generator().manual_seed(1), phase=phase, draws=200
        )
        assert adapted.mse.mean() < 0.2, (phase, adapted.mse.mean())
        # The same meta-parameters without adaptation predict one curve f for both phases:
        # MSE(0) + MSE(π) = 2 mean(f²) + 2 mean(sin²) ≥ 2 mean(sin²) ≈ 1.
        frozen_eval = sine_grid_error(
            frozen, fn, state.meta, torch.Generator(), phase=phase, draws=1
        )
        ignoring += frozen_eval.mse.item()
    bound = 2 * (frozen_eval.truth**2).mean().item()
    assert ignoring >= bound - 1e-9 and bound > 0.99


def _train_sinusoid(learner, params, *, steps, lr):
    g = torch.Generator().manual_seed(0)
    opt = mf.optim.adam(lr)
    step = mf.make_step(learner, opt, compile=False)
    sampler = functools.partial(mf.tasks.sinusoid, tasks=10, shots=10, queries=10)
    state = mf.train(
        step, mf.init_state(learner, opt, params), sampler, steps=steps, generator=g, progress=False
    )
    return state.meta


def _sinusoid_scores(learner, fn, meta):
    """Query MSE after adapting on 10 shots, and the same without adapting (inner_steps=0)."""
    frozen = mf.maml(mf.supervised(fn, mf.losses.mse), inner_steps=0)
    params = meta["params"] if isinstance(meta, dict) and "lr" in meta else meta
    after = sinusoid_error(learner, fn, meta, torch.Generator().manual_seed(1), tasks=300)
    before = sinusoid_error(frozen, fn, params, torch.Generator().manual_seed(1), tasks=300)
    return after.mean().item(), before.mean().item()


@pytest.mark.parametrize("algo", ["reptile", "meta_sgd"])
def test_reptile_and_meta_sgd_learn_the_sinusoid(algo):
    torch.manual_seed(0)  # test-only: nn.Linear's default initialisation
    fn, params = mf.pure(mf.models.mlp([1, 40, 40, 1]))
    loss = mf.supervised(fn, mf.losses.mse)
    if algo == "reptile":
        learner = mf.reptile(loss, inner_lr=0.02, inner_steps=5)
    else:
        learner = mf.meta_sgd(loss, inner_lr=0.01)
    untrained, _ = _sinusoid_scores(learner, fn, learner.init(params))
    after, before = _sinusoid_scores(
        learner, fn, _train_sinusoid(learner, params, steps=1000, lr=3e-3)
    )
    # An adapted MSE well under a third of the untrained net's, and adaptation itself helping.
    assert after < untrained / 3 and after < 0.7 * before, (after, before, untrained)


def test_daml_infers_the_phase_from_one_unlabeled_source_input():
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.blog_sine_net(g, features=True))
    loss_fn, phi = mf.pure(mf.models.mlp([65, 32, 32, 1]))

    def adaptation_loss(phi, y, hidden):
        h1, h2 = hidden
        return loss_fn(phi, torch.cat([y, h2, h1], -1)).pow(2).mean()

    learner = mf.daml(fn, adaptation_loss, phi, mf.losses.mse, inner_lr=3e-2, inner_steps=5)
    opt = mf.optim.adam(1e-3)
    step = mf.make_step(learner, opt, compile=False)
    sampler = functools.partial(mf.tasks.daml_sine, tasks=16, queries=10)
    state = mf.init_state(learner, opt, params)
    state = mf.train(step, state, sampler, steps=DAML_STEPS, generator=g, progress=False)
    predict = lambda p, x: fn(p, x)[0]  # noqa: E731
    for phase in (0.0, math.pi):
        r = daml_grid_error(
            learner, predict, state.meta, torch.Generator().manual_seed(1), phase=phase, draws=200
        )
        # Ignoring the source input cannot beat 0.5 averaged over the phases (module docstring).
        assert r.mse.mean() < 0.2, (phase, r.mse.mean())


DAML_STEPS = 600
