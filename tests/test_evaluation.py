"""The evaluation code behind the README's numbers, against references computed here by hand.

Each score is checked on models whose answer is known without the library: a model that
predicts exactly (error 0), one that predicts zero (squared error = mean(y²) of the points it
is scored on), one that memorises its support set (exact there, zero elsewhere: its error says
which points were scored), and losses and accuracies recomputed task by task with
torch.autograd and counted predictions. The 95% interval is checked against its formula with
the normal quantile from the standard library.
"""

from __future__ import annotations

import math
import warnings
from statistics import NormalDist

import pytest
import torch
from support import graphs, labelled_dataset, tanh_net
from torch.func import functional_call

import metafunc as mf
from metafunc.evaluation import mean_ci95
from metafunc.experiments.scores import (
    daml_grid_error,
    fewshot_accuracy,
    sine_grid_error,
    sinusoid_error,
)

F64 = torch.float64

# ---------------------------------------------------------------- the 95% interval


@pytest.mark.parametrize("n", [2, 5, 400])
def test_mean_ci95_is_z_times_the_sample_deviation_over_root_n(n):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=F64) * 3 + 1
    z = NormalDist().inv_cdf(0.975)
    assert z == pytest.approx(1.959963984540054, abs=1e-15)
    xs = values.tolist()
    mean = sum(xs) / n
    deviation = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    got_mean, got_half = mean_ci95(values)
    assert got_mean == pytest.approx(mean, rel=1e-12)
    assert got_half == pytest.approx(z * deviation / math.sqrt(n), rel=1e-12)
    # float32 values give the same interval, computed in float64
    assert mean_ci95(values.float())[1] == pytest.approx(got_half, rel=1e-6)


def by_hand_mean_ci95(values):
    """The mean and the 95% half-width 1.959963984540054 · s / √n (s with n − 1), in Python
    floats, to check the scores against without calling the function that computes them."""
    xs = [float(v) for v in values]
    n = len(xs)
    mean = sum(xs) / n
    s = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, 1.959963984540054 * s / math.sqrt(n)


def assert_score_by_hand(score):
    mean, half = by_hand_mean_ci95(score.values)
    assert score.mean == pytest.approx(mean, rel=1e-12, abs=1e-15)
    assert score.ci95 == pytest.approx(half, rel=1e-12)
    assert half > 0  # the tasks differ: a zero interval would check nothing


def test_mean_ci95_of_one_value_has_no_interval():
    mean, half = mean_ci95(torch.tensor([0.25]))
    assert mean == 0.25 and math.isnan(half)


# ---------------------------------------------------------------- models with known answers


def wave(p, x):
    """``a · sin(x + φ)``: exact on the sinusoid whose amplitude and phase it holds."""
    return p["a"] * torch.sin(x + p["phi"])


def frozen(model, criterion=mf.losses.mse):
    """A learner that does not adapt, so the model is scored as it is."""
    return mf.maml(mf.supervised(model, criterion), inner_steps=0)


def memoriser():
    """A learner whose adapted model returns the support's target at a support input and 0
    anywhere else; ``meta`` is a support set of its shape (all zeros: it predicts 0)."""

    def predict(p, x):
        match = (x[:, None, 0] == p["xs"][None, :, 0]).to(x.dtype)  # (n, shots)
        return match @ p["ys"]

    def adapt(meta, support):
        x, y = support
        return {"xs": x, "ys": y}

    learner = mf.Learner(init=lambda p: p, inner=adapt, outer=mf.supervised(predict, mf.losses.mse))
    return learner, predict


def redraw_sinusoid(seed, **kw):
    return mf.tasks.sinusoid(torch.Generator().manual_seed(seed), dtype=F64, **kw)


def test_sinusoid_error_of_an_exact_model_is_zero():
    amplitude, phase = torch.full((6,), 2.5, dtype=F64), torch.full((6,), 0.7, dtype=F64)
    meta = {"a": torch.tensor(2.5, dtype=F64), "phi": torch.tensor(0.7, dtype=F64)}
    tasks = mf.tasks.sinusoid(
        torch.Generator().manual_seed(3), tasks=6, amplitude=amplitude, phase=phase, dtype=F64
    )
    assert float(mf.evaluate(frozen(wave), meta, tasks, predict=wave).mse.values.max()) < 1e-28
    # sinusoid_error draws its own tasks (random amplitudes and phases): a model that holds
    # one curve is exact on none of them, so compare with the zero model's known answer below
    errors = sinusoid_error(
        frozen(wave), wave, meta, torch.Generator().manual_seed(3), tasks=6, shots=4, points=7
    )
    assert errors.shape == (6,) and float(errors.min()) > 0


