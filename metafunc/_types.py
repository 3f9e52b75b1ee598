"""The records shared by every module: a meta-batch, the training state, a step and what it
reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch


class Tasks(NamedTuple):
    """A meta-batch: ``support`` (adapt on it) and ``query`` (score the adapted model on it).

    Each is a pytree of tensors, e.g. ``(x, y)``, whose leading dimension indexes tasks and
    whose second dimension indexes examples within a task.
    """

    support: Any
    query: Any


class TrainState(NamedTuple):
    """Everything that changes during meta-training; checkpointed and resumed whole.

    Attributes:
        meta: the meta-parameters (``learner.init(params)``).
        opt_state: the outer optimizer's state.
        step: int64 scalar tensor, outer steps taken (a tensor, so the compiled step never
            recompiles as it counts).
        rng: the random stream of the model's random operations (dropout), for a learner
            wrapped in :func:`metafunc.stochastic`: an int64 CPU tensor ``(seed, steps drawn)``
            from ``init_state(..., seed=...)``; each step seeds torch's generator from it (see
            :func:`metafunc.make_step`). ``None`` for a model without random operations.
        extra: the user's own pytree (e.g. an epoch counter or early-stopping bookkeeping),
            which the step passes through untouched (any leaves) and checkpoints keep (tensors
            only: an epoch counter as ``torch.tensor(0)``; ``save`` names any other leaf);
            ``None`` by default. Hooks of :func:`metafunc.train` update it.
        model_state: the model's state (BatchNorm's running statistics) for a model from
            :func:`metafunc.stateful`, a pytree of tensors the step threads through every
            task's inner steps and query pass and returns, the mean over the tasks (see
            :func:`metafunc.init_state`); checkpointed with the rest. ``None`` for a model
            without.
    """

    meta: Any
    opt_state: Any
    step: torch.Tensor
    rng: torch.Tensor | None = None
    extra: Any = None
    model_state: Any = None


class Metrics(NamedTuple):
    """What a step reports, as tensors on the parameters' device (no host sync).

    Attributes:
        loss: mean query loss after adapting.
        loss_before: mean query loss at the meta-learned parameters, not adapted.
        grad_norm: the global norm of the meta-gradient.
        finite: whether the step's numbers were all finite: the loss, and with an optimizer
            wrapped in :func:`metafunc.optim.apply_if_finite` the guard's verdict on the
            gradient and the update; without a guard, the gradient and the new state.
        skipped: the step was not finite and the guard refused its update, so the state is as
            before it (only the step counter advanced). A step that was not finite and not
            skipped wrote non-finite numbers into the state.
        finite_leaves: a bool vector, one entry per leaf of ``meta`` in
            ``metafunc._tree.leaves`` order: its gradient is finite (it names the first bad
            parameter without computing anything more per step).
    """

    loss: torch.Tensor
    loss_before: torch.Tensor
    grad_norm: torch.Tensor
    finite: torch.Tensor
    skipped: torch.Tensor
    finite_leaves: torch.Tensor


@dataclass(frozen=True)
class Step:
    """A training step, ``step(state, tasks) -> (state, metrics)``, and what the training loop
    needs to know of it; the wrappers :func:`metafunc.compiled`, :func:`metafunc.seeded` and
    :func:`metafunc.validated` each take one and return one.

    Attributes:
        fn: the function.
        guarded: its optimizer refuses non-finite updates
            (:func:`metafunc.optim.apply_if_finite`), so a non-finite step can be skipped.
    """

    fn: Callable[[TrainState, Tasks], tuple[TrainState, Metrics]]
    guarded: bool = False

    def __call__(self, state: TrainState, tasks: Tasks) -> tuple[TrainState, Metrics]:
        return self.fn(state, tasks)
