"""``mf.pure``: a module as a pure function of a parameter dict."""

from __future__ import annotations

import math

import pytest
import torch
from support import reference_meta_grad, sine_tasks
from torch import nn
from torch.func import functional_call, grad, vmap

import metafunc as mf

F64 = torch.float64

REFUSED = (
    r"(?s)^pure: Sequential has torch BatchNorm layer\(s\) \['1'\] in training mode, "
    r"which are refused under vmap and grad.*mf\.models\.BatchNorm.*nn\.GroupNorm.*"
    r"module\.eval\(\) before mf\.pure"
)


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # fixes nn.Linear's default initialisation
    return nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def bn_net(seed: int = 0, **bn) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4, **bn), nn.Linear(4, 1)).double()


def inputs(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def scaled(params: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    return {k: factor * v for k, v in params.items()}


def stack(*trees: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([t[k] for t in trees]) for k in trees[0]}


# --- the function and its parameters ----------------------------------------------------------


def test_fn_equals_the_module():
    module = net()
    fn, params = mf.pure(module)
    x = inputs(6, 1)
    torch.testing.assert_close(fn(params, x), module(x), rtol=0, atol=0)


def test_params_are_keyed_by_named_parameters_and_detached():
    module = net()
    _, params = mf.pure(module)
    assert set(params) == {n for n, _ in module.named_parameters()}
    for name, p in module.named_parameters():
        assert params[name].shape == p.shape
        assert params[name].dtype == F64
        assert not params[name].requires_grad
        torch.testing.assert_close(params[name], p.detach(), rtol=0, atol=0)


def test_fn_uses_the_params_it_is_given():
    module = net()
    fn, params = mf.pure(module)
    x = inputs(6, 1)
    zeroed = {k: torch.zeros_like(v) for k, v in params.items()}
    assert torch.count_nonzero(fn(zeroed, x)) == 0
    other = {k: v + 0.5 for k, v in params.items()}
    by_hand = torch.tanh(x @ other["0.weight"].T + other["0.bias"]) @ other["2.weight"].T
    torch.testing.assert_close(fn(other, x), by_hand + other["2.bias"])


def test_fn_refuses_a_params_dict_with_missing_keys():
    fn, params = mf.pure(net())
    partial = {k: v for k, v in params.items() if k != "2.bias"}
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*'2\.bias'"):
        fn(partial, inputs(3, 1))


# --- the module is never touched --------------------------------------------------------------


def test_params_share_no_storage_with_the_module():
    module = net()
    _, params = mf.pure(module)
    module_ptrs = {p.untyped_storage().data_ptr() for p in module.parameters()}
    assert not module_ptrs & {v.untyped_storage().data_ptr() for v in params.values()}


def test_modifying_params_does_not_affect_the_module():
    module = net()
    before = snapshot(module)
    fn, params = mf.pure(module)
    x = inputs(5, 1)
    with torch.no_grad():
        for v in params.values():
            v.add_(1.0)
    assert_unchanged(module, before)
    assert not torch.allclose(fn(params, x), module(x))


def test_modifying_the_module_does_not_affect_fn():
    module = net()
    fn, params = mf.pure(module)
    x = inputs(5, 1)
    expected = fn(params, x)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(3.0)
    torch.testing.assert_close(fn(params, x), expected, rtol=0, atol=0)


def test_the_module_is_never_mutated_by_calls_or_gradients():
    module = net()
    before = snapshot(module)
    fn, params = mf.pure(module)
    x = inputs(5, 1)
    fn(scaled(params, 2.0), x)
    g = grad(lambda p: fn(p, x).square().sum())(params)
    assert set(g) == set(params)
    assert all(torch.count_nonzero(v) > 0 for v in g.values())
    vmap(fn, in_dims=(0, None))(stack(params, scaled(params, -1.0)), x)
    assert_unchanged(module, before)
    for p in module.parameters():
        assert p.grad is None


def test_grad_through_fn_matches_autograd_on_the_module():
    module = net()
    fn, params = mf.pure(module)
    x = inputs(5, 1)
    g = grad(lambda p: fn(p, x).square().sum())(params)
    module(x).square().sum().backward()
    for name, p in module.named_parameters():
        torch.testing.assert_close(g[name], p.grad)


# --- vmap -------------------------------------------------------------------------------------


def test_vmap_over_a_batch_of_inputs():
    fn, params = mf.pure(net())
    xs = inputs(3, 5, 1)
    out = vmap(fn, in_dims=(None, 0))(params, xs)
    assert out.shape == (3, 5, 1)
    for i in range(3):
        torch.testing.assert_close(out[i], fn(params, xs[i]))


def test_vmap_over_a_batch_of_params():
    fn, params = mf.pure(net())
    others = [params, scaled(params, 0.5), scaled(params, -2.0)]
    x = inputs(5, 1)
    out = vmap(fn, in_dims=(0, None))(stack(*others), x)
    assert out.shape == (3, 5, 1)
    for i, p in enumerate(others):
        torch.testing.assert_close(out[i], fn(p, x))
    assert not torch.allclose(out[0], out[1])


def test_vmap_over_params_and_inputs_together():
    fn, params = mf.pure(net())
    others = [params, scaled(params, 0.5)]
    xs = inputs(2, 5, 1)
    out = vmap(fn)(stack(*others), xs)
    for i, p in enumerate(others):
        torch.testing.assert_close(out[i], fn(p, xs[i]))


# --- buffers: BatchNorm -------------------------------------------------------------------------


def test_running_stats_in_training_mode_are_refused_under_vmap_over_inputs():
    fn, params = mf.pure(bn_net())
    with pytest.raises(ValueError, match=REFUSED):
        vmap(fn, in_dims=(None, 0))(params, inputs(3, 8, 1))


def test_running_stats_in_training_mode_are_refused_under_vmap_over_params():
    fn, params = mf.pure(bn_net())
    with pytest.raises(ValueError, match=REFUSED):
        vmap(fn, in_dims=(0, None))(stack(params, scaled(params, 2.0)), inputs(8, 1))


def test_a_train_mode_batchnorm_called_plainly_is_refused_and_the_module_untouched():
    """Called plainly, torch's BatchNorm in training mode would update its running statistics:
    state kept between calls (which mf.eval_mode would then read), so mf.pure refuses it too."""
    module = bn_net()
    before = snapshot(module)
    fn, params = mf.pure(module)
    with pytest.raises(
        ValueError, match=r"^pure: Sequential wrote into its buffer '1\.\w+' during forward"
    ):
        fn(params, inputs(8, 1))
    assert_unchanged(module, before)


def test_eval_mode_batchnorm_works_under_vmap():
    module = bn_net()
    module.train()
    with torch.no_grad():
        module(inputs(32, 1, seed=5))  # non-trivial running statistics
    module.eval()
    before = snapshot(module)
    fn, params = mf.pure(module)
    xs = inputs(3, 8, 1)
    out = vmap(fn, in_dims=(None, 0))(params, xs)
    # Eval mode uses the stored statistics: each example independently, as the module does.
    torch.testing.assert_close(out, module(xs.reshape(24, 1)).reshape(3, 8, 1))
    assert_unchanged(module, before)


def test_batchnorm_without_running_stats_is_refused_too_because_vmap_gets_it_wrong():
    # Why: torch's fused batch norm gives a wrong second-order MAML gradient under vmap.
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=REFUSED):
        fn, params = mf.pure(bn_net(track_running_stats=False))
        vmap(fn, in_dims=(None, 0))(params, inputs(3, 8, 1))


def maml_grad_error(norm: nn.Module, flat: bool = True) -> float:
    """Largest deviation of the vmapped MAML meta-gradient from a per-task loop (float64), for
    Linear -> ``norm`` -> tanh -> Linear, or for the model ``norm`` itself if not ``flat``."""
    torch.manual_seed(0)
    module = (
        nn.Sequential(nn.Linear(1, 4), norm, nn.Tanh(), nn.Linear(4, 1)).double() if flat else norm
    )
    params = {k: v.detach() for k, v in module.named_parameters()}
    names = sorted(params)

    def loss(p, data):
        x, y = data
        return ((functional_call(module, p, (x,)) - y) ** 2).mean()

    tasks = mf.tasks.sinusoid(
        torch.Generator().manual_seed(1), tasks=3, shots=5, queries=5, dtype=F64
    )
    got, _ = mf.maml(loss, inner_lr=0.1).meta_grad(params, tasks)
    theta = {k: params[k].clone().requires_grad_() for k in names}
    total = 0.0
    for i in range(3):
        support = (tasks.support[0][i], tasks.support[1][i])
        query = (tasks.query[0][i], tasks.query[1][i])
        g = torch.autograd.grad(loss(theta, support), list(theta.values()), create_graph=True)
        adapted = {k: theta[k] - 0.1 * gk for k, gk in zip(theta, g, strict=True)}
        total = total + loss(adapted, query)
    want = torch.autograd.grad(total / 3, list(theta.values()))
    return max((got[k] - w).abs().max().item() for k, w in zip(theta, want, strict=True))


def test_torch_batchnorm_breaks_second_order_under_vmap_and_ours_does_not():
    # The evidence behind the refusal above (raw functional_call, so nothing refuses it).
    assert maml_grad_error(nn.BatchNorm1d(4, track_running_stats=False)) > 1e-6
    assert maml_grad_error(mf.models.BatchNorm(4)) < 1e-12
    # and behind the advice in its message: GroupNorm, not LayerNorm with a scale and shift
    assert maml_grad_error(nn.GroupNorm(2, 4)) < 1e-12
    assert maml_grad_error(nn.LayerNorm(4)) > 1e-6
    assert maml_grad_error(nn.LayerNorm(4, elementwise_affine=False)) < 1e-12


# --- buffers written in forward, InstanceNorm -----------------------------------------------------


class WritesABuffer(nn.Module):
    """Writes its buffer ``seen`` in forward in one of the ways torch allows."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.lin = nn.Linear(1, 1).double()
        self.register_buffer("seen", torch.zeros(1, dtype=F64))

    def forward(self, x):
        if self.how == "augmented":
            self.seen += 1
        elif self.how == "method":  # a running average of the input: torch's vmap fails on it
            self.seen.mul_(0.9).add_(0.1 * x.detach().mean(0))
        elif self.how == "setitem":
            self.seen[0] = x.detach().sum()
        elif self.how == "out":  # into a view of the buffer
            torch.sum(x.detach(), dim=(0, 1), out=self.seen[0])
        elif self.how == "copy-into-view":
            self.seen[:1].copy_(x.detach().mean(0))
        elif self.how == "batch_norm":  # a hand-made norm layer updating running statistics
            x = nn.functional.batch_norm(x, self.seen, torch.ones(1, dtype=F64), training=True)
        return self.lin(x)


def transforms_of(fn, params, x):
    """fn called plainly, and under grad, vmap and vmap(grad), as a learner calls it."""
    batch = torch.stack([x, 2 * x])
    return {
        "plain": lambda: fn(params, x),
        "grad": lambda: grad(lambda p: fn(p, x).sum())(params),
        "vmap": lambda: vmap(fn, in_dims=(None, 0))(params, batch),
        "vmap-grad": lambda: vmap(grad(lambda p, b: fn(p, b).sum()), in_dims=(None, 0))(
            params, batch
        ),
    }


WRITES = ["augmented", "method", "setitem", "out", "copy-into-view"]
CONTEXTS = ["plain", "grad", "vmap", "vmap-grad"]
# F.batch_norm updates running statistics without bumping their version counter, so only a
# failure (torch refuses it under vmap) reveals it; torch's own norm layers are found by type.
CASES = [(how, context) for how in WRITES for context in CONTEXTS] + [
    ("batch_norm", "vmap"),
    ("batch_norm", "vmap-grad"),
]


@pytest.mark.parametrize(("how", "context"), CASES)
def test_a_buffer_written_in_forward_is_named_under_every_transform(how, context):
    """torch's own messages ("During a grad ... in-place operation", "vmap: inplace arithmetic",
    "output with shape [1] doesn't match the broadcast shape") name neither the buffer nor the
    model; fn names both, and the buffer keeps its value for the next call."""
    fn, params = mf.pure(WritesABuffer(how))
    x = inputs(4, 1)
    with pytest.raises(ValueError) as info:
        transforms_of(fn, params, x)[context]()
    assert str(info.value) == (
        "pure: WritesABuffer wrote into its buffer 'seen' during forward; a pure model keeps no "
        "state between calls (under vmap every task would write the same buffer): compute it "
        "from the inputs, or call module.eval() before mf.pure if the layer has an evaluation "
        "mode"
    )
    assert torch.equal(fn._constants["seen"], torch.zeros(1, dtype=F64))


def test_a_frozen_parameter_written_in_forward_is_named_as_one():
    class ShrinksFrozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(1, 2).double().requires_grad_(False)
            self.head = nn.Linear(2, 1).double()

        def forward(self, x):
            self.body.weight.mul_(0.5)
            return self.head(self.body(x))

    fn, params = mf.pure(ShrinksFrozen())
    with pytest.raises(ValueError) as info:
        grad(lambda p: fn(p, inputs(4, 1)).sum())(params)
    assert str(info.value).startswith(
        "pure: ShrinksFrozen wrote into its frozen parameter 'body.weight' during forward; a pure "
        "model keeps no state between calls (under vmap every task would write the same frozen "
        "parameter)"
    )


def test_a_model_failing_for_another_reason_keeps_torchs_error():
    fn, params = mf.pure(WritesABuffer("none"))  # writes nothing; the input does not fit
    with pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied"):
        grad(lambda p: fn(p, inputs(4, 3)).sum())(params)


def in_net(**norm) -> nn.Module:
    """Linear -> InstanceNorm1d over 3 channels of 4 -> tanh -> Linear, inputs (n, 1)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.norm, self.b = (
                nn.Linear(1, 12),
                nn.InstanceNorm1d(3, **norm),
                nn.Linear(12, 1),
            )

        def forward(self, x):
            h = self.norm(self.a(x).reshape(x.shape[0], 3, 4))
            return self.b(torch.tanh(h.reshape(x.shape[0], 12)))

    torch.manual_seed(0)
    return Net().double()


