"""The compiled step skips only Dynamo's identity checks of torch's and metafunc's own objects:
whatever user code can change between two steps still makes it recompile."""

import dataclasses
import functools
import math

import pytest
import torch
from support import sine_tasks
from torch import nn
from torch._dynamo.types import GuardFilterEntry

import metafunc as mf
from metafunc import _guards

ACT = torch.relu  # a global the loss below reads; a test rebinds it


def _net():
    return nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _steps(fn):
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.sgd(0.1)
    compiled = mf.make_step(learner, opt, backend="aot_eager")
    eager = mf.make_step(learner, opt, compile=False)
    return learner, opt, compiled, eager


def _same(a, b):
    for x, y in zip(mf._tree.leaves(a), mf._tree.leaves(b), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


@pytest.mark.compile
def test_a_step_is_a_snapshot_of_what_the_loss_reads_and_a_new_step_sees_a_rebound_global():
    """As with jax.jit, a compiled step computes what the loss's globals were when it was
    built: it is keyed by them (and saved under that key for later processes), not guarded by
    their identity on every call. make_step again gives the step of the new binding; with
    cache=False, Dynamo's own identity guards recompile the same step."""
    global ACT
    fn, params = mf.pure(_net())
    learner, opt, compiled, eager = _steps(lambda p, x: ACT(fn(p, x)))
    unkeyed = mf.make_step(learner, opt, backend="aot_eager", cache=False)
    state, tasks = mf.init_state(learner, opt, params), sine_tasks(n=2)
    try:
        relu = eager(state, tasks)
        _same(compiled(state, tasks), relu)
        _same(unkeyed(state, tasks), relu)
        ACT = torch.tanh  # relu and tanh differ on the negative outputs of the net
        tanh = eager(state, tasks)
        assert not torch.equal(relu[1].loss, tanh[1].loss)
        _same(compiled(state, tasks), relu)  # the snapshot
        _same(mf.make_step(learner, opt, backend="aot_eager")(state, tasks), tanh)
        _same(unkeyed(state, tasks), tanh)
    finally:
        ACT = torch.relu


class _Doubles(nn.Module):
    """Doubles its input in training mode only."""

    def forward(self, x):
        return x * 2 if self.training else x


@pytest.mark.compile
def test_a_model_switched_to_eval_mode_recompiles():
    # the user's own functional model around a module they keep (mf.pure holds a private copy)
    net = nn.Sequential(nn.Linear(1, 4), _Doubles(), nn.Linear(4, 1)).double()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    learner, opt, compiled, eager = _steps(lambda p, x: torch.func.functional_call(net, p, (x,)))
    state, tasks = mf.init_state(learner, opt, params), sine_tasks(n=2)
    trained = compiled(state, tasks)
    _same(trained, eager(state, tasks))
    net.eval()
    evaluated = compiled(state, tasks)
    _same(evaluated, eager(state, tasks))
    assert not torch.equal(trained[1].loss, evaluated[1].loss)


def _entry(name, value, guard_type="ID_MATCH"):
    return GuardFilterEntry(
        name=name,
        has_value=True,
        value=value,
        guard_type=guard_type,
        derived_guard_types=(),
        is_global=name.startswith("G["),
        orig_guard=None,
    )


def test_keep_drops_identity_checks_of_library_objects_only():
    dropped = [
        _entry("G['__import_torch'].relu", torch.relu, "BUILTIN_MATCH"),
        _entry("G['__import_torch_dot_nn_dot_functional']", torch.nn.functional, "MODULE_MATCH"),
        _entry("G['__builtins_dict___0']['len']", len, "BUILTIN_MATCH"),
        _entry("G['TrainState']", mf.TrainState, "CLASS_MATCH"),
        _entry("G['apply_updates'].__code__", mf.optim.apply_updates.__code__),
    ]
    kept = [
        # a user module's global, even when it holds torch's function
        _entry("G['__import___main__'].act", torch.relu, "BUILTIN_MATCH"),
        _entry("G['__import_mypackage_dot_losses'].helper", torch.tanh, "BUILTIN_MATCH"),
        # reached through the step's closures (the learner, the user's loss and model)
        _entry("L['learner'].meta_grad.__closure__[0].cell_contents", torch.relu),
        # not an identity check, or not a library object
        _entry("G['__import_torch'].relu", torch.relu, "TENSOR_MATCH"),
        _entry("G['__import_torch'].pi", 3.14, "EQUALS_MATCH"),
        _entry("G['__import_torch'].thing", _Doubles, "CLASS_MATCH"),
    ]
    assert _guards.keep(dropped) == [False] * len(dropped)
    assert _guards.keep(kept) == [True] * len(kept)


def _user_function(x):
    return x


class _UserThing:
    pass


def _without_value(entry):
    return dataclasses.replace(entry, has_value=False)


# One case per rule of _guards.keep, written out by hand: (rule, entry, kept?). A wrong rule in
# _guards changes the answer for at least one of them; the compile tests above compare compiled
# runs with eager runs of the same code and cannot tell.
RULES = [
    # identity checks of library objects reached through library modules: dropped
    ("module", _entry("G['__import_torch_dot_nn']", torch.nn, "MODULE_MATCH"), False),
    ("builtin-function", _entry("G['__import_torch'].relu", torch.relu, "BUILTIN_MATCH"), False),
    ("stdlib-builtin", _entry("G['__import_math'].sqrt", math.sqrt, "ID_MATCH"), False),
    ("python-builtins", _entry("G['__builtins_dict___2']['isinstance']", isinstance, "BUILTIN_MATCH"), False),
    ("library-function", _entry("G['__import_metafunc_dot_optim'].sgd", mf.optim.sgd, "FUNCTION_MATCH"), False),
    ("library-class", _entry("G['__import_functools'].partial", functools.partial, "CLASS_MATCH"), False),
    ("library-type-match", _entry("G['__import_torch'].Tensor", torch.Tensor, "TYPE_MATCH"), False),
    ("library-closure-match", _entry("G['_tree'].map", mf._tree.map, "CLOSURE_MATCH"), False),
    ("library-code", _entry("G['apply_updates'].__code__", mf.optim.apply_updates.__code__), False),
    ("torch-code", _entry("G['__import_torch'].func.grad.__code__", torch.func.grad.__code__), False),
    ("step-module-global", _entry("G['Tasks']", mf.Tasks, "CLASS_MATCH"), False),
    # identity checks that stay: user modules, closures and inputs, user objects
    ("user-module-global", _entry("G['__import___main__'].act", torch.relu, "BUILTIN_MATCH"), True),
    ("user-package-global", _entry("G['__import_mypkg_dot_nets'].relu", torch.relu, "BUILTIN_MATCH"), True),
    # a module whose name starts like a library's is still the user's
    ("library-lookalike", _entry("G['__import_torchvision_dot_ops'].nms", torch.relu, "BUILTIN_MATCH"), True),
    ("closure", _entry("L['learner'].meta_grad.__closure__[1].cell_contents", mf.optim.sgd, "FUNCTION_MATCH"), True),
    ("input-attribute", _entry("L['fn']._module.training", torch.nn, "MODULE_MATCH"), True),
    ("user-function", _entry("G['loss_fn']", _user_function, "FUNCTION_MATCH"), True),
    ("user-class", _entry("G['Thing']", _UserThing, "CLASS_MATCH"), True),
    ("user-code", _entry("G['loss_fn'].__code__", _user_function.__code__), True),
    ("an-instance", _entry("G['__import_torch'].float64", torch.float64, "ID_MATCH"), True),
    # not an identity check, or no value to judge
    ("equals-match", _entry("G['__import_torch'].relu", torch.relu, "EQUALS_MATCH"), True),
    ("tensor-match", _entry("G['__import_torch'].relu", torch.relu, "TENSOR_MATCH"), True),
    ("no-value", _without_value(_entry("G['__import_torch'].relu", torch.relu, "BUILTIN_MATCH")), True),
]  # fmt: skip


def test_keep_follows_each_rule_against_a_hand_written_expectation():
    got = _guards.keep([entry for _, entry, _ in RULES])
    wrong = [
        f"{rule}: kept={k} (want {want})"
        for (rule, _, want), k in zip(RULES, got, strict=True)
        if k != want
    ]
    assert not wrong, wrong
    # and one at a time (keep judges each entry on its own)
    for rule, entry, want in RULES:
        assert _guards.keep([entry]) == [want], rule
