"""iMAML: MAML with implicit gradients.

Rajeswaran, Finn, Kakade, Levine. "Meta-Learning with Implicit Gradients", NeurIPS 2019
(arXiv:1909.04630). Each task adapts on its support loss plus a proximal term
``reg/2 · ‖θ − θ0‖²`` that keeps the adapted parameters near the meta-parameters θ0. At the
minimiser θ* of that objective the implicit function theorem gives the meta-gradient
``(I + H/reg)⁻¹ ∇L_query(θ*)``, H the support loss's Hessian at θ*, whatever path the inner
loop took to get there: it is solved by conjugate gradient with Hessian-vector products, and
nothing is differentiated through the inner loop, so memory does not grow with its steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import grad, vmap

from .. import _checks, _inner, _state, _tree
from .._inner import Loop
from .._learner import Learner, Losses, Rule, per_task
from .._linalg import conjugate_gradient
from .._remat import pullback
from .._types import Tasks
from ..optim import Optimizer
from .maml import Loss


def imaml(
    loss: Loss,
    *,
    inner_lr: float | Any | None = None,
    inner_opt: Optimizer | None = None,
    inner_steps: int = 10,
    reg: float = 1.0,
    cg_steps: int = 5,
) -> Learner:
    """Implicit MAML (Rajeswaran et al., 2019).

    Args:
        loss: ``loss(params, data) -> scalar`` for the support and the query set.
        inner_lr: the inner SGD step size on the proximal objective, a positive number or a
            pytree like the parameters (0.01 when neither it nor ``inner_opt`` is given).
        inner_opt: any ``mf.optim`` optimizer for the inner steps instead.
        inner_steps: inner steps per task; enough to come close to the minimiser θ*, which the
            implicit gradient assumes.
        reg: the proximal strength λ: large keeps θ* near θ0 (and ``I + H/reg`` positive
            definite, which conjugate gradient needs), small lets the tasks move further.
        cg_steps: conjugate-gradient iterations per task (one Hessian-vector product each).

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are the initial parameters.

    Example:
        >>> learner = mf.imaml(mf.supervised(fn, mf.losses.mse), inner_lr=0.01, inner_steps=20,
        ...                    reg=1.0, cg_steps=5)
        >>> step = mf.make_step(learner, opt, compile=False)
        >>> state, metrics = step(mf.init_state(learner, opt, params), tasks)
        >>> int(state.step), bool(metrics.finite)
        (1, True)
    """
    name = "imaml"
    _checks.function(name, "loss", loss, "loss(params, data)")
    _state.refuse(name, loss)
    inner = _inner.inner_update(name, inner_lr, inner_opt)
    inner_steps = _checks.steps(name, "inner_steps", inner_steps, minimum=1, differentiated=False)
    reg = _checks.positive_number(name, "reg", reg)
    cg_steps = _checks.steps(name, "cg_steps", cg_steps, minimum=1, differentiated=False)

    def init(params: Any) -> Any:
        _inner.check_params(name, params, inner)
        return _tree.copy(params)

    def setup(meta: Any) -> tuple[Any, Loss, Optimizer]:
        anchor = _tree.detach(meta)  # θ0 is a constant of the inner problem

        def proximal(params: Any, data: Any) -> torch.Tensor:
            distance = _tree.map(lambda p, a: ((p - a) ** 2).sum(), params, anchor)
            return loss(params, data) + reg / 2 * torch.stack(_tree.leaves(distance)).sum()

        return anchor, proximal, _inner.optimizer(inner, meta)

    loop = Loop(setup, inner_steps, first_order=True)
    return Learner(init, loop, loss, rule=implicit_gradient(loss, reg, cg_steps))


def implicit_gradient(loss: Loss, reg: float, cg_steps: int) -> Rule:
    """iMAML's rule: each task's ``(I + H/reg)⁻¹ ∇L_query(θ*)`` at its adapted θ*, averaged."""

    def implicit(adapted: Any, support: Any, query: Any) -> Any:
        """One task's meta-gradient: solve ``(I + H/reg) v = ∇L_query(θ*)`` for ``v``."""
        theta, merge = _tree.split(adapted, None)
        target = grad(lambda t: loss(merge(t), query))(theta)

        # H v by reverse over reverse (H is symmetric): one linearisation, many products
        def support_grad(t: list[torch.Tensor]) -> Any:
            return grad(lambda leaves: loss(merge(leaves), support))(t)

        _, hvp = pullback(support_grad, theta)

        def matvec(v: list[torch.Tensor]) -> list[torch.Tensor]:
            return [vi + hi / reg for vi, hi in zip(v, hvp(v)[0], strict=True)]

        solution = conjugate_gradient(matvec, target, steps=cg_steps)
        return merge(solution)

    def rule(learner: Learner, meta: Any, tasks: Tasks) -> tuple[Any, Losses]:
        adapted, after, before = per_task(learner)(meta, tasks.support, tasks.query)
        grads = vmap(implicit)(_tree.detach(adapted), tasks.support, tasks.query)
        losses = Losses(after.mean(), before.mean())
        return _tree.map(lambda g: g.mean(0), grads), losses

    return rule
