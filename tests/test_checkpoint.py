"""Checkpoints: exact round trip, atomic writes, bit-exact resume (eager and compiled), and a
clean stop on SIGINT / SIGTERM."""

import functools
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import metafunc as mf
from metafunc import _tree
from metafunc.optim import AdamState

ROOT = Path(__file__).resolve().parents[1]


def setup(optimizer=None, dtype=torch.float32):
    """A tiny blog net with Adam: every kind of leaf (parameters, moments, int counters)."""
    g = torch.Generator().manual_seed(0)
    fn, params = mf.pure(mf.models.blog_sine_net(g, hidden=4).to(dtype))
    learner = mf.maml(mf.supervised(fn, mf.losses.l1), inner_lr=3e-2, inner_steps=2)
    opt = optimizer or mf.optim.adam(1e-2)
    sampler = functools.partial(mf.tasks.sine, tasks=3, dtype=dtype)
    return learner, opt, params, sampler


def assert_states_equal(a, b):
    assert _tree.structure(a) == _tree.structure(b)
    for (path, x), y in zip(_tree.named_leaves(a, "state"), _tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.device == y.device, path
        assert torch.equal(x, y), path


def test_round_trip_is_exact_and_restores_the_generator(tmp_path):
    learner, opt, params, sampler = setup()
    step = mf.make_step(learner, opt, compile=False)
    g = torch.Generator().manual_seed(1)
    state = mf.train(
        step, mf.init_state(learner, opt, params), sampler, steps=2, generator=g, progress=False
    )
    path = mf.save(tmp_path / "ckpt.pt", state, generator=g)

    fresh_g = torch.Generator().manual_seed(123)
    loaded = mf.load(path, like=mf.init_state(learner, opt, params), generator=fresh_g)
    assert isinstance(loaded, mf.TrainState) and isinstance(loaded.opt_state, AdamState)
    assert_states_equal(loaded, state)
    assert int(loaded.step) == 2
    assert torch.equal(fresh_g.get_state(), g.get_state())
    assert torch.equal(torch.rand(4, generator=fresh_g), torch.rand(4, generator=g))


def test_file_is_a_flat_dict_of_tensors_readable_without_pickled_classes(tmp_path):
    learner, opt, params, _ = setup()
    state = mf.init_state(learner, opt, params)
    mf.save(tmp_path / "c.pt", state, generator=torch.Generator())
    flat = torch.load(tmp_path / "c.pt", weights_only=True)
    assert type(flat) is dict and all(type(v) is torch.Tensor for v in flat.values())
    assert set(flat) == {
        *(k for k, _ in _tree.named_leaves(state, "state")),
        "metafunc.format",
        "metafunc.generator",
    }
    assert "state.meta['0.weight']" in flat and "state.opt_state.nu['4.bias']" in flat
    assert int(flat["state.step"]) == 0 and int(flat["metafunc.format"]) == 1
    assert flat["metafunc.generator"].dtype == torch.uint8


def test_sgd_state_without_momentum_round_trips(tmp_path):
    learner, opt, params, _ = setup(mf.optim.sgd(0.1))
    state = mf.init_state(learner, opt, params)
    assert state.opt_state.momentum is None
    loaded = mf.load(mf.save(tmp_path / "c.pt", state), like=state)
    assert loaded.opt_state.momentum is None
    assert_states_equal(loaded, state)


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    learner, opt, params, _ = setup()
    state = mf.init_state(learner, opt, params)
    path = mf.save(tmp_path / "c.pt", state)
    before = path.read_bytes()

    def crash_mid_write(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    moved = state._replace(step=state.step + 1)
    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        mf.save(path, moved)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary file left
    assert int(mf.load(path, like=state).step) == 0


def test_periodic_and_final_checkpoints(tmp_path, monkeypatch):
    learner, opt, params, sampler = setup()
    step = mf.make_step(learner, opt, compile=False)
    written = []
    real_save = mf.save

    def spy(path, state, **kw):
        written.append(int(state.step))
        return real_save(path, state, **kw)

    monkeypatch.setitem(mf.train.__globals__, "save", spy)
    state = mf.init_state(learner, opt, params)
    mf.train(
        step,
        state,
        sampler,
        steps=5,
        checkpoint=tmp_path / "c.pt",
        checkpoint_every=2,
        progress=False,
    )
    assert written == [2, 4, 5]
    assert int(mf.load(tmp_path / "c.pt", like=state).step) == 5


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_resume_is_bit_exact(tmp_path, compile):
    """N + M steps in one run equal N steps, stop, load into fresh objects, M more steps."""
    n, m = 3, 4
    learner, opt, params, sampler = setup()
    # one step function for all runs: it is pure, and compiled it compiles once
    step = mf.make_step(learner, opt, compile=compile)
    run = functools.partial(mf.train, step, sampler=sampler, progress=False)

    g_straight = torch.Generator().manual_seed(1)
    straight = run(mf.init_state(learner, opt, params), steps=n + m, generator=g_straight)

    path = tmp_path / "c.pt"
    first = run(
        mf.init_state(learner, opt, params),
        steps=n,
        generator=torch.Generator().manual_seed(1),
        checkpoint=path,
    )
    assert int(first.step) == n
    # fresh template and a generator at another seed: everything must come from the file
    g_resumed = torch.Generator().manual_seed(99)
    resumed = run(
        mf.init_state(learner, opt, params),
        steps=n + m,
        generator=g_resumed,
        checkpoint=path,
        resume=True,
    )
    assert_states_equal(resumed, straight)
    assert int(resumed.step) == n + m and int(resumed.opt_state.count) == n + m
    assert torch.equal(g_resumed.get_state(), g_straight.get_state())  # the task stream
    assert_states_equal(mf.load(path, like=straight), straight)  # final checkpoint
    # the run is finished: resuming again runs nothing and returns the checkpoint
    again = run(mf.init_state(learner, opt, params), steps=n + m, checkpoint=path, resume=True)
    assert_states_equal(again, straight)


def test_sigint_finishes_the_step_writes_a_checkpoint_and_restores_the_handler(tmp_path):
    learner, opt, params, sampler = setup()
    step = mf.make_step(learner, opt, compile=False)
    calls = []

    def interrupting(g):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C would, during the third step
        return sampler(g)

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    state = mf.init_state(learner, opt, params)
    with pytest.raises(KeyboardInterrupt):
        mf.train(step, state, interrupting, steps=100, checkpoint=tmp_path / "c.pt", progress=False)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == previous
    assert len(calls) == 3
    saved = mf.load(tmp_path / "c.pt", like=state)
    straight = mf.train(step, state, sampler, steps=3, progress=False)
    assert_states_equal(saved, straight)


def test_sigterm_during_a_checkpoint_write(tmp_path, monkeypatch):
    """One SIGTERM mid-write: the write completes, then the loop exits. Two: the second
    interrupts the write and the previous checkpoint stays whole, with no temporary file left."""
    learner, opt, params, sampler = setup()
    step = mf.make_step(learner, opt, compile=False)
    state = mf.init_state(learner, opt, params)
    path = tmp_path / "c.pt"
    real_save = torch.save
    writes, plan = [], {}  # plan: write number -> SIGTERMs raised after its bytes are written

    def save_with_signals(obj, f):
        real_save(obj, f)  # written to the temporary file, not yet renamed into place
        writes.append(1)
        for _ in range(plan.get(len(writes), 0)):
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(torch, "save", save_with_signals)
    plan = {1: 1}  # one signal during the periodic write at step 2
    with pytest.raises(SystemExit) as info:
        mf.train(
            step, state, sampler, steps=10, checkpoint=path, checkpoint_every=2, progress=False
        )
    assert info.value.code == 128 + signal.SIGTERM and len(writes) == 1
    at_2 = mf.train(step, state, sampler, steps=2, progress=False)
    assert_states_equal(mf.load(path, like=state), at_2)

    path.unlink()
    writes.clear()
    plan = {2: 2}  # two signals during the write at step 4
    with pytest.raises(KeyboardInterrupt):
        mf.train(
            step, state, sampler, steps=10, checkpoint=path, checkpoint_every=2, progress=False
        )
    assert len(writes) == 2
    assert_states_equal(mf.load(path, like=state), at_2)  # the step-2 checkpoint, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


SIGTERM_CHILD = """
import functools, sys, torch
import metafunc as mf

g = torch.Generator().manual_seed(0)
fn, params = mf.pure(mf.models.blog_sine_net(g, hidden=4))
learner = mf.maml(mf.supervised(fn, mf.losses.l1), inner_lr=3e-2, inner_steps=2)
opt = mf.optim.adam(1e-2)
state = mf.init_state(learner, opt, params)
step = mf.make_step(learner, opt, compile=False)
sampler = functools.partial(mf.tasks.sine, tasks=3)
mf.train(step, state, sampler, steps=10**7, generator=torch.Generator().manual_seed(1),
         log_every=1, on_log=lambda log: print(log.step, flush=True), checkpoint=sys.argv[1],
         progress=False)
"""


def test_sigterm_in_another_process_stops_cleanly_and_the_run_resumes_bit_exact(tmp_path):
    path = tmp_path / "c.pt"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SIGTERM_CHILD), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    for line in child.stdout:
        if int(line) == 5:
            break
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM after step" in err

    learner, opt, params, sampler = setup()
    template = mf.init_state(learner, opt, params)
    k = int(mf.load(path, like=template).step)
    assert 5 <= k < 10**7
    step = mf.make_step(learner, opt, compile=False)
    # the other process's k steps equal k steps here (determinism across processes) ...
    here = mf.train(
        step, template, sampler, steps=k, generator=torch.Generator().manual_seed(1), progress=False
    )
    assert_states_equal(mf.load(path, like=template), here)
    straight = mf.train(
        step,
        template,
        sampler,
        steps=k + 3,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    resumed = mf.train(
        step, template, sampler, steps=k + 3, checkpoint=path, resume=True, progress=False
    )
    # ... and resuming its checkpoint here finishes the run exactly as one uninterrupted run
    assert_states_equal(resumed, straight)


def test_the_non_finite_guard_in_train(tmp_path, caplog):
    learner, opt, params, sampler = setup(mf.optim.apply_if_finite(mf.optim.adam(1e-2)))
    step = mf.make_step(learner, opt, compile=False)
    state = mf.init_state(learner, opt, params)
    calls = []

    def poisoned(g):
        calls.append(1)
        tasks = sampler(g)
        if len(calls) == 3:
            tasks.query[1][0, 0, 0] = float("nan")
        return tasks

    path = tmp_path / "c.pt"
    with pytest.raises(FloatingPointError) as info:
        mf.train(
            step,
            state,
            poisoned,
            steps=6,
            generator=torch.Generator().manual_seed(1),
            checkpoint=path,
            checkpoint_every=2,
            progress=False,
        )
    assert str(info.value) == (
        # the L1 loss's gradient ignores a NaN target; the loss does not
        "train: step 3 is not finite: the loss is nan. The parameters and optimizer state were "
        f"left as before that step; the last checkpoint, {str(path)!r}, is at step 2. Lower the "
        "learning rates or check the data, or wrap the optimizer in mf.optim.apply_if_finite and "
        "pass on_nonfinite='skip' to skip such steps."
    )
    assert int(mf.load(path, like=state).step) == 2  # not overwritten by the failed step

    calls.clear()
    with caplog.at_level("WARNING", logger="metafunc"):
        skipped = mf.train(
            step,
            state,
            poisoned,
            steps=4,
            generator=torch.Generator().manual_seed(1),
            on_nonfinite="skip",
            progress=False,
        )
    assert "step 4: skipped 1 non-finite step(s) of the last 4" in caplog.text
    # the same as the three finite steps taken by hand; only the counter saw four
    g = torch.Generator().manual_seed(1)
    manual = state
    for i in range(4):
        tasks = sampler(g)
        if i != 2:
            manual, _ = step(manual, tasks)
    assert_states_equal(skipped.meta, manual.meta)
    assert_states_equal(skipped.opt_state.inner_state, manual.opt_state.inner_state)
    assert int(skipped.step) == 4 and int(skipped.opt_state.total_notfinite) == 1


def test_without_a_guard_train_says_the_state_is_lost_and_refuses_to_skip(tmp_path):
    learner, opt, params, sampler = setup(mf.optim.sgd(1e-2))
    step = mf.make_step(learner, opt, compile=False)
    state = mf.init_state(learner, opt, params)

    def poisoned(g):
        tasks = sampler(g)
        tasks.support[0][0, 0, 0] = float("nan")
        return tasks

    with pytest.raises(
        FloatingPointError,
        match=r"^train: step 1 is not finite: the meta-gradient of meta\['0\.bias'\] is the first "
        r"that is not finite\. The optimizer applied it \(it is not wrapped in "
        r"mf\.optim\.apply_if_finite\), so the parameters or optimizer state are no longer "
        r"finite\. ",
    ):
        mf.train(step, state, poisoned, steps=2, checkpoint=tmp_path / "c.pt", progress=False)
    assert not (tmp_path / "c.pt").exists()  # nothing written from a non-finite state
    with pytest.raises(ValueError, match=r"^train: on_nonfinite='skip' needs an optimizer wrapped"):
        mf.train(step, state, sampler, steps=2, on_nonfinite="skip", progress=False)


def test_the_file_converts_to_safetensors_and_back(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    learner, opt, params, sampler = setup()
    g = torch.Generator().manual_seed(1)
    step = mf.make_step(learner, opt, compile=False)
    state = mf.train(
        step, mf.init_state(learner, opt, params), sampler, steps=2, generator=g, progress=False
    )
    mf.save(tmp_path / "c.pt", state, generator=g)
    flat = torch.load(tmp_path / "c.pt", weights_only=True)
    safetensors_torch.save_file(flat, tmp_path / "c.safetensors")
    back = safetensors_torch.load_file(tmp_path / "c.safetensors")
    assert back.keys() == flat.keys()
    assert all(torch.equal(back[k], flat[k]) and back[k].dtype == flat[k].dtype for k in flat)
    # and a file made from it loads like the original
    torch.save(back, tmp_path / "again.pt")
    assert_states_equal(mf.load(tmp_path / "again.pt", like=state), state)
