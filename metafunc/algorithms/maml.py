"""MAML and first-order MAML.

Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017. The meta-parameters are the initialisation θ0; each task adapts by ``inner_steps``
SGD steps on its support loss, and θ0 descends the query loss of the adapted parameters,
differentiated through the inner steps (second order) or with the inner gradients detached
(first order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _checks, _inner, _tree
from .._learner import Learner, build_learner


def maml(
    loss: Callable[[Any, Any], torch.Tensor],
    *,
    inner_lr: float | Any = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    chunk_size: int | None = None,
) -> Learner:
    """Model-Agnostic Meta-Learning (Finn et al., 2017).

    Args:
        loss: ``loss(params, data) -> scalar``, the task loss used both to adapt on the
            support set and to score on the query set. ``data`` is whatever a task holds,
            e.g. ``(x, y)``; see :func:`metafunc.supervised`.
        inner_lr: the inner SGD step size, a positive number or a pytree like the parameters.
        inner_steps: SGD steps per task (0 makes the meta-gradient the plain query gradient).
        first_order: detach the inner gradients (first-order MAML).
        chunk_size: vmap the tasks this many at a time (less memory); ``None`` for all at once.

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are the initial parameters.

    Example:
        >>> fn, params = mf.functionalize(net)
        >>> learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.01, inner_steps=1)
        >>> grads, metrics = learner.meta_grad(learner.init(params), tasks)
    """
    first_order = _checks.boolean("maml", "first_order", first_order)
    return _build(
        "fomaml" if first_order else "maml", loss, inner_lr, inner_steps, first_order, chunk_size
    )


def fomaml(
    loss: Callable[[Any, Any], torch.Tensor],
    *,
    inner_lr: float | Any = 0.01,
    inner_steps: int = 1,
    chunk_size: int | None = None,
) -> Learner:
    """First-order MAML (Finn et al., 2017, section 5.2): :func:`maml` with ``first_order=True``.

    The meta-gradient is the query gradient at the adapted parameters, ``∇L_q(θ')``: no
    Hessian terms, about a third less compute.
    """
    return _build("fomaml", loss, inner_lr, inner_steps, True, chunk_size)


def _build(
    name: str,
    loss: Callable[[Any, Any], torch.Tensor],
    inner_lr: float | Any,
    inner_steps: int,
    first_order: bool,
    chunk_size: int | None,
) -> Learner:
    _checks.function(name, "loss", loss, "loss(params, data)")
    inner_lr = _checks.learning_rate(name, "inner_lr", inner_lr)
    inner_steps = _checks.integer(name, "inner_steps", inner_steps, minimum=0)
    first_order = _checks.boolean(name, "first_order", first_order)
    chunk_size = _checks.chunk_size(name, chunk_size)

    def init(params: Any) -> Any:
        _checks.params_and_rates(name, params, inner_lr)
        return _tree.copy(params)

    def adapt(meta: Any, support: Any) -> Any:
        return _inner.adapt(
            meta, support, loss=loss, lr=inner_lr, steps=inner_steps, first_order=first_order
        )

    return build_learner(name, init=init, adapt=adapt, loss=loss, chunk_size=chunk_size)
