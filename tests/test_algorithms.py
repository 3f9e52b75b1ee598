"""Reptile, Meta-SGD, ANIL and DAML against references, in float64.

References: closed forms on a linear model, hand-written per-task loops with
torch.autograd.grad(create_graph=True), finite differences (gradcheck), and the eager step for
the compiled one.
"""

from __future__ import annotations

import pytest
import torch
from support import (
    TanhFeatures,
    assert_metrics_equal,
    assert_trees_close,
    daml_setup,
    linear_net,
    linear_tasks,
    sine_tasks,
    tanh_net,
)
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.func import functional_call

import metafunc as mf
from metafunc import _tree

F64 = torch.float64
ALPHA = 0.1


# ---------------------------------------------------------------- references


def per_task(tasks: mf.Tasks, i: int) -> tuple:
    pick = lambda tree: _tree.map(lambda t: t[i], tree)  # noqa: E731
    return pick(tasks.support), pick(tasks.query)


def inner_sgd(theta, support, loss, *, lr, steps, create_graph=True, keys=None):
    """Plain SGD on ``loss(theta_dict, support)`` with autograd.grad; only ``keys`` move."""
    keys = sorted(theta) if keys is None else keys
    for _ in range(steps):
        grads = torch.autograd.grad(
            loss(theta, support), [theta[k] for k in keys], create_graph=create_graph
        )
        rate = lambda k: lr[k] if isinstance(lr, dict) else lr  # noqa: E731
        theta = {**theta, **{k: theta[k] - rate(k) * g for k, g in zip(keys, grads, strict=True)}}
    return theta


def mse_loss(net):
    def loss(theta, data):
        x, y = data
        return ((functional_call(net, theta, (x,)) - y) ** 2).mean()

    return loss


def leaves(tree: dict) -> dict:
    return {k: v.detach().clone().requires_grad_() for k, v in tree.items()}


# ---------------------------------------------------------------- closed forms (linear model)


def test_reptile_one_step_equals_alpha_times_support_gradient():
    net = linear_net()
    fn, params = mf.pure(net)
    learner = mf.reptile(mf.supervised(fn, mf.losses.mse), inner_lr=ALPHA, inner_steps=1)
    tasks = linear_tasks()
    got, _ = learner.meta_grad(learner.init(params), tasks)
    theta = leaves(params)
    want = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(3):
        support, _ = per_task(tasks, i)
        grads = torch.autograd.grad(mse_loss(net)(theta, support), list(theta.values()))
        for k, g in zip(theta, grads, strict=True):
            want[k] += ALPHA * g / 3
    assert_trees_close(got, want, rtol=1e-12, atol=1e-14)


def test_meta_sgd_rate_gradient_is_minus_support_grad_times_query_grad():
    net = linear_net()
    fn, params = mf.pure(net)
    rates = {k: torch.rand(v.shape, dtype=F64) * 0.2 for k, v in params.items()}
    learner = mf.meta_sgd(mf.supervised(fn, mf.losses.mse), inner_lr=rates, inner_steps=1)
    tasks = linear_tasks()
    got, _ = learner.meta_grad(learner.init(params), tasks)
    loss = mse_loss(net)
    want = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(3):
        support, query = per_task(tasks, i)
        theta = leaves(params)
        g_s = dict(
            zip(theta, torch.autograd.grad(loss(theta, support), list(theta.values())), strict=True)
        )
        adapted = leaves({k: params[k] - rates[k] * g_s[k] for k in params})
        g_q = torch.autograd.grad(loss(adapted, query), list(adapted.values()))
        for k, g in zip(adapted, g_q, strict=True):
            want[k] += -g_s[k] * g / 3
    assert_trees_close(got["lr"], want, rtol=1e-12, atol=1e-14)


