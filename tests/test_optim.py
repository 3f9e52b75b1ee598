"""The functional optimizers against torch.optim, in float64, over many steps."""

import pytest
import torch

import metafunc as mf
from metafunc import _tree

STEPS = 60


def params_and_grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {
        "b.weight": torch.randn(4, 3, generator=g, dtype=torch.float64),
        "a.bias": torch.randn(3, generator=g, dtype=torch.float64),
    }
    # a different gradient at every step, fixed in advance
    grads = [
        {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in params.items()}
        for _ in range(STEPS)
    ]
    return params, grads


CASES = [
    ("sgd", {"lr": 0.1}, torch.optim.SGD, {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (
        "sgd",
        {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
    ),
    ("adam", {"lr": 1e-2}, torch.optim.Adam, {"lr": 1e-2}),
    (
        "adam",
        {"lr": 3e-3, "b1": 0.8, "b2": 0.99, "eps": 1e-6, "weight_decay": 0.05},
        torch.optim.Adam,
        {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05},
    ),
]


@pytest.mark.parametrize("name, ours_kw, torch_cls, torch_kw", CASES)
def test_matches_torch_optim(name, ours_kw, torch_cls, torch_kw):
    params, grads = params_and_grads()
    opt = getattr(mf.optim, name)(**ours_kw)
    state = opt.init(params)
    ours = params

    reference = {k: v.clone().requires_grad_() for k, v in params.items()}
    torch_opt = torch_cls(list(reference.values()), foreach=False, **torch_kw)
    for g in grads:
        updates, state = opt.update(g, state, ours)
        ours = mf.optim.apply_updates(ours, updates)
        for k, p in reference.items():
            p.grad = g[k].clone()
        torch_opt.step()
    for k in params:
        torch.testing.assert_close(ours[k], reference[k].detach(), rtol=1e-12, atol=1e-13)
        assert not torch.equal(ours[k], params[k])  # it moved
    if name == "adam":
        assert int(state.count) == STEPS
        for k, p in reference.items():
            torch.testing.assert_close(
                state.mu[k], torch_opt.state[p]["exp_avg"], rtol=1e-12, atol=1e-14
            )
            torch.testing.assert_close(
                state.nu[k], torch_opt.state[p]["exp_avg_sq"], rtol=1e-12, atol=1e-14
            )


def test_update_is_pure():
    params, grads = params_and_grads()
    opt = mf.optim.adam(1e-2)
    state = opt.init(params)
    snapshot = _tree.copy((params, state))
    opt.update(grads[0], state, params)
    for a, b in zip(_tree.leaves((params, state)), _tree.leaves(snapshot), strict=True):
        assert torch.equal(a, b)


def test_plain_sgd_keeps_no_state():
    params, _ = params_and_grads()
    assert _tree.leaves(mf.optim.sgd(0.1).init(params)) == []


def test_float32_stays_float32():
    params, grads = params_and_grads()
    params32 = _tree.map(lambda t: t.float(), params)
    opt = mf.optim.adam(1e-3)
    state = opt.init(params32)
    updates, state = opt.update(_tree.map(lambda t: t.float(), grads[0]), state, params32)
    assert all(t.dtype == torch.float32 for t in _tree.leaves((updates, state.mu, state.nu)))
