"""Properties that hold for any input, checked on random small cases with hypothesis."""

import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support import assert_metrics_equal, reference_meta_grad
from torch import nn

import metafunc as mf
from metafunc import _tree

FAST = settings(max_examples=15, deadline=None)

shapes = st.lists(st.integers(0, 3), max_size=3).map(tuple)
tensors = st.builds(
    lambda shape, seed: torch.randn(shape, generator=torch.Generator().manual_seed(seed)),
    shapes,
    st.integers(0, 2**16),
)
trees = st.recursive(
    tensors,
    lambda children: st.one_of(
        st.dictionaries(st.text("abc.0", min_size=1, max_size=3), children, max_size=3),
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
    ),
    max_leaves=8,
)


@FAST
@given(trees)
def test_leaves_and_unflatten_round_trip(tree):
    rebuilt = _tree.unflatten(tree, _tree.leaves(tree))
    assert _tree.structure(rebuilt) == _tree.structure(tree)
    for (path, a), b in zip(_tree.named_leaves(rebuilt, "t"), _tree.leaves(tree), strict=True):
        assert a is b, path
    paths = [p for p, _ in _tree.named_leaves(tree, "t")]
    assert len(set(paths)) == len(paths)  # key paths are unique: usable as checkpoint keys


def _net(widths: list[int], seed: int, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(seed)  # test-only: nn.Linear's default initialisation
    layers: list[nn.Module] = []
    for a, b in zip([1, *widths], [*widths, 1], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(dtype)


nets = st.builds(
    _net,
    st.lists(st.integers(1, 4), min_size=0, max_size=2),
    st.integers(0, 2**16),
    st.sampled_from([torch.float32, torch.float64]),
)


@FAST
@given(nets, st.floats(1e-3, 1.0), st.integers(0, 2**16))
def test_one_inner_step_is_params_minus_lr_times_the_autograd_gradient(net, lr, seed):
    fn, params = mf.pure(net)
    dtype = next(iter(params.values())).dtype
    tasks = mf.tasks.sinusoid(torch.Generator().manual_seed(seed), tasks=1, dtype=dtype)
    support = (tasks.support[0][0], tasks.support[1][0])
    loss = mf.supervised(fn, mf.losses.mse)
    adapted = mf.inner_loop(params, support, loss=loss, lr=lr, steps=1)
    # the reference: torch.autograd on leaf copies, not torch.func
    leaves = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    grads = torch.autograd.grad(loss(leaves, support), list(leaves.values()))
    for (k, p), g in zip(params.items(), grads, strict=True):
        torch.testing.assert_close(adapted[k], p - lr * g)


@FAST
@given(nets, st.sampled_from([mf.optim.sgd(0.1), mf.optim.adam(1e-2)]), st.integers(0, 2**16))
def test_checkpoints_round_trip_any_model(net, opt, seed):
    fn, params = mf.pure(net)
    dtype = next(iter(params.values())).dtype
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.05)
    g = torch.Generator().manual_seed(seed)
    state, _ = mf.make_step(learner, opt, compile=False)(
        mf.init_state(learner, opt, params), mf.tasks.sinusoid(g, tasks=2, dtype=dtype)
    )
    with tempfile.TemporaryDirectory() as d:
        path = mf.save(Path(d) / "c.pt", state, generator=g)
        restored = torch.Generator()
        loaded = mf.load(path, like=mf.init_state(learner, opt, params), generator=restored)
    assert _tree.structure(loaded) == _tree.structure(state)
    for a, b in zip(_tree.leaves(loaded), _tree.leaves(state), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert torch.equal(restored.get_state(), g.get_state())


@FAST
@given(st.integers(1, 5), st.integers(1, 3), st.booleans(), st.integers(0, 2**16))
def test_vmap_over_tasks_equals_a_loop(n_tasks, inner_steps, first_order, seed):
    """Against the hand-written autograd loop over the tasks (not the library on slices)."""
    net = _net([3], seed, torch.float64)
    fn, params = mf.pure(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1, inner_steps=inner_steps)
    learner = mf.first_order(learner) if first_order else learner
    tasks = mf.tasks.sinusoid(
        torch.Generator().manual_seed(seed), tasks=n_tasks, shots=3, queries=4, dtype=torch.float64
    )
    grads, metrics = learner.meta_grad(params, tasks)
    want, losses = reference_meta_grad(
        net, params, tasks, lr=0.1, steps=inner_steps, first_order=first_order, with_losses=True
    )
    for k in params:
        torch.testing.assert_close(grads[k], want[k], rtol=1e-10, atol=1e-12)
    assert_metrics_equal(metrics, losses)