def test_anil_adapts_only_the_head_and_gives_the_body_its_meta_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    fn, params = mf.pure(net)
    learner = mf.anil(mf.supervised(fn, mf.losses.mse), head="2", inner_lr=ALPHA, inner_steps=2)
    tasks = linear_tasks()
    meta = learner.init(params)
    adapted = {k: v[0] for k, v in learner.adapt(meta, tasks.support).items()}  # task 0
    assert torch.equal(adapted["0.weight"], meta["0.weight"])
    assert torch.equal(adapted["0.bias"], meta["0.bias"])
    assert not torch.equal(adapted["2.weight"], meta["2.weight"])
    # The body's meta-gradient flows through the adapted head (second order): the loop.
    got, _ = learner.meta_grad(meta, tasks)
    assert_trees_close(
        got, anil_reference(net, params, tasks, steps=2, first_order=False), rtol=1e-10, atol=1e-12
    )


def anil_reference(net, params, tasks, *, steps, first_order):
    theta0 = leaves(params)
    total = 0.0
    for i in range(3):
        support, query = per_task(tasks, i)
        theta = inner_sgd(
            theta0,
            support,
            mse_loss(net),
            lr=ALPHA,
            steps=steps,
            create_graph=not first_order,
            keys=["2.bias", "2.weight"],
        )
        total = total + mse_loss(net)(theta, query)
    return dict(zip(theta0, torch.autograd.grad(total / 3, list(theta0.values())), strict=True))


def test_first_order_anil_equals_detached_loop():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    fn, params = mf.pure(net)
    fo = mf.first_order(
        mf.anil(
            mf.supervised(fn, mf.losses.mse),
            head=["2.weight", "2.bias"],
            inner_lr=ALPHA,
            inner_steps=2,
        )
    )
    so = mf.anil(
        mf.supervised(fn, mf.losses.mse),
        head=lambda k: k.startswith("2."),
        inner_lr=ALPHA,
        inner_steps=2,
    )
    tasks = linear_tasks()
    got, _ = fo.meta_grad(fo.init(params), tasks)
    assert_trees_close(
        got, anil_reference(net, params, tasks, steps=2, first_order=True), rtol=1e-10, atol=1e-12
    )
    exact, _ = so.meta_grad(so.init(params), tasks)
    assert not torch.allclose(got["0.weight"], exact["0.weight"])


# ---------------------------------------------------------------- loops (nonlinear model)


def test_reptile_equals_loop_over_several_steps():
    net = tanh_net()
    fn, params = mf.pure(net)
    learner = mf.reptile(mf.supervised(fn, mf.losses.mse), inner_lr=ALPHA, inner_steps=3)
    tasks = sine_tasks()
    got, metrics = learner.meta_grad(learner.init(params), tasks)
    want = {k: torch.zeros_like(v) for k, v in params.items()}
    after = before = 0.0
    for i in range(3):
        support, query = per_task(tasks, i)
        adapted = inner_sgd(
            leaves(params), support, mse_loss(net), lr=ALPHA, steps=3, create_graph=False
        )
        after += mse_loss(net)(adapted, query).item() / 3
        before += mse_loss(net)(params, query).item() / 3
        for k in want:
            want[k] += (params[k] - adapted[k].detach()) / 3
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    assert_metrics_equal(metrics, {"loss": after, "loss_before": before})


def test_meta_sgd_equals_loop_for_params_and_rates():
    net = tanh_net()
    fn, params = mf.pure(net)
    learner = mf.meta_sgd(mf.supervised(fn, mf.losses.mse), inner_lr=0.05, inner_steps=2)
    meta = learner.init(params)
    meta["lr"] = {k: torch.rand(v.shape, dtype=F64) * 0.2 for k, v in params.items()}
    tasks = sine_tasks()
    got, metrics = learner.meta_grad(meta, tasks)
    theta0, rates = leaves(params), leaves(meta["lr"])
    total = before = 0.0
    for i in range(3):
        support, query = per_task(tasks, i)
        theta = inner_sgd(theta0, support, mse_loss(net), lr=rates, steps=2)
        total = total + mse_loss(net)(theta, query)
        before += mse_loss(net)(params, query).item() / 3
    assert_metrics_equal(metrics, {"loss": total.item() / 3, "loss_before": before})
    inputs = list(theta0.values()) + list(rates.values())
    grads = torch.autograd.grad(total / 3, inputs)
    want = {
        "params": dict(zip(theta0, grads[: len(theta0)], strict=True)),
        "lr": dict(zip(rates, grads[len(theta0) :], strict=True)),
    }
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)


