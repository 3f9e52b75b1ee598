"""MAML and first-order MAML.

Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017. The meta-parameters are the initialisation θ0; each task adapts by ``inner_steps``
optimizer steps on its support loss, and θ0 descends the query loss of the adapted parameters,
differentiated through the inner steps (second order) or with the inner gradients detached
(first order). A mask restricts adaptation to part of the parameters (ANIL is this with the head).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _checks, _inner, _tree
from .._learner import Learner, build, check_randomness, exact
from ..optim import Optimizer

Loss = Callable[[Any, Any], torch.Tensor]


def maml(
    loss: Loss,
    *,
    inner_lr: float | Any | None = None,
    inner_opt: Optimizer | None = None,
    inner_steps: int = 1,
    first_order: bool = False,
    mask: _tree.Selector = None,
    chunk_size: int | None = None,
    randomness: str = "error",
    remat: bool = False,
) -> Learner:
    """Model-Agnostic Meta-Learning (Finn et al., 2017).

    Args:
        loss: ``loss(params, data) -> scalar``, the task loss used both to adapt on the
            support set and to score on the query set. ``data`` is whatever a task holds,
            e.g. ``(x, y)``; see :func:`metafunc.supervised`.
        inner_lr: the inner SGD step size, a positive number or a pytree like the parameters
            (0.01 when neither it nor ``inner_opt`` is given).
        inner_opt: any ``mf.optim`` optimizer for the inner steps instead, e.g.
            ``mf.optim.sgd(0.01, momentum=0.9)``; differentiated through, its state included.
        inner_steps: inner steps per task (0 makes the meta-gradient the plain query gradient).
        first_order: detach the inner gradients (first-order MAML).
        mask: which parameters adapt: a name (``"4"`` picks ``"4.weight"`` and ``"4.bias"``),
            a list of names, a predicate on dotted names, or a tree of bools; ``None`` for all.
            The others are still meta-learned, through the adapted ones.
        chunk_size: compute the meta-gradient this many tasks at a time (less memory: one
            chunk's intermediates are alive at once; compiled, the chunks are a loop the
            compiler keeps); ``None`` for all at once.
        remat: rematerialise the inner steps: keep only the parameters (and inner optimizer
            state) between steps and recompute each step's activations in the backward pass
            (memory flat in ``inner_steps``, about one more forward pass of the inner loop).
        randomness: what random operations in the model (dropout) do across the tasks of a
            batch: ``"error"`` refuses them, ``"different"`` gives each task its own draws,
            ``"same"`` the same draws; a step seeds them from ``TrainState.rng`` (see
            :func:`metafunc.init_state`).

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are the initial parameters.

    Example:
        >>> fn, params = mf.pure(net)
        >>> learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.01, inner_steps=1)
        >>> grads, metrics = learner.meta_grad(learner.init(params), tasks)
    """
    first_order = _checks.boolean("maml", "first_order", first_order)
    name = "fomaml" if first_order else "maml"
    batching = (chunk_size, randomness, remat)
    return learner(name, loss, inner_lr, inner_opt, inner_steps, first_order, mask, *batching)


def fomaml(
    loss: Loss,
    *,
    inner_lr: float | Any | None = None,
    inner_opt: Optimizer | None = None,
    inner_steps: int = 1,
    mask: _tree.Selector = None,
    chunk_size: int | None = None,
    randomness: str = "error",
    remat: bool = False,
) -> Learner:
    """First-order MAML (Finn et al., 2017, section 5.2): :func:`maml` with ``first_order=True``.

    The meta-gradient is the query gradient at the adapted parameters, ``∇L_q(θ')``: no
    Hessian terms, about a third less compute.
    """
    batching = (chunk_size, randomness, remat)
    return learner("fomaml", loss, inner_lr, inner_opt, inner_steps, True, mask, *batching)


def learner(
    name: str,
    loss: Loss,
    inner_lr: float | Any | None,
    inner_opt: Optimizer | None,
    inner_steps: int,
    first_order: bool,
    mask: _tree.Selector,
    chunk_size: int | None,
    randomness: str,
    remat: bool,
    mask_name: str = "mask",
) -> Learner:
    """The MAML family's learner, named ``name`` in its messages (MAML, FO-MAML, ANIL)."""
    _checks.function(name, "loss", loss, "loss(params, data)")
    inner = _inner.inner_update(name, inner_lr, inner_opt)
    inner_steps = _checks.integer(name, "inner_steps", inner_steps, minimum=0)
    first_order = _checks.boolean(name, "first_order", first_order)
    chunk_size = _checks.chunk_size(name, chunk_size)
    randomness = check_randomness(name, randomness)
    remat = _inner.check_remat(name, remat, randomness)
    pick = _tree.picker(mask, where=name, name=mask_name)

    def init(params: Any) -> Any:
        _inner.check_params(name, params, inner)
        check_meta(name, "params", params)
        return _tree.copy(params)

    def setup(meta: Any) -> tuple[Any, Loss, Optimizer]:
        return meta, loss, _inner.optimizer(inner, meta, pick)

    loop = _inner.Loop(setup, inner_steps, first_order, pick)

    def check_meta(where: str, meta_name: str, meta: Any) -> None:
        if mask is not None:
            _tree.picked(meta, mask, where=where, name=mask_name)

    return build(
        name,
        init=init,
        adapt=lambda meta, support: _inner.run(loop, meta, support),
        loss=loss,
        chunk_size=chunk_size,
        gradient=_inner.remat_gradient(loop, loss, lambda meta: meta) if remat else exact,
        check_meta=check_meta,
        randomness=randomness,
    )