@pytest.mark.parametrize("context", CONTEXTS)
def test_instancenorm_tracking_running_stats_is_refused_naming_the_layer(context):
    """torch says "Batch norm got a batched tensor as input while the running_mean or
    running_var ... were not batched" under vmap, naming neither the layer nor what to use."""
    module = in_net(track_running_stats=True)
    before = snapshot(module)
    fn, params = mf.pure(module)
    with pytest.raises(ValueError) as info:
        transforms_of(fn, params, inputs(5, 1))[context]()
    assert str(info.value) == (
        "pure: Net has torch InstanceNorm layer(s) ['norm'] with track_running_stats=True in "
        "training mode, which write their running statistics into buffers on every call: a pure "
        "model keeps no state between calls, and under vmap every task would write the same "
        "buffers. Build them with track_running_stats=False (instance normalisation uses each "
        "example's own statistics), use nn.GroupNorm(channels, channels) for instance "
        "normalisation with a learned scale and shift, or call module.eval() before mf.pure to "
        "use the stored statistics as constants."
    )
    assert_unchanged(module, before)


def test_instancenorm_in_eval_mode_uses_its_stored_statistics_under_vmap():
    module = in_net(track_running_stats=True)
    with torch.no_grad():
        module(inputs(16, 1, seed=5))  # non-trivial running statistics
    module.eval()
    fn, params = mf.pure(module)
    xs = inputs(2, 5, 1)
    out = vmap(fn, in_dims=(None, 0))(params, xs)
    torch.testing.assert_close(out, module(xs.reshape(10, 1)).reshape(2, 5, 1))


