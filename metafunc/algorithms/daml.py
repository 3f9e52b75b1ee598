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

from .. import _checks, _inner, _tree
from .._learner import Learner, build, check_randomness, exact
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
    first_order: bool = False,
    chunk_size: int | None = None,
    randomness: str = "error",
    remat: bool = False,
) -> Learner:
    """Domain-adaptive meta-learning with a learned adaptation loss.

    A task is ``Tasks(support=x_source, query=(x_target, y_target))``: the support holds only
    inputs. Each task adapts θ by ``inner_steps`` SGD steps on
    ``adaptation_loss(φ, *model(θ, x_source))``; the meta-loss is
    ``task_loss(model(θ', x_target)[0], y_target)``.

    Args:
        model: ``model(params, x) -> (output, features)``; ``features`` is any pytree the
            adaptation loss sees (e.g. hidden activations).
        adaptation_loss: ``adaptation_loss(loss_params, output, features) -> scalar``.
        loss_params: the adaptation loss's initial parameters φ (a pytree of tensors with the
            model parameters' dtype and device); meta-learned with θ0.
        task_loss: ``task_loss(output, target) -> scalar`` on the labeled target data, e.g.
            :func:`metafunc.losses.mse`.
        inner_lr: the inner SGD step size, a positive number or a pytree like the parameters
            (0.01 when neither it nor ``inner_opt`` is given).
        inner_opt: any ``mf.optim`` optimizer for the inner steps instead.
        inner_steps: SGD steps per task.
        first_order: must be ``False`` (φ would get no gradient).
        chunk_size: compute the meta-gradient this many tasks at a time; ``None`` for all.
        remat: recompute each inner step's activations in the backward pass instead of
            keeping them (see :func:`metafunc.maml`).
        randomness: what random operations in the model (dropout) do across the tasks of a
            batch: ``"error"`` refuses them, ``"different"`` gives each task its own draws,
            ``"same"`` the same draws; a step seeds them from ``TrainState.rng`` (see
            :func:`metafunc.init_state`).

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are ``{"params": θ0, "loss": φ}``.

    Example:
        >>> learner = mf.daml(model, adaptation_loss, phi, mf.losses.mse, inner_lr=3e-2)
        >>> state = mf.init_state(learner, mf.optim.adam(1e-3), params)
    """
    name = "daml"
    _checks.function(name, "model", model, "model(params, x) -> (output, features)")
    _checks.function(
        name, "adaptation_loss", adaptation_loss, "adaptation_loss(loss_params, output, features)"
    )
    _checks.function(name, "task_loss", task_loss, "task_loss(output, target)")
    _checks.params_tree(name, "loss_params", loss_params)
    inner = _inner.inner_update(name, inner_lr, inner_opt)
    inner_steps = _checks.integer(name, "inner_steps", inner_steps, minimum=1)
    if _checks.boolean(name, "first_order", first_order):
        raise ValueError(
            "daml: first_order=True is not supported: the adaptation-loss parameters reach the "
            "outer loss only through the inner gradients, so detaching them would leave the "
            "learned loss untrained (got first_order=True)"
        )
    chunk_size = _checks.chunk_size(name, chunk_size)
    randomness = check_randomness(name, randomness)
    remat = _inner.check_remat(name, remat, randomness)

    def init(params: Any) -> Any:
        _inner.check_params(name, params, inner)
        p, q = _tree.leaves(params)[0], _tree.leaves(loss_params)[0]
        if (p.dtype, p.device) != (q.dtype, q.device):
            raise TypeError(
                f"daml: loss_params must have the model parameters' dtype and device {p.dtype} "
                f"on {p.device} (got {q.dtype} on {q.device})"
            )
        return {"params": _tree.copy(params), "loss": _tree.copy(loss_params)}

    def check_meta(where: str, meta_name: str, meta: Any) -> None:
        _checks.keyed(where, meta_name, meta, ("params", "loss"), "from daml(...).init")

    def outer_loss(params: Any, data: Any) -> torch.Tensor:
        x, y = data
        return task_loss(model(params, x)[0], y)

    def setup(meta: Any) -> tuple[Any, Callable[[Any, Any], torch.Tensor], Optimizer]:
        def inner_loss(params: Any, x: Any) -> torch.Tensor:
            return adaptation_loss(meta["loss"], *model(params, x))

        return meta["params"], inner_loss, _inner.optimizer(inner, meta["params"])

    loop = _inner.Loop(setup, inner_steps)
    params = lambda meta: meta["params"]  # noqa: E731

    return build(
        name,
        init=init,
        adapt=lambda meta, x_source: _inner.run(loop, meta, x_source),
        loss=outer_loss,
        params=params,
        chunk_size=chunk_size,
        gradient=_inner.remat_gradient(loop, outer_loss, params) if remat else exact,
        paired=False,
        check_meta=check_meta,
        randomness=randomness,
    )
