"""Checkpoints: exact round trip, atomic writes, bit-exact resume (eager and compiled), and a
clean stop on SIGINT / SIGTERM."""

import errno
import functools
import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import metafunc as mf
from metafunc import _tree
from metafunc import checkpoint as ckpt
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
    mf.save(tmp_path / "c.pt", state, generator=torch.Generator(), metadata={"seed": 3})
    flat = torch.load(tmp_path / "c.pt", weights_only=True)
    assert type(flat) is dict and all(type(v) is torch.Tensor for v in flat.values())
    assert set(flat) == {
        *(k for k, _ in _tree.named_leaves(state, "state")),
        "metafunc.format",
        "metafunc.tree",
        "metafunc.digest",
        "metafunc.generator",
        "metafunc.metadata",
    }
    assert "state.meta['0.weight']" in flat and "state.opt_state.nu['4.bias']" in flat
    assert int(flat["state.step"]) == 0 and int(flat["metafunc.format"]) == 2
    assert flat["metafunc.generator"].dtype == torch.uint8
    assert json.loads(bytes(flat["metafunc.metadata"].tolist())) == {"seed": 3}
    assert json.loads(bytes(flat["metafunc.tree"].tolist()))["fields"][2] == ["step", "state.step"]
    digest = hashlib.sha256()
    for key in sorted(set(flat) - {"metafunc.digest"}):
        t = flat[key]
        digest.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    assert bytes(flat["metafunc.digest"].tolist()) == digest.digest()


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
        raise RuntimeError("serialization failed")

    moved = state._replace(step=state.step + 1)
    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(RuntimeError, match="serialization failed"):
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

    monkeypatch.setattr(mf.hooks, "save", spy)
    state = mf.init_state(learner, opt, params)
    mf.train(
        step,
        state,
        sampler,
        steps=5,
        progress=False,
        hooks=[mf.hooks.Checkpoints(tmp_path / "c.pt", every=2)],
    )
    assert written == [2, 4, 5]
    assert int(mf.load(tmp_path / "c.pt", like=state).step) == 5


@pytest.mark.compile
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_resume_is_bit_exact(tmp_path, compile):
    """N + M steps in one run equal N steps, stop, load into fresh objects, M more steps."""
    n, m = 3, 4
    learner, opt, params, sampler = setup()
    # one step function for all runs: it is pure, and compiled it compiles once
    step = mf.make_step(learner, opt, compile=compile)
    run = functools.partial(mf.train, step, data=sampler, progress=False)

    g_straight = torch.Generator().manual_seed(1)
    straight = run(mf.init_state(learner, opt, params), steps=n + m, generator=g_straight)

    path = tmp_path / "c.pt"
    first = run(
        mf.init_state(learner, opt, params),
        steps=n,
        generator=torch.Generator().manual_seed(1),
        hooks=[mf.hooks.Checkpoints(path)],
    )
    assert int(first.step) == n
    # fresh template and a generator at another seed: everything must come from the file
    g_resumed = torch.Generator().manual_seed(99)
    resumed = run(
        mf.init_state(learner, opt, params),
        steps=n + m,
        generator=g_resumed,
        hooks=[mf.hooks.Checkpoints(path, resume=True)],
    )
    assert_states_equal(resumed, straight)
    assert int(resumed.step) == n + m and int(resumed.opt_state.count) == n + m
    assert torch.equal(g_resumed.get_state(), g_straight.get_state())  # the task stream
    assert_states_equal(mf.load(path, like=straight), straight)  # final checkpoint
    # the run is finished: resuming again runs nothing and returns the checkpoint
    hooks = [mf.hooks.Checkpoints(path, resume=True)]
    again = run(mf.init_state(learner, opt, params), steps=n + m, hooks=hooks)
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
        mf.train(
            step,
            state,
            interrupting,
            steps=100,
            progress=False,
            hooks=[mf.hooks.Checkpoints(tmp_path / "c.pt")],
        )
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
            step,
            state,
            sampler,
            steps=10,
            progress=False,
            hooks=[mf.hooks.Checkpoints(path, every=2)],
        )
    assert info.value.code == 128 + signal.SIGTERM and len(writes) == 1
    at_2 = mf.train(step, state, sampler, steps=2, progress=False)
    assert_states_equal(mf.load(path, like=state), at_2)

    path.unlink()
    writes.clear()
    plan = {2: 2}  # two signals during the write at step 4
    with pytest.raises(KeyboardInterrupt):
        mf.train(
            step,
            state,
            sampler,
            steps=10,
            progress=False,
            hooks=[mf.hooks.Checkpoints(path, every=2)],
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
         progress=False, hooks=[mf.hooks.Logger(1, on_log=lambda log: print(log.step, flush=True)),
                                mf.hooks.Checkpoints(sys.argv[1])])
