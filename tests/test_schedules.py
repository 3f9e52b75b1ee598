"""Schedules against their formulas written out by hand, traced without recompiles, and a
schedule inside the compiled outer step equal to the eager one."""

import functools
import math

import pytest
import torch
import torch._dynamo.testing

import metafunc as mf
from metafunc import _tree


def at(schedule, count):
    value = schedule(torch.tensor(count, dtype=torch.int64))
    assert value.dtype == torch.float64 and value.shape == ()
    return float(value)


def linear(t, init, end, steps, begin):
    if t <= begin:
        return init
    if t >= begin + steps:
        return end
    return init + (end - init) * (t - begin) / steps


def cosine(t, init, steps, alpha, exponent):
    t = min(t, steps)
    return init * ((1 - alpha) * (0.5 * (1 + math.cos(math.pi * t / steps))) ** exponent + alpha)


def warmup_cosine(t, init, peak, warmup, total, end, exponent):
    if t < warmup:
        return init + (peak - init) * t / warmup
    return cosine(t - warmup, peak, total - warmup, end / peak, exponent)


def exponential(t, init, steps, rate, begin, staircase, end):
    if t <= begin:
        value = init
    else:
        p = (t - begin) / steps
        value = init * rate ** (math.floor(p) if staircase else p)
    if end is None:
        return value
    return max(value, end) if rate < 1 else min(value, end)


def piecewise(t, init, bounds):
    for boundary, scale in sorted(bounds.items()):
        if t >= boundary:
            init *= scale
    return init


