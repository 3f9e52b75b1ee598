"""ANIL: almost no inner loop.

Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020 (arXiv:1909.09157, 2019). Only the head (a chosen subset of
the parameters, usually the last layer) adapts in the inner loop; the body is shared by all
tasks and still meta-learned through the adapted head, exactly (second order) or first order.
It is MAML with a mask.
"""

from __future__ import annotations

from typing import Any

from .. import _tree
from .._learner import Learner
from ..optim import Optimizer
from .maml import Loss, learner


def anil(
    loss: Loss,
    *,
    head: _tree.Selector,
    inner_lr: float | Any | None = None,
    inner_opt: Optimizer | None = None,
    inner_steps: int = 1,
    first_order: bool = False,
    chunk_size: int | None = None,
    randomness: str = "error",
    remat: bool = False,
) -> Learner:
    """ANIL (Raghu et al., 2019): MAML where only the ``head`` parameters adapt.

    Args:
        loss: ``loss(params, data) -> scalar`` for the support and the query set.
        head: which parameters adapt: a module name (``"4"`` picks ``"4.weight"`` and
            ``"4.bias"``), a list of names, a predicate on dotted names, or a tree of bools
            like the parameters (any pytree). It must pick at least one parameter.
        inner_lr: the inner SGD step size, a positive number or a pytree like the parameters
            (only the head's rates are used); 0.01 when neither it nor ``inner_opt`` is given.
        inner_opt: any ``mf.optim`` optimizer for the inner steps instead.
        inner_steps: inner steps per task.
        first_order: detach the inner gradients.
        chunk_size: compute the meta-gradient this many tasks at a time; ``None`` for all.
        remat: recompute each inner step's activations in the backward pass instead of
            keeping them (see :func:`metafunc.maml`).
        randomness: what random operations in the model (dropout) do across the tasks of a
            batch: ``"error"`` refuses them, ``"different"`` gives each task its own draws,
            ``"same"`` the same draws; a step seeds them from ``TrainState.rng`` (see
            :func:`metafunc.init_state`).

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are all the parameters.

    Example:
        >>> fn, params = mf.pure(mf.models.mlp([1, 40, 40, 1]))
        >>> learner = mf.anil(mf.supervised(fn, mf.losses.mse), head="4", inner_lr=0.01)
    """
    if head is None:
        raise TypeError(
            "anil: head must be a module name, a list of names, a predicate on parameter names "
            "or a tree of bools (got None); mf.maml adapts every parameter"
        )
    return learner(
        "anil",
        loss,
        inner_lr,
        inner_opt,
        inner_steps,
        first_order,
        head,
        chunk_size,
        randomness,
        remat,
        "head",
    )
