"""The training loop: windows of device-side metric means, logging, the task stream, hooks
that stop the run or keep their own state, runs of several phases, any iterable of batches."""

import functools
import logging
import math
import os
import re
import signal
import warnings

import pytest
import torch
from support import tanh_net
from torch import nn

import metafunc as mf


def setup():
    fn, params = mf.pure(tanh_net())
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.adam(1e-2)
    sampler = functools.partial(mf.tasks.sinusoid, tasks=2, dtype=torch.float64)
    return mf.make_step(learner, opt, compile=False), mf.init_state(learner, opt, params), sampler


def test_train_equals_manual_steps_and_logs_window_means(caplog):
    step, state, sampler = setup()
    logs = []
    with caplog.at_level(logging.INFO, logger="metafunc"):
        final = mf.train(
            step,
            state,
            sampler,
            steps=7,
            generator=torch.Generator().manual_seed(3),
            hooks=[mf.hooks.Logger(3, on_log=lambda log: logs.append((log.step, log.metrics)))],
            progress=False,
        )

    g = torch.Generator().manual_seed(3)
    manual, losses = state, []
    for _ in range(7):
        manual, metrics = step(manual, sampler(g))
        losses.append(metrics.loss.item())
    for a, b in zip(mf._tree.leaves(final), mf._tree.leaves(manual), strict=True):
        assert torch.equal(a, b)
    assert int(final.step) == 7
    # windows end at multiples of log_every and after the last step
    assert [n for n, _ in logs] == [3, 6, 7]
    for (_, m), window in zip(logs, (losses[0:3], losses[3:6], losses[6:7]), strict=True):
        assert abs(m["loss"] - sum(window) / len(window)) < 1e-12
        assert m["finite"] == 1.0
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["step 3", "step 6", "step 7"]


def test_train_continues_counting_from_the_state():
    step, state, sampler = setup()
    state = mf.train(step, state, sampler, steps=2, progress=False)
    seen = []
    mf.train(
        step,
        state,
        sampler,
        steps=3,
        hooks=[mf.hooks.Logger(2, on_log=lambda log: seen.append(log.step))],
        progress=False,
    )
    assert seen == [4, 5]


def test_zero_steps_returns_the_state():
    step, state, sampler = setup()
    assert mf.train(step, state, sampler, steps=0, progress=False) is state


def test_signal_handlers_are_restored_after_a_run():
    step, state, sampler = setup()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    mf.train(step, state, sampler, steps=2, progress=False)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_non_finite_step_names_the_first_parameter_with_a_bad_gradient():
    def loss(p, data):
        (x,) = data
        return (p["a"] * x[:, 0]).mean() + (p["b"] * x[:, 1]).mean()

    params = {"a": torch.ones((), dtype=torch.float64), "b": torch.ones((), dtype=torch.float64)}
    learner, opt = mf.maml(loss, inner_steps=0), mf.optim.apply_if_finite(mf.optim.sgd(0.1))
    step = mf.make_step(learner, opt, compile=False)
    x = torch.ones(2, 3, 2, dtype=torch.float64)
    x[1, 2, 1] = float("inf")  # only b's gradient sees it
    with pytest.raises(
        FloatingPointError,
        match=r"^train: step 1 is not finite: the meta-gradient of meta\['b'\] is the first that "
        r"is not finite\. The parameters and optimizer state were left as before that step\. "
        r"Lower the learning rates or check the data\. To go on past such steps, pass "
        r"on_nonfinite='skip' to skip such steps\.$",
    ):
        mf.train(
            step,
            mf.init_state(learner, opt, params),
            lambda g: mf.Tasks((x,), (x,)),
            steps=3,
            progress=False,
        )


def test_on_log_gets_the_state_of_that_step_and_the_run_timing():
    step, state, sampler = setup()
    logs = []
    final = mf.train(
        step,
        state,
        sampler,
        steps=5,
        hooks=[mf.hooks.Logger(2, on_log=logs.append)],
        progress=False,
        generator=torch.Generator().manual_seed(1),
    )
    assert [log.step for log in logs] == [2, 4, 5]
    assert [int(log.state.step) for log in logs] == [2, 4, 5]
    assert logs[-1].state is final
    # the state handed to the hook is the one a manual run has after that many steps
    g, manual = torch.Generator().manual_seed(1), state
    for _ in range(2):
        manual, _ = step(manual, sampler(g))
    for a, b in zip(mf._tree.leaves(logs[0].state), mf._tree.leaves(manual), strict=True):
        assert torch.equal(a, b)
    # the first call is timed apart from the steps after it, which add up
    assert all(log.first_call_s == logs[0].first_call_s > 0 for log in logs)
    assert [log.steady_steps for log in logs] == [1, 3, 4]
    assert 0 < logs[0].steady_s < logs[1].steady_s < logs[2].steady_s


