"""The pytree helpers in ``metafunc._tree``."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils import _pytree as torch_pytree

import metafunc as mf
from metafunc import _tree

F64 = torch.float64


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def tree() -> dict:
    return {"w": t(1.0, -2.0), "b": t(3.0), "nested": (t(4.0, 5.0), [t(-6.0)])}


def assert_tree_equal(a, b) -> None:
    assert _tree.structure(a) == _tree.structure(b)
    for x, y in zip(_tree.leaves(a), _tree.leaves(b), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# --- map ------------------------------------------------------------------------------------


def test_map_applies_leaf_by_leaf_and_keeps_structure():
    out = _tree.map(lambda x: 2 * x, tree())
    assert_tree_equal(out, {"w": t(2.0, -4.0), "b": t(6.0), "nested": (t(8.0, 10.0), [t(-12.0)])})
    assert isinstance(out["nested"], tuple)
    assert isinstance(out["nested"][1], list)


def test_map_over_several_trees_pairs_leaves_by_position_in_the_structure():
    a = {"x": t(1.0), "y": t(10.0)}
    b = {"x": t(2.0), "y": t(20.0)}
    assert_tree_equal(_tree.map(torch.sub, b, a), {"x": t(1.0), "y": t(10.0)})


def test_map_refuses_trees_of_different_structure():
    with pytest.raises(
        ValueError, match=r"key mismatch; expected key\(s\): \['x'\], got key\(s\): \['y'\]"
    ):
        _tree.map(torch.add, {"x": t(1.0)}, {"y": t(1.0)})


# --- axpy -----------------------------------------------------------------------------------


def test_axpy_with_a_scalar():
    x = {"p": t(1.0, 2.0), "q": t(-1.0)}
    y = {"p": t(10.0, 20.0), "q": t(5.0)}
    assert_tree_equal(_tree.axpy(-0.5, x, y), {"p": t(9.5, 19.0), "q": t(5.5)})


def test_axpy_with_a_scalar_tensor():
    x = {"p": t(1.0, 2.0)}
    y = {"p": t(10.0, 20.0)}
    assert_tree_equal(_tree.axpy(torch.tensor(3.0, dtype=F64), x, y), {"p": t(13.0, 26.0)})


def test_axpy_with_a_pytree_a_is_leaf_by_leaf():
    a = {"p": t(2.0, 3.0), "q": t(-1.0)}
    x = {"p": t(1.0, 2.0), "q": t(4.0)}
    y = {"p": t(10.0, 20.0), "q": t(5.0)}
    assert_tree_equal(_tree.axpy(a, x, y), {"p": t(12.0, 26.0), "q": t(1.0)})


def test_axpy_with_a_pytree_a_broadcasts_within_a_leaf():
    a = {"p": t(2.0), "q": t(-1.0)}
    x = {"p": t(1.0, 2.0), "q": t(4.0)}
    y = {"p": t(10.0, 20.0), "q": t(5.0)}
    assert_tree_equal(_tree.axpy(a, x, y), {"p": t(12.0, 24.0), "q": t(1.0)})


def test_axpy_creates_new_tensors():
    x, y = {"p": t(1.0)}, {"p": t(2.0)}
    out = _tree.axpy(1.0, x, y)
    assert out["p"] is not y["p"]
    assert y["p"].item() == 2.0


# --- zeros_like, detach, copy -----------------------------------------------------------------


def test_zeros_like():
    source = {"a": torch.ones(2, 3, dtype=F64), "b": (torch.full((4,), 7.0),)}
    out = _tree.zeros_like(source)
    assert _tree.structure(out) == _tree.structure(source)
    for z, s in zip(_tree.leaves(out), _tree.leaves(source), strict=True):
        assert z.shape == s.shape
        assert z.dtype == s.dtype
        assert torch.count_nonzero(z) == 0


def test_detach_cuts_the_graph():
    leaf = t(1.0, 2.0).requires_grad_()
    src = {"a": leaf * 3, "b": [leaf.sin()]}
    assert src["a"].grad_fn is not None
    out = _tree.detach(src)
    for d, s in zip(_tree.leaves(out), _tree.leaves(src), strict=True):
        assert d.grad_fn is None
        assert not d.requires_grad
        torch.testing.assert_close(d, s.detach(), rtol=0, atol=0)


def test_detach_drops_torch_func_gradients():
    # Inside torch.func.grad, a detached value contributes nothing to the gradient.
    def f(x):
        return (_tree.detach({"v": x * x})["v"] + x).sum()

    torch.testing.assert_close(torch.func.grad(f)(t(1.0, 2.0)), t(1.0, 1.0))


def test_copy_shares_no_storage():
    leaf = t(1.0, 2.0).requires_grad_()
    src = {"a": leaf, "b": [t(3.0)]}
    out = _tree.copy(src)
    for c, s in zip(_tree.leaves(out), _tree.leaves(src), strict=True):
        assert c.untyped_storage().data_ptr() != s.untyped_storage().data_ptr()
        assert c.grad_fn is None
        assert not c.requires_grad
        torch.testing.assert_close(c, s.detach(), rtol=0, atol=0)
    out["b"][0].add_(100.0)
    assert src["b"][0].item() == 3.0


# --- global_norm, all_finite ------------------------------------------------------------------


def test_global_norm_matches_a_hand_computation():
    # 3² + 4² + 12² = 169.
    tr = {"a": t(3.0, -4.0), "b": [torch.tensor([[12.0]], dtype=F64)]}
    norm = _tree.global_norm(tr)
    assert norm.dtype == F64
    assert norm.item() == 13.0


def test_global_norm_of_random_tree_equals_norm_of_concatenation():
    g = torch.Generator().manual_seed(0)
    tr = {k: torch.randn(s, generator=g, dtype=F64) for k, s in [("a", (3, 4)), ("b", (5,))]}
    flat = torch.cat([v.reshape(-1) for v in tr.values()])
    torch.testing.assert_close(_tree.global_norm(tr), torch.linalg.vector_norm(flat))


def test_all_finite_true():
    flag = _tree.all_finite(tree())
    assert flag.dtype == torch.bool
    assert flag.shape == ()
    assert bool(flag)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_all_finite_false_on_nan_or_inf(bad):
    tr = tree()
    tr["nested"][1][0][0] = bad  # one element of the last leaf
    assert not bool(_tree.all_finite(tr))


# --- named_leaves -------------------------------------------------------------------------------


def test_named_leaves_of_parameters_index_like_python():
    _, params = mf.pure(torch.nn.Sequential(torch.nn.Linear(1, 2)))
    named = _tree.named_leaves(params, "meta")
    assert [p for p, _ in named] == ["meta['0.bias']", "meta['0.weight']"]
    for path, leaf in named:
        assert leaf is eval(path, {"meta": params})


def test_named_leaves_of_nested_containers():
    tr = tree()
    named = _tree.named_leaves(tr, "p")
    assert [p for p, _ in named] == [
        "p['b']",
        "p['nested'][0]",
        "p['nested'][1][0]",
        "p['w']",
    ]
    for path, leaf in named:
        assert leaf is eval(path, {"p": tr})


def test_named_leaves_of_tasks_use_field_names():
    x = t(1.0)
    tasks = mf.Tasks((x, x), {"y": x})
    paths = [p for p, _ in _tree.named_leaves(tasks, "tasks")]
    assert paths == ["tasks.support[0]", "tasks.support[1]", "tasks.query['y']"]


def test_named_leaves_without_root_and_of_a_bare_leaf():
    assert [p for p, _ in _tree.named_leaves({"a": t(1.0)})] == ["['a']"]
    assert [p for p, _ in _tree.named_leaves(t(1.0), "x")] == ["x"]


# --- check_same_structure ---------------------------------------------------------------------


def test_check_same_structure_accepts_equal_structures():
    _tree.check_same_structure(
        tree(), _tree.zeros_like(tree()), where="w", expected_name="a", got_name="b"
    )


def test_check_same_structure_names_first_differing_path_and_both_structures():
    expected = {"a": t(1.0), "b": t(1.0), "c": t(1.0)}
    got = {"a": t(1.0), "b2": t(1.0), "c": t(1.0)}
    with pytest.raises(ValueError) as info:
        _tree.check_same_structure(
            expected, got, where="here", expected_name="params", got_name="grads"
        )
    assert str(info.value) == (
        "here: grads must have the same tree structure as params; first difference at "
        "params['b'] (dict) vs grads['b2'] (dict).\n"
        "  params: PyTreeSpec({'a': *, 'b': *, 'c': *})\n"
        "  grads: PyTreeSpec({'a': *, 'b2': *, 'c': *})"
    )


def test_check_same_structure_path_into_nested_containers():
    expected = {"a": (t(1.0), t(1.0))}
    got = {"a": (t(1.0), {"z": t(1.0)})}
    with pytest.raises(
        ValueError,
        match=r"^w: g must have the same tree structure as e; first difference at "
        r"e\['a'\]\[1\] \(dict/tuple\) vs g\['a'\]\[1\]\['z'\] \(dict/tuple/dict\)\.\n  e: PyTreeSpec\(\{'a': \(\*, \*\)\}\)\n"
        r"  g: PyTreeSpec\(\{'a': \(\*, \{'z': \*\}\)\}\)$",
    ):
        _tree.check_same_structure(expected, got, where="w", expected_name="e", got_name="g")


def test_check_same_structure_different_leaf_counts():
    with pytest.raises(
        ValueError, match=r"first difference at g\[2\] \(list\) has no counterpart in e\."
    ):
        _tree.check_same_structure(
            [t(1.0), t(1.0)], [t(1.0), t(1.0), t(1.0)], where="w", expected_name="e", got_name="g"
        )


def test_check_same_structure_root_leaf_vs_dict():
    with pytest.raises(ValueError, match=r"first difference at e \(leaf\) vs g\['a'\] \(dict\)\."):
        _tree.check_same_structure(
            t(1.0), {"a": t(1.0)}, where="w", expected_name="e", got_name="g"
        )


def test_check_same_structure_long_structures_are_shortened():
    big = {f"k{i:03d}": t(1.0) for i in range(200)}
    with pytest.raises(ValueError) as info:
        _tree.check_same_structure(big, {"a": t(1.0)}, where="w", expected_name="e", got_name="g")
    line = next(s for s in str(info.value).splitlines() if s.startswith("  e: "))
    assert len(line) == len("  e: ") + 400
    assert line.endswith("...")


# --- dict key order -----------------------------------------------------------------------------


def test_dict_key_order_does_not_matter():
    ba = {"b": t(1.0), "a": t(2.0)}
    ab = {"a": t(2.0), "b": t(1.0)}
    assert _tree.structure(ba) == _tree.structure(ab)
    # optree sorts keys: leaves come out in key order, not insertion order.
    assert [x.item() for x in _tree.leaves(ba)] == [2.0, 1.0]
    assert [p for p, _ in _tree.named_leaves(ba)] == ["['a']", "['b']"]
    _tree.check_same_structure(ba, ab, where="w", expected_name="e", got_name="g")
    # Leaves are paired by key, whatever order each dict was built in.
    assert_tree_equal(_tree.map(torch.sub, ba, ab), {"a": t(0.0), "b": t(0.0)})
    assert_tree_equal(_tree.axpy(ba, ab, ab), {"a": t(6.0), "b": t(2.0)})


@pytest.mark.parametrize(
    "given",
    [
        {"b": torch.zeros(1), "a": torch.ones(2), "c.w": torch.full((3,), 2.0)},
        {"b": torch.zeros(1), "a": {"x": torch.ones(2)}, "c.w": torch.full((3,), 2.0)},
    ],
    ids=["flat dict", "nested"],
)
def test_split_keeps_the_trees_own_order_and_merge_puts_back_only_the_picked(given):
    """A flat dict (mf.pure's parameters) takes a path of its own; both give the leaves in
    insertion order, as torch.utils._pytree does (not optree's sorted order)."""
    everything, merge = _tree.split(given, None)
    assert [t.shape for t in everything] == [t.shape for t in torch_pytree.tree_leaves(given)]
    again = merge([t + 1 for t in everything])
    assert type(again) is dict and list(again) == list(given)
    picked, merge = _tree.split(given, lambda name: name != "b")
    assert [t.shape for t in picked] == [t.shape for t in torch_pytree.tree_leaves(given)[1:]]
    merged = merge([t * 0 - 1 for t in picked])
    assert merged["b"] is given["b"] and list(merged) == list(given)
    assert all(bool((t == -1).all()) for t in torch_pytree.tree_leaves(merged)[1:])


def test_readable_only_for_a_cpu_tensor_run_op_by_op():
    """A step reads a tensor's value only where that costs no wait and fixes nothing in a
    graph: eagerly on the CPU, not while make_fx traces the step ahead of time, not inside a
    torch.func transform, not under Dynamo."""
    from torch.fx.experimental.proxy_tensor import make_fx

    seen = []

    def probe(x):
        seen.append(_tree.readable(x))
        return x + 1

    x = torch.zeros(3)
    probe(x)
    make_fx(probe)(x)
    make_fx(probe, tracing_mode="fake")(x)
    torch.func.vmap(probe)(x)
    torch.func.grad(lambda x: probe(x).sum())(x)
    torch.compile(probe, backend="eager", fullgraph=True)(x)
    assert seen == [True, False, False, False, False, False]


def test_norm_and_finite_leaves_is_the_global_norm_and_the_exact_finiteness_of_each_leaf():
    """One reduction gives both when every leaf's 2-norm is finite; a leaf whose 2-norm
    overflows though its elements are finite is still finite, and a NaN marks its leaf only."""
    from torch.fx.experimental.proxy_tensor import make_fx

    g = torch.Generator().manual_seed(0)
    grads = {"a": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)}
    norm, ok = _tree.norm_and_finite_leaves(grads)
    assert torch.equal(norm, _tree.global_norm(grads, foreach=True))
    assert ok.tolist() == [True, True]
    big = {"a": torch.full((3,), 1e30), "b": torch.tensor([1.0, float("nan")])}
    norm, ok = _tree.norm_and_finite_leaves(big)
    assert ok.tolist() == [True, False] and torch.isnan(norm)
    huge = {"a": torch.full((3,), 1e30), "b": torch.ones(2)}
    norm, ok = _tree.norm_and_finite_leaves(huge)
    assert ok.tolist() == [True, True] and torch.isinf(norm)
    # traced (the step compiled ahead of time), without reading a value: the same numbers
    both = lambda a, b: _tree.norm_and_finite_leaves({"a": a, "b": b})  # noqa: E731
    for tree in (grads, big, huge):
        want = _tree.norm_and_finite_leaves(tree)
        got = make_fx(both, tracing_mode="fake")(tree["a"], tree["b"])(tree["a"], tree["b"])
        assert got[1].tolist() == want[1].tolist()
        torch.testing.assert_close(got[0], want[0], equal_nan=True)


# --- grad_and_aux -----------------------------------------------------------------------------


def _outer_grad_cases():
    from support import bn_net, dropout_net, sine_tasks, tanh_net

    def supervised(net):
        fn, params = mf.pure(net)
        return mf.supervised(fn, mf.losses.mse), params

    loss, params = supervised(tanh_net())
    g = torch.Generator().manual_seed(0)
    loss32, params32 = supervised(tanh_net().float())
    tasks32 = mf.tasks.sinusoid(g, tasks=3, shots=4, queries=5, dtype=torch.float32)
    fn, bn_params, bn_state = mf.stateful(bn_net())
    drop, drop_params = supervised(dropout_net())
    tasks = sine_tasks(n=4)
    return {
        "maml S=2": (mf.maml(loss, inner_lr=0.1, inner_steps=2), params, None, tasks),
        "maml float32": (mf.maml(loss32, inner_lr=0.1), params32, None, tasks32),
        "fomaml": (mf.fomaml(loss, inner_lr=0.1, inner_steps=2), params, None, tasks),
        "meta-sgd": (mf.meta_sgd(loss, inner_lr=0.1), params, None, tasks),
        "anil": (mf.anil(loss, head="2", inner_lr=0.1), params, None, tasks),
        "chunked": (mf.chunked(mf.maml(loss, inner_lr=0.1), 2), params, None, tasks),
        "mamlpp batchnorm": (
            mf.mamlpp(mf.supervised(fn, mf.losses.mse), inner_lr=0.1, inner_steps=2, per_step="1"),
            bn_params,
            bn_state,
            tasks,
        ),
        "dropout": (mf.stochastic(mf.maml(drop, inner_lr=0.1)), drop_params, None, tasks),
    }


@pytest.mark.parametrize("name", list(_outer_grad_cases()))
def test_the_eager_step_by_autograd_is_the_torch_func_grad_step_to_the_bit(name, monkeypatch):
    """Eagerly the meta-gradient is taken by torch's autograd, not torch.func.grad (whose
    wrappers cost a fifth of the eager step): the same operations, so the same bits, for every
    rule that differentiates through adaptation, with model state and with random draws."""
    learner, params, model_state, tasks = _outer_grad_cases()[name]
    opt = mf.optim.adam(0.01)

    def two_steps():
        state = mf.init_state(learner, opt, params, seed=0, model_state=model_state)
        step = mf.make_step(learner, opt, compile=False)
        for _ in range(2):
            state, metrics = step(state, tasks)
        return state, metrics

    got = two_steps()
    with monkeypatch.context() as m:
        m.setattr(_tree, "eager", lambda: False)  # every outer gradient by torch.func.grad
        want = two_steps()
    assert _tree.structure(got) == _tree.structure(want)
    for x, y in zip(_tree.leaves(got), _tree.leaves(want), strict=True):
        assert torch.equal(x, y)


def test_grad_and_aux_uses_autograd_only_outside_every_transform_trace_and_compile():
    from torch.fx.experimental.proxy_tensor import make_fx

    outside = []

    def f(tree):
        outside.append(torch._C._functorch.peek_interpreter_stack() is None)
        return (tree["w"] ** 3).sum(), tree["w"] * 2

    def g(w):
        return _tree.grad_and_aux(f, {"w": w})[0]["w"]

    w = t(1.0, -2.0)
    assert torch.equal(g(w), 3 * w**2)
    with torch.no_grad():  # as make_step calls it
        assert torch.equal(g(w), 3 * w**2)
    assert torch.equal(torch.func.vmap(g)(w[:, None]), 3 * w[:, None] ** 2)
    make_fx(g)(w)
    torch.compile(g, backend="eager", fullgraph=True)(w)
    assert outside == [True, True, False, False, False]


def test_grad_and_aux_returns_zeros_for_unused_leaves_and_detached_aux():
    w, u = t(1.0, -2.0), t(5.0)
    grads, aux = _tree.grad_and_aux(
        lambda p: ((p["w"] ** 2).sum(), (p["w"], p["u"])), {"w": w, "u": u}
    )
    assert torch.equal(grads["w"], 2 * w) and torch.equal(grads["u"], torch.zeros_like(u))
    assert not any(a.requires_grad for a in aux) and torch.equal(aux[0], w)
    grads, _ = _tree.grad_and_aux(lambda p: (p["w"].detach().sum(), ()), {"w": w})
    assert torch.equal(grads["w"], torch.zeros_like(w))


def test_grad_and_aux_of_leaves_that_require_grad_stays_differentiable():
    """A meta-gradient of meta-parameters computed from something else is itself
    differentiable (torch.func.grad, not a detached autograd pass): d/ds sum 3 (s w)^2."""
    s = torch.tensor(2.0, dtype=F64, requires_grad=True)
    w = t(1.0, -2.0)
    grads, _ = _tree.grad_and_aux(lambda p: ((p["w"] ** 3).sum(), ()), {"w": s * w})
    (ds,) = torch.autograd.grad(grads["w"].sum(), s)
    torch.testing.assert_close(ds, (6 * s * w**2).sum().detach(), rtol=0, atol=0)
