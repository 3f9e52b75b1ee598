"""MAML and first-order MAML.

Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017. The meta-parameters are the initialisation θ0; each task adapts by ``inner_steps``
optimizer steps on its support loss, and θ0 descends the query loss of the adapted parameters,
differentiated through the inner steps (second order) or with the inner gradients detached
(first order, :func:`metafunc.first_order`). A mask restricts adaptation to part of the
parameters (ANIL and BOIL are this with the head, or the body).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _checks, _inner, _tree
from .._inner import Loop
from .._learner import Learner
from .._wrappers import first_order
from ..optim import Optimizer

Loss = Callable[[Any, Any], torch.Tensor]


def maml(
    loss: Loss,
    *,
    inner_lr: float | Any | None = None,
    inner_opt: Optimizer | None = None,
    inner_steps: int = 1,
    mask: _tree.Selector = None,
) -> Learner:
    """Model-Agnostic Meta-Learning (Finn et al., 2017).

    Args:
        loss: ``loss(params, data) -> scalar``, the task loss used both to adapt on the
            support set and to score on the query set. ``data`` is whatever a task holds,
            e.g. ``(x, y)``; see :func:`metafunc.supervised`.
        inner_lr: the inner SGD step size: a positive number, a positive 0-d tensor (change
            its value in place and the compiled step follows, no recompile) or a pytree of
            rates like the parameters (0.01 when neither it nor ``inner_opt`` is given).
        inner_opt: any ``mf.optim`` optimizer for the inner steps instead, e.g.
            ``mf.optim.sgd(0.01, momentum=0.9)``; differentiated through, its state included.
        inner_steps: inner steps per task (0 makes the meta-gradient the plain query gradient).
        mask: which parameters adapt: a name (``"4"`` picks ``"4.weight"`` and ``"4.bias"``),
            a list of names, a predicate on dotted names, or a tree of bools; ``None`` for all.
            The others are still meta-learned, through the adapted ones.

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are the initial parameters; wrap it
        in :func:`metafunc.first_order`, :func:`metafunc.chunked`, :func:`metafunc.remat` or
        :func:`metafunc.stochastic` for those options.

    Example:
        >>> fn, params = mf.pure(net)
        >>> learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.01, inner_steps=1)
        >>> grads, losses = learner.meta_grad(learner.init(params), tasks)
        >>> grads["0.weight"].shape, losses.loss.shape  # like the parameters; a mean over tasks
        (torch.Size([8, 1]), torch.Size([]))
        >>> learner.adapt(params, tasks.support)["0.weight"].shape  # each task's adapted params
        torch.Size([2, 8, 1])
    """
    return masked("maml", loss, inner_lr, inner_opt, inner_steps, mask, "mask")


def fomaml(loss: Loss, **options: Any) -> Learner:
    """First-order MAML (Finn et al., 2017, section 5.2): ``mf.first_order(mf.maml(loss,
    **options))``. The meta-gradient is the query gradient at the adapted parameters,
    ``∇L_q(θ')``: no Hessian terms.

    Example:
        >>> learner = mf.fomaml(loss, inner_lr=0.01, inner_steps=5)
        >>> learner.inner.first_order
        True
    """
    return first_order(maml(loss, **options))


def masked(
    where: str,
    loss: Loss,
    inner_lr: float | Any | None,
    inner_opt: Optimizer | None,
    inner_steps: int,
    mask: _tree.Selector,
    mask_name: str,
) -> Learner:
    """The MAML family's learner, adapting the parameters ``mask`` picks, named ``where`` and
    ``mask_name`` in its messages (MAML, ANIL, BOIL)."""
    _checks.function(where, "loss", loss, "loss(params, data)")
    inner = _inner.inner_update(where, inner_lr, inner_opt)
    inner_steps = _checks.steps(where, "inner_steps", inner_steps)
    pick = _tree.picker(mask, where=where, name=mask_name)

    def init(params: Any) -> Any:
        _inner.check_params(where, params, inner)
        if mask is not None:
            _tree.picked(params, mask, where=where, name=mask_name)
        return _tree.copy(params)

    def setup(meta: Any) -> tuple[Any, Loss, Optimizer]:
        return meta, loss, _inner.optimizer(inner, meta, pick)

    return Learner(init, Loop(setup, inner_steps, pick=pick if mask is not None else None), loss)
