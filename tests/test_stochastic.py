"""Models with random operations (dropout): a learner wrapped in ``mf.stochastic``
gives every task its own draws; the step seeds them from ``TrainState.rng`` so that runs are
reproducible from the seed and resume bit-exactly, never touching the caller's global RNG;
``mf.eval_mode`` scores deterministically; the compiled step draws what the eager one does."""

import functools
import tempfile
from pathlib import Path

import pytest
import torch
import torch._dynamo.utils
from support import assert_equal_states, dropout_net, graphs

import metafunc as mf
from metafunc import _tree
from metafunc._random import stream_seed

F64 = torch.float64


def setup(randomness="different", inner_steps=2, **kw):
    fn, params = mf.pure(dropout_net(**kw))
    loss = mf.supervised(fn, mf.losses.mse)
    learner = mf.stochastic(mf.maml(loss, inner_lr=0.1, inner_steps=inner_steps), randomness)
    return fn, params, learner, mf.optim.adam(1e-2)


SAMPLER = functools.partial(mf.tasks.sinusoid, tasks=4, shots=5, queries=5, dtype=F64)


def run(step, state, steps, **kw):
    g = torch.Generator().manual_seed(0)
    return mf.train(step, state, SAMPLER, steps=steps, generator=g, progress=False, **kw)


def test_same_seed_same_run_other_seed_other_run():
    _, params, learner, opt = setup()
    step = mf.make_step(learner, opt, compile=False)
    a = run(step, mf.init_state(learner, opt, params, seed=3), 4)
    b = run(step, mf.init_state(learner, opt, params, seed=3), 4)
    c = run(step, mf.init_state(learner, opt, params, seed=4), 4)
    assert_equal_states(a, b)
    assert not torch.equal(a.meta["0.weight"], c.meta["0.weight"])
    assert a.rng.tolist() == [3, 4]  # the seed, and the steps drawn from it


def test_the_step_never_reads_or_moves_the_callers_global_rng():
    _, params, learner, opt = setup()
    step = mf.make_step(learner, opt, compile=False)
    state = mf.init_state(learner, opt, params, seed=0)
    tasks = SAMPLER(torch.Generator().manual_seed(1))
    results = []
    for user_seed in (1, 2):
        torch.manual_seed(user_seed)
        before = torch.get_rng_state()
        results.append(step(state, tasks))
        assert torch.equal(torch.get_rng_state(), before)
    assert_equal_states(results[0], results[1])


def test_the_step_draws_from_the_documented_stream():
    """A step is meta_grad and update with torch's generator seeded by
    stream_seed(seed, steps drawn, rank): here by hand, with torch's own tools."""
    _, params, learner, opt = setup()
    state = mf.init_state(learner, opt, params, seed=5)
    state = state._replace(rng=torch.tensor([5, 7]))
    tasks = SAMPLER(torch.Generator().manual_seed(1))
    new, metrics = mf.make_step(learner, opt, compile=False)(state, tasks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(5, 7, 0))
        grads, by_hand = learner.meta_grad(state.meta, tasks)
    updates, _ = opt.update(grads, state.opt_state, state.meta)
    assert_equal_states(new.meta, mf.optim.apply_updates(state.meta, updates))
    assert torch.equal(metrics.loss, by_hand.loss)
    assert new.rng.tolist() == [5, 8]


@pytest.mark.parametrize("randomness", ["different", "same"])
def test_tasks_in_a_batch_get_their_own_masks_or_the_same(randomness):
    """Four copies of one task: adapted alike only if they drew the same dropout masks."""
    _, params, learner, _ = setup(randomness)
    one = SAMPLER(torch.Generator().manual_seed(1)).support
    support = _tree.map(lambda t: t[:1].expand(4, *t.shape[1:]).clone(), one)
    torch.manual_seed(0)  # test-only: adapt called directly draws from the global generator
    adapted = learner.adapt(params, support)["0.weight"]
    same = [torch.equal(adapted[0], adapted[i]) for i in range(1, 4)]
    assert same == ([True] * 3 if randomness == "same" else [False] * 3)


def test_resume_with_dropout_is_bit_exact():
    _, params, learner, opt = setup()
    step = mf.make_step(learner, opt, compile=False)
    straight = run(step, mf.init_state(learner, opt, params, seed=1), 6)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ckpt.pt"
        run(
            step, mf.init_state(learner, opt, params, seed=1), 3, hooks=[mf.hooks.Checkpoints(path)]
        )
        # fresh objects, another seed in the template: the checkpoint's stream must win
        _, params2, learner2, opt2 = setup()
        step2 = mf.make_step(learner2, opt2, compile=False)
        fresh = mf.init_state(learner2, opt2, params2, seed=99)
        resumed = run(step2, fresh, 6, hooks=[mf.hooks.Checkpoints(path, resume=True)])
    assert_equal_states(resumed, straight)
    assert resumed.rng.tolist() == [1, 6]


def test_eval_mode_is_deterministic_and_is_the_module_in_eval_mode():
    net = dropout_net()
    fn, params = mf.pure(net)
    predict = mf.eval_mode(fn)
    x = torch.linspace(-3, 3, 7, dtype=F64)[:, None]
    assert torch.equal(predict(params, x), predict(params, x))
    assert torch.equal(predict(params, x), net.eval()(x))
    torch.manual_seed(0)
    assert not torch.equal(fn(params, x), fn(params, x))  # fn itself still drops
    # a learner scoring with it needs no randomness: nothing random is left
    scorer = mf.maml(mf.supervised(predict, mf.losses.mse), inner_lr=0.1, inner_steps=2)
    tasks = SAMPLER(torch.Generator().manual_seed(2))
    assert torch.equal(scorer.per_task(params, tasks)[1], scorer.per_task(params, tasks)[1])


@pytest.mark.compile
def test_compiled_step_with_dropout_equals_eager_one_graph():
    """aot_eager runs torch's own kernels: the same draws and the same arithmetic, bit for bit."""
    _, params, learner, opt = setup(width=4, noise=0.1)
    eager = run(
        mf.make_step(learner, opt, compile=False), mf.init_state(learner, opt, params, seed=2), 3
    )
    before = graphs()
    step = mf.make_step(learner, opt, backend="aot_eager")
    compiled = run(step, mf.init_state(learner, opt, params, seed=2), 3)
    assert graphs() - before == 1
    assert_equal_states(compiled, eager)


@pytest.mark.compile
def test_inductor_step_with_random_ops_draws_what_eager_draws():
    """Inductor's own random kernels would draw other noise (then the parameters would differ
    by far more than rounding); make_step compiles a stochastic step with fallback_random."""
    _, params, learner, opt = setup(width=4, noise=0.1, inner_steps=1)
    eager = run(
        mf.make_step(learner, opt, compile=False), mf.init_state(learner, opt, params, seed=2), 3
    )
    before = graphs()
    compiled = run(mf.make_step(learner, opt), mf.init_state(learner, opt, params, seed=2), 3)
    assert graphs() - before == 1
    for a, b in zip(_tree.leaves(compiled), _tree.leaves(eager), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_stream_seeds_differ_by_seed_step_and_rank():
    seeds = {stream_seed(s, n, r) for s in range(3) for n in range(50) for r in range(4)}
    assert len(seeds) == 3 * 50 * 4
    assert all(0 <= s < 2**63 for s in seeds)
