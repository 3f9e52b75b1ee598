"""apply_if_finite: the gradient and the result of the update are checked, a refused update
leaves parameters and state bit for bit, optax's max_consecutive_errors, the verdict read out
of any state, on the device under compile and vmap."""

import pytest
import torch
import torch._dynamo.testing

import metafunc as mf
from metafunc import _tree

F64 = torch.float64


def same_bits(a, b):
    """Bit-identical trees (torch.equal would call -0.0 and +0.0 equal)."""
    return all(
        x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8))
        if x.is_floating_point()
        else torch.equal(x, y)
        for x, y in zip(_tree.leaves(a), _tree.leaves(b), strict=True)
    )


def step(opt, params, state, grads):
    updates, state = opt.update(grads, state, params)
    return mf.optim.apply_updates(params, updates), state


def test_a_nan_gradient_is_refused_and_a_finite_one_applied():
    opt = mf.optim.apply_if_finite(mf.optim.adam(0.1))
    params = {"w": torch.tensor([1.0, -0.0, 2.0], dtype=F64)}
    params, state = step(opt, params, opt.init(params), {"w": torch.ones(3, dtype=F64)})
    assert bool(state.last_finite) and int(state.inner_state.count) == 1

    bad = {"w": torch.tensor([1.0, float("nan"), 1.0], dtype=F64)}
    new, new_state = step(opt, params, state, bad)
    assert same_bits(new, params) and same_bits(new_state.inner_state, state.inner_state)
    assert not bool(new_state.last_finite)
    assert (int(new_state.notfinite_count), int(new_state.total_notfinite)) == (1, 1)

    new, new_state = step(opt, new, new_state, {"w": torch.ones(3, dtype=F64)})
    assert not torch.equal(new["w"], params["w"]) and int(new_state.inner_state.count) == 2
    assert bool(new_state.last_finite)
    assert (int(new_state.notfinite_count), int(new_state.total_notfinite)) == (0, 1)


def test_a_refused_update_keeps_a_negative_zero_parameter():
    """x + 0.0 would turn -0.0 into +0.0; the refused update is -0.0."""
    opt = mf.optim.apply_if_finite(mf.optim.sgd(0.1))
    params = {"w": torch.tensor([-0.0, 0.0, -1.0])}
    new, state = step(opt, params, opt.init(params), {"w": torch.full((3,), float("inf"))})
    assert not bool(state.last_finite)
    assert torch.signbit(new["w"]).tolist() == [True, False, True]
    assert same_bits(new, params)


def test_finite_gradients_that_make_the_parameters_inf_are_refused():
    """sgd(1e38) on finite gradients: the updates are finite, params + updates are not."""
    params = {"w": torch.tensor([3e38, 1.0])}
    grads = {"w": torch.tensor([-1.0, 0.5])}
    unguarded, _ = step(mf.optim.sgd(1e38), params, mf.optim.sgd(1e38).init(params), grads)
    assert bool(torch.isinf(unguarded["w"][0]))  # what the guard must stop
    opt = mf.optim.apply_if_finite(mf.optim.sgd(1e38))
    new, state = step(opt, params, opt.init(params), grads)
    assert same_bits(new, params) and not bool(state.last_finite)


def test_a_finite_update_that_overflows_the_optimizer_state_is_refused():
    """A gradient of 1e30 in float32: Adam's update is finite (m / sqrt(inf) = 0) but its
    second moment g * g overflows to inf, which would poison every later step."""
    params = {"w": torch.ones(2)}
    grads = {"w": torch.tensor([1e30, 1.0])}
    updates, inner = mf.optim.adam(0.1).update(grads, mf.optim.adam(0.1).init(params), params)
    assert bool(torch.isfinite(updates["w"]).all()) and bool(torch.isinf(inner.nu["w"][0]))
    opt = mf.optim.apply_if_finite(mf.optim.adam(0.1))
    state = opt.init(params)
    new, new_state = step(opt, params, state, grads)
    assert same_bits(new, params) and same_bits(new_state.inner_state, state.inner_state)
    assert not bool(new_state.last_finite)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_parameters_that_would_overflow_are_refused(dtype):
    big = torch.finfo(dtype).max / 2
    params = {"w": torch.tensor([big, 1.0], dtype=dtype)}
    grads = {"w": torch.tensor([-1.0, 1.0], dtype=dtype)}
    plain = mf.optim.sgd(torch.finfo(dtype).max)
    assert bool(torch.isinf(step(plain, params, plain.init(params), grads)[0]["w"][0]))
    opt = mf.optim.apply_if_finite(plain)
    new, state = step(opt, params, opt.init(params), grads)
    assert same_bits(new, params) and not bool(state.last_finite)
    # and Adam on the same parameters, whose moments are float32, steps finitely
    opt = mf.optim.apply_if_finite(mf.optim.adam(1e-2))
    new, state = step(opt, params, opt.init(params), grads)
    assert bool(state.last_finite) and bool(torch.isfinite(new["w"]).all())
    assert not torch.equal(new["w"][1], params["w"][1])