def test_a_checkpoint_path_that_cannot_be_written_fails_before_the_first_step(
    tmp_path, monkeypatch
):
    step, state, sampler = setup()
    calls = []

    def counting(g):
        calls.append(1)
        return sampler(g)

    def run(path):
        hooks = [mf.hooks.Checkpoints(path)]
        mf.train(step, state, counting, steps=3, hooks=hooks, progress=False)

    with pytest.raises(FileNotFoundError, match=r"^train: "):
        run(tmp_path / "no" / "c.pt")
    with pytest.raises(ValueError, match=r"^train: "):
        run(tmp_path)  # a folder
    # a read-only folder (this suite may run as root, who may write anywhere: os.access decides)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != tmp_path and real_access(p, mode))
    with pytest.raises(PermissionError, match=r"^train: .* this user cannot write to\)$"):
        run(tmp_path / "c.pt")
    assert calls == []


def test_metadata_is_stored_with_every_checkpoint(tmp_path):
    step, state, sampler = setup()
    path = tmp_path / "c.pt"
    saver = mf.hooks.Checkpoints(path, metadata={"seed": 3})
    mf.train(step, state, sampler, steps=2, hooks=[saver], progress=False)
    assert mf.checkpoint.read_metadata(path) == {"seed": 3}


def assert_equal(a, b):
    assert mf._tree.structure(a) == mf._tree.structure(b)
    assert all(
        torch.equal(x, y) for x, y in zip(mf._tree.leaves(a), mf._tree.leaves(b), strict=True)
    )


def test_a_hook_stops_the_run_and_train_returns_the_state_after_that_step(tmp_path):
    step, state, sampler = setup()
    path = tmp_path / "c.pt"

    def early_stop(run):
        if run.done == 3:
            run.stop("validation loss rose")

    hooks = [mf.hooks.Every(1, early_stop), mf.hooks.Checkpoints(path)]
    final = mf.train(step, state, sampler, steps=10, hooks=hooks, progress=False)
    assert int(final.step) == 3
    assert int(mf.load(path, like=state).step) == 3  # the end still writes the checkpoint
    straight = mf.train(step, state, sampler, steps=3, progress=False)
    assert_equal(final, straight)


def test_the_users_own_state_is_checkpointed_and_resumed_with_the_run(tmp_path):
    """An epoch counter and an early-stopping record kept in state.extra by a hook."""
    step, state, sampler = setup()
    state = state._replace(
        extra={"best": torch.tensor(float("inf"), dtype=torch.float64), "seen": torch.tensor(0)}
    )

    def bookkeeping(run):
        extra = run.state.extra
        loss = run.metrics.loss.detach()
        run.state = run.state._replace(
            extra={"best": torch.minimum(extra["best"], loss), "seen": extra["seen"] + 1}
        )

    def run(steps, resume=False):
        hooks = [
            mf.hooks.Every(1, bookkeeping),
            mf.hooks.Checkpoints(tmp_path / "c.pt", resume=resume),
        ]
        return mf.train(step, state, sampler, until=steps, hooks=hooks, progress=False)

    straight = run(6)
    (tmp_path / "c.pt").unlink()
    run(4)  # stops at 4; a new process resumes it
    resumed = run(6, resume=True)
    assert int(resumed.extra["seen"]) == 6 and float(resumed.extra["best"]) < float("inf")
    assert_equal(resumed, straight)


def test_the_step_passes_any_extra_through_and_save_names_a_leaf_it_cannot_keep(tmp_path):
    step, state, sampler = setup()
    state = state._replace(extra={"epoch": 3, "note": "warm-up", "best": torch.tensor(1.0)})
    new, _ = step(state, sampler(torch.Generator().manual_seed(0)))
    assert new.extra is state.extra
    with pytest.raises(
        TypeError, match=r"^save: state\.extra\['epoch'\] must be a tensor \(got int\)$"
    ):
        mf.save(tmp_path / "c.pt", new)