def test_sinusoid_error_of_a_zero_model_is_the_mean_square_of_the_fresh_query_targets():
    zero = {"a": torch.tensor(0.0, dtype=F64), "phi": torch.tensor(0.0, dtype=F64)}
    errors = sinusoid_error(
        frozen(wave), wave, zero, torch.Generator().manual_seed(5), tasks=9, shots=4, points=7
    )
    tasks = redraw_sinusoid(5, tasks=9, shots=4, queries=7)
    want = [sum(y**2 for y in tasks.query[1][t, :, 0].tolist()) / 7 for t in range(9)]
    torch.testing.assert_close(errors, torch.tensor(want, dtype=F64), rtol=1e-12, atol=0)
    support = [sum(y**2 for y in tasks.support[1][t, :, 0].tolist()) / 4 for t in range(9)]
    assert all(abs(a - b) > 1e-3 for a, b in zip(want, support, strict=True))


def test_scores_are_on_fresh_query_points_not_the_support():
    """The memoriser is exact on its support set; scored on the fresh query points it predicts
    0, so its error is mean(y²) there (and its loss before adapting is the same)."""
    learner, predict = memoriser()
    meta = {"xs": torch.zeros(4, 1, dtype=F64), "ys": torch.zeros(4, 1, dtype=F64)}
    errors = sinusoid_error(
        learner, predict, meta, torch.Generator().manual_seed(8), tasks=5, shots=4, points=6
    )
    tasks = redraw_sinusoid(8, tasks=5, shots=4, queries=6)
    want = (tasks.query[1] ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(errors, want, rtol=1e-12, atol=0)
    scores = mf.evaluate(learner, meta, tasks, predict=predict)
    torch.testing.assert_close(scores.loss.values, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(scores.loss_before.values, want, rtol=1e-12, atol=0)
    # ... while on its own support set it is exact
    on_support = mf.Tasks(tasks.support, tasks.support)
    assert float(mf.evaluate(learner, meta, on_support).loss.values.abs().max()) == 0


def grid_mean_square(phase, *, scale=1.0, step=0.01):
    """mean((scale · sin(x + phase))²) over the points −2π + k·step below 2π, summed here."""
    n = math.ceil(4 * math.pi / step)
    xs = [-2 * math.pi + k * step for k in range(n)]
    return sum((scale * math.sin(x + phase)) ** 2 for x in xs) / n


def sine_wave(p, x):
    return p["s"] * torch.sin(x)


@pytest.mark.parametrize("phase", [0.0, math.pi])
def test_sine_grid_error_against_the_grid_summed_by_hand(phase):
    score = lambda s, draws=3: sine_grid_error(  # noqa: E731
        frozen(sine_wave),
        sine_wave,
        {"s": torch.tensor(s, dtype=F64)},
        torch.Generator().manual_seed(0),
        phase=phase,
        draws=draws,
    )
    zero = score(0.0)
    torch.testing.assert_close(zero.mse, torch.full((3,), grid_mean_square(phase), dtype=F64))
    assert zero.mse[0] == pytest.approx(0.5, abs=1e-3)
    # sin(x) is exact for b = 0 and off by 2 sin(x) for b = π
    want = 0.0 if phase == 0 else grid_mean_square(0.0, scale=2.0)
    torch.testing.assert_close(score(1.0).mse, torch.full((3,), want, dtype=F64))
    # the memoriser, exact on its 4 support points, predicts 0 on the grid
    learner, predict = memoriser()
    meta = {"xs": torch.zeros(4, 1, dtype=F64), "ys": torch.zeros(4, 1, dtype=F64)}
    memorised = sine_grid_error(
        learner, predict, meta, torch.Generator().manual_seed(0), phase=phase, draws=3
    )
    torch.testing.assert_close(memorised.mse, zero.mse)


@pytest.mark.parametrize("phase", [0.0, math.pi])
def test_daml_grid_error_against_the_grid_summed_by_hand(phase):
    """A DAML learner whose learned loss is 0 everywhere does not move: scored as it is."""

    def model(p, x):
        return sine_wave(p, x), (x,)

    def adaptation_loss(phi, y, features):
        return (phi["w"] * y).pow(2).mean()

    phi = {"w": torch.zeros((), dtype=F64)}
    learner = mf.daml(model, adaptation_loss, phi, mf.losses.mse, inner_lr=0.1, inner_steps=2)
    predict = lambda p, x: model(p, x)[0]  # noqa: E731
    for s, want in ((0.0, grid_mean_square(phase)), (1.0, grid_mean_square(phase, scale=0.0))):
        if s == 1.0 and phase:
            want = grid_mean_square(0.0, scale=2.0)
        meta = learner.init({"s": torch.tensor(s, dtype=F64)})
        got = daml_grid_error(
            learner, predict, meta, torch.Generator().manual_seed(0), phase=phase, draws=2
        )
        torch.testing.assert_close(got.mse, torch.full((2,), want, dtype=F64))


# ---------------------------------------------------------------- accuracy, counted


def label_reader(ways):
    """A learner and ``predict`` that read each query image's class from its pixel (0, 0), look
    up the label the support set gives that class, and predict it, but only for even classes:
    for odd ones they predict the next label. Its accuracy is the share of even classes."""
    learner, _ = memoriser()

    def predict(p, x):
        cls = lambda images: (images[:, 0, 0, 0] * 255).round()  # noqa: E731
        match = (cls(x)[:, None] == cls(p["xs"])[None, :]).to(x.dtype)
        label = (match @ p["ys"]).round().long()
        odd = cls(x).long() % 2
        return (((label + odd) % ways)[:, None] == torch.arange(ways)).to(x.dtype)  # one-hot

    def adapt_labels(meta, support):
        x, y = support
        return {"xs": x, "ys": y.to(x.dtype)}

    learner = mf.Learner(
        init=lambda p: p, inner=adapt_labels, outer=lambda p, data: predict(p, data[0]).sum() * 0
    )
    return learner, predict


def test_fewshot_accuracy_is_the_count_of_right_predictions():
    ways, queries, shots = 4, 3, 1
    data = labelled_dataset()
    learner, predict = label_reader(ways)
    meta = {"xs": torch.zeros(ways * shots, 1, 3, 3, dtype=F64), "ys": torch.zeros(4, dtype=F64)}
    got = fewshot_accuracy(
        learner, predict, meta, data, torch.Generator().manual_seed(2), tasks=7, ways=ways,
        queries=queries, batch=3,
    )  # fmt: skip
    # the same draws, 3 + 3 + 1 tasks, counted here
    g = torch.Generator().manual_seed(2)
    want = []
    for size in (3, 3, 1):
        draw = mf.tasks.fewshot(g, data, tasks=size, ways=ways, queries=queries, dtype=F64)
        for t in range(size):
            classes = (draw.query[0][t, :, 0, 0, 0] * 255).round().long().tolist()
            want.append(sum(c % 2 == 0 for c in classes) / len(classes))
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=0, atol=0)
    assert len(set(want)) > 1  # the counts differ between tasks


def test_fewshot_accuracy_of_5_way_tasks_with_one_query_per_class():
    """ways = 5 and queries = 1: the logits of a task are (5, 5), square."""
    ways = 5
    data = labelled_dataset(classes=10)
    learner, predict = label_reader(ways)
    meta = {"xs": torch.zeros(ways, 1, 3, 3, dtype=F64), "ys": torch.zeros(ways, dtype=F64)}
    got = fewshot_accuracy(
        learner, predict, meta, data, torch.Generator().manual_seed(4), tasks=6, ways=ways,
        queries=1, batch=6,
    )  # fmt: skip
    draw = mf.tasks.fewshot(
        torch.Generator().manual_seed(4), data, tasks=6, ways=ways, queries=1, dtype=F64
    )
    want = []
    for t in range(6):
        classes = (draw.query[0][t, :, 0, 0, 0] * 255).round().long().tolist()
        assert len(classes) == ways
        want.append(sum(c % 2 == 0 for c in classes) / ways)
    assert got.tolist() == want
    assert len(set(want)) > 1


def test_evaluate_accuracy_counts_the_argmax_of_the_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 4, generator=g, dtype=F64)
    labels = torch.randint(0, 4, (3, 6), generator=g)
    x = torch.arange(3 * 6, dtype=F64).reshape(3, 6, 1)  # example i's logits: row i
    table = {"logits": logits.reshape(18, 4)}
    predict = lambda p, x: p["logits"][x[:, 0].long()]  # noqa: E731
    learner = frozen(predict, mf.losses.cross_entropy)
    tasks = mf.Tasks((x, labels), (x, labels))
    got = mf.evaluate(learner, table, tasks, predict=predict)
    for t in range(3):
        right = sum(
            max(range(4), key=lambda c: logits[t, i, c].item()) == labels[t, i].item()
            for i in range(6)
        )
        assert got.accuracy.values[t].item() == right / 6
    assert got.mse is None
    assert_score_by_hand(got.accuracy)


