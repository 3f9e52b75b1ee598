"""MAML++'s pieces (Antoniou, Edwards, Storkey, "How to train your MAML", ICLR 2019) that are
not one algorithm's: the multi-step loss's annealed weights (MSL), an inner loop whose steps
each have their own learned rates (LSLR), normalisation weights (BNWB) and model state (BNRS),
and the rule that scores the query set after every inner step.

A leaf kept "per step" has a leading dimension of ``steps``: inner step ``k`` reads and writes
its slot ``k``, a Python index (the inner loop is unrolled), so the graph indexes statically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.func import grad, vmap

from . import _checks, _tree
from ._state import Stateful, combine
from ._types import Tasks

if TYPE_CHECKING:
    from ._learner import Learner, Losses

Schedule = Callable[[torch.Tensor], torch.Tensor]


def multi_step_weights(steps: int, *, anneal_epochs: int, epoch_steps: int = 1) -> Schedule:
    """The multi-step loss's importance of each inner step's query loss, as a function of the
    int64 count of outer steps taken (a schedule, computed inside the compiled step).

    The authors' ``get_per_step_loss_importance_vector`` (HowToTrainYourMAMLPytorch), with
    ``S = steps``, ``e = count // epoch_steps`` and ``N = anneal_epochs``: while ``e < N``,
    the first ``S − 1`` weights are ``max(1/S − e/(S·N), 0.03/S)`` and the last is
    ``min(1/S + e·(S − 1)/(S·N), 1 − 0.03·(S − 1)/S)`` (uniform at first, moving to the last
    step); from ``e = N`` on, only the last step counts, ``(0, …, 0, 1)``.

    Example:
        >>> weights = mf.multi_step_weights(5, anneal_epochs=10, epoch_steps=100)
        >>> weights(torch.tensor(0))
        tensor([0.2000, 0.2000, 0.2000, 0.2000, 0.2000], dtype=torch.float64)
        >>> weights(torch.tensor(500))  # epoch 5 of 10
        tensor([0.1000, 0.1000, 0.1000, 0.1000, 0.6000], dtype=torch.float64)
        >>> weights(torch.tensor(1000))
        tensor([0., 0., 0., 0., 1.], dtype=torch.float64)
    """
    where = "multi_step_weights"
    steps = _checks.integer(where, "steps", steps, minimum=1)
    anneal_epochs = _checks.integer(where, "anneal_epochs", anneal_epochs, minimum=1)
    epoch_steps = _checks.integer(where, "epoch_steps", epoch_steps, minimum=1)
    decay, floor = 1.0 / steps / anneal_epochs, 0.03 / steps
    last = torch.arange(steps) == steps - 1

    def schedule(count: torch.Tensor) -> torch.Tensor:
        epoch = torch.div(count, epoch_steps, rounding_mode="floor").to(torch.float64)
        early = torch.clamp(1.0 / steps - epoch * decay, min=floor)
        final = torch.clamp(1.0 / steps + epoch * (steps - 1) * decay, max=1 - (steps - 1) * floor)
        on = last.to(count.device)
        annealed = torch.where(on, final, early)
        return torch.where(epoch < anneal_epochs, annealed, on.to(torch.float64))

    return schedule


def stack(tree: Any, steps: int) -> Any:
    """A copy of every leaf per step: a new leading dimension of ``steps``."""
    return _tree.map(lambda t: t.unsqueeze(0).repeat(steps, *([1] * t.ndim)), tree)


def slot(tree: Any, k: int) -> Any:
    """Slot ``k`` of every per-step leaf."""
    return _tree.map(lambda t: t[k], tree)


def put(tree: Any, k: int, values: Any) -> Any:
    """``tree`` with slot ``k`` of every leaf replaced by ``values`` (new tensors)."""
    return _tree.map(lambda t, v: torch.cat([t[:k], v.unsqueeze(0), t[k + 1 :]]), tree, values)


@dataclass(frozen=True)
class PerStep:
    """MAML++'s inner loop on one task (the ``inner`` of :func:`metafunc.mamlpp`):
    ``loop(meta, support[, state]) -> adapted[, state]``.

    ``meta = {"params": θ0, "lr": rates}``: the leaves ``per_step`` picks hold a copy per step
    and do not adapt (BNWB: the paper's code keeps the normalisation weights out of the inner
    loop); every other leaf adapts by SGD, step ``k`` at ``meta["lr"][name][k]`` (LSLR) or at
    the fixed ``lr``. With ``per_step_state`` each step reads and updates its own slot of the
    model state (BNRS). The adapted parameters are in the model's layout, with the per-step
    leaves of the last step.
    """

    loss: Callable[..., Any]
    steps: int
    per_step: Callable[[str], bool]
    lr: torch.Tensor | None = None  # the fixed rate; None: learned, in meta["lr"]
    per_step_state: bool = False
    first_order: bool = False

    def __call__(self, meta: Any, support: Any, *state: Any) -> Any:
        adapted, new, _ = unroll(self, meta, support, state[0] if state else ())
        return (adapted, new) if state else adapted


def unroll(
    loop: PerStep, meta: Any, support: Any, state: Any, query: Any = None
) -> tuple[Any, Any, list[torch.Tensor]]:
    """One task's inner steps: ``(adapted, state, query losses)``. With ``query``, the query
    pass runs after every step (in the paper's order, before the next step's support pass,
    so each updates the model state in turn) and its losses come back."""
    params = meta["params"]
    theta = {n: p for n, p in params.items() if not loop.per_step(n)}
    losses = []
    for k in range(loop.steps):
        view = slot(state, k) if loop.per_step_state else state
        fixed = {n: p[k] for n, p in params.items() if loop.per_step(n)}

        def support_loss(t: Any, view: Any = view, fixed: Any = fixed) -> Any:
            return _call(loop.loss, {**fixed, **t}, view, support)

        g, view = grad(support_loss, has_aux=True)(theta)
        if loop.first_order:
            g = _tree.detach(g)
        theta = {n: p - _rate(loop, meta, n, k).to(p.dtype) * g[n] for n, p in theta.items()}
        if query is not None:
            value, view = _call(loop.loss, {**fixed, **theta}, view, query)
            losses.append(value)
        state = put(state, k, view) if loop.per_step_state else view
    last = {n: p[-1] for n, p in params.items() if loop.per_step(n)}
    return {n: theta[n] if n in theta else last[n] for n in params}, state, losses


def _rate(loop: PerStep, meta: Any, name: str, k: int) -> torch.Tensor:
    """Step ``k``'s rate of the leaf ``name``: learned (LSLR) or the fixed one."""
    return meta["lr"][name][k] if loop.lr is None else loop.lr.view(())