def test_daml_equals_loop_and_trains_the_loss_network():
    model, lossnet, params, phi, learner, tasks = daml_setup(inner_steps=2)
    got, metrics = learner.meta_grad(learner.init(params), tasks)
    theta0, phi0 = leaves(params), leaves(phi)

    def inner(theta, x):
        y, (h,) = functional_call(model, theta, (x,))
        return functional_call(lossnet, phi0, (torch.cat([y, h], -1),)).pow(2).mean()

    def outer(theta, data):
        x, y = data
        return ((functional_call(model, theta, (x,))[0] - y) ** 2).mean()

    total = before = 0.0
    for i in range(3):
        x_source, query = per_task(tasks, i)
        total = total + outer(inner_sgd(theta0, x_source, inner, lr=ALPHA, steps=2), query)
        before += outer(params, query).item() / 3
    grads = torch.autograd.grad(total / 3, list(theta0.values()) + list(phi0.values()))
    want = {
        "loss": dict(zip(phi0, grads[len(theta0) :], strict=True)),
        "params": dict(zip(theta0, grads[: len(theta0)], strict=True)),
    }
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in got["loss"].values())
    assert_metrics_equal(metrics, {"loss": total.item() / 3, "loss_before": before})


def flat_meta_loss(learner, meta, tasks):
    """The meta-loss as a function of one flat float64 vector (for gradcheck)."""
    flat, spec = _tree.leaves(meta), _tree.structure(meta)
    sizes = [t.numel() for t in flat]

    def f(vector):
        parts = torch.split(vector, sizes)
        rebuilt = spec.unflatten([p.view_as(t) for p, t in zip(parts, flat, strict=True)])
        return learner.per_task(rebuilt, tasks)[1].mean()

    return f, torch.cat([t.reshape(-1) for t in flat]).detach().requires_grad_()


def test_gradcheck_meta_sgd_meta_loss():
    fn, params = mf.pure(tanh_net(width=3))
    learner = mf.meta_sgd(mf.supervised(fn, mf.losses.mse), inner_lr=0.1, inner_steps=2)
    f, vector = flat_meta_loss(learner, learner.init(params), sine_tasks(n=2))
    assert torch.autograd.gradcheck(f, (vector,), eps=1e-6, atol=1e-6)