"""


@pytest.mark.slow
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
        step,
        template,
        sampler,
        steps=k + 3,
        progress=False,
        hooks=[mf.hooks.Checkpoints(path, resume=True)],
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
            progress=False,
            hooks=[mf.hooks.Checkpoints(path, every=2)],
        )
    assert str(info.value) == (
        # the L1 loss's gradient ignores a NaN target; the loss does not
        "train: step 3 is not finite: the loss is nan. The parameters and optimizer state were "
        f"left as before that step; the last checkpoint, {str(path)!r}, is at step 2. Lower the "
        "learning rates or check the data. To go on past such steps, pass on_nonfinite='skip' to "
        "skip such steps."
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
        mf.train(
            step,
            state,
            poisoned,
            steps=2,
            progress=False,
            hooks=[mf.hooks.Checkpoints(tmp_path / "c.pt")],
        )
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
    assert_states_equal(mf.load(tmp_path / "again.pt").meta, state.meta)  # digest and tree kept


# ---------------------------------------------------------------- load without a template


def test_load_without_a_template_returns_the_saved_tree(tmp_path):
    learner, opt, params, sampler = setup()
    g = torch.Generator().manual_seed(1)
    step = mf.make_step(learner, opt, compile=False)
    state = mf.train(
        step, mf.init_state(learner, opt, params), sampler, steps=2, generator=g, progress=False
    )
    fresh_g = torch.Generator()
    tree = mf.load(mf.save(tmp_path / "c.pt", state, generator=g), generator=fresh_g)
    assert isinstance(tree, mf.TrainState) and type(tree.meta) is dict
    assert list(tree.meta) == sorted(state.meta)  # every key, in optree's order
    assert type(tree.opt_state) is dict and tuple(tree.opt_state) == state.opt_state._fields
    for name, got in (("meta", tree.meta), ("opt_state", tuple(tree.opt_state.values()))):
        want = getattr(state, name)
        assert_states_equal(got, want if name == "meta" else tuple(want))
    assert torch.equal(tree.step, state.step) and tree.step.dtype == torch.int64
    assert torch.equal(fresh_g.get_state(), g.get_state())
    # the loaded meta-parameters predict as the trained ones do
    x = torch.linspace(-1, 1, 5).unsqueeze(-1)
    net = mf.models.blog_sine_net(torch.Generator(), hidden=4)
    predict = lambda meta: torch.func.functional_call(net, meta, (x,))  # noqa: E731
    assert torch.equal(predict(tree.meta), predict(state.meta))

    sgd_state = mf.init_state(learner, mf.optim.sgd(0.1), params)
    assert all(field is None for field in sgd_state.opt_state)  # no tensor in it
    tree = mf.load(mf.save(tmp_path / "sgd.pt", sgd_state))
    assert tree.opt_state == dict.fromkeys(sgd_state.opt_state._fields)  # the Nones kept


def test_any_pytree_round_trips_without_a_template(tmp_path):
    _, _, params, _ = setup()
    tree = {
        "params": params,
        "list": [torch.arange(3), (torch.ones(2, dtype=torch.bfloat16), None)],
        7: torch.tensor(True),
        "empty": {},
        "point": mf.Tasks(torch.zeros(1, dtype=torch.complex64), torch.tensor(2.5)),
    }
    back = mf.load(mf.save(tmp_path / "t.pt", tree))
    assert back.keys() == tree.keys() and back["empty"] == {}
    assert back["point"].keys() == {"support", "query"}  # a named tuple comes back as a dict
    back["point"] = mf.Tasks(**back["point"])
    assert type(back["list"]) is list and type(back["list"][1]) is tuple
    assert back["list"][1][1] is None
    assert_states_equal(back, tree)
    assert_states_equal(mf.load(tmp_path / "t.pt", like=tree), tree)  # and with a template
    assert_states_equal(mf.load(mf.save(tmp_path / "p.pt", params)), params)
    # views: a stepped slice, and one element whose stride is not 1
    views = {"every-3rd": torch.arange(30.0)[::3], "one": torch.arange(30.0)[::29][:1]}
    assert views["one"].stride() == (29,)
    assert_states_equal(mf.load(mf.save(tmp_path / "v.pt", views)), views)


def test_format_1_files_load_with_a_template_only(tmp_path):
    learner, opt, params, _ = setup()
    state = mf.init_state(learner, opt, params)
    g = torch.Generator().manual_seed(5)
    flat = {k: v for k, v in _tree.named_leaves(state, "state")}
    flat |= {"metafunc.format": torch.tensor(1), "metafunc.generator": g.get_state()}
    torch.save(flat, tmp_path / "v1.pt")
    fresh_g = torch.Generator()
    assert_states_equal(mf.load(tmp_path / "v1.pt", like=state, generator=fresh_g), state)
    assert torch.equal(fresh_g.get_state(), g.get_state())
    assert ckpt.read_metadata(tmp_path / "v1.pt") is None
    with pytest.raises(ValueError) as info:
        mf.load(tmp_path / "v1.pt")
    assert str(info.value) == (
        f"load: {str(tmp_path / 'v1.pt')!r} has checkpoint format 1, which stores no tree "
        "structure; pass like= (a state of the same model and optimizer, e.g. from init_state) "
        "to load it"
    )
    # damage is still found, by the zip's CRCs
    data = bytearray((tmp_path / "v1.pt").read_bytes())
    data[data.find(state.meta["2.weight"].numpy().tobytes()) + 3] ^= 1
    (tmp_path / "v1.pt").write_bytes(data)
    with pytest.raises(ValueError, match=r"is damaged and cannot be used: its entry .* fails"):
        mf.load(tmp_path / "v1.pt", like=state)


def test_a_format_1_file_holding_nan_is_refused_naming_the_file_and_entry(tmp_path):
    """save refuses a non-finite state, but format 1 files were written unchecked: load names
    the first entry with NaN or infinity instead of handing the state to a run."""
    learner, opt, params, sampler = setup()
    state = mf.init_state(learner, opt, params)
    flat = {k: v.clone() for k, v in _tree.named_leaves(state, "state")}
    flat["state.meta['2.weight']"][0, 1] = math.nan
    flat["state.opt_state.nu['0.bias']"][2] = math.inf
    keys = list(flat)
    assert keys.index("state.meta['2.weight']") < keys.index("state.opt_state.nu['0.bias']")
    flat |= {"metafunc.format": torch.tensor(1)}
    path = tmp_path / "v1-nan.pt"
    torch.save(flat, path)
    expected = (
        f"load: {str(path)!r} holds non-finite values: state.meta['2.weight'] is the first entry "
        "with NaN or infinity, so the state cannot be used. It has checkpoint format 1, written "
        "by an older metafunc whose save did not refuse non-finite states. Resume from an "
        "earlier checkpoint, or start afresh"
    )
    with pytest.raises(ValueError) as info:
        mf.load(path, like=state)
    assert str(info.value) == expected
    with pytest.raises(ValueError) as info:  # a run resuming from it gets the same message
        mf.train(
            mf.make_step(learner, opt, compile=False),
            state,
            sampler,
            steps=1,
            progress=False,
            hooks=[mf.hooks.Checkpoints(path, resume=True)],
        )
    assert str(info.value) == expected
    # infinity alone, in the optimizer state, is named too
    flat["state.meta['2.weight']"][0, 1] = state.meta["2.weight"][0, 1]
    torch.save(flat, path)
    with pytest.raises(ValueError, match=r"state\.opt_state\.nu\['0\.bias'\] is the first"):
        mf.load(path, like=state)
    # and a finite format 1 file still loads
    flat["state.opt_state.nu['0.bias']"][2] = state.opt_state.nu["0.bias"][2]
    torch.save(flat, path)
    assert_states_equal(mf.load(path, like=state), state)


def test_a_current_format_file_holding_infinity_is_refused(tmp_path):
    """A format 2 file with a valid digest, written by another program, is checked too."""
    path = tmp_path / "inf.pt"
    mf.save(path, {"w": torch.ones(3)})
    flat = torch.load(path, weights_only=True)
    flat["state['w']"][1] = -math.inf
    flat["metafunc.digest"] = ckpt._digest(flat)
    torch.save(flat, path)
    with pytest.raises(ValueError) as info:
        mf.load(path)
    assert str(info.value) == (
        f"load: {str(path)!r} holds non-finite values: state['w'] is the first entry with NaN or "
        "infinity, so the state cannot be used. Resume from an earlier checkpoint, or start "
        "afresh"
    )


# ---------------------------------------------------------------- integrity


def saved_state(tmp_path, name="c.pt"):
    learner, opt, params, _ = setup()
    state = mf.init_state(learner, opt, params)
    g = torch.Generator().manual_seed(2)
    path = mf.save(tmp_path / name, state, generator=g, metadata={"seed": 2})
    return state, g, path


@pytest.fixture(params=[True, False], ids=["crc", "no-crc"])
def crc32(request):
    """Files written with and without the zip CRCs (torch.serialization.set_crc32_options):
    without them, only the stored digest can find damage."""
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(request.param)
    yield request.param
    torch.serialization.set_crc32_options(before)


def test_one_flipped_bit_in_a_weight_is_refused_naming_the_file(tmp_path, crc32):
    state, _, path = saved_state(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.find(state.meta["2.weight"].numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 1 << 3
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        mf.load(path, like=state)
    if crc32:
        assert re.fullmatch(
            rf"load: {re.escape(repr(str(path)))} is damaged and cannot be used: its entry "
            r"'archive/data/\d+' fails the zip integrity check \(BadZipFile: Bad CRC-32 for "
            r"file 'archive/data/\d+'\)",
            str(info.value),
        )
    else:
        assert str(info.value) == (
            f"load: {str(path)!r} is damaged and cannot be used: its content does not match "
            "the SHA-256 digest stored when it was saved"
        )
    for read in (mf.load, ckpt.read_metadata):
        with pytest.raises(ValueError, match="is damaged and cannot be used"):
            read(path)


@pytest.mark.slow
def test_no_single_flipped_bit_loads_a_different_state(tmp_path, crc32):
    """Flip one bit at a spread of positions and all through the zip directory at the end:
    each load fails with a ValueError or returns exactly what was saved (a flip in zip padding
    or a timestamp changes nothing)."""
    state, g, path = saved_state(tmp_path)
    good = path.read_bytes()
    rng = random.Random(0)
    positions = sorted({*range(0, len(good), 61), *range(len(good) - 400, len(good), 3)})
    outcomes = {"refused": 0, "same": 0}
    for at in positions:
        data = bytearray(good)
        data[at] ^= 1 << rng.randrange(8)
        path.write_bytes(data)
        for like in (state, None):
            fresh_g = torch.Generator()
            try:
                loaded = mf.load(path, like=like, generator=fresh_g)
            except ValueError:
                outcomes["refused"] += 1
                continue
            if like is None:
                loaded = loaded._replace(opt_state=type(state.opt_state)(**loaded.opt_state))
            assert_states_equal(loaded, state)
            assert torch.equal(fresh_g.get_state(), g.get_state())
            assert ckpt.read_metadata(path) == {"seed": 2}
            outcomes["same"] += 1
    assert outcomes["refused"] > len(positions)  # most flips land in data or headers


def test_a_file_whose_tensors_do_not_match_its_digest_is_refused(tmp_path):
    """The digest covers what the zip CRCs cannot: a file rewritten with other values."""
    state, _, path = saved_state(tmp_path)
    flat = torch.load(path, weights_only=True)
    flat["state.step"] = torch.tensor(7)
    torch.save(flat, path)
    with pytest.raises(ValueError, match="its content does not match the SHA-256 digest"):
        mf.load(path, like=state)


def _damage(path, how, state):
    good = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif how == "truncated-tail":
        path.write_bytes(good[:-10])
    elif how == "random-bytes":
        path.write_bytes(random.Random(0).randbytes(len(good)))
    elif how == "a-folder":
        path.unlink()
        path.mkdir()
    elif how == "a-state-dict":
        torch.save(state.meta, path)
    elif how == "a-tensor":
        torch.save(torch.ones(3), path)
    elif how == "generator-entry":
        flat = torch.load(path, weights_only=True)
        flat["metafunc.generator"] = flat["metafunc.generator"][:100]
        flat["metafunc.digest"] = ckpt._digest(flat)  # a consistent file, made elsewhere
        torch.save(flat, path)


DAMAGED = {
    "empty": r"is empty \(0 bytes\), not a checkpoint; it cannot be used",
    "truncated": r"is truncated, damaged or not a checkpoint, and cannot be used: it is not a "
    r"zip archive as torch\.save writes \(BadZipFile: File is not a zip file\)",
    "truncated-tail": r"is truncated, damaged or not a checkpoint, and cannot be used",
    "random-bytes": r"is truncated, damaged or not a checkpoint, and cannot be used",
    "a-folder": r"^load: path must be a checkpoint file \(got '.*', a folder\)$",
    "a-state-dict": r"is not a metafunc checkpoint \(no 'metafunc\.format' entry\)$",
    "a-tensor": r"is not a metafunc checkpoint \(no 'metafunc\.format' entry\)$",
    "generator-entry": r"^load: the generator state in '.*' must fit the cpu generator given, a "
    r"torch\.uint8 of shape \(5056,\) \(got torch\.uint8 of shape \(100,\): damaged, or saved "
    r"from another kind of generator\)$",
}


@pytest.mark.parametrize("how", list(DAMAGED))
def test_a_damaged_file_gives_one_clear_error_naming_it(tmp_path, how):
    state, _, path = saved_state(tmp_path)
    _damage(path, how, state)
    fresh_g = torch.Generator().manual_seed(9)
    before = fresh_g.get_state()
    for like in (state, None):
        with pytest.raises(ValueError, match=DAMAGED[how]) as info:
            mf.load(path, like=like, generator=fresh_g)
        assert repr(str(path)) in str(info.value)
    assert torch.equal(fresh_g.get_state(), before)  # a failed load changes no generator


# ---------------------------------------------------------------- writing


def test_save_refuses_a_non_finite_state_and_keeps_the_checkpoint(tmp_path):
    state, _, path = saved_state(tmp_path)
    before = path.read_bytes()
    meta = dict(state.meta)
    meta["2.weight"] = meta["2.weight"].clone()
    meta["2.weight"][1, 2] = float("nan")
    mu = dict(state.opt_state.mu)
    mu["0.bias"] = torch.full_like(mu["0.bias"], float("inf"))
    for bad, key in (
        (state._replace(meta=meta), "state.meta['2.weight']"),
        (state._replace(opt_state=state.opt_state._replace(mu=mu)), "state.opt_state.mu['0.bias']"),
    ):
        with pytest.raises(FloatingPointError) as info:
            mf.save(path, bad)
        assert str(info.value) == (
            f"save: {key} is not finite (it holds NaN or infinity); refusing to write it, so "
            f"{str(path)!r} keeps what it holds"
        )
    assert path.read_bytes() == before


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.complex64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_save_finds_any_non_finite_element(tmp_path, dtype, bad):
    x = torch.zeros(7, dtype=dtype)
    tree = {"a": torch.ones(2), "b": [torch.arange(3), torch.zeros(0), x]}
    mf.save(tmp_path / "c.pt", tree)  # finite: written
    x[4] = bad
    with pytest.raises(FloatingPointError, match=r"^save: state\['b'\]\[2\] is not finite"):
        mf.save(tmp_path / "c.pt", tree)


@pytest.mark.slow
def test_a_kill_mid_write_leaves_the_old_file_whole_and_one_temporary_file_at_most(tmp_path):
    """SIGKILL a process that saves in a loop, three times: the checkpoint always loads, at
    most one temporary file is beside it, and the next save removes it."""
    path = tmp_path / "c.pt"
    code = textwrap.dedent(
        """
        import sys, torch, metafunc as mf
        big = {"w": torch.zeros(2_000_000)}
        i = 0
        while True:
            big["w"][0] = i
            mf.save(sys.argv[1], big)
            i += 1
            print(i, flush=True)
        """
    )
    rng = random.Random(0)
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        child.stdout.readline()  # one save done: the next ones are under way
        time.sleep(rng.uniform(0, 0.05))
        child.kill()
        child.wait()
        child.stdout.close()
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names in (["c.pt"], [".c.pt.tmp", "c.pt"]), names
        assert mf.load(path)["w"].shape == (2_000_000,)
    mf.save(path, {"w": torch.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_a_temporary_file_left_by_a_kill_is_replaced_by_the_next_save(tmp_path):
    state, _, path = saved_state(tmp_path)
    (tmp_path / ".c.pt.tmp").write_bytes(b"the start of a checkpoint, then SIGKILL")
    mf.save(path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert_states_equal(mf.load(path, like=state), state)


def test_save_keeps_the_permissions_of_the_file_it_replaces(tmp_path):
    state, _, path = saved_state(tmp_path)
    path.chmod(0o640)
    mf.save(path, state._replace(step=state.step + 1))
    assert path.stat().st_mode & 0o777 == 0o640 and int(mf.load(path, like=state).step) == 1


@pytest.mark.parametrize("length", [245, 255])
def test_a_long_legal_file_name_is_saved(tmp_path, length):
    state, _, _ = saved_state(tmp_path)
    path = tmp_path / ("é" * 5 + "c" * (length - 13) + ".pt")  # é is 2 bytes
    assert len(os.fsencode(path.name)) == length
    mf.save(path, state)
    assert_states_equal(mf.load(path, like=state), state)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.pt", path.name])
    tmp = ckpt._temporary_name(path.name)
    assert len(os.fsencode(tmp)) <= 255 and tmp.startswith(".éé") and tmp.endswith(".tmp")
    assert tmp != ckpt._temporary_name(path.name[:-4] + ".pq")  # one per checkpoint name
    with pytest.raises(ValueError) as info:
        mf.save(tmp_path / ("c" * 253 + ".pt"), state)
    assert str(info.value) == (
        "save: the checkpoint's file name is 256 bytes; file systems allow 255 "
        f"(got {str(tmp_path / ('c' * 253 + '.pt'))!r})"
    )


def test_saving_through_a_symlink_writes_the_target_and_keeps_the_link(tmp_path):
    state, _, _ = saved_state(tmp_path)
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "run7.pt"
    mf.save(target, state)
    link = tmp_path / "latest.pt"
    link.symlink_to(Path("runs") / "run7.pt")
    moved = state._replace(step=state.step + 5)
    assert mf.save(link, moved) == link
    assert link.is_symlink() and os.readlink(link) == str(Path("runs") / "run7.pt")
    assert int(mf.load(target, like=state).step) == 5
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run7.pt"]
    # a link to a file not yet written creates it
    (tmp_path / "next.pt").symlink_to(tmp_path / "runs" / "run8.pt")
    mf.save(tmp_path / "next.pt", state)
    assert int(mf.load(tmp_path / "runs" / "run8.pt", like=state).step) == 0


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    state, _, path = saved_state(tmp_path)
    before = path.read_bytes()
    real_write = os.write

    def disk_fills_up(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            real_write(fd, memoryview(data)[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_fills_up)
    with pytest.raises(OSError) as info:
        mf.save(path, state._replace(step=state.step + 1))
    monkeypatch.undo()
    assert str(info.value) == (
        f"save: could not write the checkpoint {str(path)!r} (No space left on device); the "
        "disk (or the user's quota) may be full; the file keeps what it held before"
    )
    assert info.value.__cause__.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


FILE_SIZE_CHILD = """
import resource, signal, sys, torch, metafunc as mf
path = sys.argv[1]
mf.save(path, {"w": torch.ones(10)})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the kernel then fails the write with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
try:
    mf.save(path, {"w": torch.zeros(100_000)})