def _call(loss: Any, params: Any, state: Any, data: Any) -> tuple[torch.Tensor, Any]:
    """``(value, state)`` of a loss that threads model state or of one that keeps none (its
    state is ``()``)."""
    if isinstance(loss, Stateful):
        return loss(params, state, data)
    return loss(params, data), ()


def last_step(loss: Stateful, steps: int) -> Stateful:
    """``loss`` reading and updating the last step's slot of a per-step model state (the query
    pass after the last inner step, as the paper's code scores it); its ``init`` makes a copy
    of the model's state per step."""

    def fn(params: Any, state: Any, data: Any) -> tuple[torch.Tensor, Any]:
        value, view = loss(params, slot(state, steps - 1), data)
        return value, put(state, steps - 1, view)

    return Stateful(fn, init=lambda state: stack(state, steps))


def multi_step_rule(weights: Schedule) -> Callable[..., Any]:
    """The multi-step loss as a meta-gradient rule: the query loss after every inner step,
    weighted by ``weights(step count)`` (``learner.context.step``; 0 outside a step), each
    task's weighted sum averaged over the tasks. It reports the last step's query loss."""

    def rule(learner: Learner, meta: Any, tasks: Tasks) -> tuple[Any, Losses]:
        from ._learner import Losses

        loop = cast(PerStep, learner.inner)
        stateful = isinstance(learner.outer, Stateful)
        start = learner.context.state if stateful else ()
        count = learner.context.step
        w = weights(torch.zeros((), dtype=torch.int64) if count is None else count)

        def one(meta: Any, support: Any, query: Any) -> tuple[Any, ...]:
            _, state, losses = unroll(loop, meta, support, start, query)
            params = learner.params(meta)
            before = _call(learner.outer, params, start, query)[0]
            return torch.stack(losses), before, state

        batched = vmap(one, in_dims=(None, 0, 0), randomness=learner.batching.randomness)

        def objective(meta: Any) -> tuple[torch.Tensor, tuple[Any, ...]]:
            losses, before, state = batched(meta, tasks.support, tasks.query)
            total = (losses.mean(0) * w.to(losses)).sum()
            new = (combine(start, state),) if stateful else ()
            return total, (losses[:, -1].mean(), before.mean(), *new)

        grads, aux = _tree.grad_and_aux(objective, meta)
        return grads, Losses(*aux)

    return rule