def test_gradcheck_daml_meta_loss():
    *_, params, _phi, learner, tasks = daml_setup(inner_steps=2)
    f, vector = flat_meta_loss(learner, learner.init(params), tasks)
    assert torch.autograd.gradcheck(f, (vector,), eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------- compiled equals eager


def _learners():
    fn, params = mf.pure(tanh_net(width=3))
    loss = mf.supervised(fn, mf.losses.mse)
    *_, d_params, _, daml, _ = daml_setup(inner_steps=1)
    sample = lambda g: sine_tasks(n=2, seed=int(torch.randint(0, 1000, (), generator=g)))  # noqa: E731
    sample_daml = lambda g: mf.tasks.daml_sine(g, tasks=3, sources=2, queries=5, dtype=F64)  # noqa: E731
    return {
        "reptile": (mf.reptile(loss, inner_lr=ALPHA, inner_steps=2), params, sample),
        "meta_sgd": (mf.meta_sgd(loss, inner_lr=ALPHA), params, sample),
        "anil": (mf.anil(loss, head="2", inner_lr=ALPHA), params, sample),
        "daml": (daml, d_params, sample_daml),
    }


@pytest.mark.compile
@pytest.mark.parametrize("name", ["reptile", "meta_sgd", "anil", "daml"])
def test_compiled_step_equals_eager_with_one_graph(name):
    learner, params, sample = _learners()[name]
    opt = mf.optim.adam(1e-2)
    eager = mf.make_step(learner, opt, compile=False)
    # aot_eager: the graph is the one Inductor gets; Inductor itself is tested in test_step
    counter = CompileCounterWithBackend("aot_eager")
    compiled = mf.make_step(learner, opt, backend=counter)
    s_eager = s_comp = mf.init_state(learner, opt, params)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        tasks = sample(g)
        s_eager, m_eager = eager(s_eager, tasks)
        s_comp, m_comp = compiled(s_comp, tasks)
        assert_trees_close(s_comp, s_eager, rtol=1e-9, atol=1e-11)
        assert_trees_close(m_comp, m_eager, rtol=1e-9, atol=1e-11)
    assert counter.frame_count == 1  # one graph: no graph breaks, no recompiles


# ---------------------------------------------------------------- bad input

FN, PARAMS = mf.pure(tanh_net(width=3))
LOSS = mf.supervised(FN, mf.losses.mse)


def _daml(**kw):
    fn, _ = mf.pure(TanhFeatures().double())
    phi = daml_setup()[3]
    args = {"model": fn, "adaptation_loss": lambda phi, y, f: y.sum(), "loss_params": phi, **kw}
    return mf.daml(
        args.pop("model"),
        args.pop("adaptation_loss"),
        args.pop("loss_params"),
        mf.losses.mse,
        **args,
    )


ERRORS = [
    (
        "meta_sgd-lr-tree-structure",
        lambda: mf.meta_sgd(LOSS, inner_lr={"0.weight": torch.ones(3, 1, dtype=F64)}).init(PARAMS),
        ValueError,
        r"^meta_sgd: inner_lr must have the same tree structure as params; first difference at ",
    ),
    (
        "meta_sgd-meta-without-lr",
        lambda: mf.meta_sgd(LOSS).meta_grad(PARAMS, sine_tasks()),
        ValueError,
        r"^meta_grad: meta must be this learner's meta-parameters, learner\.init\(params\) \(got "
        r"a dict for which learner\.params failed: KeyError: 'params'\)$",
    ),
    (
        "meta_sgd-inner_steps-zero",
        lambda: mf.meta_sgd(LOSS, inner_steps=0),
        ValueError,
        r"^meta_sgd: inner_steps must be an integer >= 1 \(got 0\)$",
    ),
    (
        "anil-empty-head",
        lambda: mf.anil(LOSS, head="5").init(PARAMS),
        ValueError,
        r"^anil: head names '5', which is neither a parameter nor a module of the parameters; "
        r"their names are \['0\.weight', '0\.bias', '2\.weight', '2\.bias'\]$",
    ),
    (
        "anil-head-prefix-is-a-whole-name",
        lambda: mf.anil(LOSS, head="0.w").init(PARAMS),
        ValueError,
        r"^anil: head names '0\.w', which is neither a parameter nor a module",
    ),
    (
        "anil-head-empty-list",
        lambda: mf.anil(LOSS, head=[]),
        TypeError,
        r"^anil: head must be a parameter or module name, a non-empty list of names, a "
        r"predicate on dotted parameter names, or a tree of bools like the parameters \(got \[\]\)$",
    ),
    (
        "anil-head-picks-nothing",
        lambda: mf.anil(LOSS, head=lambda name: name.startswith("9")).init(PARAMS),
        ValueError,
        r"^anil: head=<function .*<lambda> at .*> selects no parameter; their names are ",
    ),
    (
        "anil-head-mask-of-another-tree",
        lambda: mf.anil(LOSS, head={"0.weight": True}).init(PARAMS),
        ValueError,
        r"^anil: head must have the same tree structure as params",
    ),
    (
        "reptile-inner_steps-zero",
        lambda: mf.reptile(LOSS, inner_steps=0),
        ValueError,
        r"^reptile: inner_steps must be an integer >= 1 \(got 0\)$",
    ),
    (
        "reptile-inner_lr-nan",
        lambda: mf.reptile(LOSS, inner_lr=float("nan")),
        ValueError,
        r"^reptile: inner_lr must be a positive finite number \(got nan\)$",
    ),
    (
        "daml-first-order",
        lambda: mf.first_order(_daml()),
        ValueError,
        r"^first_order: the learner's meta-parameters reach the outer loss only through the "
        r"inner gradients \(DAML's adaptation loss\), so detaching them would leave them "
        r"untrained$",
    ),
    (
        "daml-model-not-callable",
        lambda: _daml(model="net"),
        TypeError,
        r"^daml: model must be callable as model\(params, x\) -> \(output, features\) \(got 'net'\)$",
    ),
    (
        "daml-loss-params-dtype",
        lambda: _daml(loss_params={"w": torch.ones(2)}).init(PARAMS),
        TypeError,
        r"^daml: loss_params must have the model parameters' dtype and device torch\.float64 on cpu "
        r"\(got torch\.float32 on cpu\)$",
    ),
    (
        "daml-meta-wrong-layout",
        lambda: _daml().meta_grad(
            PARAMS, mf.tasks.daml_sine(torch.Generator(), tasks=2, dtype=F64)
        ),
        ValueError,
        r"^meta_grad: meta must be this learner's meta-parameters, learner\.init\(params\) ",
    ),
    (
        "daml-tasks-count-mismatch",
        lambda: _daml().meta_grad(
            _daml().init(PARAMS),
            mf.Tasks(torch.zeros(2, 1, 1, dtype=F64), (torch.zeros(3, 4, 1, dtype=F64),) * 2),
        ),
        ValueError,
        r"^meta_grad: every tensor in the tasks must have the same number of tasks \(leading dimension\); "
        r"tasks\.support has 2 but tasks\.query\[0\] has 3$",
    ),
    (
        "daml_sine-phase-not-0-or-pi",
        lambda: mf.tasks.daml_sine(torch.Generator(), tasks=2, phase=1.0),
        ValueError,
        r"^daml_sine: phase must be 0 or math\.pi \(got values \[1\.0\]\)$",
    ),
    (
        "daml_sine-sources-zero",
        lambda: mf.tasks.daml_sine(torch.Generator(), tasks=2, sources=0),
        ValueError,
        r"^daml_sine: sources must be an integer >= 1 \(got 0\)$",
    ),
]


@pytest.mark.parametrize(
    ("call", "exc", "pattern"), [pytest.param(c, e, p, id=i) for i, c, e, p in ERRORS]
)
def test_bad_input_is_refused_with_a_message(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


@pytest.mark.parametrize("queries", [2, 10])
def test_daml_query_data_without_labels_is_refused_by_step_and_evaluate(queries):
    """Unlabeled target inputs as the query: with 2 points per task, unpacking them per task
    would read the first as inputs and the second as targets and score a loss."""
    _, _, params, _, learner, tasks = daml_setup()
    x = mf.tasks.daml_sine(torch.Generator(), tasks=3, queries=queries, dtype=F64).query[0]
    unlabeled = mf.Tasks(tasks.support, x)
    opt = mf.optim.sgd(0.1)
    got = (
        rf"tasks\.query must be a pair \(x_target, y_target\): DAML scores on labeled target "
        rf"data \(got a Tensor of shape \(3, {queries}, 1\)\)$"
    )
    with pytest.raises(ValueError, match=r"^step: " + got):
        mf.make_step(learner, opt, compile=False)(mf.init_state(learner, opt, params), unlabeled)
    with pytest.raises(ValueError, match=r"^evaluate: " + got):
        mf.evaluate(learner, learner.init(params), unlabeled)