def square_logits_tasks():
    """5-way tasks with 5 query examples: logits (5, 5), where an arg-max over the examples
    instead of the classes has the right shape and another accuracy."""
    g = torch.Generator().manual_seed(3)
    tasks, n = 4, 5
    logits = torch.randn(tasks, n, n, generator=g, dtype=F64)
    labels = torch.stack([torch.randperm(n, generator=g) for _ in range(tasks)])
    x = torch.arange(tasks * n, dtype=F64).reshape(tasks, n, 1)
    table = {"logits": logits.reshape(tasks * n, n)}
    predict = lambda p, x: p["logits"][x[:, 0].long()]  # noqa: E731
    return logits, labels, mf.Tasks((x, labels), (x, labels)), table, predict


def test_evaluate_accuracy_takes_the_argmax_over_classes_of_square_logits():
    logits, labels, tasks, table, predict = square_logits_tasks()
    got = mf.evaluate(frozen(predict, mf.losses.cross_entropy), table, tasks, predict=predict)
    want, wrong = [], []
    for t in range(4):
        rows = logits[t].tolist()  # rows[i][c]: example i, class c
        classes = [max(range(5), key=lambda c, r=r: r[c]) for r in rows]
        examples = [max(range(5), key=lambda i, c=c: rows[i][c]) for c in range(5)]
        want.append(sum(classes[i] == labels[t, i].item() for i in range(5)) / 5)
        wrong.append(sum(examples[i] == labels[t, i].item() for i in range(5)) / 5)
    assert got.accuracy.values.tolist() == want
    assert want != wrong  # the arg-max over the wrong dimension would be seen
    assert_score_by_hand(got.accuracy)


