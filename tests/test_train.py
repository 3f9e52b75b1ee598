"""The training loop: windows of device-side metric means, logging, the task stream."""

import functools
import logging
import os
import signal

import pytest
import torch
from conftest import tanh_net

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
            log_every=3,
            on_log=lambda log: logs.append((log.step, log.metrics)),
            progress=False,
        )

    g = torch.Generator().manual_seed(3)
    manual, losses = state, []
    for _ in range(7):
        manual, metrics = step(manual, sampler(g))
        losses.append(metrics["loss"].item())
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
        log_every=2,
        progress=False,
        on_log=lambda log: seen.append(log.step),
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
        r"is not finite\. The parameters and optimizer state were left as before that step\. ",
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
        log_every=2,
        on_log=logs.append,
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

    with pytest.raises(FileNotFoundError, match=r"^train: "):
        mf.train(
            step, state, counting, steps=3, checkpoint=tmp_path / "no" / "c.pt", progress=False
        )
    with pytest.raises(ValueError, match=r"^train: "):
        mf.train(step, state, counting, steps=3, checkpoint=tmp_path, progress=False)  # a folder
    # a read-only folder (this suite may run as root, who may write anywhere: os.access decides)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != tmp_path and real_access(p, mode))
    with pytest.raises(PermissionError, match=r"^train: .* this user cannot write to\)$"):
        mf.train(step, state, counting, steps=3, checkpoint=tmp_path / "c.pt", progress=False)
    assert calls == []


def test_metadata_is_stored_with_every_checkpoint(tmp_path):
    step, state, sampler = setup()
    path = tmp_path / "c.pt"
    mf.train(step, state, sampler, steps=2, checkpoint=path, metadata={"seed": 3}, progress=False)
    assert mf.checkpoint.read_metadata(path) == {"seed": 3}
