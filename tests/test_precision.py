"""Mixed precision: bfloat16 autocast inside the model under vmap, eager and compiled; half-
precision parameters trained with Adam through the step stay finite (float32 moments)."""

import functools

import pytest
import torch
import torch._dynamo.testing
from torch import nn

import metafunc as mf
from metafunc import _tree

BF16 = torch.bfloat16


def net(seed=0):
    torch.manual_seed(seed)  # test-only: fixes nn.Linear's default initialisation
    return nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))


def tasks(dtype=torch.float32, seed=1):
    return mf.tasks.sinusoid(
        torch.Generator().manual_seed(seed), tasks=4, shots=5, queries=5, dtype=dtype
    )


def autocast_loss(fn):
    """The model's forward in bfloat16 (matmuls, activations), the loss in float32."""

    def loss(params, data):
        x, y = data
        with torch.autocast("cpu", dtype=BF16):
            pred = fn(params, x)
        return mf.losses.mse(pred.float(), y)

    return loss


def rel_err(a, b):
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return ((a - b).norm() / b.norm()).item()


def test_autocast_inside_the_loss_under_vmap_is_the_float32_meta_gradient_to_bf16_accuracy():
    fn, params = mf.pure(net())
    batch = tasks()
    mixed = mf.maml(autocast_loss(fn), inner_lr=0.1, inner_steps=2)
    plain = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1, inner_steps=2)
    got, metrics = mixed.meta_grad(params, batch)
    want, _ = plain.meta_grad(params, batch)
    assert all(g.dtype == torch.float32 for g in got.values())
    assert bool(_tree.all_finite(got)) and bool(torch.isfinite(metrics.loss))
    err = rel_err(_tree.leaves(got), _tree.leaves(want))
    assert 0 < err < 0.05  # bf16 keeps 8 bits: ~0.4% per operation, and autocast did act


@pytest.mark.compile
def test_autocast_compiled_with_inductor_equals_eager_one_graph():
    """(torch 2.13's aot_eager backend fails on this graph, "view size is not compatible with
    input tensor's size and stride", in the backward of nn.Linear under autocast; Inductor,
    make_step's default, compiles it.)"""
    fn, params = mf.pure(net())
    learner = mf.maml(autocast_loss(fn), inner_lr=0.1, inner_steps=1)
    opt = mf.optim.adam(1e-2)
    state = mf.init_state(learner, opt, params)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = mf.make_step(learner, opt, backend=counter)
    eager = mf.make_step(learner, opt, compile=False)
    s_comp = s_eager = state
    for seed in range(3):
        batch = tasks(seed=seed)
        s_comp, m_comp = compiled(s_comp, batch)
        s_eager, m_eager = eager(s_eager, batch)
        assert bool(m_comp.finite)
        # bf16 rounding differs where Inductor fuses: equal to bf16 accuracy
        torch.testing.assert_close(m_comp.loss, m_eager.loss, rtol=2e-2, atol=1e-3)
        assert rel_err(_tree.leaves(s_comp.meta), _tree.leaves(s_eager.meta)) < 1e-3
    assert counter.frame_count == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_parameters_with_adam_stay_finite_through_the_step(dtype):
    """Adam's eps=1e-8 underflows in float16 and 1 - 0.999**t rounds to 0 in bfloat16: in the
    parameters' own dtype the first update would be NaN or inf. The moments and the update are
    computed in float32, so the step equals torch.optim.Adam on float32 copies (to one ulp)."""
    assert float(1 - torch.tensor(0.999, dtype=torch.bfloat16)) == 0.0
    assert float(torch.tensor(1e-8, dtype=torch.float16)) == 0.0
    fn, params = mf.pure(net().to(dtype))
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1, inner_steps=1)
    opt = mf.optim.adam(1e-2)
    state = mf.init_state(learner, opt, params)
    assert all(m.dtype == torch.float32 for m in state.opt_state.mu.values())
    step = mf.make_step(learner, opt, compile=False)
    batch = tasks(dtype)
    grads, _ = learner.meta_grad(params, batch)
    new, metrics = step(state, batch)
    assert bool(metrics.finite) and all(v.dtype == dtype for v in new.meta.values())
    # the reference: torch.optim.Adam in float32 on the same (half-precision) gradient
    ref = {k: v.float().clone().requires_grad_() for k, v in params.items()}
    torch_adam = torch.optim.Adam(ref.values(), lr=1e-2)
    for k, p in ref.items():
        p.grad = grads[k].float()
    torch_adam.step()
    for k, p in ref.items():
        ulp = torch.finfo(dtype).eps * p.detach().abs().clamp(min=1e-3)
        assert bool(((new.meta[k].float() - p.detach()).abs() <= ulp).all()), k
    sampler = functools.partial(mf.tasks.sinusoid, tasks=4, shots=5, queries=5, dtype=dtype)
    final = mf.train(step, new, sampler, steps=5, progress=False)
    assert bool(_tree.all_finite((final.meta, final.opt_state)))