@pytest.mark.parametrize("context", ["grad", "vmap", "vmap-grad"])
def test_affine_instancenorm_is_refused_under_transforms_and_runs_plainly(context):
    fn, params = mf.pure(in_net(affine=True))
    calls = transforms_of(fn, params, inputs(5, 1))
    assert calls["plain"]().shape == (5, 1)
    with pytest.raises(ValueError) as info:
        calls[context]()
    assert str(info.value) == (
        "pure: Net has torch InstanceNorm layer(s) ['norm'] with affine=True in training mode, "
        "which are refused under vmap and grad: torch gives them wrong second-order gradients "
        "under vmap (a MAML meta-gradient off in the fourth digit). Use "
        "nn.GroupNorm(channels, channels), the same function with a learned scale and shift in "
        "a kernel that differentiates correctly, or affine=False."
    )


def test_torch_affine_instancenorm_breaks_second_order_under_vmap_and_groupnorm_does_not():
    """The evidence behind the refusal above (raw functional_call, so nothing refuses it)."""

    with_groupnorm = in_net()
    with_groupnorm.norm = nn.GroupNorm(3, 3).double()  # instance norm with scale and shift
    assert maml_grad_error(in_net(affine=True), flat=False) > 1e-6
    assert maml_grad_error(in_net(affine=False), flat=False) < 1e-12
    assert maml_grad_error(with_groupnorm, flat=False) < 1e-12


