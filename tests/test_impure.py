"""Models, losses and data that cannot run as pure functions under vmap and grad: the step's
first call on new data says what is wrong, with the data, instead of a functorch message, and
never changes the caller's tensors."""

import pytest
import torch
from support import sine_tasks
from torch import nn

import metafunc as mf

F64 = torch.float64


class Counter(nn.Module):
    """Keeps state in a buffer it writes during forward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1).double()
        self.register_buffer("calls", torch.zeros((), dtype=F64))

    def forward(self, x):
        self.calls += 1
        return self.lin(x)


class ScalesItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1).double()

    def forward(self, x):
        x.mul_(2)
        return self.lin(x)


class ShrinksItsWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1).double()

    def forward(self, x):
        with torch.no_grad():
            self.lin.weight.mul_(0.5)
        return self.lin(x)


def step_for(model=None, loss=None, compile=False):
    torch.manual_seed(0)  # test-only: nn.Linear's default initialisation
    fn, params = mf.pure(model if model is not None else nn.Linear(1, 1).double())
    learner = mf.maml(loss(fn) if loss else mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.sgd(0.1)
    step = mf.make_step(learner, opt, compile=compile, backend="aot_eager")
    return step, mf.init_state(learner, opt, params)


IN_PLACE = (
    r"The model or loss writes in place into a tensor it was given \(an input, a parameter or a "
    r"buffer\); under vmap and grad it must be pure"
)


def test_a_buffer_written_in_forward_is_named():
    step, state = step_for(Counter())
    with pytest.raises(
        ValueError,
        match=r"^pure: Counter wrote into its buffer 'calls' during forward; a pure model keeps "
        r"no state between calls",
    ):
        step(state, sine_tasks())
    # called plainly, outside any transform, the function names the buffer and undoes the write
    fn, params = mf.pure(Counter())
    with pytest.raises(
        ValueError,
        match=r"^pure: Counter wrote into its buffer 'calls' during forward; a pure model keeps "
        r"no state between calls",
    ):
        fn(params, torch.zeros(2, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"buffer 'calls'"):  # still 0 -> 1, not 1 -> 2
        fn(params, torch.zeros(2, 1, dtype=F64))


@pytest.mark.compile
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_an_in_place_write_to_the_input_is_refused_and_the_callers_data_kept(compile):
    step, state = step_for(ScalesItsInput(), compile=compile)
    tasks = sine_tasks()
    before = [t.clone() for t in mf._tree.leaves(tasks)]
    with pytest.raises(RuntimeError, match=r"^step: the model or loss failed.*" + IN_PLACE):
        step(state, tasks)
    assert all(torch.equal(a, b) for a, b in zip(mf._tree.leaves(tasks), before, strict=True))


def test_a_weight_changed_in_forward_is_refused():
    step, state = step_for(ShrinksItsWeight())
    weight = state.meta["lin.weight"].clone()
    with pytest.raises(
        ValueError,
        match=r"^step: the model or loss wrote in place into state\.meta\['lin\.weight'\] during "
        r"the step; under vmap and grad they must be pure functions",
    ):
        step(state, sine_tasks())
    assert torch.equal(state.meta["lin.weight"], weight)


def test_item_in_the_loss_says_values_stay_tensors():
    def loss(fn):
        def per_task(params, data):
            x, y = data
            scale = float((y**2).mean().item())
            return ((fn(params, x) - y) ** 2).mean() * scale

        return per_task

    step, state = step_for(loss=loss)
    with pytest.raises(
        RuntimeError,
        match=r"^step: the model or loss failed on its first call with this data \(state\.step 0; "
        r"tasks\.support\[0\] \(3, 4, 1\) float64, .*\): RuntimeError: .* The model or loss reads "
        r"a tensor's value on the host \(\.item\(\)",
    ):
        step(state, sine_tasks())


def test_a_loss_that_is_not_a_scalar_is_named():
    step, state = step_for(loss=lambda fn: lambda p, data: (fn(p, data[0]) - data[1]) ** 2)
    with pytest.raises(
        RuntimeError, match=r"The loss must return one scalar per task, e\.g\. the mean"
    ):
        step(state, sine_tasks())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64], ids=["uint8", "int64"])
def test_integer_inputs_to_a_float_model_say_convert_them(dtype):
    step, state = step_for(loss=lambda fn: lambda p, data: fn(p, data[0]).mean())
    x = torch.randint(0, 255, (3, 4, 1), dtype=dtype)
    with pytest.raises(
        RuntimeError,
        match=rf"^step: .*tasks\.support\[0\] \(3, 4, 1\) {str(dtype)[6:]}, .*The data's dtype "
        r"does not fit the model's: convert the inputs",
    ):
        step(state, mf.Tasks((x,), (x,)))


def test_uint8_images_to_a_conv_net_say_convert_them_and_nothing_of_purity():
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.conv_net(3, channels=4, blocks=2, image_size=8, generator=g))
    learner = mf.maml(mf.supervised(fn, mf.losses.cross_entropy), inner_lr=0.1)
    opt = mf.optim.sgd(0.1)
    x = torch.randint(0, 255, (2, 3, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(3).repeat(2, 1)
    with pytest.raises(RuntimeError) as info:
        mf.make_step(learner, opt, compile=False)(
            mf.init_state(learner, opt, params), mf.Tasks((x, y), (x, y))
        )
    assert str(info.value).endswith(
        ": RuntimeError: Input type (unsigned char) and bias type (float) should be the same The "
        "data's dtype does not fit the model's: convert the inputs, e.g. x.float() for uint8 "
        "images, and keep labels int64."
    )
    assert isinstance(info.value.__cause__, RuntimeError)


def test_params_missing_a_key_keep_torchs_whole_message_and_say_they_do_not_fit():
    step, state = step_for()
    meta = {"weight": state.meta["weight"]}
    learner = mf.maml(mf.supervised(mf.pure(nn.Linear(1, 1).double())[0], mf.losses.mse))
    with pytest.raises(RuntimeError) as info:
        step(mf.init_state(learner, mf.optim.sgd(0.1), meta), sine_tasks())
    torchs = "Error(s) in reparametrizing for Linear:\n\tMissing key(s): 'bias'."
    assert str(info.value.__cause__) == torchs  # the original error, chained
    assert str(info.value).startswith("step: the model or loss failed on its first call with ")
    assert str(info.value).endswith(
        f": RuntimeError: {torchs} The parameters do not fit the model: state.meta must hold the "
        "parameters of the model fn was made from (mf.pure), by name; a checkpoint of another "
        "model, loaded without a template, does not."
    )


class BadTaskError(Exception):
    """A user's own error, raised by the loss."""


