"""The functional optimizers against torch.optim in float64 over many steps, chain and clipping
against hand computations, half-precision parameters against a float32 reference, bad input."""

import math

import pytest
import torch

import metafunc as mf
from metafunc import _tree

STEPS = 60
F64 = torch.float64


def params_and_grads(seed=0, steps=STEPS, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    params = {
        "b.weight": torch.randn(4, 3, generator=g, dtype=dtype),
        "a.bias": torch.randn(3, generator=g, dtype=dtype),
    }
    # a different gradient at every step, fixed in advance
    grads = [
        {k: torch.randn(v.shape, generator=g, dtype=dtype) for k, v in params.items()}
        for _ in range(steps)
    ]
    return params, grads


def cosine(t, peak=0.1, steps=40):
    """cosine_decay_schedule(peak, steps) written out."""
    return peak * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))


def warmup_cosine(t, peak=3e-2, warmup=10, total=50):
    """warmup_cosine_decay_schedule(0, peak, warmup, total) written out."""
    if t < warmup:
        return peak * t / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(t - warmup, total - warmup) / (total - warmup)))


def halving(t, init=1e-2, every=15):
    """exponential_decay(init, every, 0.5) written out."""
    return init * 0.5 ** (t / every)


# (ours, torch class, torch kwargs, lr by hand as a function of the updates taken, or None)
CASES = {
    "sgd": (lambda: mf.optim.sgd(0.1), torch.optim.SGD, {"lr": 0.1}, None),
    "sgd-momentum": (
        lambda: mf.optim.sgd(0.1, momentum=0.9),
        torch.optim.SGD,
        {"lr": 0.1, "momentum": 0.9},
        None,
    ),
    "sgd-nesterov-decay": (
        lambda: mf.optim.sgd(0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
        None,
    ),
    "sgd-momentum-cosine": (
        lambda: mf.optim.sgd(mf.optim.cosine_decay_schedule(0.1, 40), momentum=0.9),
        torch.optim.SGD,
        {"lr": 0.1, "momentum": 0.9},
        cosine,
    ),
    "adam": (lambda: mf.optim.adam(1e-2), torch.optim.Adam, {"lr": 1e-2}, None),
    "adam-all-options": (
        lambda: mf.optim.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05),
        torch.optim.Adam,
        {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05},
        None,
    ),
    "adam-warmup-cosine": (
        lambda: mf.optim.adam(mf.optim.warmup_cosine_decay_schedule(0.0, 3e-2, 10, 50)),
        torch.optim.Adam,
        {"lr": 3e-2},
        warmup_cosine,
    ),
    "adamw": (lambda: mf.optim.adamw(1e-2), torch.optim.AdamW, {"lr": 1e-2}, None),
    "adamw-all-options": (
        lambda: mf.optim.adamw(3e-3, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.3),
        torch.optim.AdamW,
        {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.3},
        None,
    ),
    "adamw-exponential": (
        lambda: mf.optim.adamw(mf.optim.exponential_decay(1e-2, 15, 0.5), weight_decay=0.1),
        torch.optim.AdamW,
        {"lr": 1e-2, "weight_decay": 0.1},
        halving,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_optim(case):
    make, torch_cls, torch_kw, lr_at = CASES[case]
    params, grads = params_and_grads()
    opt = make()
    state = opt.init(params)
    ours = params

    reference = {k: v.clone().requires_grad_() for k, v in params.items()}
    torch_opt = torch_cls(list(reference.values()), foreach=False, **torch_kw)
    for t, g in enumerate(grads):
        updates, state = opt.update(g, state, ours)
        ours = mf.optim.apply_updates(ours, updates)
        if lr_at is not None:
            torch_opt.param_groups[0]["lr"] = lr_at(t)  # t updates taken before this one
        for k, p in reference.items():
            p.grad = g[k].clone()
        torch_opt.step()
    for k in params:
        torch.testing.assert_close(ours[k], reference[k].detach(), rtol=1e-12, atol=1e-13)
        assert not torch.equal(ours[k], params[k])  # it moved
    if isinstance(state, mf.optim.AdamState):
        assert int(state.count) == STEPS
        for k, p in reference.items():
            torch.testing.assert_close(
                state.mu[k], torch_opt.state[p]["exp_avg"], rtol=1e-12, atol=1e-14
            )
            torch.testing.assert_close(
                state.nu[k], torch_opt.state[p]["exp_avg_sq"], rtol=1e-12, atol=1e-14
            )
    if lr_at is not None:
        assert int(state.count) == STEPS


def test_a_schedule_changes_the_steps():
    """The schedule is used: a cosine to 0 over 5 updates leaves the parameters still after."""
    params, grads = params_and_grads(steps=8)
    opt = mf.optim.sgd(mf.optim.cosine_decay_schedule(0.1, 5))
    state = opt.init(params)
    sizes = []
    for g in grads:
        updates, state = opt.update(g, state, params)
        sizes.append(float(_tree.global_norm(updates)))
    norms = [float(_tree.global_norm(g)) for g in grads]
    for t in range(8):
        assert sizes[t] == pytest.approx(cosine(t, 0.1, 5) * norms[t], rel=1e-12, abs=1e-15)
    assert sizes[5:] == [0.0, 0.0, 0.0]


def global_norm_by_hand(tree):
    return math.sqrt(sum(float(x) ** 2 for t in tree.values() for x in t.flatten()))


@pytest.mark.parametrize("scale_grads", [0.05, 3.0], ids=["below-max-norm", "above-max-norm"])
def test_chain_clip_by_global_norm_then_sgd_momentum(scale_grads):
    params, grads = params_and_grads(steps=5)
    grads = [{k: scale_grads * v for k, v in g.items()} for g in grads]
    opt = mf.optim.chain(mf.optim.clip_by_global_norm(1.0), mf.optim.sgd(0.1, momentum=0.5))
    state = opt.init(params)
    assert isinstance(state, tuple) and len(state) == 2
    buf = {k: torch.zeros_like(v) for k, v in params.items()}
    for g in grads:
        updates, state = opt.update(g, state, params)
        norm = global_norm_by_hand(g)
        factor = 1.0 if norm <= 1.0 else 1.0 / norm
        buf = {k: 0.5 * buf[k] + factor * g[k] for k in g}
        for k in g:
            torch.testing.assert_close(updates[k], -0.1 * buf[k], rtol=1e-13, atol=1e-15)
    assert (norm > 1.0) == (scale_grads > 1)  # both cases are what their name says


# (max_norm, global norms of the gradient): below, between max_norm and its square (or square
# root), and above, so that comparing the squared norm with max_norm clips the wrong ones
CLIP_NORMS = [(0.5, [0.3, 0.6, 2.0]), (3.0, [1.0, 2.0, 5.0])]


@pytest.mark.parametrize(("max_norm", "norms"), CLIP_NORMS, ids=["max_norm=0.5", "max_norm=3"])
def test_clip_by_global_norm_against_a_hand_computation(max_norm, norms):
    params, (direction,) = params_and_grads(steps=1)
    size = global_norm_by_hand(direction)
    clip = mf.optim.clip_by_global_norm(max_norm)
    for norm in norms:
        g = {k: v * (norm / size) for k, v in direction.items()}
        got, _ = clip.update(g, clip.init(params), params)
        # by hand, element by element in Python floats
        total = global_norm_by_hand(g)
        assert total == pytest.approx(norm, rel=1e-14)
        factor = max_norm / total if total > max_norm else 1.0
        for k in g:
            want = [factor * float(x) for x in g[k].flatten()]
            assert got[k].flatten().tolist() == pytest.approx(want, rel=1e-14, abs=0), (norm, k)
        assert global_norm_by_hand(got) == pytest.approx(min(norm, max_norm), rel=1e-14)


def test_clip_then_adam_and_order_matters():
    params, grads = params_and_grads(steps=1)
    (g,) = grads
    clipped, state = mf.optim.clip(0.5).update(g, mf.optim.clip(0.5).init(params), params)
    assert state == mf.optim.EmptyState()
    for k in g:
        for x, c in zip(g[k].flatten().tolist(), clipped[k].flatten().tolist(), strict=True):
            assert c == (0.5 if x > 0.5 else -0.5 if x < -0.5 else x)
    assert any(abs(x) > 0.5 for t in g.values() for x in t.flatten().tolist())  # some clipped

    clip_sgd = mf.optim.chain(mf.optim.clip(0.5), mf.optim.sgd(2.0))
    sgd_clip = mf.optim.chain(mf.optim.sgd(2.0), mf.optim.clip(0.5))
    a, _ = clip_sgd.update(g, clip_sgd.init(params), params)
    b, _ = sgd_clip.update(g, sgd_clip.init(params), params)
    for k in g:
        torch.testing.assert_close(a[k], -2.0 * clipped[k], rtol=0, atol=0)
        torch.testing.assert_close(b[k], torch.clamp(-2.0 * g[k], -0.5, 0.5), rtol=0, atol=0)


def test_clip_by_global_norm_of_a_zero_gradient_has_a_finite_derivative():
    """sqrt at 0 has an infinite derivative; the clip's second-order gradient stays finite."""
    clip = mf.optim.clip_by_global_norm(1.0)
    p = {"w": torch.zeros(3, dtype=F64)}

    def f(w):
        g = {"w": w * w}  # exactly zero at w = 0, with a non-zero second derivative
        out, _ = clip.update(g, clip.init(p), p)
        return out["w"].sum()

    grad = torch.func.grad(f)(torch.zeros(3, dtype=F64))
    assert torch.equal(grad, torch.zeros(3, dtype=F64))


OPTIMIZERS = {
    "sgd": lambda: mf.optim.sgd(0.1),
    "sgd-momentum": lambda: mf.optim.sgd(0.1, momentum=0.9, weight_decay=0.1),
    "sgd-schedule": lambda: mf.optim.sgd(mf.optim.linear_schedule(0.1, 0.0, 10)),
    "adam": lambda: mf.optim.adam(1e-2, weight_decay=0.1),
    "adamw": lambda: mf.optim.adamw(mf.optim.constant_schedule(1e-2)),
    "chain": lambda: mf.optim.chain(mf.optim.clip_by_global_norm(0.1), mf.optim.adam(1e-2)),
    "guarded": lambda: mf.optim.apply_if_finite(mf.optim.adam(1e-2)),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_is_pure(name):
    params, grads = params_and_grads(steps=2)
    opt = OPTIMIZERS[name]()
    _, state = opt.update(grads[0], opt.init(params), params)  # a state with non-zero moments
    snapshot = _tree.copy((params, state, grads[1]))
    opt.update(grads[1], state, params)
    for a, b in zip(_tree.leaves((params, state, grads[1])), _tree.leaves(snapshot), strict=True):
        assert torch.equal(a, b)


def test_plain_sgd_keeps_no_state_and_a_schedule_keeps_a_count():
    params, _ = params_and_grads()
    assert _tree.leaves(mf.optim.sgd(0.1).init(params)) == []
    state = mf.optim.sgd(mf.optim.constant_schedule(0.1)).init(params)
    assert state.momentum is None and state.count.dtype == torch.int64 and int(state.count) == 0


def test_float32_stays_float32():
    params, grads = params_and_grads(dtype=torch.float32)
    for opt in (mf.optim.adam(1e-3), mf.optim.adamw(mf.optim.constant_schedule(1e-3))):
        state = opt.init(params)
        updates, state = opt.update(grads[0], state, params)
        assert all(t.dtype == torch.float32 for t in _tree.leaves((updates, state.mu, state.nu)))


# --- half precision ----------------------------------------------------------------------------

HALF = {
    "adam": lambda: mf.optim.adam(1e-2),
    "adamw": lambda: mf.optim.adamw(1e-2, weight_decay=0.1),
    "sgd-momentum": lambda: mf.optim.sgd(1e-2, momentum=0.9, weight_decay=0.1),
}
EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}  # the spacing of numbers in [1, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(HALF))
def test_half_precision_updates_are_the_float32_updates_cast(name, dtype):
    """Gradients with an exact 0 (0 / eps would be 0 / 0 with eps = 1e-8 in float16), a 300
    (its square overflows float16) and tiny ones: each update is exactly the float32
    optimizer's update for the same parameters and gradients, cast to the dtype."""
    opt = HALF[name]()
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(6, generator=g).to(dtype)}
    ref_state = opt.init(_tree.map(torch.Tensor.float, params))
    state = opt.init(params)
    for step in range(5):
        grad = torch.randn(6, generator=g) * 1e-3
        grad[0], grad[1] = 0.0, 300.0 * (-1) ** step
        grads = {"w": grad.to(dtype)}
        updates, state = opt.update(grads, state, params)
        ref_updates, ref_state = opt.update(
            _tree.map(torch.Tensor.float, grads), ref_state, _tree.map(torch.Tensor.float, params)
        )
        assert updates["w"].dtype == dtype
        assert torch.equal(updates["w"], ref_updates["w"].to(dtype))
        params = mf.optim.apply_updates(params, updates)
    floats = [t for t in _tree.leaves(state) if t.is_floating_point()]
    assert floats and {t.dtype for t in floats} == {torch.float32}
    assert bool(torch.isfinite(params["w"]).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_model_takes_finite_adam_steps(dtype):
    """A model computed in half precision, Adam on its parameters: finite, and within the
    dtype's precision of the same gradients applied in float32."""
    torch.manual_seed(0)  # test-only: fixes nn.Linear's default initialisation
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    fn, p32 = mf.pure(net)
    x = torch.linspace(-1, 1, 20).reshape(10, 2)
    y = x.sum(1, keepdim=True).sin()

    def loss(p):
        return mf.losses.mse(fn(p, x.to(dtype)), y.to(dtype))

    opt = mf.optim.adam(1e-2)
    params = _tree.map(lambda t: t.to(dtype), p32)
    ref_params = _tree.map(lambda t: t.float(), params)
    state, ref_state = opt.init(params), opt.init(ref_params)
    for _ in range(10):
        grads = torch.func.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        ref_updates, ref_state = opt.update(
            _tree.map(torch.Tensor.float, grads), ref_state, ref_params
        )
        params = mf.optim.apply_updates(params, updates)
        ref_params = mf.optim.apply_updates(ref_params, ref_updates)
    assert all(bool(torch.isfinite(t).all()) and t.dtype == dtype for t in _tree.leaves(params))
    for a, b in zip(_tree.leaves(params), _tree.leaves(ref_params), strict=True):
        torch.testing.assert_close(
            a.float(), b, rtol=0, atol=10 * EPS[dtype] * float(b.abs().max())
        )
    moved = [
        not torch.equal(a, b) for a, b in zip(_tree.leaves(params), _tree.leaves(p32), strict=True)
    ]
    assert all(moved)


# --- bad input -----------------------------------------------------------------------------------


def _schedule_returning(value):
    return lambda count: value


BAD = [
    ("adam-lr-negative", lambda: mf.optim.adam(-1), ValueError,
     r"^adam: lr must be a positive finite number, a 0-d tensor or a schedule \(got -1\)$"),
    ("adamw-lr-zero", lambda: mf.optim.adamw(0.0), ValueError,
     r"^adamw: lr must be a positive finite number, a 0-d tensor or a schedule \(got 0\.0\)$"),
    ("sgd-lr-inf", lambda: mf.optim.sgd(math.inf), ValueError,
     r"^sgd: lr must be a positive finite number, a 0-d tensor or a schedule \(got inf\)$"),
    ("sgd-lr-tensor", lambda: mf.optim.sgd([0.1]), TypeError,
     r"^sgd: lr as rates per leaf must hold tensors \(got list holding \['float'\]\)$"),
    ("adam-schedule-vector", lambda: mf.optim.adam(_schedule_returning(torch.ones(2))), ValueError,
     r"^adam: lr schedule must return a finite scalar \(a number or a 0-d tensor\) for a step "
     r"count, but lr\(0\) returned a tensor of shape \(2,\)$"),
    ("sgd-schedule-nan", lambda: mf.optim.sgd(_schedule_returning(torch.tensor(math.nan))),
     ValueError, r"^sgd: lr schedule must return a finite scalar .* but lr\(0\) returned nan$"),
    ("sgd-schedule-inf-number", lambda: mf.optim.sgd(_schedule_returning(math.inf)), ValueError,
     r"^sgd: lr schedule must return a finite scalar .* but lr\(0\) returned inf$"),
    ("adamw-schedule-string", lambda: mf.optim.adamw(_schedule_returning("0.1")), ValueError,
     r"^adamw: lr schedule .* but lr\(0\) returned '0\.1' of type str$"),
    ("adam-schedule-bool", lambda: mf.optim.adam(lambda c: c < 10), ValueError,
     r"^adam: lr schedule .* but lr\(0\) returned a torch\.bool tensor$"),
    ("sgd-schedule-negative-constant", lambda: mf.optim.sgd(mf.optim.constant_schedule(-0.1)),
     ValueError, r"^sgd: lr schedule must not start below zero, which would run gradient ascent "
     r"\(got lr\(0\)=-0\.1, lr\(1\)=-0\.1, lr\(10\)=-0\.1, lr\(100\)=-0\.1, "
     r"lr\(1000\)=-0\.1, lr\(10000\)=-0\.1, lr\(100000\)=-0\.1, lr\(1000000\)=-0\.1\)$"),
    ("adam-schedule-starts-negative-then-positive",
     lambda: mf.optim.adam(mf.optim.linear_schedule(-1e-3, 1e-3, transition_steps=10)),
     ValueError, r"^adam: lr schedule must not start below zero, .* \(got lr\(0\)=-0\.001, "
     r"lr\(1\)=-0\.0008, lr\(10\)=0\.001, "),
    ("adamw-schedule-zero", lambda: mf.optim.adamw(mf.optim.constant_schedule(0.0)), ValueError,
     r"^adamw: lr schedule must become positive \(a warmup may start at 0\), but it stays at or "
     r"below zero at every count probed \(got lr\(0\)=0, lr\(1\)=0, .* lr\(1000000\)=0\)$"),
    ("sgd-schedule-zero-then-negative",
     lambda: mf.optim.sgd(mf.optim.linear_schedule(0.0, -0.5, transition_steps=100)), ValueError,
     r"^sgd: lr schedule must become positive .* \(got lr\(0\)=0, lr\(1\)=-0\.005, .* "
     r"lr\(1000000\)=-0\.5\)$"),
    ("adam-schedule-tensor-later", lambda: mf.optim.adam(lambda c: torch.ones(2) if c > 5 else 1.0),
     ValueError, r"^adam: lr schedule must return a finite scalar .* but lr\(10\) returned a "
     r"tensor of shape \(2,\)$"),
    ("adam-b1", lambda: mf.optim.adam(0.1, b1=1.0), ValueError,
     r"^adam: b1 must be in \[0, 1\) \(got 1\.0\)$"),
    ("adamw-b2", lambda: mf.optim.adamw(0.1, b2=-0.1), ValueError,
     r"^adamw: b2 must be a non-negative finite number \(got -0\.1\)$"),
    ("adamw-eps", lambda: mf.optim.adamw(0.1, eps=0.0), ValueError,
     r"^adamw: eps must be a positive finite number \(got 0\.0\)$"),
    ("adam-eps_root", lambda: mf.optim.adam(0.1, eps_root=-1e-16), ValueError,
     r"^adam: eps_root must be a non-negative finite number \(got -1e-16\)$"),
    ("adamw-eps_root-type", lambda: mf.optim.adamw(0.1, eps_root="0"), TypeError,
     r"^adamw: eps_root must be a number \(got '0' of type str\)$"),
    ("adamw-weight_decay", lambda: mf.optim.adamw(0.1, weight_decay=-0.01), ValueError,
     r"^adamw: weight_decay must be a non-negative finite number \(got -0\.01\)$"),
    ("sgd-weight_decay", lambda: mf.optim.sgd(0.1, weight_decay=math.nan), ValueError,
     r"^sgd: weight_decay must be a non-negative finite number \(got nan\)$"),
    ("sgd-nesterov-type", lambda: mf.optim.sgd(0.1, momentum=0.9, nesterov=1), TypeError,
     r"^sgd: nesterov must be True or False \(got 1\)$"),
    ("clip_by_global_norm", lambda: mf.optim.clip_by_global_norm(0), ValueError,
     r"^clip_by_global_norm: max_norm must be a positive finite number \(got 0\)$"),
    ("clip", lambda: mf.optim.clip(-1.0), ValueError,
     r"^clip: max_delta must be a positive finite number \(got -1\.0\)$"),
    ("chain-not-an-optimizer", lambda: mf.optim.chain(mf.optim.clip(1.0), torch.optim.Adam),
     TypeError, r"^chain: optimizers\[1\] must be a metafunc\.optim\.Optimizer, e\.g\. "
     r"mf\.optim\.adam\(1e-3\) \(got type\)$"),
    ("chain-a-list", lambda: mf.optim.chain([mf.optim.clip(1.0), mf.optim.sgd(0.1)]), TypeError,
     r"^chain: optimizers\[0\] must be a metafunc\.optim\.Optimizer, .* \(got list\); pass the "
     r"optimizers as separate arguments, chain\(a, b\)$"),
    ("apply_if_finite-not-an-optimizer", lambda: mf.optim.apply_if_finite(0.1), TypeError,
     r"^apply_if_finite: optimizer must be a metafunc\.optim\.Optimizer, .* \(got float\)$"),
    ("apply_if_finite-max_consecutive_errors",
     lambda: mf.optim.apply_if_finite(mf.optim.sgd(0.1), max_consecutive_errors=0), ValueError,
     r"^apply_if_finite: max_consecutive_errors must be an integer >= 1 \(got 0\)$"),
    ("apply_if_finite-max_consecutive_errors-float",
     lambda: mf.optim.apply_if_finite(mf.optim.sgd(0.1), max_consecutive_errors=2.0), TypeError,
     r"^apply_if_finite: max_consecutive_errors must be an integer \(got 2\.0 of type float\)$"),
    ("adamw-init-int-params", lambda: mf.optim.adamw(0.1).init({"w": torch.ones(2, dtype=torch.int64)}),
     TypeError, r"^adamw: params\['w'\] must be a floating-point tensor \(got torch\.int64\)$"),
    ("clip-update-grads-tree",
     lambda: mf.optim.clip(1.0).update({"v": torch.ones(1)}, mf.optim.EmptyState(), {"w": torch.ones(1)}),
     ValueError, r"^clip\.update: grads must have the same tree structure as params; first "
     r"difference at params\['w'\] \(dict\) vs grads\['v'\] \(dict\)\."),
]  # fmt: skip


@pytest.mark.parametrize(("call", "exc", "pattern"), [pytest.param(*c[1:], id=c[0]) for c in BAD])
def test_bad_input_is_refused_with_a_message(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_schedules_that_start_at_zero_or_cross_zero_later_are_accepted():
    """A warmup from 0 and a decay that passes below zero late are the user's choice; only a
    schedule that starts below zero or never becomes positive is refused."""
    warmup = mf.optim.warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=10, decay_steps=100)
    crossing = mf.optim.linear_schedule(0.1, -0.1, transition_steps=1000)
    late = lambda count: torch.where(count < 10**6, 0.0, 1e-3).to(torch.float64)  # noqa: E731
    for lr in (warmup, crossing, late):
        for factory in (mf.optim.sgd, mf.optim.adam, mf.optim.adamw):
            assert factory(lr).init is not None


def test_composed_states_survive_a_checkpoint_round_trip(tmp_path):
    """Keys come from the state's field names: a guarded chain with a scheduled AdamW."""
    opt = mf.optim.apply_if_finite(
        mf.optim.chain(
            mf.optim.clip_by_global_norm(1.0),
            mf.optim.adamw(mf.optim.linear_schedule(0.1, 0.0, 4)),
            mf.optim.sgd(mf.optim.constant_schedule(1.0), momentum=0.5),
        )
    )
    params, grads = params_and_grads(steps=2)
    state = opt.init(params)
    for g in grads:
        updates, state = opt.update(g, state, params)
        params = mf.optim.apply_updates(params, updates)
    train_state = mf.TrainState(params, state, torch.tensor(2))
    path = mf.save(tmp_path / "ckpt.pt", train_state)
    keys = set(torch.load(path, weights_only=True))
    assert "state.opt_state.inner_state[1].mu['a.bias']" in keys
    assert "state.opt_state.last_finite" in keys and "state.opt_state.inner_state[2].count" in keys
    loaded = mf.load(path, like=mf.TrainState(params, opt.init(params), torch.tensor(0)))
    assert isinstance(loaded.opt_state, mf.optim.ApplyIfFiniteState)
    for a, b in zip(_tree.leaves(loaded), _tree.leaves(train_state), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
