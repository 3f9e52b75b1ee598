"""BOIL, ProtoNet and ProtoMAML through the whole API: the compiled step equals the eager one
in one graph (also over padded batches of different ways and shots), checkpoints round-trip
and a resumed run is bit-exact, and mf.evaluate scores them."""

import functools

import pytest
import torch
from support import assert_equal_states, assert_trees_close
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import metafunc as mf

F64 = torch.float64
ALGOS = ["boil", "protonet", "protomaml"]


def setup(algo, padded=False):
    """A small classifier on 8x8 glyphs; ProtoNet and ProtoMAML get it without its head."""
    torch.manual_seed(0)  # test-only: fixes nn.Linear's default initialisation
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    glyphs = mf.tasks.synthetic_glyphs(
        torch.Generator().manual_seed(0), classes=12, examples=6, image_size=8
    )
    if algo in ("protonet", "protomaml"):
        embed, params = mf.pure(net[:-1])
        predict = mf.classifier(embed)
        learner = (
            mf.protonet(embed)
            if algo == "protonet"
            else mf.protomaml(embed, inner_lr=0.3, inner_steps=2)
        )
    else:
        predict, params = mf.pure(net)
        loss = mf.supervised(predict, mf.losses.cross_entropy)
        learner = {
            "boil": mf.boil(loss, head="3", inner_lr=0.3, inner_steps=2),
            "maml": mf.maml(loss, inner_lr=0.3, inner_steps=2),
        }[algo]
    shape = {"ways": (2, 3), "shots": (1, 2)} if padded else {"ways": 3, "shots": 2}
    draw = mf.tasks.variable_fewshot if padded else mf.tasks.fewshot
    sampler = functools.partial(draw, dataset=glyphs, tasks=3, queries=2, dtype=F64, **shape)
    return learner, params, predict, sampler


@pytest.mark.compile
@pytest.mark.parametrize(
    ("algo", "padded"),
    [*((a, False) for a in ALGOS), ("maml", True), ("protonet", True), ("protomaml", True)],
)
def test_compiled_step_equals_eager_with_one_graph(algo, padded):
    learner, params, _, sampler = setup(algo, padded)
    opt = mf.optim.adam(1e-2)
    eager = mf.make_step(learner, opt, compile=False)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = mf.make_step(learner, opt, backend=counter)
    s_eager = s_comp = mf.init_state(learner, opt, params)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # padded: each batch draws other ways and shots, in the same shapes
        tasks = sampler(g)
        s_eager, m_eager = eager(s_eager, tasks)
        s_comp, m_comp = compiled(s_comp, tasks)
        assert_trees_close(s_comp, s_eager, rtol=1e-9, atol=1e-11)
        assert_trees_close(m_comp, m_eager, rtol=1e-9, atol=1e-11)
        assert bool(m_eager.finite)
    assert counter.frame_count == 1  # one graph: no graph breaks, no recompiles


@pytest.mark.parametrize("algo", ALGOS)
def test_checkpoints_round_trip_and_a_resumed_run_is_bit_exact(tmp_path, algo):
    learner, params, _, sampler = setup(algo)
    opt = mf.optim.adam(1e-2)
    step = mf.make_step(learner, opt, compile=False)
    run = functools.partial(mf.train, step, data=sampler, progress=False)
    g_straight = torch.Generator().manual_seed(1)
    straight = run(mf.init_state(learner, opt, params), steps=4, generator=g_straight)
    path = tmp_path / "c.pt"
    first = run(
        mf.init_state(learner, opt, params),
        steps=2,
        generator=torch.Generator().manual_seed(1),
        hooks=[mf.hooks.Checkpoints(path)],
    )
    assert_equal_states(mf.load(path, like=first), first)  # the round trip
    g_resumed = torch.Generator().manual_seed(99)  # everything must come from the file
    resumed = run(
        mf.init_state(learner, opt, params),
        steps=4,
        generator=g_resumed,
        hooks=[mf.hooks.Checkpoints(path, resume=True)],
    )
    assert_equal_states(resumed, straight)
    assert int(resumed.step) == 4 and torch.equal(g_resumed.get_state(), g_straight.get_state())
    assert not torch.equal(learner.params(straight.meta)["1.weight"], params["1.weight"])


@pytest.mark.parametrize("algo", ALGOS)
def test_evaluate_scores_each_learner_with_its_predict(algo):
    learner, params, predict, sampler = setup(algo)
    tasks = sampler(torch.Generator().manual_seed(3))
    scores = mf.evaluate(learner, params, tasks, predict=predict)
    assert scores.accuracy.values.shape == (3,) and scores.mse is None
    # the accuracy counts the arg-max of the adapted classifier's logits, task by task
    adapted = learner.adapt(params, tasks.support)
    logits = torch.func.vmap(predict)(adapted, tasks.query[0])
    want = (logits.argmax(-1) == tasks.query[1]).double().mean(1)
    torch.testing.assert_close(scores.accuracy.values, want, rtol=0, atol=0)
    # adapting on the support helps on it: the support loss after is below the loss before
    again = mf.evaluate(learner, params, mf.Tasks(tasks.support, tasks.support))
    assert (again.loss.values < again.loss_before.values).all()
