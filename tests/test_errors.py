"""Bad input to every public entry point fails early with a message that names the argument,
what was expected and what was got (table-driven: one row per mistake)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

import metafunc as mf

F64 = torch.float64


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()


FN, PARAMS = mf.pure(_net())
LOSS = mf.supervised(FN, mf.losses.mse)
TASKS = mf.tasks.sine(torch.Generator().manual_seed(0), tasks=3, dtype=F64)
(SX, SY), (QX, QY) = TASKS


def _rates(shapes: dict[str, tuple[int, ...]] | None = None, dtype=F64) -> dict[str, torch.Tensor]:
    shapes = shapes or {}
    return {k: torch.full(shapes.get(k, v.shape), 0.1, dtype=dtype) for k, v in PARAMS.items()}


def _meta_grad(tasks):
    learner = mf.maml(LOSS)
    return learner.meta_grad(learner.init(PARAMS), tasks)


def _tasks(sx=SX, sy=SY, qx=QX, qy=QY) -> mf.Tasks:
    return mf.Tasks((sx, sy), (qx, qy))


def _init_with_lr(lr):
    return mf.maml(LOSS, inner_lr=lr).init(PARAMS)


def _update_with(opt, grads):
    return opt.update(grads, opt.init(PARAMS), PARAMS)


def _eager_step():
    learner = mf.maml(LOSS)
    opt = mf.optim.sgd(0.1)
    return learner, opt, mf.make_step(learner, opt, compile=False)


def _step_with_tuple_state():
    learner, opt, step = _eager_step()
    state = mf.init_state(learner, opt, PARAMS)
    return step(tuple(state), TASKS)


def _train_negative_steps():
    learner, opt, step = _eager_step()
    state = mf.init_state(learner, opt, PARAMS)
    return mf.train(step, state, lambda g: TASKS, steps=-1, progress=False)


def _adapt(**kw):
    args = {"loss": LOSS, "lr": 0.1, "steps": 1} | kw
    return mf.inner_loop(PARAMS, (SX[0], SY[0]), **args)


def _state(opt=None, params=PARAMS):
    learner = mf.maml(LOSS)
    return mf.init_state(learner, opt or mf.optim.adam(1e-3), params)


def _step_call(state=None, tasks=TASKS, opt=None):
    opt = opt or mf.optim.adam(1e-3)
    step = mf.make_step(mf.maml(LOSS), opt, compile=False)
    return step(state if state is not None else _state(opt), tasks)


def _train(data=lambda g: TASKS, **kw):
    learner, opt, step = _eager_step()
    args = {"steps": 1, "progress": False} | kw
    return mf.train(step, mf.init_state(learner, opt, PARAMS), data, **args)


def _load_after_saving(saved, like, *, generator=None, save_generator=None, raw=None):
    """Save ``saved`` (or ``torch.save`` the object ``raw``) in a fresh directory, then load
    it into ``like``."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.pt"
        if raw is not None:
            torch.save(raw, path)
        else:
            mf.save(path, saved, generator=save_generator)
        return mf.load(path, like=like, generator=generator)


def _resume_with_other_metadata():
    learner, opt, step = _eager_step()
    state = mf.init_state(learner, opt, PARAMS)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.pt"
        mf.save(path, state, generator=torch.Generator(), metadata={"lr": 0.1, "seed": 0})
        saver = mf.hooks.Checkpoints(path, resume=True, metadata={"lr": 0.2, "seed": 0})
        mf.train(step, state, lambda g: TASKS, steps=3, hooks=[saver], progress=False)


def _bn_meta_grad():
    net = nn.Sequential(nn.Linear(1, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double()
    fn, params = mf.pure(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse))
    return learner.meta_grad(learner.init(params), TASKS)


DROPOUT_FN, DROPOUT_PARAMS = mf.pure(
    nn.Sequential(nn.Linear(1, 4), nn.Dropout(0.5), nn.Linear(4, 1)).double()
)


def _dropout_learner(randomness="different"):
    learner = mf.maml(mf.supervised(DROPOUT_FN, mf.losses.mse))
    return learner if randomness == "error" else mf.stochastic(learner, randomness)


def _dropout_step(change):
    learner, opt = _dropout_learner(), mf.optim.sgd(0.1)
    state = mf.init_state(learner, opt, DROPOUT_PARAMS, seed=0)
    return mf.make_step(learner, opt, compile=False)(change(state), TASKS)


META_DEVICE = _tasks(sx=SX.to("meta"), sy=SY.to("meta"), qx=QX.to("meta"), qy=QY.to("meta"))
EMPTY = _tasks(sx=SX[:0], sy=SY[:0], qx=QX[:0], qy=QY[:0])
PARAMS_F32 = {k: v.float() for k, v in PARAMS.items()}
WIDER = mf.pure(nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1)).double())[1]

MISSING_2_BIAS = {k: v for k, v in _rates().items() if k != "2.bias"}