# ---------------------------------------------------------------- losses, by hand


def hand_losses(net, params, tasks, *, lr, steps):
    """Per task: the query MSE at the meta-parameters and after ``steps`` of SGD on the
    support, with torch.autograd on leaf copies."""
    names = sorted(params)

    def loss(theta, data):
        x, y = data
        return ((functional_call(net, dict(zip(names, theta, strict=True)), (x,)) - y) ** 2).mean()

    before, after = [], []
    for t in range(tasks.support[0].shape[0]):
        support = (tasks.support[0][t], tasks.support[1][t])
        query = (tasks.query[0][t], tasks.query[1][t])
        theta = [params[k].detach().clone().requires_grad_() for k in names]
        before.append(loss(theta, query).item())
        for _ in range(steps):
            grads = torch.autograd.grad(loss(theta, support), theta)
            theta = [
                (p - lr * g).detach().requires_grad_() for p, g in zip(theta, grads, strict=True)
            ]
        after.append(loss(theta, query).item())
    return torch.tensor(after, dtype=F64), torch.tensor(before, dtype=F64)


@pytest.mark.parametrize("steps", [1, 3])
def test_loss_before_is_the_query_loss_at_the_meta_parameters(steps):
    net = tanh_net()
    fn, params = mf.pure(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1, inner_steps=steps)
    tasks = redraw_sinusoid(4, tasks=5, shots=6, queries=7)
    after, before = hand_losses(net, params, tasks, lr=0.1, steps=steps)
    assert float((after - before).abs().min()) > 1e-3  # adapting moves the loss: not swappable
    scores = mf.evaluate(learner, params, tasks, predict=fn)
    torch.testing.assert_close(scores.loss.values, after, rtol=1e-10, atol=0)
    torch.testing.assert_close(scores.loss_before.values, before, rtol=1e-10, atol=0)
    torch.testing.assert_close(scores.mse.values, after, rtol=1e-10, atol=0)  # MSE loss
    for score in (scores.loss, scores.loss_before, scores.mse):
        assert_score_by_hand(score)
    _, metrics = learner.meta_grad(params, tasks)  # what the step logs
    torch.testing.assert_close(metrics.loss, after.mean(), rtol=1e-10, atol=0)
    torch.testing.assert_close(metrics.loss_before, before.mean(), rtol=1e-10, atol=0)


