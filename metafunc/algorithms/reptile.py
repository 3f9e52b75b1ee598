"""Reptile.

Nichol, Achiam, Schulman. "On First-Order Meta-Learning Algorithms", arXiv:1803.02999, 2018.
Each task adapts by ``inner_steps`` SGD steps on its support loss; the meta-gradient is the
pseudo-gradient ``θ0 − mean(θ')`` over the tasks, handed to any outer optimizer (outer SGD at
rate ε gives Reptile's ``θ0 ← θ0 + ε (mean(θ') − θ0)``). Nothing is differentiated through
the inner loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _checks, _inner, _tree
from .._learner import Learner, build_learner


def reptile(
    loss: Callable[[Any, Any], torch.Tensor],
    *,
    inner_lr: float = 0.01,
    inner_steps: int = 5,
    chunk_size: int | None = None,
) -> Learner:
    """Reptile (Nichol et al., 2018).

    Args:
        loss: ``loss(params, data) -> scalar``; the inner steps descend it on the support
            set; the reported ``loss`` metric scores the adapted parameters on the query set.
        inner_lr: the inner SGD step size, a positive number or a pytree like the parameters.
        inner_steps: SGD steps per task; with one step the pseudo-gradient is
            ``inner_lr · ∇L_support(θ0)``, i.e. plain multi-task training.
        chunk_size: vmap the tasks this many at a time; ``None`` for all at once.

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are the initial parameters and whose
        ``meta_grad`` is the pseudo-gradient.

    Example:
        >>> learner = mf.reptile(mf.supervised(fn, mf.losses.mse), inner_lr=0.02, inner_steps=5)
        >>> step = mf.make_step(learner, mf.optim.sgd(0.1))
    """
    name = "reptile"
    _checks.function(name, "loss", loss, "loss(params, data)")
    inner_lr = _checks.learning_rate(name, "inner_lr", inner_lr)
    inner_steps = _checks.integer(name, "inner_steps", inner_steps, minimum=1)
    chunk_size = _checks.chunk_size(name, chunk_size)

    def init(params: Any) -> Any:
        _checks.params_and_rates(name, params, inner_lr)
        return _tree.copy(params)

    def adapt(meta: Any, support: Any) -> Any:
        # First order: the pseudo-gradient never differentiates through these steps.
        return _inner.adapt(
            meta, support, loss=loss, lr=inner_lr, steps=inner_steps, first_order=True
        )

    return build_learner(
        name, init=init, adapt=adapt, loss=loss, chunk_size=chunk_size, pseudo_grad=True
    )
