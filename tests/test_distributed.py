"""Data parallel over tasks: 2 gloo processes launched by torchrun against one process over the
whole meta-batch, and jobs that must fail fast with a clear error."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from distributed_worker import ALGORITHMS, run, setup

import metafunc as mf
from metafunc import cli

pytestmark = pytest.mark.slow  # trains, or runs whole processes

WORKER = Path(__file__).with_name("distributed_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": ""}


def torchrun(*args, timeout=240):
    """Run torchrun with 2 local processes; (return code, output, seconds)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    start = time.perf_counter()
    p = subprocess.run(
        [*cmd, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=timeout
    )
    return p.returncode, p.stdout + p.stderr, time.perf_counter() - start


def test_two_ranks_equal_one_process_over_the_whole_meta_batch(tmp_path):
    code, output, _ = torchrun(WORKER, "equal", tmp_path)
    assert code == 0, output
    # destroy_process_group destroyed the gloo backend and joined its worker threads, also after
    # a compiled step: one left running into interpreter shutdown aborts the rank ("terminate
    # called without an active exception") if it frees a tensor then, which takes the GIL
    for r in (0, 1):
        threads = json.loads((tmp_path / f"threads{r}.json").read_text())
        assert not [t for t in threads if "gloo" in t], threads
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    # the compiled step, collective included, is one graph compiled once over 3 steps
    assert [(tmp_path / f"frames{r}.json").read_text() for r in (0, 1)] == ["1", "1"]
    assert ranks[0].keys() == {*ALGORITHMS, "maml_compiled", "maml_train_resumed"}
    for name, (leaves, loss) in ranks[0].items():
        # every rank holds the same state, bit for bit
        other, other_loss = ranks[1][name]
        assert all(torch.equal(a, b) for a, b in zip(leaves, other, strict=True)), name
        assert torch.equal(loss, other_loss), name
        # ...which is the single-process state up to the order of float additions
        algo = "maml" if name.startswith("maml") else name
        state, metrics = run(algo)
        for a, b in zip(leaves, mf._tree.leaves(state.meta), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
        if name != "maml_train_resumed":
            torch.testing.assert_close(loss, metrics.loss, rtol=1e-12, atol=1e-12)
        # and the steps moved it
        learner, params, _ = setup(algo)
        assert not torch.equal(leaves[0], mf._tree.leaves(learner.init(params))[0])
    # the checkpoint the 2 ranks wrote (step 3) continues in 1 process as the same run
    learner, params, sampler = setup("maml")
    opt = mf.optim.adam(1e-2)
    step = mf.make_step(learner, opt, compile=False)
    init = mf.init_state(learner, opt, params)
    g = torch.Generator()
    ckpt = tmp_path / "ckpt.pt"
    hooks = [mf.hooks.Checkpoints(ckpt, resume=True)]
    state = mf.train(step, init, sampler, steps=5, generator=g, progress=False, hooks=hooks)
    for a, b in zip(mf._tree.leaves(state), mf._tree.leaves(run("maml", steps=5)[0]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_a_failing_rank_ends_the_job_with_a_clear_error(tmp_path, mode):
    code, output, seconds = torchrun(WORKER, mode, tmp_path, timeout=120)
    assert code != 0
    assert seconds < 60, output
    if mode == "raise":  # torchrun reports the failed rank and tears the other down
        assert "RuntimeError: rank 1 fails on purpose" in output
        assert "ChildFailedError" in output
    else:  # the gloo timeout (10 s, from mf.distributed.init) ends the waiting rank
        assert "Timed out" in output or "timed out" in output, output


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    code, output, _ = torchrun(WORKER, "signal", tmp_path)
    assert code != 0  # the workers exit with 143, as a single process does
    assert output.count("stopped by SIGTERM after step 2, checkpoint written to") == 2, output
    assert int(torch.load(tmp_path / "c.pt")["state.step"]) == 2


def test_ranks_that_disagree_or_an_uneven_split_are_refused(tmp_path):
    code, output, _ = torchrun(WORKER, "mismatch", tmp_path)
    assert code == 0, output
    for r in (0, 1):
        got = (tmp_path / f"messages{r}.json").read_text()
        assert (
            "step: every rank must run the same configuration, but tasks differs between "
            "ranks (rank: value {0: 4, 1: 2})" in got
        )
        assert (
            "step: the meta-batch must split evenly over the 2 ranks (got 3 tasks); use a "
            "meta-batch that is a multiple of 2" in got
        )


def test_data_parallel_without_a_process_group_is_the_learner_itself():
    learner, _, _ = setup("maml")
    assert mf.distributed.data_parallel(learner) is learner
    with pytest.raises(
        TypeError, match=r"^distributed\.data_parallel: learner must be a metafunc\.Learner"
    ):
        mf.distributed.data_parallel(mf.optim.sgd(0.1))


def test_metafunc_train_under_torchrun_equals_one_process(tmp_path):
    args = "train --steps 3 --meta-batch 4 --no-compile --no-progress --eval-draws 2 --log-every 1"
    code, output, _ = torchrun("-m", "metafunc.cli", *args.split(), "--out", tmp_path / "two")
    assert code == 0, output
    assert output.count("dense-grid MSE") == 1  # rank 0 reports, once
    assert output.count("step 3: loss=") == 1
    assert cli.main([*args.split(), "--out", str(tmp_path / "one")]) == 0
    two = torch.load(tmp_path / "two" / "checkpoint.pt")
    one = torch.load(tmp_path / "one" / "checkpoint.pt")
    assert two.keys() == one.keys()
    for key in one.keys() - {"metafunc.digest"}:  # a hash of values equal only to rounding
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
    assert int(two["state.step"]) == 3
    # the meta-batch must split evenly over the processes
    code, output, _ = torchrun("-m", "metafunc.cli", *args.split(), "--meta-batch", "3")
    assert code != 0
    assert (
        "metafunc train: --meta-batch must be a multiple of the 2 processes, each takes an "
        "equal share (got 3)" in output
    )


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"timeout": -1},
            ValueError,
            "distributed.init: timeout must be a positive finite number (got -1)",
        ),
        (
            {"backend": "mpi"},
            ValueError,
            "distributed.init: backend must be 'gloo', 'nccl' or None (got 'mpi')",
        ),
    ],
)
def test_bad_init_arguments(kwargs, error, message):
    with pytest.raises(error) as info:
        mf.distributed.init(**kwargs)
    assert str(info.value) == message


def test_outside_torchrun_init_does_nothing_and_the_step_is_local(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert mf.distributed.init() is False
    assert (mf.distributed.rank(), mf.distributed.world_size()) == (0, 1)
    assert mf.distributed.is_main() and not mf.distributed.active()