def test_evaluate_scores_the_learners_loss_and_the_models_squared_error_apart():
    """An L1 learner: ``loss`` is L1, ``mse`` the squared error of ``predict``."""
    net = tanh_net()
    fn, params = mf.pure(net)
    learner = mf.maml(mf.supervised(fn, mf.losses.l1), inner_steps=0)
    tasks = redraw_sinusoid(6, tasks=3, shots=2, queries=5)
    scores = mf.evaluate(learner, params, tasks, predict=fn)
    with torch.no_grad():
        pred = torch.stack([net(tasks.query[0][t]) for t in range(3)])
    y = tasks.query[1]
    torch.testing.assert_close(scores.loss.values, (pred - y).abs().mean(dim=(1, 2)))
    torch.testing.assert_close(scores.mse.values, ((pred - y) ** 2).mean(dim=(1, 2)))
    assert scores.accuracy is None


def test_evaluate_meta_sgd_scores_its_params_before_adapting():
    net = tanh_net()
    fn, params = mf.pure(net)
    learner = mf.meta_sgd(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    tasks = redraw_sinusoid(7, tasks=3, shots=4, queries=4)
    scores = mf.evaluate(learner, learner.init(params), tasks)
    after, before = hand_losses(net, params, tasks, lr=0.1, steps=1)  # rates all 0.1
    torch.testing.assert_close(scores.loss.values, after, rtol=1e-10, atol=0)
    torch.testing.assert_close(scores.loss_before.values, before, rtol=1e-10, atol=0)


# ---------------------------------------------------------------- bad input

FN, PARAMS = mf.pure(tanh_net(width=3))
LEARNER = mf.maml(mf.supervised(FN, mf.losses.mse), inner_lr=0.1)
TASKS = redraw_sinusoid(0, tasks=2, shots=3, queries=3)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: mf.evaluate(FN, PARAMS, TASKS),
            TypeError,
            r"^evaluate: learner must be a metafunc\.Learner, e\.g\. mf\.maml\(loss\) \(got Pure\)$",
        ),
        (
            lambda: mf.evaluate(LEARNER, PARAMS, TASKS.support),
            TypeError,
            r"^evaluate: tasks must be a metafunc\.Tasks\(support, query\) \(got tuple\)$",
        ),
        (
            lambda: mf.evaluate(LEARNER, PARAMS, TASKS, predict="fn"),
            TypeError,
            r"^evaluate: predict must be callable as predict\(params, x\) \(got 'fn'\)$",
        ),
        (
            lambda: mf.evaluate(
                LEARNER,
                PARAMS,
                mf.Tasks({"x": TASKS.support[0]}, {"x": TASKS.query[0]}),
                predict=FN,
            ),
            ValueError,
            r"^evaluate: with predict, tasks\.query must be a pair \(x, y\) of inputs and "
            r"targets, or \(x, y, mask\) for padded tasks \(got dict\)$",
        ),
        (
            lambda: mf.evaluate(LEARNER, PARAMS, TASKS, predict=lambda p, x: FN(p, x)[:, 0]),
            ValueError,
            r"^evaluate: predict\(params, x\) must have the targets' shape per task, \(3, 1\) "
            r"\(got \(3,\)\)$",
        ),
        (
            lambda: mf.evaluate(
                frozen(lambda p, x: FN(p, x)[:, 0], lambda a, b: a.sum() * 0),
                PARAMS,
                mf.Tasks(
                    (TASKS.support[0], torch.zeros(2, 3, dtype=torch.int64)),
                    (TASKS.query[0], torch.zeros(2, 3, dtype=torch.int64)),
                ),
                predict=lambda p, x: FN(p, x)[:, 0],
            ),
            ValueError,
            r"^evaluate: predict\(params, x\) must give logits \(examples, classes\) per task "
            r"for labels \(3,\) \(got \(3,\)\)$",
        ),
        (
            lambda: mf.evaluate(LEARNER, PARAMS, mf.Tasks(TASKS.query, TASKS.query[0])),
            ValueError,
            r"^evaluate: tasks.query must have the same tree structure as tasks.support",
        ),
    ],
)
def test_evaluate_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ---------------------------------------------------------------- compiled