def test_conv_net_is_the_maml_paper_omniglot_network():
    net = mf.models.conv_net(5)
    fn, params = mf.pure(net)
    assert fn(params, torch.zeros(10, 1, 28, 28)).shape == (10, 5)
    # 4 blocks: 3x3 convs with biases and batch-norm scale/shift, 28 -> 14 -> 7 -> 3 -> 1
    first = 64 * 1 * 9 + 64 + 2 * 64
    later = 64 * 64 * 9 + 64 + 2 * 64
    assert sum(p.numel() for p in params.values()) == first + 3 * later + (64 * 5 + 5)
    assert not list(net.buffers())  # no running statistics to update per task


def test_conv_net_refuses_an_image_too_small_for_its_poolings():
    with pytest.raises(
        ValueError, match=r"conv_net: image_size must be at least 2\*\*blocks = 16 .* \(got 8\)"
    ):
        mf.models.conv_net(5, image_size=8)


def test_conv_net_batch_norm_equals_torch_batch_norm_without_running_stats():
    torch.manual_seed(0)  # test-only: random affine parameters
    ours = mf.models.BatchNorm(3).double()
    theirs = nn.BatchNorm2d(3, track_running_stats=False).double()
    for p in (ours.weight, ours.bias):
        nn.init.normal_(p)
    theirs.load_state_dict(ours.state_dict())
    x = inputs(4, 3, 5, 5)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_mlp_draws_its_initialisation_from_the_generator_like_nn_linear():
    a = mf.models.mlp([3, 5, 1], generator=torch.Generator().manual_seed(4))
    b = mf.models.mlp([3, 5, 1], generator=torch.Generator().manual_seed(4))
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
        bound = 1 / math.sqrt(3 if name.startswith("0.") else 5)
        assert p.abs().max() <= bound, name
        if p.numel() >= 5:  # spread over the interval, not a smaller one
            assert p.abs().max() > bound / 2, name