def test_max_consecutive_errors_lets_the_next_one_through_as_optax():
    opt = mf.optim.apply_if_finite(mf.optim.sgd(0.1), max_consecutive_errors=2)
    params = {"w": torch.zeros(2)}
    state = opt.init(params)
    nan = {"w": torch.tensor([float("nan"), 1.0])}
    applied = []
    for grads in (nan, nan, nan, nan, {"w": torch.ones(2)}, nan):
        new, state = step(opt, params, state, grads)
        applied.append(not same_bits(new, params))
        params = new if bool(state.last_finite) else params  # keep the run finite
    assert applied == [False, False, True, True, True, False]
    assert int(state.total_notfinite) == 5 and int(state.notfinite_count) == 1

    never = mf.optim.apply_if_finite(mf.optim.sgd(0.1))
    params, state = {"w": torch.zeros(2)}, never.init({"w": torch.zeros(2)})
    for _ in range(5):
        new, state = step(never, params, state, nan)
        assert same_bits(new, params)
    assert int(state.notfinite_count) == 5


def test_an_update_let_through_takes_the_wrapped_optimizers_new_state():
    """With max_consecutive_errors, the update let through is the wrapped optimizer's, and so is
    its new state: Adam's count, mu and nu, as an unguarded Adam computes them from the same
    state (sgd, whose state holds no tensor, cannot tell the old state from the new)."""
    adam = mf.optim.adam(0.1)
    opt = mf.optim.apply_if_finite(adam, max_consecutive_errors=1)
    params = {"w": torch.tensor([1.0, 2.0, 3.0], dtype=F64)}
    params, state = step(opt, params, opt.init(params), {"w": torch.ones(3, dtype=F64)})
    bad = {"w": torch.tensor([0.5, float("inf"), -0.5], dtype=F64)}

    refused, refused_state = step(opt, params, state, bad)  # the first in a row: refused
    assert same_bits(refused, params) and same_bits(refused_state.inner_state, state.inner_state)

    want_updates, want_inner = adam.update(bad, refused_state.inner_state, params)
    updates, through = opt.update(bad, refused_state, params)  # the second: let through
    assert not bool(through.last_finite) and int(through.notfinite_count) == 2
    assert same_bits(updates, want_updates) and same_bits(through.inner_state, want_inner)
    assert int(through.inner_state.count) == 2  # not the 1 it held
    assert torch.isinf(through.inner_state.mu["w"][1]) and torch.isnan(updates["w"][1])
    # the finite elements moved on too: the moments are not the old ones
    assert not torch.equal(through.inner_state.nu["w"][0], state.inner_state.nu["w"][0])


def test_last_finite_and_is_guarded_find_the_guard_anywhere():
    params = {"w": torch.ones(2)}
    plain = mf.optim.chain(mf.optim.clip(1.0), mf.optim.adam(0.1))
    assert mf.optim.last_finite(plain.init(params)) is None
    assert not mf.optim.is_guarded(plain.init(params))

    inner = mf.optim.apply_if_finite(mf.optim.sgd(0.1))
    opt = mf.optim.chain(mf.optim.clip(1.0), inner)
    state = opt.init(params)
    assert mf.optim.is_guarded(state) and bool(mf.optim.last_finite(state))
    _, state = opt.update({"w": torch.tensor([float("nan"), 0.0])}, state, params)
    verdict = mf.optim.last_finite(state)
    assert verdict.dtype == torch.bool and not bool(verdict)

    nested = mf.optim.apply_if_finite(mf.optim.chain(mf.optim.clip(1.0), inner))
    state = nested.init(params)
    # a verdict True outside and False inside reads False
    clip_state, guard_state = state.inner_state
    guard_state = guard_state._replace(last_finite=torch.tensor(False))
    state = state._replace(inner_state=(clip_state, guard_state))
    assert bool(state.last_finite)
    assert not bool(mf.optim.last_finite(state))