@pytest.mark.compile
def test_compiled_evaluate_gives_the_hand_loop_and_the_eager_scores_and_is_reused():
    net = tanh_net()
    fn, params = mf.pure(net)
    tasks = redraw_sinusoid(4, tasks=5, shots=6, queries=7)
    after, before = hand_losses(net, params, tasks, lr=0.1, steps=3)

    def learner():  # built afresh each time, as a notebook cell would
        return mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1, inner_steps=3)

    eager = mf.evaluate(learner(), params, tasks, predict=fn)
    start = graphs()
    got = mf.evaluate(learner(), params, tasks, predict=fn, compile=True, backend="aot_eager")
    assert graphs() == start + 1
    torch.testing.assert_close(got.loss.values, after, rtol=1e-10, atol=0)
    torch.testing.assert_close(got.loss_before.values, before, rtol=1e-10, atol=0)
    for a, b in zip(got, eager, strict=True):
        if a is not None:
            torch.testing.assert_close(a.values, b.values, rtol=1e-12, atol=0)
            assert (a.mean, a.ci95) == pytest.approx((b.mean, b.ci95), rel=1e-12)
    # an equal learner and predict in this process: no new graph; new numbers in the same
    # shapes: the same graph
    again = mf.evaluate(learner(), params, tasks, predict=fn, compile=True, backend="aot_eager")
    moved = {k: v + 0.1 for k, v in params.items()}
    other = mf.evaluate(learner(), moved, tasks, predict=fn, compile=True, backend="aot_eager")
    assert graphs() == start + 1
    torch.testing.assert_close(again.loss.values, after, rtol=1e-10, atol=0)
    want = mf.evaluate(learner(), moved, tasks, predict=fn).loss.values
    torch.testing.assert_close(other.loss.values, want, rtol=1e-12, atol=0)


@pytest.mark.compile
def test_compiled_evaluate_counts_accuracy_as_the_eager_one():
    _, _, tasks, table, predict = square_logits_tasks()
    learner = frozen(predict, mf.losses.cross_entropy)
    eager = mf.evaluate(learner, table, tasks, predict=predict)
    got = mf.evaluate(learner, table, tasks, predict=predict, compile=True, backend="aot_eager")
    assert got.accuracy.values.tolist() == eager.accuracy.values.tolist()
    assert got.mse is None


@pytest.mark.compile
def test_compiled_evaluate_raises_what_the_eager_one_raises():
    bad = lambda p, x: FN(p, x)[:, 0]  # noqa: E731
    with pytest.raises(ValueError, match=r"^evaluate: predict\(params, x\) must have the targets'"):
        mf.evaluate(LEARNER, PARAMS, TASKS, predict=bad, compile=True, backend="aot_eager")
    with pytest.raises(TypeError, match=r"^evaluate: compile must be True or False \(got 'yes'\)$"):
        mf.evaluate(LEARNER, PARAMS, TASKS, compile="yes")


@pytest.mark.compile
def test_compiled_fewshot_accuracy_pads_the_last_batch_and_keeps_the_counts(monkeypatch):
    import metafunc.experiments.scores as scores

    ways, data = 4, labelled_dataset()
    learner, predict = label_reader(ways)
    meta = {"xs": torch.zeros(ways, 1, 3, 3, dtype=F64), "ys": torch.zeros(4, dtype=F64)}
    sizes = []

    def evaluate(*args, **kw):
        sizes.append(args[2].query[0].shape[0])
        return mf.evaluate(*args, **kw, backend="aot_eager")

    monkeypatch.setattr(scores, "evaluate", evaluate)
    accuracy = lambda compile: fewshot_accuracy(  # noqa: E731
        learner, predict, meta, data, torch.Generator().manual_seed(2), tasks=7, ways=ways,
        queries=3, batch=3, compile=compile,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second graph for the last, smaller batch
        got = accuracy(True)
    assert sizes == [3, 3, 3]
    assert got.tolist() == accuracy(False).tolist() and got.shape == (7,)
    assert sizes[3:] == [3, 3, 1]
