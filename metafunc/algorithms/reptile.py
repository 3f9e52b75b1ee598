"""Reptile.

Nichol, Achiam, Schulman. "On First-Order Meta-Learning Algorithms", arXiv:1803.02999, 2018.
Each task adapts by ``inner_steps`` optimizer steps on its support loss; the meta-gradient is
the pseudo-gradient ``θ0 − mean(θ')`` over the tasks, handed to any outer optimizer (outer SGD at
rate ε gives Reptile's ``θ0 ← θ0 + ε (mean(θ') − θ0)``). Nothing is differentiated through
the inner loop.
"""

from __future__ import annotations

from typing import Any

from .. import _checks, _inner, _tree
from .._learner import Learner, MetaGrad, PerTask, build, check_randomness
from .._types import Tasks
from ..optim import Optimizer
from .maml import Loss


def reptile(
    loss: Loss,
    *,
    inner_lr: float | Any | None = None,
    inner_opt: Optimizer | None = None,
    inner_steps: int = 5,
    chunk_size: int | None = None,
    randomness: str = "error",
) -> Learner:
    """Reptile (Nichol et al., 2018).

    Args:
        loss: ``loss(params, data) -> scalar``; the inner steps descend it on the support
            set; the reported ``loss`` metric scores the adapted parameters on the query set.
        inner_lr: the inner SGD step size, a positive number or a pytree like the parameters
            (0.01 when neither it nor ``inner_opt`` is given).
        inner_opt: any ``mf.optim`` optimizer for the inner steps instead (the paper uses Adam).
        inner_steps: inner steps per task; with one SGD step the pseudo-gradient is
            ``inner_lr · ∇L_support(θ0)``, i.e. plain multi-task training.
        chunk_size: compute the pseudo-gradient this many tasks at a time; ``None`` for all.
        randomness: what random operations in the model (dropout) do across the tasks of a
            batch: ``"error"`` refuses them, ``"different"`` gives each task its own draws,
            ``"same"`` the same draws; a step seeds them from ``TrainState.rng`` (see
            :func:`metafunc.init_state`).

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are the initial parameters and whose
        ``meta_grad`` is the pseudo-gradient.

    Example:
        >>> learner = mf.reptile(mf.supervised(fn, mf.losses.mse), inner_lr=0.02, inner_steps=5)
        >>> step = mf.make_step(learner, mf.optim.sgd(0.1))
    """
    name = "reptile"
    _checks.function(name, "loss", loss, "loss(params, data)")
    inner = _inner.inner_update(name, inner_lr, inner_opt)
    inner_steps = _checks.integer(name, "inner_steps", inner_steps, minimum=1)
    chunk_size = _checks.chunk_size(name, chunk_size)
    randomness = check_randomness(name, randomness)

    def init(params: Any) -> Any:
        _inner.check_params(name, params, inner)
        return _tree.copy(params)

    def adapt(meta: Any, support: Any) -> Any:
        # First order: the pseudo-gradient never differentiates through these steps.
        opt = _inner.optimizer(inner, meta)
        return _inner.adapt(meta, support, loss=loss, steps=inner_steps, opt=opt, first_order=True)

    return build(
        name,
        init=init,
        adapt=adapt,
        loss=loss,
        chunk_size=chunk_size,
        gradient=pseudo_gradient,
        randomness=randomness,
    )


def pseudo_gradient(per_task: PerTask) -> MetaGrad:
    """Reptile's rule: ``meta − mean(adapted)`` over the tasks, no backward pass."""

    def meta_grad(meta: Any, tasks: Tasks) -> tuple[Any, dict]:
        adapted, after, before = per_task(meta, tasks.support, tasks.query)
        grads = _tree.map(lambda m, a: m - a.mean(0), meta, adapted)
        return grads, {"loss": after.mean(), "loss_before": before.mean()}

    return meta_grad