def test_a_run_of_two_phases_resumes_in_either_phase(tmp_path):
    """First order for 3 steps, then second order to step 6, in one script: killed anywhere and
    started again, it ends where the uninterrupted script ends."""
    fn, params = mf.pure(tanh_net())
    loss = mf.supervised(fn, mf.losses.mse)
    opt = mf.optim.adam(1e-2)
    first = mf.make_step(mf.fomaml(loss, inner_lr=0.1), opt, compile=False)
    second = mf.make_step(mf.maml(loss, inner_lr=0.1), opt, compile=False)
    sampler = functools.partial(mf.tasks.sinusoid, tasks=2, dtype=torch.float64)
    template = mf.init_state(mf.maml(loss, inner_lr=0.1), opt, params)

    def script(path, stop_at=None):
        g = torch.Generator().manual_seed(0)
        state = template
        for step, until in ((first, 3), (second, 6)):
            hooks = [mf.hooks.Checkpoints(path, resume=True)]
            if stop_at is not None:
                hooks.append(mf.hooks.Every(1, lambda r: r.done == stop_at and r.stop("killed")))
            state = mf.train(
                step, state, sampler, until=until, generator=g, hooks=hooks, progress=False
            )
            if stop_at is not None and int(state.step) == stop_at:
                return state
        return state

    straight = script(tmp_path / "a.pt")
    for stop_at in (2, 5):
        path = tmp_path / f"b{stop_at}.pt"
        assert int(script(path, stop_at).step) == stop_at
        assert_equal(script(path), straight)


def test_any_iterable_of_batches_is_data_and_a_short_one_ends_the_run(caplog):
    step, state, sampler = setup()
    g = torch.Generator().manual_seed(5)
    batches = [sampler(g) for _ in range(4)]
    by_sampler = mf.train(
        step, state, sampler, steps=4, generator=torch.Generator().manual_seed(5), progress=False
    )
    from_list = mf.train(step, state, batches, steps=4, progress=False)
    as_pairs = mf.train(step, state, [tuple(b) for b in batches], steps=4, progress=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    from_loader = mf.train(step, state, loader, steps=4, progress=False)
    for other in (from_list, as_pairs, from_loader):
        assert_equal(other, by_sampler)
    with caplog.at_level(logging.WARNING, logger="metafunc"):
        short = mf.train(step, state, batches[:2], steps=4, progress=False)
    assert int(short.step) == 2
    assert "train: the data ran out after step 2, before step 4" in caplog.text


def test_a_first_run_with_resume_starts_fresh_and_says_so(tmp_path, caplog):
    step, state, sampler = setup()
    path = tmp_path / "c.pt"
    with caplog.at_level(logging.INFO, logger="metafunc"):
        mf.train(
            step,
            state,
            sampler,
            steps=2,
            hooks=[mf.hooks.Checkpoints(path, resume=True)],
            progress=False,
        )
    assert f"no checkpoint at {path} yet: starting a new run" in caplog.text
    assert int(mf.load(path, like=state).step) == 2


def test_a_skipped_step_is_counted_and_a_run_that_only_skips_is_stopped(caplog):
    fn, params = mf.pure(tanh_net())
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.apply_if_finite(mf.optim.adam(1e-2))
    step = mf.make_step(learner, opt, compile=False)
    state = mf.init_state(learner, opt, params)

    def poisoned(g):
        tasks = mf.tasks.sinusoid(g, tasks=2, dtype=torch.float64)
        tasks.query[1][0, 0, 0] = float("nan")
        return tasks

    with pytest.raises(
        FloatingPointError,
        match=r"^train: the last 100 steps \(to step 100\) were all skipped as not finite, so the "
        r"run no longer trains\. ",
    ):
        mf.train(step, state, poisoned, steps=300, on_nonfinite="skip", progress=False)


def test_a_guard_that_lets_a_nan_through_stops_the_run_before_it_is_checkpointed(tmp_path, caplog):
    """apply_if_finite(max_consecutive_errors=1): the second NaN step in a row is applied; the
    run stops there, naming the step, the log counts only the step really skipped, and the last
    checkpoint is the finite one before."""
    fn, params = mf.pure(tanh_net())
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.1)
    opt = mf.optim.apply_if_finite(mf.optim.adam(1e-2), max_consecutive_errors=1)
    step = mf.make_step(learner, opt, compile=False)
    state = mf.init_state(learner, opt, params)
    calls = []

    def poisoned(g):
        calls.append(1)
        tasks = mf.tasks.sinusoid(g, tasks=2, dtype=torch.float64)
        if len(calls) > 2:
            tasks.query[1][0, 0, 0] = float("nan")
        return tasks

    path = tmp_path / "c.pt"
    hooks = [mf.hooks.Checkpoints(path, every=2)]
    with (
        pytest.raises(
            FloatingPointError,
            match=r"^train: step 4 was not finite and the optimizer's guard let it through "
            r"\(apply_if_finite's max_consecutive_errors\), so the parameters or optimizer state "
            r"are no longer finite; the last checkpoint, '.*c\.pt', is at step 2\.",
        ),
        caplog.at_level(logging.WARNING, logger="metafunc"),
    ):
        mf.train(step, state, poisoned, steps=6, on_nonfinite="skip", hooks=hooks, progress=False)
    assert caplog.messages == ["step 4: skipped 1 non-finite step(s) of the last 2"]
    assert int(mf.load(path, like=state).step) == 2