def test_a_users_own_error_keeps_its_type_and_whole_message_without_a_hint():
    def loss(fn):
        def per_task(params, data):
            raise BadTaskError("task has no labels\n  (label column 3 is empty)")

        return per_task

    step, state = step_for(loss=loss)
    with pytest.raises(BadTaskError) as info:
        step(state, sine_tasks())
    assert str(info.value).endswith(
        "float64): BadTaskError: task has no labels\n  (label column 3 is empty)"
    )
    assert isinstance(info.value.__cause__, BadTaskError)


def test_a_parameter_of_another_shape_is_named_not_the_data():
    """torch says "mat1 and mat2 shapes cannot be multiplied", which reads as the data's fault."""
    step, state = step_for()
    meta = {"weight": torch.zeros(1, 2, dtype=F64), "bias": state.meta["bias"]}
    expected = (
        r"^pure: params\['weight'\] must have the shape of Linear's parameter 'weight', \(1, 1\) "
        r"\(got \(1, 2\)\); params must be the parameters of the model fn was made from "
        r"\(mf\.pure\), or a checkpoint of that model$"
    )
    with pytest.raises(ValueError, match=expected) as info:
        step(state._replace(meta=meta, opt_state=mf.optim.sgd(0.1).init(meta)), sine_tasks())
    assert "mat1 and mat2 shapes cannot be multiplied" in str(info.value.__cause__)
    fn, params = mf.pure(nn.Linear(1, 1).double())
    with pytest.raises(ValueError, match=expected):
        fn({**params, "weight": meta["weight"]}, torch.zeros(4, 1, dtype=F64))
    # and a stateful model's function
    fn, params, buffers = mf.stateful(nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1)).double())
    with pytest.raises(ValueError, match=r"^pure: params\['0\.weight'\] must have the shape "):
        fn({**params, "0.weight": meta["weight"]}, buffers, torch.zeros(4, 1, dtype=F64))