# (schedule, the same formula by hand, counts: boundaries and either side of them)
CASES = {
    "constant": (mf.optim.constant_schedule(0.3), lambda t: 0.3, [0, 1, 10**9]),
    "linear": (
        mf.optim.linear_schedule(1.0, 0.01, transition_steps=100),
        functools.partial(linear, init=1.0, end=0.01, steps=100, begin=0),
        [0, 1, 37, 99, 100, 101, 500],
    ),
    "linear-begin-rising": (
        mf.optim.linear_schedule(0.0, 2.0, transition_steps=8, transition_begin=5),
        functools.partial(linear, init=0.0, end=2.0, steps=8, begin=5),
        [0, 4, 5, 6, 12, 13, 14],
    ),
    "cosine": (
        mf.optim.cosine_decay_schedule(0.1, decay_steps=40),
        functools.partial(cosine, init=0.1, steps=40, alpha=0.0, exponent=1.0),
        [0, 1, 20, 39, 40, 41, 1000],
    ),
    "cosine-alpha-exponent": (
        mf.optim.cosine_decay_schedule(2.0, decay_steps=30, alpha=0.1, exponent=2.5),
        functools.partial(cosine, init=2.0, steps=30, alpha=0.1, exponent=2.5),
        [0, 7, 29, 30, 31],
    ),
    "warmup-cosine": (
        mf.optim.warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=10, decay_steps=50),
        functools.partial(
            warmup_cosine, init=0.0, peak=1e-3, warmup=10, total=50, end=0.0, exponent=1.0
        ),
        [0, 1, 9, 10, 11, 30, 49, 50, 51, 200],
    ),
    "warmup-cosine-end-exponent": (
        mf.optim.warmup_cosine_decay_schedule(
            1e-4, 1e-2, warmup_steps=3, decay_steps=20, end_value=1e-3, exponent=0.5
        ),
        functools.partial(
            warmup_cosine, init=1e-4, peak=1e-2, warmup=3, total=20, end=1e-3, exponent=0.5
        ),
        [0, 2, 3, 4, 19, 20, 21],
    ),
    "warmup-cosine-no-warmup": (
        mf.optim.warmup_cosine_decay_schedule(5.0, 1.0, warmup_steps=0, decay_steps=10),
        functools.partial(
            warmup_cosine, init=5.0, peak=1.0, warmup=0, total=10, end=0.0, exponent=1.0
        ),
        [0, 1, 10, 11],
    ),
    "exponential": (
        mf.optim.exponential_decay(0.1, transition_steps=10, decay_rate=0.5),
        functools.partial(
            exponential, init=0.1, steps=10, rate=0.5, begin=0, staircase=False, end=None
        ),
        [0, 1, 5, 10, 33],
    ),
    "exponential-staircase-begin-end": (
        mf.optim.exponential_decay(1.0, 4, 0.1, transition_begin=3, staircase=True, end_value=2e-3),
        functools.partial(
            exponential, init=1.0, steps=4, rate=0.1, begin=3, staircase=True, end=2e-3
        ),
        [0, 3, 4, 6, 7, 10, 11, 14, 15, 100],
    ),
    "exponential-growing-capped": (
        mf.optim.exponential_decay(1.0, 2, 3.0, end_value=10.0),
        functools.partial(
            exponential, init=1.0, steps=2, rate=3.0, begin=0, staircase=False, end=10.0
        ),
        [0, 1, 4, 5, 9],
    ),
    "piecewise": (
        mf.optim.piecewise_constant_schedule(0.5, {100: 0.1, 20: 0.5, 300: 0.0}),
        functools.partial(piecewise, init=0.5, bounds={100: 0.1, 20: 0.5, 300: 0.0}),
        [0, 19, 20, 21, 99, 100, 101, 299, 300, 301],
    ),
    "piecewise-none": (
        mf.optim.piecewise_constant_schedule(0.5),
        lambda t: 0.5,
        [0, 1000],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_schedule_matches_its_formula(case):
    schedule, formula, counts = CASES[case]
    for t in counts:
        assert at(schedule, t) == pytest.approx(formula(t), rel=1e-14, abs=1e-300), t


def test_the_boundaries_are_where_optax_puts_them():
    """Spelled out: the value at each boundary count, where an off-by-one would show."""
    warm = mf.optim.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=4, decay_steps=8)
    assert [at(warm, t) for t in (0, 4, 6, 8, 9)] == pytest.approx([0.0, 1.0, 0.5, 0.0, 0.0])
    piece = mf.optim.piecewise_constant_schedule(1.0, {3: 0.5})
    assert [at(piece, t) for t in (2, 3)] == [1.0, 0.5]  # the scale applies from the boundary
    stair = mf.optim.exponential_decay(1.0, 2, 0.5, staircase=True)
    assert [at(stair, t) for t in (1, 2, 3, 4)] == [1.0, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("case", list(CASES))
def test_schedule_traces_once_for_every_count(case):
    schedule, _, counts = CASES[case]
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(schedule, fullgraph=True, dynamic=False, backend=counter)
    for t in counts:
        count = torch.tensor(t, dtype=torch.int64)
        assert torch.equal(compiled(count), schedule(count))
    assert counter.frame_count == 1


@pytest.mark.compile
def test_schedule_in_the_compiled_step_equals_eager_and_compiles_once():
    """Warmup to step 2, cosine decay to step 5 inside a guarded chain, over 7 steps."""
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.blog_sine_net(g, hidden=4).double())
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=3e-2, inner_steps=1)
    schedule = mf.optim.warmup_cosine_decay_schedule(0.0, 1e-1, warmup_steps=2, decay_steps=5)
    opt = mf.optim.apply_if_finite(
        mf.optim.chain(mf.optim.clip_by_global_norm(1.0), mf.optim.adamw(schedule))
    )
    state = mf.init_state(learner, opt, params)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = mf.make_step(learner, opt, compile=True, backend=counter)
    eager = mf.make_step(learner, opt, compile=False)
    sampler = functools.partial(mf.tasks.sine, tasks=3, dtype=torch.float64)
    s_eager = s_comp = state
    moved = []
    for _ in range(7):
        tasks = sampler(g)
        before = s_eager.meta
        s_eager, m_eager = eager(s_eager, tasks)
        s_comp, m_comp = compiled(s_comp, tasks)
        for a, b in zip(
            _tree.leaves((s_comp, m_comp)), _tree.leaves((s_eager, m_eager)), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        moved.append(not torch.equal(s_eager.meta["0.weight"], before["0.weight"]))
    assert counter.frame_count == 1
    # lr 0 at the first update and after the decay, weight decay included: nothing moves then
    assert moved == [False, True, True, True, True, False, False]
    assert bool(mf.optim.last_finite(s_comp.opt_state))
    assert int(s_comp.opt_state.inner_state[1].count) == 7


BAD = [
    ("constant-value", lambda: mf.optim.constant_schedule("1"), TypeError,
     r"^constant_schedule: value must be a number \(got '1' of type str\)$"),
    ("linear-init_value-nan", lambda: mf.optim.linear_schedule(math.nan, 0.0, 10), ValueError,
     r"^linear_schedule: init_value must be a finite number \(got nan\)$"),
    ("linear-end_value", lambda: mf.optim.linear_schedule(1.0, None, 10), TypeError,
     r"^linear_schedule: end_value must be a number \(got None of type NoneType\)$"),
    ("linear-transition_steps", lambda: mf.optim.linear_schedule(1.0, 0.0, 0), ValueError,
     r"^linear_schedule: transition_steps must be an integer >= 1 \(got 0\)$"),
    ("linear-transition_begin", lambda: mf.optim.linear_schedule(1.0, 0.0, 5, -1), ValueError,
     r"^linear_schedule: transition_begin must be an integer >= 0 \(got -1\)$"),
    ("cosine-decay_steps", lambda: mf.optim.cosine_decay_schedule(1.0, 10.0), TypeError,
     r"^cosine_decay_schedule: decay_steps must be an integer \(got 10\.0 of type float\)$"),
    ("cosine-alpha", lambda: mf.optim.cosine_decay_schedule(1.0, 10, alpha=math.inf), ValueError,
     r"^cosine_decay_schedule: alpha must be a finite number \(got inf\)$"),
    ("cosine-exponent", lambda: mf.optim.cosine_decay_schedule(1.0, 10, exponent=0), ValueError,
     r"^cosine_decay_schedule: exponent must be a positive finite number \(got 0\)$"),
    ("warmup-cosine-decay-before-warmup-end",
     lambda: mf.optim.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10), ValueError,
     r"^warmup_cosine_decay_schedule: decay_steps must be greater than warmup_steps, since it "
     r"counts the warmup too \(got decay_steps=10, warmup_steps=10\)$"),
    ("warmup-cosine-warmup_steps",
     lambda: mf.optim.warmup_cosine_decay_schedule(0.0, 1.0, -1, 10), ValueError,
     r"^warmup_cosine_decay_schedule: warmup_steps must be an integer >= 0 \(got -1\)$"),
    ("warmup-cosine-peak_value",
     lambda: mf.optim.warmup_cosine_decay_schedule(0.0, "1e-3", 1, 10), TypeError,
     r"^warmup_cosine_decay_schedule: peak_value must be a number \(got '1e-3' of type str\)$"),
    ("warmup-cosine-end_value",
     lambda: mf.optim.warmup_cosine_decay_schedule(0.0, 1.0, 1, 10, end_value=math.nan),
     ValueError, r"^warmup_cosine_decay_schedule: end_value must be a finite number \(got nan\)$"),
    ("warmup-cosine-exponent",
     lambda: mf.optim.warmup_cosine_decay_schedule(0.0, 1.0, 1, 10, exponent=-1.0),
     ValueError, r"^warmup_cosine_decay_schedule: exponent must be a positive finite number "
     r"\(got -1\.0\)$"),
    ("exponential-transition_steps", lambda: mf.optim.exponential_decay(1.0, 0, 0.5), ValueError,
     r"^exponential_decay: transition_steps must be an integer >= 1 \(got 0\)$"),
    ("exponential-decay_rate", lambda: mf.optim.exponential_decay(1.0, 10, 0.0), ValueError,
     r"^exponential_decay: decay_rate must be a positive finite number \(got 0\.0\)$"),
    ("exponential-transition_begin", lambda: mf.optim.exponential_decay(1.0, 10, 0.5, -2),
     ValueError, r"^exponential_decay: transition_begin must be an integer >= 0 \(got -2\)$"),
    ("exponential-staircase", lambda: mf.optim.exponential_decay(1.0, 10, 0.5, staircase="yes"),
     TypeError, r"^exponential_decay: staircase must be True or False \(got 'yes'\)$"),
    ("exponential-end_value", lambda: mf.optim.exponential_decay(1.0, 10, 0.5, end_value=math.inf),
     ValueError, r"^exponential_decay: end_value must be a finite number \(got inf\)$"),
    ("piecewise-init_value", lambda: mf.optim.piecewise_constant_schedule(None), TypeError,
     r"^piecewise_constant_schedule: init_value must be a number \(got None of type NoneType\)$"),
    ("piecewise-not-a-dict", lambda: mf.optim.piecewise_constant_schedule(1.0, [(10, 0.1)]),
     TypeError, r"^piecewise_constant_schedule: boundaries_and_scales must be a dict "
     r"\{step: scale\} or None \(got list\)$"),
    ("piecewise-boundary", lambda: mf.optim.piecewise_constant_schedule(1.0, {"10": 0.1}),
     TypeError, r"^piecewise_constant_schedule: each boundary must be an integer \(got '10' of "
     r"type str\)$"),
    ("piecewise-negative-boundary", lambda: mf.optim.piecewise_constant_schedule(1.0, {-1: 0.1}),
     ValueError, r"^piecewise_constant_schedule: each boundary must be an integer >= 0 \(got -1\)$"),
    ("piecewise-scale", lambda: mf.optim.piecewise_constant_schedule(1.0, {10: -0.1}),
     ValueError, r"^piecewise_constant_schedule: boundaries_and_scales\[10\] must be a "
     r"non-negative finite number \(got -0\.1\)$"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "exc", "pattern"), [pytest.param(*c[1:], id=c[0]) for c in BAD])
def test_bad_input_is_refused_with_a_message(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()