except OSError as e:
    print(e)
"""


@pytest.mark.slow
def test_a_write_the_kernel_refuses_names_the_file(tmp_path):
    """A real short write (a file size limit), which torch.save alone reports as
    'RuntimeError: [enforce fail at inline_container.cc] unexpected pos'."""
    path = tmp_path / "c.pt"
    out = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_CHILD, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.stdout.strip() == (
        f"save: could not write the checkpoint {str(path)!r} (File too large); the disk (or the "
        "user's quota) may be full; the file keeps what it held before"
    ), out.stderr
    assert torch.equal(mf.load(path)["w"], torch.ones(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_check_writable_refuses_at_once(tmp_path, monkeypatch):
    assert ckpt.check_writable(tmp_path / "c.pt", "train") == tmp_path / "c.pt"
    with pytest.raises(ValueError) as info:
        ckpt.check_writable(tmp_path, "train")
    assert str(info.value) == (
        f"train: the checkpoint path must be a file, not a folder (got {str(tmp_path)!r}, a "
        f"folder); e.g. {str(tmp_path / 'checkpoint.pt')!r}"
    )
    with pytest.raises(FileNotFoundError) as info:
        ckpt.check_writable(tmp_path / "no" / "c.pt", "train")
    assert str(info.value) == (
        f"train: the folder of the checkpoint must exist (got {str(tmp_path / 'no' / 'c.pt')!r}, "
        f"whose folder {str(tmp_path / 'no')!r} does not exist); create it first"
    )
    (tmp_path / "dangling.pt").symlink_to(tmp_path / "no" / "c.pt")
    with pytest.raises(FileNotFoundError, match=r"\(a link to '.*no/c\.pt'\), whose folder"):
        ckpt.check_writable(tmp_path / "dangling.pt", "train")
    with pytest.raises(ValueError, match="must be a regular file"):
        ckpt.check_writable("/dev/null", "train")
    # This suite may run as root, for whom every folder is writable: os.access is what decides.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != tmp_path and real_access(p, mode))
    with pytest.raises(PermissionError) as info:
        ckpt.check_writable(tmp_path / "c.pt", "train")
    assert str(info.value) == (
        f"train: the folder of the checkpoint must be writable (got {str(tmp_path / 'c.pt')!r}, "
        f"whose folder {str(tmp_path)!r} this user cannot write to)"
    )
    with pytest.raises(PermissionError):  # save checks first, before any work
        mf.save(tmp_path / "c.pt", {"w": torch.ones(1)})
    assert list(tmp_path.iterdir()) == [tmp_path / "dangling.pt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(PermissionError, match="this user cannot write to"):
        ckpt.check_writable(tmp_path / "ro" / "c.pt", "train")


# ---------------------------------------------------------------- metadata


def test_metadata_is_stored_as_strict_json_and_read_back(tmp_path):
    state, _, path = saved_state(tmp_path)
    options = {"algo": "maml", "seed": 2, "lr": 0.01, "sizes": [40, 40], "note": None, "x": True}
    mf.save(path, state, metadata=options)
    assert ckpt.read_metadata(path) == options
    mf.save(path, state)
    assert ckpt.read_metadata(path) is None
    bad = [
        (
            {"lr": float("nan")},
            ValueError,
            r"save: metadata\['lr'\] must be finite; strict JSON has no nan \(got nan\)",
        ),
        ({"a": [1, float("inf")]}, ValueError, r"save: metadata\['a'\]\[1\] must be finite"),
        (
            {"sizes": (40, 40)},
            TypeError,
            r"save: metadata\['sizes'\] must be a str, int, float, bool, None, list or dict, which JSON reads back as written \(got tuple: \(40, 40\)\)",
        ),
        ({1: "a"}, TypeError, r"save: metadata must have str keys, as JSON objects do \(got 1\)"),
        (
            {"out": Path("run")},
            TypeError,
            r"save: metadata\['out'\] must be a str, .* \(got PosixPath",
        ),
        (["seed"], TypeError, r"save: metadata must be a dict or None \(got list\)"),
    ]
    before = path.read_bytes()
    for metadata, exc, pattern in bad:
        with pytest.raises(exc, match=f"^{pattern}"):
            mf.save(path, state, metadata=metadata)
    assert path.read_bytes() == before
