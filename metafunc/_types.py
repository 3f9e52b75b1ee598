"""The records shared by every module: a meta-batch and the training state."""

from __future__ import annotations

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
    """Everything that changes during meta-training.

    Attributes:
        meta: the meta-parameters (``learner.init(params)``).
        opt_state: the outer optimizer's state.
        step: int64 scalar tensor, outer steps taken (a tensor, so the compiled step never
            recompiles as it counts).
        rng: the random stream of the model's random operations (dropout), for a learner
            built with ``randomness="different"``: an int64 CPU tensor ``(seed, steps drawn)``
            from ``init_state(..., seed=...)``; each step seeds torch's generator from it (see
            :func:`metafunc.make_step`). ``None`` for a model without random operations.
    """

    meta: Any
    opt_state: Any
    step: torch.Tensor
    rng: torch.Tensor | None = None
