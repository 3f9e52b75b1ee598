"""It learns: a seeded MAML run on the blog's sine infers the phase from 4 points.

A model that ignores the examples predicts the same curve for b = 0 and b = π; since
sin(x + π) = −sin(x), its grid MSE averaged over the two phases is at least mean(sin²) = 0.5.
"""

import functools
import math

import torch

import metafunc as mf
from metafunc.evaluation import sine_grid_error


def test_maml_learns_the_blog_sine():
    g = torch.Generator().manual_seed(0)
    fn, params = mf.functionalize(mf.models.blog_sine_net(g))
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
