"""Reptile.

Nichol, Achiam, Schulman. "On First-Order Meta-Learning Algorithms", arXiv:1803.02999, 2018.
Each task adapts by ``inner_steps`` optimizer steps on its support loss; the meta-gradient is
the pseudo-gradient ``θ0 − mean(θ')`` over the tasks, handed to any outer optimizer (outer SGD at
rate ε gives Reptile's ``θ0 ← θ0 + ε (mean(θ') − θ0)``). Nothing is differentiated through
the inner loop.
"""

from __future__ import annotations

from typing import Any

from .. import _checks, _inner, _state, _tree
from .._inner import Loop
from .._learner import Learner, Losses, per_task
from .._types import Tasks
from ..optim import Optimizer
from .maml import Loss


def reptile(
    loss: Loss,
    *,
    inner_lr: float | Any | None = None,
    inner_opt: Optimizer | None = None,
    inner_steps: int = 5,
) -> Learner:
    """Reptile (Nichol et al., 2018).

    Args:
        loss: ``loss(params, data) -> scalar``; the inner steps descend it on the support
            set; the reported ``loss`` scores the adapted parameters on the query set.
        inner_lr: the inner SGD step size, as for :func:`metafunc.maml`.
        inner_opt: any ``mf.optim`` optimizer for the inner steps instead (the paper uses Adam).
        inner_steps: inner steps per task; with one SGD step the pseudo-gradient is
            ``inner_lr · ∇L_support(θ0)``, i.e. plain multi-task training.

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are the initial parameters and whose
        ``meta_grad`` is the pseudo-gradient.

    Example:
        >>> learner = mf.reptile(mf.supervised(fn, mf.losses.mse), inner_lr=0.02, inner_steps=5)
        >>> pseudo, _ = learner.meta_grad(params, tasks)
        >>> adapted = learner.adapt(params, tasks.support)
        >>> torch.allclose(pseudo["4.bias"], params["4.bias"] - adapted["4.bias"].mean(0))
        True
        >>> step = mf.make_step(learner, mf.optim.sgd(0.1), compile=False)
        >>> state, metrics = step(mf.init_state(learner, mf.optim.sgd(0.1), params), tasks)
        >>> int(state.step)
        1
    """
    name = "reptile"
    _checks.function(name, "loss", loss, "loss(params, data)")
    _state.refuse(name, loss)
    inner = _inner.inner_update(name, inner_lr, inner_opt)
    inner_steps = _checks.steps(name, "inner_steps", inner_steps, minimum=1)

    def init(params: Any) -> Any:
        _inner.check_params(name, params, inner)
        return _tree.copy(params)

    def setup(meta: Any) -> tuple[Any, Loss, Optimizer]:
        return meta, loss, _inner.optimizer(inner, meta)

    # First order: the pseudo-gradient never differentiates through these steps.
    return Learner(init, Loop(setup, inner_steps, first_order=True), loss, rule=pseudo_gradient)


def pseudo_gradient(learner: Learner, meta: Any, tasks: Tasks) -> tuple[Any, Losses]:
    """Reptile's rule: ``meta − mean(adapted)`` over the tasks, no backward pass."""
    adapted, after, before = per_task(learner)(meta, tasks.support, tasks.query)
    grads = _tree.map(lambda m, a: m - a.mean(0), meta, adapted)
    return grads, Losses(after.mean(), before.mean())
