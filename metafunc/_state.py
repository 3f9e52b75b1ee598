"""Model state on the learner's side (the model's side is :func:`metafunc.stateful`): a loss
that threads it, and the rule that combines the tasks' states after a meta-batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import _tree


def _identity(state: Any) -> Any:
    return state


@dataclass(frozen=True)
class Stateful:
    """A per-task function that threads model state, ``f(params, state, data) -> (value,
    state)``: a loss of a model from :func:`metafunc.stateful` (``mf.supervised`` makes one).
    A learner whose ``outer`` is one threads the state through its inner steps and query pass
    (``inner(meta, support, state) -> (adapted, state)``), and the step keeps it in
    ``TrainState.model_state``.

    Attributes:
        fn: ``fn(params, state, data) -> (value, state)``.
        init: the state the learner threads, from the model's state (``mf.init_state`` calls
            it; MAML++ keeps a copy per inner step); the identity by default.

    Example:
        >>> fn, params, state = mf.stateful(nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4)))
        >>> loss = mf.supervised(fn, mf.losses.mse)
        >>> isinstance(loss, mf.Stateful)
        True
        >>> value, new = loss(params, state, (torch.randn(6, 1), torch.randn(6, 4)))
        >>> int(new["1.num_batches_tracked"])
        1
    """

    fn: Callable[[Any, Any, Any], tuple[torch.Tensor, Any]]
    init: Callable[[Any], Any] = _identity

    def __call__(self, params: Any, state: Any, data: Any) -> tuple[torch.Tensor, Any]:
        return self.fn(params, state, data)


def combine(start: Any, states: Any) -> Any:
    """The model state after a meta-batch from each task's (``states``, a leading task
    dimension on every leaf): the mean over the tasks, written ``start + mean(state − start)``
    so that a leaf no task changed comes back bit for bit. The update of a running statistic
    is linear in the batch statistics, so this is the state that the same updates with the
    tasks' mean statistics would give. Integer leaves (a count of batches) are the same in
    every task and are taken from the first."""

    def mean(s0: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if not s.is_floating_point():
            return s[0]
        return s0 + (s - s0).mean(0)

    return _tree.map(mean, start, states)


def after(skipped: torch.Tensor, old: Any, new: Any) -> Any:
    """The model state after a step: the new one, or the old one where the non-finite guard
    skipped the step (its statistics may hold the NaN that made it skip)."""
    if old is None:
        return new
    return _tree.map(lambda o, n: torch.where(skipped, o, n), old, new)


def refuse(where: str, loss: Any) -> None:
    """Refuse a :class:`Stateful` loss (or a model from :func:`metafunc.stateful`) in a learner
    that cannot thread model state."""
    from ._model import PureStateful

    if isinstance(loss, (Stateful, PureStateful)):
        raise TypeError(
            f"{where}: the loss threads model state (a model from mf.stateful), which this "
            "learner does not support yet; mf.maml, mf.fomaml, mf.anil, mf.boil, mf.meta_sgd "
            "and mf.mamlpp do (or use mf.pure with mf.models.BatchNorm, the batch's "
            "statistics only)"
        )