def test_a_checkpoint_loaded_without_a_template_then_stepped_says_to_load_it_with_like(tmp_path):
    step, state = step_for()
    opt = mf.optim.sgd(0.1)
    other, other_params = mf.pure(nn.Sequential(nn.Linear(1, 2), nn.Linear(2, 1)).double())
    other_learner = mf.maml(mf.supervised(other, mf.losses.mse), inner_lr=0.1)
    path = mf.save(tmp_path / "other.pt", mf.init_state(other_learner, opt, other_params))
    loaded = mf.load(path)
    with pytest.raises(ValueError) as info:
        step(loaded, sine_tasks())
    assert str(info.value).startswith(
        "step: state.opt_state must have the same tree structure as optimizer.init(state.meta)"
    )
    assert str(info.value).endswith(
        "\nstate.opt_state holds dicts where the optimizer's state holds named tuples (SGDState), "
        "as in a state that mf.load read without like=: load the checkpoint with "
        "like=mf.init_state(learner, optimizer, params), which also checks that it holds this "
        "model and optimizer"
    )
    # which names the other model
    with pytest.raises(
        ValueError, match=r"has no entry state\.meta\['bias'\], which like has \(was it "
    ):
        mf.load(path, like=state)
    # its parameters with a fresh optimizer state: the probe says they do not fit, with torch's line
    with pytest.raises(RuntimeError) as info:
        step(loaded._replace(opt_state=opt.init(loaded.meta)), sine_tasks())
    assert "Unexpected key(s): '0.bias', '0.weight', '1.bias', '1.weight'." in str(info.value)
    assert "Missing key(s): 'bias', 'weight'." in str(info.value)
    assert str(info.value).endswith(
        "a checkpoint of another model, loaded without a template, does not."
    )


def test_labels_out_of_range_are_named():
    torch.manual_seed(0)
    fn, params = mf.pure(nn.Linear(2, 3).double())
    learner = mf.maml(mf.supervised(fn, mf.losses.cross_entropy), inner_lr=0.1)
    opt = mf.optim.sgd(0.1)
    x = torch.randn(2, 4, 2, dtype=F64)
    y = torch.tensor([[0, 1, 2, 5]] * 2)
    with pytest.raises(
        RuntimeError, match=r"A class label is out of range for the model's outputs"
    ):
        mf.make_step(learner, opt, compile=False)(
            mf.init_state(learner, opt, params), mf.Tasks((x, y), (x, y))
        )


def test_a_feature_size_that_changes_mid_run_is_caught_on_the_new_data():
    step, state = step_for()
    state, _ = step(state, sine_tasks())
    (xs, ys), (xq, yq) = sine_tasks()
    wide = mf.Tasks((torch.cat([xs, xs], -1), ys), (torch.cat([xq, xq], -1), yq))
    with pytest.raises(
        RuntimeError,
        match=r"^step: the model or loss failed on its first call with this data \(state\.step 1; "
        r"tasks\.support\[0\] \(3, 4, 2\) float64.*The data does not fit the model",
    ):
        step(state, wide)


def test_task_tensors_that_require_grad_leave_no_graph_in_the_state():
    step, state = step_for()
    for _ in range(3):
        (xs, ys), (xq, yq) = sine_tasks()
        tasks = mf.Tasks((xs.requires_grad_(), ys), (xq.requires_grad_(), yq))
        state, metrics = step(state, tasks)
    for t in mf._tree.leaves((state, metrics)):
        assert t.grad_fn is None and not t.requires_grad


def test_running_out_of_memory_suggests_chunked():
    step, state = step_for()
    learner = mf.maml(mf.supervised(mf.pure(nn.Linear(1, 1).double())[0], mf.losses.mse))

    def rule(learner, meta, tasks):  # one task fits (the first-call probe), the batch does not
        if tasks.support[0].shape[0] > 1:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                "can't allocate memory: you tried to allocate 549755813888 bytes."
            )
        return mf.exact(learner, meta, tasks)

    opt = mf.optim.sgd(0.1)
    step = mf.make_step(learner._replace(rule=rule), opt, compile=False)
    with pytest.raises(
        RuntimeError,
        match=r"^step: out of memory for a meta-batch of 3 tasks \(\[enforce fail at "
        r"alloc_cpu\.cpp:117\] DefaultCPUAllocator: can't allocate memory: .*\); vmap holds "
        r"every task's activations at once: wrap the learner to hold fewer, e\.g\. "
        r"mf\.chunked\(learner, 1\), or use a smaller meta-batch$",
    ):
        step(mf.init_state(learner, opt, state.meta), sine_tasks())
