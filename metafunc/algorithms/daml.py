"""DAML: domain-adaptive meta-learning with a learned adaptation loss.

Yu, Finn, Xie, Dasari, Zhang, Abbeel, Levine. "One-Shot Imitation from Observing Humans via
Domain-Adaptive Meta-Learning", RSS 2018; in the form of the blog post "Meta Learning in
PyTorch". Tasks give *unlabeled* inputs from a source domain to adapt on and labeled data
from the target domain to score on. The inner steps descend a learned adaptation loss — a
second network with parameters φ that sees the model's output and features on the source
inputs — and the outer loss is the task loss on the target data. Both θ0 and φ are
meta-learned, exactly: φ reaches the outer loss only through the inner gradients, so a
first-order DAML would leave it untrained and is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _checks, _inner, _state, _tree
from .._inner import Loop
from .._learner import Learner
from .._types import Tasks
from ..optim import Optimizer


def daml(
    model: Callable[[Any, Any], tuple[torch.Tensor, Any]],
    adaptation_loss: Callable[[Any, torch.Tensor, Any], torch.Tensor],
    loss_params: Any,
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    inner_lr: float | Any | None = None,
    inner_opt: Optimizer | None = None,
    inner_steps: int = 1,
) -> Learner:
    """Domain-adaptive meta-learning with a learned adaptation loss.

    A task is ``Tasks(support=x_source, query=(x_target, y_target))``: the support holds only
    inputs. Each task adapts θ by ``inner_steps`` SGD steps on
    ``adaptation_loss(φ, *model(θ, x_source))``; the meta-loss is
    ``task_loss(model(θ', x_target)[0], y_target)``. Always second order:
    :func:`metafunc.first_order` is refused (φ would get no gradient).

    Args:
        model: ``model(params, x) -> (output, features)``; ``features`` is any pytree the
            adaptation loss sees (e.g. hidden activations).
        adaptation_loss: ``adaptation_loss(loss_params, output, features) -> scalar``.
        loss_params: the adaptation loss's initial parameters φ (a pytree of tensors with the
            model parameters' dtype and device); meta-learned with θ0.
        task_loss: ``task_loss(output, target) -> scalar`` on the labeled target data, e.g.
            :func:`metafunc.losses.mse`.
        inner_lr, inner_opt: the inner update, as for :func:`metafunc.maml`.
        inner_steps: SGD steps per task.

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are ``{"params": θ0, "loss": φ}``.

    Example:
        >>> model, params = mf.pure(mf.models.blog_sine_net(g, hidden=8, features=True))
        >>> loss_net, phi = mf.pure(mf.models.daml_loss_net(g, hidden=8))
        >>> def adaptation_loss(phi, y, features):
        ...     h1, h2 = features
        ...     return loss_net(phi, torch.cat([y, h2, h1], dim=-1)).pow(2).mean()
        >>> learner = mf.daml(model, adaptation_loss, phi, mf.losses.mse, inner_lr=3e-2)
        >>> state = mf.init_state(learner, mf.optim.adam(1e-3), params)
        >>> sorted(state.meta)
        ['loss', 'params']
        >>> tasks = mf.tasks.daml_sine(g, tasks=2)  # unlabeled source inputs to adapt on
        >>> grads, _ = learner.meta_grad(state.meta, tasks)
        >>> bool(grads["loss"]["0.weight"].abs().sum() > 0)  # the loss network learns too
        True
    """
    name = "daml"
    _checks.function(name, "model", model, "model(params, x) -> (output, features)")
    _state.refuse(name, model)
    _checks.function(
        name, "adaptation_loss", adaptation_loss, "adaptation_loss(loss_params, output, features)"
    )
    _checks.function(name, "task_loss", task_loss, "task_loss(output, target)")
    _checks.params_tree(name, "loss_params", loss_params)
    inner = _inner.inner_update(name, inner_lr, inner_opt)
    inner_steps = _checks.steps(name, "inner_steps", inner_steps, minimum=1)

    def init(params: Any) -> Any:
        _inner.check_params(name, params, inner)
        p, q = _tree.leaves(params)[0], _tree.leaves(loss_params)[0]
        if (p.dtype, p.device) != (q.dtype, q.device):
            raise TypeError(
                f"daml: loss_params must have the model parameters' dtype and device {p.dtype} "
                f"on {p.device} (got {q.dtype} on {q.device})"
            )
        return {"params": _tree.copy(params), "loss": _tree.copy(loss_params)}

    def outer_loss(params: Any, data: Any) -> torch.Tensor:
        x, y = data
        return task_loss(model(params, x)[0], y)

    def setup(meta: Any) -> tuple[Any, Callable[[Any, Any], torch.Tensor], Optimizer]:
        def inner_loss(params: Any, x: Any) -> torch.Tensor:
            return adaptation_loss(meta["loss"], *model(params, x))

        return meta["params"], inner_loss, _inner.optimizer(inner, meta["params"])

    loop = Loop(setup, inner_steps, first_order=None)  # None: first order is refused
    return Learner(init, loop, outer_loss, params=_params, check=check)


def _params(meta: Any) -> Any:
    return meta["params"]


def check(where: str, tasks: Tasks, params: Any) -> None:
    """DAML's meta-batch: unlabeled source inputs to adapt on, a labeled pair ``(x, y)`` to
    score on."""
    _checks.tasks(where, tasks, like=params, paired=False)
    _checks.pair(
        where,
        "tasks.query",
        tasks.query,
        "(x_target, y_target): DAML scores on labeled target data",
    )