@pytest.mark.parametrize(
    ("seeded", "drawn"),
    [
        (
            lambda: mf.models.mlp([1, 40, 40, 1]),
            lambda g: mf.models.mlp([1, 40, 40, 1], generator=g),
        ),
        (lambda: mf.models.mlp([65, 32, 32, 1]), mf.models.daml_loss_net),
        (
            lambda: mf.models.conv_net(5, channels=8),
            lambda g: mf.models.conv_net(5, channels=8, generator=g),
        ),
    ],
    ids=["mlp", "daml_loss_net", "conv_net"],
)
def test_a_generator_draws_exactly_pytorchs_default_initialisation(seeded, drawn):
    """A seeded generator gives the parameters torch.manual_seed and PyTorch's own
    initialisation give, bit for bit (so runs that seeded globally keep their numbers)."""
    torch.manual_seed(7)  # test-only: the reference is the global-seed way
    want = dict(seeded().named_parameters())
    got = dict(drawn(torch.Generator().manual_seed(7)).named_parameters())
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


# --- frozen parameters ------------------------------------------------------------------------


def frozen_body_net(seed: int = 0) -> nn.Module:
    """A tanh net whose first layer is frozen, as a pretrained body would be."""
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    module[0].requires_grad_(False)
    return module


def test_frozen_parameters_are_constants_of_fn_not_params():
    module = frozen_body_net()
    fn, params = mf.pure(module)
    assert sorted(params) == ["2.bias", "2.weight"]
    x = inputs(6, 1)
    assert torch.equal(fn(params, x), module(x))
    # the frozen weights are copies: changing the module later does not reach fn
    with torch.no_grad():
        module[0].weight.add_(1.0)
    assert not torch.equal(fn(params, x), module(x))