CASES = [
    # --- learner hyper-parameters -------------------------------------------------------------
    (
        "maml-inner_lr-negative",
        lambda: mf.maml(LOSS, inner_lr=-0.1),
        ValueError,
        r"^maml: inner_lr must be a positive finite number \(got -0\.1\)$",
    ),
    (
        "maml-inner_lr-zero",
        lambda: mf.maml(LOSS, inner_lr=0),
        ValueError,
        r"^maml: inner_lr must be a positive finite number \(got 0\)$",
    ),
    (
        "maml-inner_lr-nan",
        lambda: mf.maml(LOSS, inner_lr=math.nan),
        ValueError,
        r"^maml: inner_lr must be a positive finite number \(got nan\)$",
    ),
    (
        "maml-inner_lr-inf",
        lambda: mf.maml(LOSS, inner_lr=math.inf),
        ValueError,
        r"^maml: inner_lr must be a positive finite number \(got inf\)$",
    ),
    (
        "maml-inner_lr-bool",
        lambda: mf.maml(LOSS, inner_lr=True),
        TypeError,
        r"^maml: inner_lr must be a number \(got True of type bool\)$",
    ),
    (
        "maml-inner_lr-str",
        lambda: mf.maml(LOSS, inner_lr="0.1"),
        TypeError,
        r"^maml: inner_lr must be a positive number or a pytree of tensors like the parameters "
        r"\(got str\)$",
    ),
    (
        "fomaml-inner_lr-negative",
        lambda: mf.fomaml(LOSS, inner_lr=-1.0),
        ValueError,
        r"^maml: inner_lr must be a positive finite number \(got -1\.0\)$",
    ),
    (
        "maml-inner_steps-negative",
        lambda: mf.maml(LOSS, inner_steps=-1),
        ValueError,
        r"^maml: inner_steps must be an integer >= 0 \(got -1\)$",
    ),
    (
        "maml-inner_steps-float",
        lambda: mf.maml(LOSS, inner_steps=1.5),
        TypeError,
        r"^maml: inner_steps must be an integer \(got 1\.5 of type float\)$",
    ),
    (
        "maml-inner_steps-bool",
        lambda: mf.maml(LOSS, inner_steps=True),
        TypeError,
        r"^maml: inner_steps must be an integer \(got True of type bool\)$",
    ),
    (
        "fomaml-inner_steps-float",
        lambda: mf.fomaml(LOSS, inner_steps=2.0),
        TypeError,
        r"^maml: inner_steps must be an integer \(got 2\.0 of type float\)$",
    ),
    (
        "first_order-not-a-learner",
        lambda: mf.first_order(LOSS),
        TypeError,
        r"^first_order: learner must be a metafunc\.Learner, e\.g\. mf\.maml\(loss\) \(got function\)$",
    ),
    (
        "first_order-no-inner-loop",
        lambda: mf.first_order(mf.Learner(lambda p: p, lambda m, s: m, LOSS)),
        TypeError,
        r"^first_order: needs a learner whose inner is a metafunc\.Loop \(gradient steps\), e\.g\. "
        r"mf\.maml\(loss\) \(got an inner of type function\)$",
    ),
    (
        "chunked-size-zero",
        lambda: mf.chunked(mf.maml(LOSS), 0),
        ValueError,
        r"^chunked: size must be an integer >= 1 \(got 0\)$",
    ),
    (
        "chunked-twice",
        lambda: mf.chunked(mf.chunked(mf.maml(LOSS), 2), 4),
        ValueError,
        r"^chunked: the learner is already chunked \(size 2\); wrap the unchunked learner once "
        r"\(got size=4\)$",
    ),
    (
        "maml-inner_steps-absurd",
        lambda: mf.maml(LOSS, inner_steps=10**9),
        ValueError,
        r"^maml: inner_steps must be at most 10000 \(got 1000000000\): every step is "
        r"differentiated through and traced into the compiled step",
    ),
    (
        "maml-loss-not-callable",
        lambda: mf.maml(3),
        TypeError,
        r"^maml: loss must be callable as loss\(params, data\) \(got 3\)$",
    ),
    (
        "fomaml-loss-not-callable",
        lambda: mf.fomaml(None),
        TypeError,
        r"^maml: loss must be callable as loss\(params, data\) \(got None\)$",
    ),
    # --- a pytree inner_lr must fit the parameters (checked by learner.init) -----------------
    (
        "maml-inner_lr-tree-missing-key",
        lambda: _init_with_lr(MISSING_2_BIAS),
        ValueError,
        r"(?s)^maml: inner_lr must have the same tree structure as params; first difference at "
        r"params\['2\.bias'\] \(dict\) vs inner_lr\['2\.weight'\] \(dict\)\.\n  params: PyTreeSpec\(\{'0\.bias': \*, '0\.weight': "
        r"\*, '2\.bias': \*, '2\.weight': \*\}\)\n  inner_lr: PyTreeSpec\(\{'0\.bias': \*, "
        r"'0\.weight': \*, '2\.weight': \*\}\)$",
    ),
    (
        "maml-inner_lr-vector-tensor",
        lambda: _init_with_lr(torch.tensor([0.1, 0.2], dtype=F64)),
        ValueError,
        r"^maml: inner_lr as a tensor must be 0-d, one rate for every parameter \(a tree of "
        r"tensors like the parameters gives each its own\) \(got shape \(2,\)\)$",
    ),
    (
        "maml-inner_lr-scalar-tensor-negative",
        lambda: mf.maml(LOSS, inner_lr=torch.tensor(-0.1, dtype=F64)),
        ValueError,
        r"^maml: inner_lr must be a positive finite number \(got tensor -0\.1\)$",
    ),
    (
        "maml-inner_lr-scalar-tensor-integer",
        lambda: mf.maml(LOSS, inner_lr=torch.tensor(1)),
        TypeError,
        r"^maml: inner_lr must be a floating-point tensor \(got torch\.int64\)$",
    ),
    (
        # (4, 1) against a (4,) bias would broadcast the adapted bias to (4, 4).
        "maml-inner_lr-tree-leaf-shape",
        lambda: _init_with_lr(_rates({"0.bias": (4, 1)})),
        ValueError,
        r"^maml: inner_lr\['0\.bias'\] must have a shape that broadcasts to its parameter's "
        r"shape \(4,\) \(got shape \(4, 1\)\)$",
    ),
    (
        "maml-inner_lr-tree-leaf-dtype",
        lambda: _init_with_lr(_rates(dtype=torch.float32)),
        TypeError,
        r"^maml: inner_lr\['0\.bias'\] must have its parameter's dtype and device torch\.float64 "
        r"on cpu \(got torch\.float32 on cpu\)$",
    ),
    # --- optimizers ---------------------------------------------------------------------------
    (
        "sgd-lr-negative",
        lambda: mf.optim.sgd(-1e-3),
        ValueError,
        r"^sgd: lr must be a positive finite number, a 0-d tensor or a schedule \(got -0\.001\)$",
    ),
    (
        "adam-lr-string",
        lambda: mf.optim.adam("1e-3"),
        TypeError,
        r"^adam: lr must be a positive finite number, a 0-d tensor or a schedule \(got '1e-3' of type str\)$",
    ),
    (
        "sgd-momentum-one",
        lambda: mf.optim.sgd(0.1, momentum=1.0),
        ValueError,
        r"^sgd: momentum must be in \[0, 1\) \(got 1\.0\)$",
    ),
    (
        "sgd-momentum-negative",
        lambda: mf.optim.sgd(0.1, momentum=-0.5),
        ValueError,
        r"^sgd: momentum must be a non-negative finite number \(got -0\.5\)$",
    ),
    (
        "adam-b1-one",
        lambda: mf.optim.adam(0.1, b1=1),
        ValueError,
        r"^adam: b1 must be in \[0, 1\) \(got 1\.0\)$",
    ),
    (
        "adam-b2-above-one",
        lambda: mf.optim.adam(0.1, b2=1.5),
        ValueError,
        r"^adam: b2 must be in \[0, 1\) \(got 1\.5\)$",
    ),
    (
        "adam-eps-zero",
        lambda: mf.optim.adam(0.1, eps=0),
        ValueError,
        r"^adam: eps must be a positive finite number \(got 0\)$",
    ),
    (
        "adam-eps-negative",
        lambda: mf.optim.adam(0.1, eps=-1e-8),
        ValueError,
        r"^adam: eps must be a positive finite number \(got -1e-08\)$",
    ),
    (
        "sgd-nesterov-without-momentum",
        lambda: mf.optim.sgd(0.1, nesterov=True),
        ValueError,
        r"^sgd: nesterov=True needs momentum > 0 \(got momentum=0\.0\)$",
    ),
    (
        "sgd-update-grads-tree",
        lambda: _update_with(mf.optim.sgd(0.1), MISSING_2_BIAS),
        ValueError,
        r"^sgd\.update: grads must have the same tree structure as params; first difference at "
        r"params\['2\.bias'\] \(dict\) vs grads\['2\.weight'\] \(dict\)\.\n  params: PyTreeSpec\(.*\)\n  grads: PyTreeSpec\(",
    ),
    (
        "adam-update-grads-tree",
        lambda: _update_with(mf.optim.adam(0.1), {"w": torch.zeros(1, dtype=F64)}),
        ValueError,
        r"^adam\.update: grads must have the same tree structure as params; first difference at "
        r"params\['0\.bias'\] \(dict\) vs grads\['w'\] \(dict\)\.",
    ),
    # --- the meta-batch given to meta_grad ---------------------------------------------------
    (
        "meta_grad-tasks-not-Tasks",
        lambda: _meta_grad(((SX, SY), (QX, QY))),
        TypeError,
        r"^meta_grad: tasks must be a metafunc\.Tasks\(support, query\) \(got tuple\)$",
    ),
    (
        "meta_grad-support-query-keys-differ",
        lambda: _meta_grad(mf.Tasks({"x": SX, "y": SY}, {"x": QX, "z": QY})),
        ValueError,
        r"(?s)^meta_grad: tasks\.query must have the same tree structure as tasks\.support; first "
        r"difference at tasks\.support\['y'\] \(dict\) vs tasks\.query\['z'\] \(dict\)\.\n  tasks\.support: PyTreeSpec\(\{'x': \*, 'y': \*\}\)"
        r"\n  tasks\.query: PyTreeSpec\(\{'x': \*, 'z': \*\}\)$",
    ),
    (
        "meta_grad-support-query-lengths-differ",
        lambda: _meta_grad(mf.Tasks((SX, SY), (QX,))),
        ValueError,
        r"^meta_grad: tasks\.query must have the same tree structure as tasks\.support; first "
        r"difference at tasks\.support\[1\] \(tuple\) has no counterpart in tasks\.query\.\n  tasks\.support: PyTreeSpec\(\(\*, \*\)\)\n"
        r"  tasks\.query: PyTreeSpec\(\(\*,\)\)$",
    ),
    (
        "meta_grad-number-of-tasks-differs",
        lambda: _meta_grad(_tasks(qx=QX[:2], qy=QY[:2])),
        ValueError,
        r"^meta_grad: every tensor in the tasks must have the same number of tasks \(leading dimension\); "
        r"tasks\.support\[0\] has 3 but tasks\.query\[0\] has 2$",
    ),
    (
        "meta_grad-per-example-shape-differs",
        lambda: _meta_grad(
            _tasks(sx=torch.zeros(3, 4, 1, dtype=F64), qx=torch.zeros(3, 4, 2, dtype=F64))
        ),
        ValueError,
        r"^meta_grad: tasks\.support\[0\] and tasks\.query\[0\] must have the same per-example shape; "
        r"got \(3, 4, 1\) and \(3, 4, 2\) \(shapes are \(tasks, examples, \.\.\.\)\)$",
    ),
    (
        "meta_grad-tensor-ndim-below-2",
        lambda: _meta_grad(_tasks(sy=SY[:, 0, 0])),
        ValueError,
        r"^meta_grad: tasks\.support\[1\] must have shape \(tasks, examples, features\.\.\.\) "
        r"\(got shape \(3,\)\); floating-point task data needs all three",
    ),
    (
        # one task of 4 points without its task dimension would read as 4 tasks of one point
        "meta_grad-one-task-without-its-task-dimension",
        lambda: _meta_grad(mf.Tasks((SX[0], SY[0]), (QX[0], QY[0]))),
        ValueError,
        r"^meta_grad: tasks\.support\[0\] must have shape \(tasks, examples, features\.\.\.\) "
        r"\(got shape \(4, 1\)\); floating-point task data needs all three: one task without "
        r"its task dimension takes x\[None\], scalar features take x\[\.\.\., None\]; class "
        r"labels are integers and need no feature dimension: y\.long\(\)$",
    ),
    (
        "meta_grad-labels-of-one-task-without-its-task-dimension",
        lambda: mf.maml(LOSS).meta_grad(PARAMS, mf.Tasks((SX, SY[:, :, 0].long()[0]), (QX, QY))),
        ValueError,
        r"^meta_grad: tasks\.support\[1\] must have shape \(tasks, examples, \.\.\.\) \(got shape "
        r"\(4,\)\); one task needs a leading task dimension of 1: x\[None\]$",
    ),
    (
        "meta_grad-no-examples",
        lambda: _meta_grad(_tasks(sx=SX[:, :0], sy=SY[:, :0])),
        ValueError,
        r"^meta_grad: tasks\.support\[0\] must hold at least one example per task \(got shape "
        r"\(3, 0, 1\): dimension 1, the examples, is empty\)$",
    ),
    (
        "adapt-a-single-task-where-a-batch-belongs",
        lambda: mf.maml(LOSS).adapt(PARAMS, (SX[0], SY[0])),
        ValueError,
        r"^adapt: support\[0\] must have shape \(tasks, examples, features\.\.\.\) "
        r"\(got shape \(4, 1\)\)",
    ),
    (
        "params-on-the-meta-device",
        lambda: mf.maml(LOSS).init({k: v.to("meta") for k, v in PARAMS.items()}),
        ValueError,
        r"^maml: params\['0\.bias'\] is on the meta device, which holds shapes but no values; "
        r"materialise the model first",
    ),
    (
        "meta_grad-float32-data-float64-params",
        lambda: _meta_grad(_tasks(sx=SX.float(), qx=QX.float())),
        TypeError,
        r"^meta_grad: tasks\.support\[0\] has dtype torch\.float32 but the parameters are "
        r"torch\.float64; convert the data with \.to\(torch\.float64\)$",
    ),
    (
        "meta_grad-empty-meta-batch",
        lambda: _meta_grad(_tasks(SX[:0], SY[:0], QX[:0], QY[:0])),
        ValueError,
        r"^meta_grad: tasks must hold at least one task \(got an empty meta-batch\)$",
    ),
    (
        "meta_loss-no-tensors",
        lambda: mf.maml(LOSS).per_task(PARAMS, mf.Tasks((), ())),
        ValueError,
        r"^per_task: tasks\.support must hold at least one tensor \(got \(\)\)$",
    ),
    (
        "meta_grad-integer-meta",
        lambda: mf.maml(LOSS).meta_grad({"w": torch.ones(2, dtype=torch.int64)}, TASKS),
        TypeError,
        r"^meta_grad: meta\['w'\] must be a floating-point tensor \(got torch\.int64\)$",
    ),
    # --- the outer step and training loop ----------------------------------------------------
    (
        "make_step-not-a-Learner",
        lambda: mf.make_step(LOSS, mf.optim.sgd(0.1), compile=False),
        TypeError,
        r"^make_step: learner must be a metafunc\.Learner, e\.g\. mf\.maml\(loss\) "
        r"\(got function\)$",
    ),
    (
        "make_step-not-an-Optimizer",
        lambda: mf.make_step(mf.maml(LOSS), torch.optim.SGD, compile=False),
        TypeError,
        r"^make_step: optimizer must be a metafunc\.optim\.Optimizer, e\.g\. "
        r"mf\.optim\.adam\(1e-3\) \(got type\)$",
    ),
    (
        "make_step-compile-not-bool",
        lambda: mf.make_step(mf.maml(LOSS), mf.optim.sgd(0.1), compile="no"),
        TypeError,
        r"^make_step: compile must be True, False or \"background\" \(got 'no'\)$",
    ),
    (
        "make_step-options-not-a-dict",
        lambda: mf.make_step(mf.maml(LOSS), mf.optim.sgd(0.1), options=["cpp_wrapper"]),
        TypeError,
        r"^make_step: options must be a dict of torch\.compile options, e\.g\. "
        r"\{'cpp_wrapper': False\} \(got list\)$",
    ),
    (
        "init_state-not-an-Optimizer",
        lambda: mf.init_state(mf.maml(LOSS), "adam", PARAMS),
        TypeError,
        r"^init_state: optimizer must be a metafunc\.optim\.Optimizer, e\.g\. "
        r"mf\.optim\.adam\(1e-3\) \(got str\)$",
    ),
    (
        "step-state-not-TrainState",
        _step_with_tuple_state,
        TypeError,
        r"^step: state must be a metafunc\.TrainState from init_state \(got tuple\)$",
    ),
    (
        "train-steps-negative",
        _train_negative_steps,
        ValueError,
        r"^train: steps must be an integer >= 0 \(got -1\)$",
    ),
    # --- losses must not broadcast ------------------------------------------------------------
    (
        "l1-pred-n1-target-n",
        lambda: mf.losses.l1(torch.zeros(5, 1), torch.zeros(5)),
        ValueError,
        r"^l1: prediction and target must have the same shape \(got \(5, 1\) and \(5,\)\)$",
    ),
    (
        "mse-pred-n1-target-n",
        lambda: mf.losses.mse(torch.zeros(5, 1), torch.zeros(5)),
        ValueError,
        r"^mse: prediction and target must have the same shape \(got \(5, 1\) and \(5,\)\)$",
    ),
    # --- models and tasks ---------------------------------------------------------------------
    (
        "pure-not-a-module",
        lambda: mf.pure(lambda x: x),
        TypeError,
        r"^pure: module must be a torch\.nn\.Module \(got function\)$",
    ),
    (
        "pure-no-parameters",
        lambda: mf.pure(nn.ReLU()),
        ValueError,
        r"^pure: module ReLU has no parameters to learn$",
    ),
    (
        "sine-tasks-zero",
        lambda: mf.tasks.sine(torch.Generator(), tasks=0),
        ValueError,
        r"^sine: tasks must be an integer >= 1 \(got 0\)$",
    ),
    (
        "sinusoid-shots-zero",
        lambda: mf.tasks.sinusoid(torch.Generator(), tasks=2, shots=0),
        ValueError,
        r"^sinusoid: shots must be an integer >= 1 \(got 0\)$",
    ),
    # --- adapt --------------------------------------------------------------------------------
    (
        "adapt-steps-negative",
        lambda: _adapt(steps=-1),
        ValueError,
        r"^inner_loop: steps must be an integer >= 0 \(got -1\)$",
    ),
    (
        "adapt-lr-tree-mismatch",
        lambda: _adapt(lr={"a": torch.ones(1, dtype=F64)}),
        ValueError,
        r"(?s)^inner_loop: lr must have the same tree structure as params; first difference at "
        r"params\['0\.bias'\] \(dict\) vs lr\['a'\] \(dict\)\.\n  params: PyTreeSpec\(.*\)\n  lr: PyTreeSpec\(\{'a': \*\}\)$",
    ),
    (
        "adapt-lr-tree-leaf-shape",
        lambda: _adapt(lr=_rates({"2.bias": (3,)})),
        ValueError,
        r"^inner_loop: lr\['2\.bias'\] must have a shape that broadcasts to its parameter's shape "
        r"\(1,\) \(got shape \(3,\)\)$",
    ),
    (
        "adapt-lr-negative",
        lambda: _adapt(lr=-0.5),
        ValueError,
        r"^inner_loop: lr must be a positive finite number \(got -0\.5\)$",
    ),
    (
        "adapt-loss-not-callable",
        lambda: _adapt(loss="mse"),
        TypeError,
        r"^inner_loop: loss must be callable as loss\(params, data\) \(got 'mse'\)$",
    ),
    (
        "maml-inner_lr-tree-negative-rate",
        lambda: _init_with_lr({**_rates(), "0.bias": torch.full((4,), -0.1, dtype=F64)}),
        ValueError,
        r"^maml: inner_lr\['0\.bias'\] must hold finite non-negative rates \(got min -0\.1, max -0\.1\)$",
    ),
    (
        "meta_grad-support-list-query-tuple",
        lambda: _meta_grad(mf.Tasks((SX, SY), [QX, QY])),
        ValueError,
        r"^meta_grad: tasks\.query must have the same tree structure as tasks\.support; first "
        r"difference at tasks\.support\[0\] \(tuple\) vs tasks\.query\[0\] \(list\)\.",
    ),
    (
        "sine-phase-wrong-length",
        lambda: mf.tasks.sine(torch.Generator(), tasks=3, phase=torch.zeros(2)),
        ValueError,
        r"^sine: phase must be a number or a tensor of shape \(3,\), one per task \(got shape \(2,\)\)$",
    ),
    (
        "sinusoid-amplitude-wrong-length",
        lambda: mf.tasks.sinusoid(torch.Generator(), tasks=3, amplitude=torch.ones(2)),
        ValueError,
        r"^sinusoid: amplitude must be a number or a tensor of shape \(3,\), one per task "
        r"\(got shape \(2,\)\)$",
    ),
    # --- NaN, bools and types where numbers are expected -------------------------------------
    (
        "sgd-lr-nan",
        lambda: mf.optim.sgd(math.nan),
        ValueError,
        r"^sgd: lr must be a positive finite number, a 0-d tensor or a schedule \(got nan\)$",
    ),
    (
        "adam-lr-bool",
        lambda: mf.optim.adam(True),
        TypeError,
        r"^adam: lr must be a positive finite number, a 0-d tensor or a schedule \(got True of type bool\)$",
    ),
    (
        "adam-weight_decay-inf",
        lambda: mf.optim.adam(1e-3, weight_decay=math.inf),
        ValueError,
        r"^adam: weight_decay must be a non-negative finite number \(got inf\)$",
    ),
    (
        "sgd-nesterov-int",
        lambda: mf.optim.sgd(0.1, momentum=0.9, nesterov=1),
        TypeError,
        r"^sgd: nesterov must be True or False \(got 1\)$",
    ),
    (
        "sine-tasks-bool",
        lambda: mf.tasks.sine(torch.Generator(), tasks=True),
        TypeError,
        r"^sine: tasks must be an integer \(got True of type bool\)$",
    ),
    (
        "adapt-lr-nan",
        lambda: _adapt(lr=math.nan),
        ValueError,
        r"^inner_loop: lr must be a positive finite number \(got nan\)$",
    ),
    # --- data against parameters: device, dtype, empty batch, impure models -------------------
    (
        "meta_grad-data-on-another-device",
        lambda: _meta_grad(META_DEVICE),
        ValueError,
        r"^meta_grad: tasks\.support\[0\] is on meta but the parameters are on cpu$",
    ),
    (
        "step-data-on-another-device",
        lambda: _step_call(tasks=META_DEVICE),
        ValueError,
        r"^step: tasks\.support\[0\] is on meta but the parameters are on cpu$",
    ),
    (
        "step-float32-params-float64-data",
        lambda: _step_call(state=_state(params=PARAMS_F32)),
        TypeError,
        r"^step: tasks\.support\[0\] has dtype torch\.float64 but the parameters are "
        r"torch\.float32; convert the data with \.to\(torch\.float32\)$",
    ),
    (
        "step-empty-meta-batch",
        lambda: _step_call(tasks=EMPTY),
        ValueError,
        r"^step: tasks must hold at least one task \(got an empty meta-batch\)$",
    ),
    (
        "meta_grad-params-mixed-dtypes",
        lambda: mf.maml(LOSS).meta_grad(PARAMS | {"2.bias": PARAMS["2.bias"].float()}, TASKS),
        ValueError,
        r"^meta_grad: all of meta must share one dtype and device; meta\['0\.bias'\] is torch\.float64 "
        r"on cpu but meta\['2\.bias'\] is torch\.float32 on cpu$",
    ),
    (
        "meta_grad-batchnorm-running-stats",
        _bn_meta_grad,
        ValueError,
        r"^pure: Sequential has torch BatchNorm layer\(s\) \['1'\] in training mode, "
        r"which are refused under vmap and grad: with running statistics every task would write "
        r"the same buffers, and without them torch gives wrong second-order gradients under vmap\. "
        r"Use mf\.models\.BatchNorm \(per-batch statistics in plain ops",
    ),
    # --- inner optimizers, random operations, modules and labels (issue 15) ------------------
    (
        "maml-inner_lr-and-inner_opt",
        lambda: mf.maml(LOSS, inner_lr=0.1, inner_opt=mf.optim.sgd(0.1, momentum=0.9)),
        ValueError,
        r"^maml: give inner_lr \(plain SGD\) or inner_opt \(any optimizer\), not both "
        r"\(got inner_lr=0\.1 and inner_opt\)$",
    ),
    (
        "reptile-inner_lr-and-inner_opt",
        lambda: mf.reptile(LOSS, inner_lr=0.1, inner_opt=mf.optim.adam(0.1)),
        ValueError,
        r"^reptile: give inner_lr \(plain SGD\) or inner_opt \(any optimizer\), not both",
    ),
    (
        "maml-inner_opt-a-number",
        lambda: mf.maml(LOSS, inner_opt=0.01),
        TypeError,
        r"^maml: inner_opt must be a metafunc\.optim\.Optimizer, e\.g\. "
        r"mf\.optim\.sgd\(0\.01, momentum=0\.9\) \(got float\)$",
    ),
    (
        "anil-inner_opt-a-torch-optimizer-class",
        lambda: mf.anil(LOSS, head="2", inner_opt=torch.optim.Adam),
        TypeError,
        r"^anil: inner_opt must be a metafunc\.optim\.Optimizer, e\.g\. "
        r"mf\.optim\.sgd\(0\.01, momentum=0\.9\) \(got the class Adam\); torch\.optim optimizers "
        r"update tensors in place, which cannot be differentiated through$",
    ),
    (
        "daml-inner_opt-a-chain-as-list",
        lambda: mf.daml(
            lambda p, x: (x, ()),
            lambda q, y, f: y.sum(),
            {"w": torch.ones(1, dtype=F64)},
            mf.losses.mse,
            inner_opt=[mf.optim.sgd(0.1)],
        ),
        TypeError,
        r"^daml: inner_opt must be a metafunc\.optim\.Optimizer, e\.g\. "
        r"mf\.optim\.sgd\(0\.01, momentum=0\.9\) \(got list\)$",
    ),
    (
        "stochastic-randomness-unknown",
        lambda: mf.stochastic(mf.maml(LOSS), randomness=True),
        ValueError,
        r"^stochastic: randomness must be 'different' \(each task its own draws\) or 'same' "
        r"\(got True\)$",
    ),
    (
        "meta_grad-dropout-without-randomness",
        lambda: _dropout_learner("error").meta_grad(DROPOUT_PARAMS, TASKS),
        RuntimeError,
        r"^meta_grad: the model draws random numbers \(dropout or another random operation\), "
        r"which a learner refuses by default; say so with mf\.stochastic\(learner\) \(each task "
        r"its own draws\) and give mf\.init_state a seed",
    ),
    (
        "adapt-dropout-without-randomness",
        lambda: _dropout_learner("error").adapt(DROPOUT_PARAMS, TASKS.support),
        RuntimeError,
        r"^adapt: the model draws random numbers",
    ),
    (
        "init_state-dropout-without-seed",
        lambda: mf.init_state(_dropout_learner(), mf.optim.sgd(0.1), DROPOUT_PARAMS),
        ValueError,
        r"^init_state: the learner draws random numbers \(randomness='different'\), so the run "
        r"needs a seed for them, e\.g\. mf\.init_state\(learner, opt, params, seed=0\)$",
    ),
    (
        "init_state-seed-negative",
        lambda: mf.init_state(_dropout_learner(), mf.optim.sgd(0.1), DROPOUT_PARAMS, seed=-1),
        ValueError,
        r"^init_state: seed must be an integer >= 0 \(got -1\)$",
    ),
    (
        "init_state-seed-too-large",
        lambda: mf.init_state(mf.maml(LOSS), mf.optim.sgd(0.1), PARAMS, seed=2**63),
        ValueError,
        r"^init_state: seed must be an integer < 2\*\*63 \(got 9223372036854775808\)$",
    ),
    (
        "init_state-seed-a-generator",
        lambda: mf.init_state(mf.maml(LOSS), mf.optim.sgd(0.1), PARAMS, seed=torch.Generator()),
        TypeError,
        r"^init_state: seed must be an integer \(got <torch\._C\.Generator object at .*> of "
        r"type Generator\)$",
    ),
    (
        "step-dropout-state-without-rng",
        lambda: _dropout_step(lambda s: s._replace(rng=None)),
        ValueError,
        r"^step: the learner draws random numbers \(randomness='different'\), so state\.rng "
        r"must hold the run's random stream: build the state with "
        r"mf\.init_state\(learner, opt, params, seed=0\) \(got state\.rng=None\)$",
    ),
    (
        "step-rng-on-the-wrong-dtype",
        lambda: _dropout_step(lambda s: s._replace(rng=s.rng.float())),
        TypeError,
        r"^step: state\.rng must be None or an int64 CPU tensor \(seed, steps drawn\) from "
        r"mf\.init_state\(\.\.\., seed=\.\.\.\) \(got torch\.float32 of shape \(2,\) on cpu\)$",
    ),
    (
        "step-rng-an-int",
        lambda: _dropout_step(lambda s: s._replace(rng=7)),
        TypeError,
        r"^step: state\.rng must be None or an int64 CPU tensor .* \(got int\)$",
    ),
    (
        "eval_mode-not-from-pure",
        lambda: mf.eval_mode(_net()),
        TypeError,
        r"^eval_mode: fn must be a function from mf\.pure\(module\) \(got Sequential\)$",
    ),
    (
        "pure-every-parameter-frozen",
        lambda: mf.pure(_net().requires_grad_(False)),
        ValueError,
        r"^pure: module Sequential has no parameters to learn \(all 4 have "
        r"requires_grad=False\)$",
    ),
    (
        "maml-init-given-the-module",
        lambda: mf.maml(LOSS).init(_net()),
        TypeError,
        r"^maml: params must be a pytree of tensors, not a module \(got Sequential\); split "
        r"the module first: fn, params = mf\.pure\(module\)$",
    ),
    (
        "init_state-given-the-module",
        lambda: mf.init_state(mf.maml(LOSS), mf.optim.adam(1e-3), _net()),
        TypeError,
        r"^maml: params must be a pytree of tensors, not a module \(got Sequential\)",
    ),
    (
        "meta_grad-given-the-module",
        lambda: mf.maml(LOSS).meta_grad(_net(), TASKS),
        TypeError,
        r"^meta_grad: meta must be a pytree of tensors, not a module \(got Sequential\)",
    ),
    (
        "supervised-model-returns-a-tuple",
        lambda: mf.supervised(lambda p, x: (x, x), mf.losses.mse)(PARAMS, (SX[0], SY[0])),
        TypeError,
        r"^supervised: fn\(params, x\) must return one tensor, the prediction the criterion "
        r"compares with y \(got tuple\); for a model that returns more, write the loss "
        r"yourself, e\.g\. loss = lambda params, data: criterion\(fn\(params, data\[0\]\)\[0\], "
        r"data\[1\]\)$",
    ),
    (
        "mse-prediction-a-tuple",
        lambda: mf.losses.mse((SY[0],), SY[0]),
        TypeError,
        r"^mse: prediction must be a tensor \(got tuple\)$",
    ),
    (
        "cross_entropy-float-labels",
        lambda: mf.losses.cross_entropy(torch.zeros(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0])),
        TypeError,
        r"^cross_entropy: labels must be int64 class indices in 0\.\.classes-1 \(got "
        r"torch\.float32\); convert them with labels\.long\(\)$",
    ),
    (
        "cross_entropy-int32-labels",
        lambda: mf.losses.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1], dtype=torch.int32)),
        TypeError,
        r"^cross_entropy: labels must be int64 class indices .* \(got torch\.int32\)",
    ),
    # --- the step's state ---------------------------------------------------------------------
    (
        "step-opt_state-of-another-optimizer",
        lambda: _step_call(state=_state(mf.optim.sgd(0.1)), opt=mf.optim.adam(1e-3)),
        ValueError,
        r"^step: state\.opt_state must have the same tree structure as optimizer\.init\(state\.meta\); "
        r"first difference at optimizer\.init\(state\.meta\)\.count \(AdamState\) has no "
        r"counterpart in state\.opt_state\.",
    ),
    (
        "step-counter-a-python-int",
        lambda: _step_call(state=_state()._replace(step=0)),
        TypeError,
        r"^step: state\.step must be an int64 scalar tensor \(got int\)$",
    ),
    (
        "step-counter-float",
        lambda: _step_call(state=_state()._replace(step=torch.tensor(0.0))),
        TypeError,
        r"^step: state\.step must be an int64 scalar tensor \(got torch\.float32 of shape \(\)\)$",
    ),
    # --- checkpoints --------------------------------------------------------------------------
    (
        "save-leaf-not-a-tensor",
        lambda: mf.save("c.pt", {"w": PARAMS["0.bias"], "lr": 0.1}),
        TypeError,
        r"^save: state\['lr'\] must be a tensor \(got float\)$",
    ),
    (
        "save-directory-missing",
        lambda: mf.save("/nonexistent-dir/c.pt", _state()),
        FileNotFoundError,
        r"^save: the folder of the checkpoint must exist \(got '/nonexistent-dir/c\.pt', whose "
        r"folder '/nonexistent-dir' does not exist\); create it first$",
    ),
    (
        "save-generator-not-a-Generator",
        lambda: mf.save("c.pt", _state(), generator=0),
        TypeError,
        r"^save: generator must be a torch\.Generator or None \(got int\)$",
    ),
    (
        "load-like-not-a-tree-of-tensors",
        lambda: mf.load("c.pt", like=[PARAMS, 0.1]),
        TypeError,
        r"^load: like must be a tree of tensors to load into, e\.g\. a state from init_state, "
        r"or None to load the saved tree as it is \(got float at like\[1\]\)$",
    ),
    (
        "load-missing-file",
        lambda: mf.load("/nonexistent-dir/c.pt", like=_state()),
        FileNotFoundError,
        r"^load: path must be a checkpoint file \(got '/nonexistent-dir/c\.pt', no such file\)$",
    ),
    (
        "load-not-a-metafunc-checkpoint",
        lambda: _load_after_saving(None, _state(), raw={"weight": torch.ones(2)}),
        ValueError,
        r"^load: '.*c\.pt' is not a metafunc checkpoint \(no 'metafunc\.format' entry\)$",
    ),
    (
        "load-pickled-python-object",
        lambda: _load_after_saving(None, _state(), raw={"path": Path("x")}),
        ValueError,
        r"^load: '.*c\.pt' is not a metafunc checkpoint and cannot be used: it holds Python "
        r"objects other than tensors, which load does not unpickle \(Unsupported global: GLOBAL "
        r"pathlib\.PosixPath was not an allowed global by default\)$",
    ),
    (
        "load-another-format-version",
        lambda: _load_after_saving(None, _state(), raw={"metafunc.format": torch.tensor(3)}),
        ValueError,
        r"^load: '.*c\.pt' has checkpoint format 3; this metafunc reads formats 1 and 2$",
    ),
    (
        "load-shape-mismatch",
        lambda: _load_after_saving(_state(params=WIDER), _state()),
        ValueError,
        r"^load: state\.meta\['0\.bias'\] must have shape \(4,\) as in like \(got shape \(5,\) "
        r"in '.*c\.pt'\)$",
    ),
    (
        "load-dtype-mismatch",
        lambda: _load_after_saving(_state(params=PARAMS_F32), _state()),
        TypeError,
        r"^load: state\.meta\['0\.bias'\] must have dtype torch\.float64 as in like \(got "
        r"torch\.float32 in '.*c\.pt'\)$",
    ),
    (
        "load-saved-with-another-optimizer",
        lambda: _load_after_saving(_state(mf.optim.sgd(0.1)), _state(mf.optim.adam(1e-3))),
        ValueError,
        r"^load: '.*c\.pt' has no entry state\.opt_state\.count, which like has \(was it saved "
        r"with another model or optimizer\?\)$",
    ),
    (
        "load-extra-entry",
        lambda: _load_after_saving(_state(mf.optim.adam(1e-3)), _state(mf.optim.sgd(0.1))),
        ValueError,
        r"^load: '.*c\.pt' holds state\.opt_state\.count, which like does not have \(was it "
        r"saved with another model or optimizer\?\)$",
    ),
    (
        "load-generator-not-saved",
        lambda: _load_after_saving(_state(), _state(), generator=torch.Generator()),
        ValueError,
        r"^load: a generator was given but '.*c\.pt' holds no generator state \(it was saved "
        r"without generator=\)$",
    ),
    # --- the training loop --------------------------------------------------------------------
    (
        "train-steps-bool",
        lambda: _train(steps=True),
        TypeError,
        r"^train: steps must be an integer \(got True of type bool\)$",
    ),
    (
        "Logger-every-nan",
        lambda: mf.hooks.Logger(math.nan),
        TypeError,
        r"^Logger: every must be an integer \(got nan of type float\)$",
    ),
    (
        "train-data-a-single-Tasks",
        lambda: _train(data=TASKS),
        TypeError,
        r"^train: data must be a sampler, data\(generator\) -> Tasks, or an iterable of "
        r"batches; one Tasks is one meta-batch: pass a sampler that returns it, or \[tasks\] \* n "
        r"\(got Tasks\)$",
    ),
    (
        "train-data-not-data",
        lambda: _train(data=3),
        TypeError,
        r"^train: data must be a sampler, data\(generator\) -> Tasks, or an iterable of "
        r"batches \(got int\)$",
    ),
    (
        "train-batch-not-a-pair",
        lambda: _train(data=[SX]),
        TypeError,
        r"^train: each batch of data must be a metafunc\.Tasks or a pair \(support, query\) "
        r"\(got Tensor\)$",
    ),
    (
        "train-generator-with-an-iterable",
        lambda: _train(data=[TASKS], generator=torch.Generator()),
        ValueError,
        r"^train: generator is for a sampler, data\(generator\); an iterable of batches \(a "
        r"DataLoader\) draws with its own \(got both\)$",
    ),
    (
        "train-generator-not-a-Generator",
        lambda: _train(generator=0),
        TypeError,
        r"^train: generator must be a torch\.Generator or None \(got int\)$",
    ),
    (
        "train-on_nonfinite-unknown",
        lambda: _train(on_nonfinite="ignore"),
        ValueError,
        r"^train: on_nonfinite must be 'raise' or 'skip' \(got 'ignore'\)$",
    ),
    (
        "train-steps-and-until",
        lambda: _train(until=3),
        TypeError,
        r"^train: give steps \(to run from state\) or until \(the step to run to\), one of "
        r"them \(got steps=1, until=3\)$",
    ),
    (
        "train-hooks-not-hooks",
        lambda: _train(hooks=[print]),
        TypeError,
        r"^train: hooks must be a list of hooks with start, step and end methods \(e\.g\. "
        r"mf\.hooks\.Logger\(100\)\); hooks\[0\] is a builtin_function_or_method$",
    ),
    (
        "Checkpoints-path-not-a-path",
        lambda: mf.hooks.Checkpoints(3),
        TypeError,
        r"^Checkpoints: path must be a path \(got int\)$",
    ),
    (
        "Checkpoints-every-zero",
        lambda: mf.hooks.Checkpoints("c.pt", every=0),
        ValueError,
        r"^Checkpoints: every must be an integer >= 1 \(got 0\)$",
    ),
    (
        "Checkpoints-resume-int",
        lambda: mf.hooks.Checkpoints("c.pt", resume=1),
        TypeError,
        r"^Checkpoints: resume must be True or False \(got 1\)$",
    ),
    (
        "Checkpoints-resume-with-other-metadata",
        _resume_with_other_metadata,
        ValueError,
        r"^train: the checkpoint '.*c\.pt' was saved by a run with other metadata \(lr: 0\.1 -> "
        r"0\.2\); resume with the same settings, or write to another path$",
    ),
]


@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [pytest.param(c, e, p, id=i) for i, c, e, p in CASES],
)
def test_bad_input_is_refused_with_a_message(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 100


def test_a_pytree_inner_lr_that_fits_is_accepted():
    # The positive control for the tree rows above: same structure, shapes that broadcast.
    lr = _rates({"0.weight": (1,), "2.weight": ()})
    learner = mf.maml(LOSS, inner_lr=lr)
    grads, metrics = learner.meta_grad(learner.init(PARAMS), TASKS)
    assert {k: v.shape for k, v in grads.items()} == {k: v.shape for k, v in PARAMS.items()}
    assert torch.isfinite(metrics.loss)