def guard_by_hand(inner, max_consecutive_errors, params, sequence):
    """apply_if_finite's rule written out step by step: each update of the unguarded ``inner``
    optimizer is applied, with its new state, when the gradient, the update, the new
    parameters and the new state are finite, or when more than ``max_consecutive_errors`` in a
    row were not; otherwise parameters and state stay. Yields (params, inner state, finite,
    in a row, total) after each gradient."""
    state, in_a_row, total = inner.init(params), 0, 0
    for grads in sequence:
        updates, new = inner.update(grads, state, params)
        moved = mf.optim.apply_updates(params, updates)
        finite = all(
            bool(torch.isfinite(t).all()) for t in _tree.leaves((grads, updates, moved, new))
        )
        in_a_row = 0 if finite else in_a_row + 1
        total += not finite
        if finite or (max_consecutive_errors is not None and in_a_row > max_consecutive_errors):
            params, state = moved, new
        yield params, state, finite, in_a_row, total


@pytest.mark.parametrize("max_consecutive_errors", [None, 1], ids=["never", "after-1"])
def test_the_guard_compiled_and_eager_follow_the_rule_written_by_hand(max_consecutive_errors):
    """One graph, and both the compiled and the eager guard against :func:`guard_by_hand` over
    gradients that are finite, refused, finite again, then refused or let through (into Adam's
    moments)."""
    adam = mf.optim.adam(0.1)
    opt = mf.optim.apply_if_finite(adam, max_consecutive_errors=max_consecutive_errors)
    params = {"w": torch.tensor([1.0, 2.0], dtype=F64)}
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(opt.update, fullgraph=True, dynamic=False, backend=counter)
    ones, nan = torch.ones(2, dtype=F64), torch.tensor([float("nan"), 1.0], dtype=F64)
    half_inf = torch.tensor([0.5, float("inf")], dtype=F64)
    sequence = [{"w": g} for g in (ones, nan, -ones, half_inf, half_inf, ones, -ones)]
    want = list(guard_by_hand(adam, max_consecutive_errors, params, sequence))
    # let through, the infinite moment makes every later update non-finite
    after = [True, True] if max_consecutive_errors is None else [False, False]
    assert [finite for _, _, finite, _, _ in want] == [True, False, True, False, False, *after]
    for run in (opt.update, compiled):
        p, state = params, opt.init(params)
        for grads, (w_params, w_inner, finite, in_a_row, total) in zip(sequence, want, strict=True):
            updates, state = run(grads, state, p)
            p = mf.optim.apply_updates(p, updates)
            assert same_bits(p, w_params) and same_bits(state.inner_state, w_inner)
            assert bool(state.last_finite) == finite
            assert (int(state.notfinite_count), int(state.total_notfinite)) == (in_a_row, total)
    assert counter.frame_count == 1
    let_through = not torch.isfinite(p["w"]).all()  # the hand rule did let one through
    assert bool(let_through) == (max_consecutive_errors is not None)


def test_under_vmap_each_task_is_guarded_on_its_own():
    opt = mf.optim.apply_if_finite(mf.optim.sgd(0.5, momentum=0.9))
    params = {"w": torch.ones(3, dtype=F64)}
    grads = torch.tensor([[1.0, 1.0], [float("inf"), 1.0], [2.0, 2.0]], dtype=F64)

    def one_task(g):
        state = opt.init(params)
        updates, state = opt.update({"w": g[0] * params["w"]}, state, params)
        return mf.optim.apply_updates(params, updates)["w"], state.last_finite

    new, finite = torch.func.vmap(one_task)(grads)
    assert finite.tolist() == [True, False, True]
    torch.testing.assert_close(new[0], torch.full((3,), 0.5, dtype=F64))
    assert torch.equal(new[1], params["w"])
    torch.testing.assert_close(new[2], torch.zeros(3, dtype=F64))