def test_frozen_parameters_are_not_adapted_meta_learned_or_in_the_optimizer_state():
    module = frozen_body_net()
    fn, params = mf.pure(module)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1, inner_steps=2)
    tasks = sine_tasks()
    # the meta-gradient of the head with the body held constant: the hand-written loop, given
    # only the head, runs the module's own (frozen) body
    grads, _ = learner.meta_grad(params, tasks)
    want = reference_meta_grad(module, params, tasks, lr=0.1, steps=2, first_order=False)
    assert sorted(grads) == sorted(want) == ["2.bias", "2.weight"]
    for k in want:
        torch.testing.assert_close(grads[k], want[k], rtol=1e-10, atol=1e-12)
    assert sorted(learner.adapt(params, tasks.support)) == ["2.bias", "2.weight"]
    opt = mf.optim.adam(1e-2)
    state = mf.init_state(learner, opt, params)
    assert sorted(state.opt_state.mu) == ["2.bias", "2.weight"]
    before = snapshot(module)
    state, _ = mf.make_step(learner, opt, compile=False)(state, tasks)
    assert not torch.equal(state.meta["2.weight"], params["2.weight"])
    assert sorted(state.meta) == ["2.bias", "2.weight"]
    assert_unchanged(module, before)
    # the frozen body still shapes the prediction: another body gives another loss
    other, _ = mf.pure(frozen_body_net(seed=1))
    assert not torch.equal(fn(state.meta, tasks.query[0][0]), other(state.meta, tasks.query[0][0]))


def test_eval_mode_keeps_the_frozen_parameters_and_buffers():
    module = nn.Sequential(nn.Linear(1, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double()
    module[0].requires_grad_(False)
    with torch.no_grad():
        module[1].running_mean.fill_(0.5)
    fn, params = mf.pure(module)
    x = inputs(4, 1)
    predict = mf.eval_mode(fn)
    assert torch.equal(predict(params, x), module.eval()(x))
    # stored statistics are constants: allowed under vmap, where fn's training mode is refused
    batched = vmap(predict, in_dims=(None, 0))(params, x[:, None])
    torch.testing.assert_close(batched[:, 0], module(x), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=REFUSED):
        vmap(fn, in_dims=(None, 0))(params, x[:, None])


class _Tied(nn.Module):
    """An encoder and a decoder sharing one weight, a buffer added to the output and a frozen
    scale, with a keyword argument: every kind of named tensor ``functional_call`` places."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encode = nn.Linear(3, 3, bias=False)
        self.decode = nn.Linear(3, 3, bias=False)
        self.decode.weight = self.encode.weight  # tied: one parameter, two names
        self.register_buffer("shift", torch.arange(3.0))
        self.scale = nn.Parameter(torch.tensor(2.0), requires_grad=False)

    def forward(self, x: torch.Tensor, *, twice: bool = False) -> torch.Tensor:
        y = self.decode(torch.tanh(self.encode(x))) * self.scale + self.shift
        return 2 * y if twice else y


def test_fn_places_tied_weights_buffers_and_frozen_parameters_as_functional_call_does():
    """``fn`` finds where each tensor goes once and puts it there on every call (no walk over
    the module): the same result and gradients as ``functional_call``, whose tied weights take
    the one value given."""
    module = _Tied()
    fn, params = mf.pure(module)
    assert sorted(params) == ["encode.weight"]  # the tied alias and the frozen scale are not
    new = {"encode.weight": inputs(3, 3).float()}
    constants = {"shift": module.shift, "scale": module.scale}
    x = inputs(4, 3, seed=2).float()
    want = functional_call(module, (new, constants), (x,), {"twice": True})
    assert torch.equal(fn(new, x, twice=True), want)
    g = grad(lambda p: fn(p, x).square().sum())(new)
    g_want = grad(lambda p: functional_call(module, (p, constants), (x,)).square().sum())(new)
    assert torch.equal(g["encode.weight"], g_want["encode.weight"])
    # and the private module holds its own tensors again after each call
    inner = fn._module
    assert inner.decode.weight is inner.encode.weight
    assert isinstance(inner.encode.weight, nn.Parameter)


def test_fn_puts_the_modules_tensors_back_when_the_forward_raises_or_rebinds_a_buffer():
    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("count", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.count = self.count + 1  # rebinds the buffer: not a write into it
            if x.shape[0] == 0:
                raise ValueError("no examples")
            return self.lin(x)

    fn, params = mf.pure(Fails())
    inner = fn._module
    before = {n: t for n, t in [*inner.named_parameters(), *inner.named_buffers()]}
    with pytest.raises(ValueError, match="no examples"):
        fn(params, torch.zeros(0, 2))
    fn(params, torch.zeros(1, 2))
    after = {n: t for n, t in [*inner.named_parameters(), *inner.named_buffers()]}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert float(inner.count) == 0  # each call starts from the buffer as it was
