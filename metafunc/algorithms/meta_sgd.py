"""Meta-SGD.

Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
arXiv:1707.09835, 2017. Besides the initialisation θ0, every parameter entry has its own
inner learning rate α, learned with it: ``θ' = θ0 − α ⊙ ∇L_support(θ0)``, and both descend the
query loss of θ'. The meta-parameters are ``{"params": θ0, "lr": α}``.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _checks, _inner, _tree
from .._inner import Loop
from .._learner import Learner
from ..optim import Optimizer
from .maml import Loss


def meta_sgd(loss: Loss, *, inner_lr: float | Any = 0.01, inner_steps: int = 1) -> Learner:
    """Meta-SGD (Li et al., 2017): MAML with a learned learning rate per parameter entry.

    Args:
        loss: ``loss(params, data) -> scalar`` for the support and the query set.
        inner_lr: the initial rates: a positive number (every entry starts there) or a pytree
            like the parameters whose leaves broadcast to them. The learned rates may go
            anywhere, including below zero, as in the paper.
        inner_steps: SGD steps per task (the paper uses one).

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are ``{"params": θ0, "lr": α}``;
        with :func:`metafunc.first_order` the rates still get the gradient
        ``−∇L_support(θ) ⊙ ∇L_query(θ')``, since they multiply the detached gradient.

    Example:
        >>> learner = mf.meta_sgd(mf.supervised(fn, mf.losses.mse), inner_lr=0.01)
        >>> meta = learner.init(params)
        >>> sorted(meta), meta["lr"]["0.weight"].shape  # a rate for every parameter entry
        (['lr', 'params'], torch.Size([8, 1]))
        >>> meta["lr"]["4.bias"]
        tensor([0.0100])
        >>> grads, _ = learner.meta_grad(meta, tasks)  # for the rates too
        >>> grads["lr"]["4.bias"].shape
        torch.Size([1])
    """
    name = "meta_sgd"
    _checks.function(name, "loss", loss, "loss(params, data)")
    inner_lr = _checks.learning_rate(name, "inner_lr", inner_lr)
    inner_steps = _checks.steps(name, "inner_steps", inner_steps, minimum=1)

    def init(params: Any) -> Any:
        _inner.check_params(name, params, inner_lr)
        if isinstance(inner_lr, torch.Tensor):
            lr = _tree.map(lambda p: inner_lr.to(p.dtype).expand_as(p).clone(), params)
        elif isinstance(inner_lr, float):
            lr = _tree.map(lambda p: torch.full_like(p, inner_lr), params)
        else:
            lr = _tree.map(lambda r, p: r.expand_as(p).clone(), inner_lr, params)
        return {"params": _tree.copy(params), "lr": lr}

    def setup(meta: Any) -> tuple[Any, Loss, Optimizer]:
        return meta["params"], loss, _inner.optimizer(meta["lr"], meta["params"])

    return Learner(init, Loop(setup, inner_steps), loss, params=_params)


def _params(meta: Any) -> Any:
    return meta["params"]
