"""The run's random stream: each step's draws seeded from ``TrainState.rng``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from . import _tree
from . import distributed as _dist
from ._types import Step, TrainState

_ONE_STEP = torch.tensor([0, 1])


def seeded(step: Step) -> Step:
    """``step`` drawing its random numbers (dropout) from the run's stream in ``state.rng``.

    torch's default generators of the CPU and of the parameters' device are seeded with a hash
    of ``state.rng``'s seed, its count of steps drawn and the process's rank, and put back
    afterwards: each step draws a stream of its own that depends only on the seed and the step
    (not on what ran before or after, or on the global RNG), a resumed run draws exactly what
    the uninterrupted one did, and the new state's ``rng`` counts one more step. The stream
    lives on the CPU, outside the wrapped (perhaps compiled) step, which sees ``rng=None``. A
    state without a stream passes through.

    Example:
        >>> fn, params = mf.pure(nn.Sequential(nn.Linear(1, 8), nn.Dropout(0.5), nn.Linear(8, 1)))
        >>> learner = mf.stochastic(mf.maml(mf.supervised(fn, mf.losses.mse)))
        >>> state = mf.init_state(learner, opt, params, seed=0)
        >>> step = mf.seeded(mf.outer_step(learner, opt))
        >>> new, metrics = step(state, tasks)
        >>> new.rng  # (seed, steps drawn)
        tensor([0, 1])
        >>> again, _ = step(state, tasks)  # the same step draws the same dropout masks
        >>> torch.equal(again.meta["0.weight"], new.meta["0.weight"])
        True
    """

    def run(state: TrainState, tasks: Any) -> Any:
        rng = state.rng
        if rng is None:
            return step(state, tasks)
        with stream(state.meta, rng):
            new, metrics = step(state._replace(rng=None), tasks)
        return new._replace(rng=rng + _ONE_STEP), metrics

    return dataclasses.replace(step, fn=run)


@contextmanager
def stream(meta: Any, rng: torch.Tensor | None) -> Iterator[None]:
    """torch's default generators of the CPU and of ``meta``'s device seeded for this step of
    the stream ``rng`` (none: nothing to do) and this rank's share of the tasks, their states
    put back on exit."""
    if rng is None:
        yield
        return
    seed, drawn = rng.tolist()
    seed = stream_seed(seed, drawn, _dist.rank())
    device = _tree.leaves(meta)[0].device
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
        return
    module = torch.get_device_module(device.type)
    index = module.current_device() if device.index is None else device.index
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.default_generator.manual_seed(seed)
        with module.device(index):
            module.manual_seed(seed)
        yield


def stream_seed(*values: int) -> int:
    """A seed in [0, 2**63) mixed from ``values`` (splitmix64 over each in turn), so that
    neighbouring steps and seeds get unrelated generator seeds. torch's CPU generator keeps 32
    bits of it (CUDA's all 64), so two steps of a long run may share a stream by chance."""
    h = 0
    for v in values:
        h = (h ^ v) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


_MASK64 = 2**64 - 1


def check_rng(rng: Any, randomness: str) -> None:
    """``state.rng`` fits a learner with this ``randomness``."""
    if rng is None:
        if randomness != "error":
            raise ValueError(
                f"step: the learner draws random numbers (randomness={randomness!r}), so "
                "state.rng must hold the run's random stream: build the state with "
                "mf.init_state(learner, opt, params, seed=0) (got state.rng=None)"
            )
        return
    ok = (
        isinstance(rng, torch.Tensor)
        and rng.dtype == torch.int64
        and rng.shape == (2,)
        and rng.device.type == "cpu"
    )
    if not ok:
        got = (
            f"{rng.dtype} of shape {tuple(rng.shape)} on {rng.device}"
            if isinstance(rng, torch.Tensor)
            else type(rng).__name__
        )
        raise TypeError(
            "step: state.rng must be None or an int64 CPU tensor (seed, steps drawn) from "
            f"mf.init_state(..., seed=...) (got {got})"
        )
