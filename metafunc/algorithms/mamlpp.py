"""MAML++.

Antoniou, Edwards, Storkey. "How to train your MAML", ICLR 2019. MAML with: the query loss
after every inner step, weighted by importances annealed to the last step (MSL); per-layer,
per-step learned inner rates (LSLR); per-step normalisation weights (BNWB) and running
statistics (BNRS); first order for the first outer steps, then second order (DA, a step
wrapper: :func:`metafunc.derivative_annealing`); cosine annealing of the outer rate (a
schedule: :func:`metafunc.optim.cosine_decay_schedule`). Each is switched by an argument, so
each can be used alone. The pieces live in ``metafunc._per_step``.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _checks, _inner, _tree
from .._learner import Learner, exact
from .._per_step import PerStep, last_step, multi_step_rule, multi_step_weights, slot, stack
from .._state import Stateful
from ..optim._base import rate
from .maml import Loss


def mamlpp(
    loss: Loss,
    *,
    inner_lr: float = 0.1,
    inner_steps: int = 5,
    learn_lr: bool = True,
    per_step: _tree.Selector = None,
    per_step_state: bool = True,
    msl_epochs: int = 10,
    epoch_steps: int = 500,
) -> Learner:
    """MAML++ (Antoniou et al., 2019).

    Args:
        loss: ``loss(params, data) -> scalar``, or a :class:`metafunc.Stateful` loss of a
            model from :func:`metafunc.stateful` (BatchNorm's running statistics).
        inner_lr: the inner SGD rate (where the learned rates start with ``learn_lr``).
        inner_steps: inner steps per task (``S``).
        learn_lr: LSLR: a learned rate per parameter tensor per step, ``meta["lr"]``.
        per_step: BNWB: the leaves (a selector as for ``mask``, e.g. the BatchNorm layers'
            names) kept per step and meta-learned, not adapted; ``None``: none.
        per_step_state: BNRS: a copy of the model state per step (with a stateful loss).
        msl_epochs: MSL: anneal the weights of :func:`metafunc.multi_step_weights` over this
            many epochs, then only the last step's query loss; 0: only the last step's.
        epoch_steps: outer steps per epoch (the paper's code: 500).

    Returns:
        a :class:`metafunc.Learner`; ``meta = {"params": θ0, "lr": rates}`` (without ``"lr"``
        unless ``learn_lr``); ``adapt`` gives the model's parameters (per-step leaves of the
        last step). With a stateful loss, ``init_state(..., model_state=state)``.

    Example:
        >>> learner = mf.mamlpp(loss, inner_lr=0.01, inner_steps=3, msl_epochs=2)
        >>> meta = learner.init(params)
        >>> meta["lr"]["0.weight"]  # one rate per step
        tensor([0.0100, 0.0100, 0.0100])
        >>> grads, losses = learner.bind(state).meta_grad(meta, tasks)
        >>> grads["lr"]["0.weight"].shape
        torch.Size([3])
    """
    where = "mamlpp"
    _checks.function(where, "loss", loss, "loss(params, data)")
    lr = _checks.positive_number(where, "inner_lr", inner_lr)
    steps = _checks.steps(where, "inner_steps", inner_steps, minimum=1)
    learn = _checks.boolean(where, "learn_lr", learn_lr)
    pick = _tree.picker(per_step, where=where, name="per_step") if per_step else _none
    stats = _checks.boolean(where, "per_step_state", per_step_state)
    msl = _checks.integer(where, "msl_epochs", msl_epochs, minimum=0)
    per_epoch = _checks.integer(where, "epoch_steps", epoch_steps, minimum=1)
    stats = stats and isinstance(loss, Stateful)

    def init(params: Any) -> Any:
        _inner.check_params(where, params, lr)
        if per_step is not None:
            _tree.picked(params, per_step, where=where, name="per_step")
        theta = {n: stack(p, steps) if pick(n) else p.clone() for n, p in params.items()}
        rates = {
            n: torch.full((steps,), lr, dtype=p.dtype, device=p.device) for n, p in params.items()
        }
        return {"params": theta, **({"lr": _drop(rates, pick)} if learn else {})}

    def params(meta: Any) -> Any:  # the model's layout: the last step's per-step leaves
        return {n: slot(p, -1) if pick(n) else p for n, p in meta["params"].items()}

    outer: Any = last_step(loss, steps) if stats else loss  # type: ignore[arg-type]
    loop = PerStep(loss, steps, pick, None if learn else rate(lr), stats)
    weights = multi_step_weights(steps, anneal_epochs=msl, epoch_steps=per_epoch) if msl else None
    rule = exact if weights is None else multi_step_rule(weights)
    return Learner(init, loop, outer, params=params, rule=rule)


def _none(name: str) -> bool:
    return False


def _drop(rates: dict[str, torch.Tensor], pick: Any) -> dict[str, torch.Tensor]:
    return {n: r for n, r in rates.items() if not pick(n)}