EPS_ROOT_ADVICE = (
    r"A finite loss with a non-finite meta-gradient comes from the backward pass: second order "
    r"through an inner Adam or AdamW needs eps_root > 0 \(e\.g\. mf\.optim\.adam\(lr, "
    r"eps_root=1e-16\)\) where a gradient is exactly 0 \(a dead ReLU unit"
)


def dead_unit_net():
    """A 1-4-1 ReLU net whose hidden unit 0 is dead: its input is -1 for every x, so the
    gradients of its weights are exactly 0."""
    net = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.0], [1.0], [-0.5], [0.8]]))
        net[0].bias.copy_(torch.tensor([-1.0, 0.1, 0.2, -0.3]))
        net[2].weight.copy_(torch.tensor([[0.5, -0.4, 0.3, 0.2]]))
    return mf.pure(net)


def dead_unit_maml(eps_root):
    """Second-order MAML through an inner Adam on :func:`dead_unit_net`: with ``eps_root=0``
    the derivative of Adam's sqrt(v) at v = 0 makes the meta-gradient NaN while the loss stays
    finite."""
    fn, params = dead_unit_net()
    inner = mf.optim.adam(0.01, eps_root=eps_root)
    learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_opt=inner, inner_steps=2)
    return learner, params


def sinusoids(g):
    return mf.tasks.sinusoid(g, tasks=2, dtype=torch.float64)


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_adam_without_eps_root_through_a_dead_unit_names_eps_root(on_nonfinite):
    learner, params = dead_unit_maml(eps_root=0.0)
    opt = mf.optim.apply_if_finite(mf.optim.adam(1e-3))
    first = (
        r"^train: step 1 is not finite: the meta-gradient of meta\['0\.bias'\] is the first that "
        r"is not finite\. .*"
        if on_nonfinite == "raise"
        else r"^train: the last 100 steps \(to step 100\) were all skipped as not finite, .*"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the step itself never warns: the loop says it
        with pytest.raises(FloatingPointError, match=first + EPS_ROOT_ADVICE):
            mf.train(
                mf.make_step(learner, opt, compile=False),
                mf.init_state(learner, opt, params),
                sinusoids,
                steps=150,
                on_nonfinite=on_nonfinite,
                progress=False,
            )
    # eps_root > 0 is the cure: the same run trains
    learner, params = dead_unit_maml(eps_root=1e-16)
    state = mf.train(
        mf.make_step(learner, opt, compile=False),
        mf.init_state(learner, opt, params),
        sinusoids,
        steps=3,
        progress=False,
    )
    assert all(bool(torch.isfinite(t).all()) for t in mf._tree.leaves(state.meta))


def test_meta_grad_called_directly_warns_naming_what_is_not_finite_and_eps_root():
    learner, params = dead_unit_maml(eps_root=0.0)
    tasks = sinusoids(torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning) as record:
        grads, losses = learner.meta_grad(params, tasks)
    assert len(record) == 1 and record[0].filename == __file__  # it points at the caller
    assert re.match(
        r"^meta_grad: the meta-gradient of meta\['0\.bias'\] is the first that is not finite\. "
        + EPS_ROOT_ADVICE,
        str(record[0].message),
    )
    assert bool(torch.isfinite(losses.loss)) and not bool(torch.isfinite(grads["0.bias"]).all())
    # a loss that is not finite gets the plain advice; it is named where the gradient is finite
    # (L1's at a NaN target is), else the first gradient that is not
    y = tasks.query[1].clone()
    y[1, 0, 0] = math.nan
    nan = mf.Tasks(tasks.support, (tasks.query[0], y))
    fn, params = dead_unit_net()
    gradient = r"the meta-gradient of meta\['0\.bias'\] is the first that is not finite"
    for criterion, what in ((mf.losses.l1, "the loss is nan"), (mf.losses.mse, gradient)):
        with pytest.warns(RuntimeWarning) as record:
            mf.maml(mf.supervised(fn, criterion), inner_steps=0).meta_grad(params, nan)
        assert re.fullmatch(
            rf"meta_grad: {what}\. Lower the learning rates or check the data\.",
            str(record[0].message),
        ), str(record[0].message)
    # finite results, and calls inside a torch.func transform, say nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cured, _ = dead_unit_maml(eps_root=1e-16)
        cured.meta_grad(params, tasks)
        torch.func.grad(lambda p: learner.meta_grad(p, tasks)[1].loss)(params)
