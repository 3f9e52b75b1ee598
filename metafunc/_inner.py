"""The inner loop: a few optimizer steps on one task's loss, differentiable end to end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.func import grad, vjp, vmap

from . import _checks, _tree
from ._learner import MetaGrad, Metrics, PerTask
from ._types import Tasks
from .optim import Optimizer, apply_updates

Loss = Callable[[Any, Any], torch.Tensor]


class Loop(NamedTuple):
    """One task's inner loop as pure functions of the meta-parameters.

    ``setup(meta) -> (params, loss, opt)`` gives the starting parameters θ0, the inner loss
    ``loss(params, data)`` and the inner optimizer. Whatever the steps depend on that the
    meta-gradient must reach (Meta-SGD's rates, DAML's loss network, the leaves that do not
    adapt) comes out of ``meta`` there and from nowhere else, so each step is a pure function
    ``step(loop, meta, carry, data)``: the pieces a rematerialised meta-gradient differentiates
    one step at a time (:func:`remat_gradient`). ``run`` is the whole loop.

    Attributes:
        setup: ``setup(meta) -> (params, loss, opt)``.
        steps: number of updates.
        first_order: detach the inner gradients.
        pick: which leaves of ``params`` adapt (a predicate on dotted names); ``None`` for all.
    """

    setup: Callable[[Any], tuple[Any, Loss, Optimizer]]
    steps: int
    first_order: bool = False
    pick: Callable[[str], bool] | None = None


# The carry between steps: the adapted leaves (in ``_tree.split`` order) and the optimizer state.
Carry = tuple[list[torch.Tensor], Any]


def start(loop: Loop, meta: Any) -> Carry:
    """The carry before the first step: θ0's adapting leaves and the optimizer's first state."""
    params, _, opt = loop.setup(meta)
    theta, _ = _tree.split(params, loop.pick or _all)
    return theta, opt.init(theta)


def step(loop: Loop, meta: Any, carry: Carry, data: Any) -> Carry:
    """One inner update: the gradient of the inner loss at the carried leaves, through the
    optimizer."""
    params, loss, opt = loop.setup(meta)
    _, merge = _tree.split(params, loop.pick or _all)
    theta, state = carry
    g = grad(lambda leaves: loss(merge(leaves), data))(theta)
    if loop.first_order:
        g = _tree.detach(g)
    updates, state = opt.update(g, state, theta)
    return apply_updates(theta, updates), state


def finish(loop: Loop, meta: Any, carry: Carry) -> Any:
    """The adapted parameters: the carried leaves put back among the ones that do not adapt."""
    params, _, _ = loop.setup(meta)
    _, merge = _tree.split(params, loop.pick or _all)
    return merge(carry[0])


def run(loop: Loop, meta: Any, data: Any) -> Any:
    """The whole inner loop on one task: the adapted parameters (differentiable in ``meta``)."""
    if loop.steps == 0:
        return loop.setup(meta)[0]
    carry = start(loop, meta)
    for _ in range(loop.steps):
        carry = step(loop, meta, carry, data)
    return finish(loop, meta, carry)


def adapt(
    params: Any,
    data: Any,
    *,
    loss: Loss,
    steps: int,
    opt: Optimizer,
    first_order: bool = False,
    pick: Callable[[str], bool] | None = None,
) -> Any:
    """``steps`` updates of ``opt`` on ``loss(θ, data)`` from ``θ = params``; returns the new θ.

    The steps are built with ``torch.func.grad`` and a functional optimizer, so the result
    stays differentiable with respect to ``params`` (and to anything the optimizer's rates are
    made of) through every step, the optimizer's own state included: an outer ``grad`` of a
    loss at the result is the exact meta-gradient, Hessian terms included. With
    ``first_order=True`` each inner gradient is detached, which drops those terms. ``pick`` (a
    predicate on dotted leaf names, see :func:`metafunc._tree.picker`) chooses the leaves that
    adapt; the others stay as they are and no gradient is computed for them. Pure and
    unchecked: it runs inside ``vmap`` and compiled code. (:class:`Loop` is the same loop with
    its dependence on the meta-parameters spelled out.)

    Args:
        params: pytree of tensors, the starting point θ0.
        data: the task's support data, passed unchanged to ``loss``.
        loss: ``loss(params, data) -> scalar tensor``.
        steps: number of updates (0 returns ``params``).
        opt: the inner optimizer, e.g. from :func:`optimizer`; it sees the adapted leaves as a
            list, in the order of :func:`metafunc._tree.split`.
        first_order: detach inner gradients.
        pick: which leaves adapt; ``None`` for all.
    """
    return run(Loop(lambda _: (params, loss, opt), steps, first_order, pick), None, data)


def remat_gradient(
    loop: Loop, loss: Loss, params: Callable[[Any], Any]
) -> Callable[[PerTask], MetaGrad]:
    """The exact meta-gradient rule (as :func:`metafunc._learner.exact`) with rematerialised
    inner steps: only the carry between steps is kept, and the backward pass recomputes each
    step's activations when it reaches it.

    Reverse mode through the inner loop keeps every step's activations (and those of its
    inner backward pass) until the outer backward pass uses them: memory grows with the steps.
    Here the forward pass runs the steps keeping only their carries (θ_k and the optimizer
    state), then the backward pass walks them in reverse, each step differentiated by its own
    ``torch.func.vjp`` (which runs that step once more) and freed before the next: the
    activations of one step are alive at a time, for one more forward pass of the inner loop.
    The arithmetic is that of differentiating through the loop, so the meta-gradient is the
    same bit for bit (tested in float64). It is written with ``vjp`` rather than
    ``torch.utils.checkpoint`` (which ``torch.func`` refuses: no saved-tensor hooks) or a custom
    ``autograd.Function`` (which Dynamo inlines without its backward under ``vmap``), so it
    compiles to the same meta-gradient in one graph. The memory bound holds eagerly and
    compiled with ``backend="aot_eager"``; Inductor's compiled step does not keep it (measured:
    its peak grows with the inner steps as without remat, with its CSE, pattern matching and
    reordering for locality switched off too).

    Args:
        loop: the inner loop.
        loss: the query loss ``loss(params, data)``.
        params: where the model parameters sit in the meta-parameters (``loss_before``).

    Returns:
        a meta-gradient rule for :func:`metafunc._learner.build`'s ``gradient``.
    """

    def after(meta: Any, theta: list[torch.Tensor], query: Any) -> torch.Tensor:
        return loss(finish(loop, meta, (theta, None)), query)

    def forward(k: int, meta: Any, carry: Carry, support: Any) -> Carry:
        # Step k of every task. The carry before the first step does not depend on the task
        # (in_dims None); leaves that are not tensors (None: state an optimizer does not keep)
        # pass through vmap unchanged.
        tensors, merge = _tree.split_leaves(carry, _is_tensor)
        f = lambda m, t, d: _tree.split_leaves(step(loop, m, merge(t), d), _is_tensor)[0]  # noqa: E731
        return merge(vmap(f, in_dims=(None, None if k == 0 else 0, 0))(meta, tensors, support))

    def backward(k: int, meta: Any, carry: Carry, support: Any, cotangent: Any) -> tuple[Any, Any]:
        # vjp of step k, which runs it once more: its activations live only in here.
        floats, merge = _tree.split_leaves(carry, _is_floating)
        f = lambda m, c: _tree.split_leaves(forward(k, m, merge(c), support), _is_floating)[0]  # noqa: E731
        _, pull = vjp(f, meta, floats)
        return pull(cotangent)

    def meta_grad(meta: Any, tasks: Tasks) -> tuple[Any, Metrics]:
        # Each piece is vmapped over the tasks inside its vjp, as the exact rule's grad is
        # outside its vmap: the batching, and so the arithmetic, is the same.
        support, query = tasks
        carries = [start(loop, meta)]
        for k in range(loop.steps):
            carries.append(forward(k, meta, carries[-1], support))
        batched = vmap(after, in_dims=(None, 0 if loop.steps else None, 0))
        mean, pull = vjp(lambda m, t: batched(m, t, query).mean(), meta, carries[-1][0])
        grads, theta_cotangent = pull(torch.ones_like(mean))
        # the cotangent of the last carry: the loss reads only its parameters
        floats, _ = _tree.split_leaves(carries.pop(), _is_floating)
        cotangent = [
            *theta_cotangent,
            *(torch.zeros_like(t) for t in floats[len(theta_cotangent) :]),
        ]
        for k in reversed(range(loop.steps)):
            g, cotangent = backward(k, meta, carries[k], support, cotangent)
            grads = _tree.map(torch.add, grads, g)
        _, pull = vjp(lambda m: _tree.split_leaves(start(loop, m), _is_floating)[0], meta)
        grads = _tree.map(torch.add, grads, pull(cotangent)[0])
        before = vmap(lambda m, q: loss(params(m), q), in_dims=(None, 0))(meta, query)
        return grads, {"loss": mean, "loss_before": before.mean()}

    return lambda per_task: meta_grad


def _is_tensor(leaf: Any) -> bool:
    return isinstance(leaf, torch.Tensor)


def _is_floating(leaf: Any) -> bool:
    return isinstance(leaf, torch.Tensor) and leaf.is_floating_point()


def sgd(lr: float | list[torch.Tensor]) -> Optimizer:
    """Plain SGD for the inner loop: ``θ ← θ − lr ∇θ``, with one rate or one tensor of rates per
    adapted leaf. Rates that are tensors stay differentiable (Meta-SGD learns them)."""

    def update(grads: list[torch.Tensor], state: Any, params: Any) -> tuple[Any, Any]:
        if isinstance(lr, float):
            return [-lr * g for g in grads], state
        return [-r * g for r, g in zip(lr, grads, strict=True)], state

    return Optimizer(lambda params: (), update)


def optimizer(
    inner: float | Any | Optimizer, params: Any, pick: Callable[[str], bool] | None = None
) -> Optimizer:
    """The inner optimizer a learner was given: an ``Optimizer`` as it is, or a learning rate
    (a number, or a tree of rates like ``params``) as :func:`sgd` over the leaves of ``params``
    that ``pick`` chooses, matched by name and in :func:`adapt`'s order."""
    if isinstance(inner, Optimizer):
        return inner
    if isinstance(inner, float):
        return sgd(inner)
    rates = _tree.by_name(inner)
    return sgd([rates[n] for n in _tree.names(params) if (pick or _all)(n)])


def _all(name: str) -> bool:
    return True


def inner_update(
    where: str,
    lr: float | Any | None,
    opt: Optimizer | None,
    *,
    lr_name: str = "inner_lr",
    opt_name: str = "inner_opt",
) -> float | Any | Optimizer:
    """A learner's inner update, checked: the optimizer ``opt``, or the learning rate ``lr`` (a
    positive number or a tree of rates; 0.01 when neither is given)."""
    if opt is None:
        return _checks.learning_rate(where, lr_name, 0.01 if lr is None else lr)
    if lr is not None:
        raise ValueError(
            f"{where}: give {lr_name} (plain SGD) or {opt_name} (any optimizer), not both "
            f"(got {lr_name}={lr!r} and {opt_name})"
        )
    if not isinstance(opt, Optimizer):
        got = f"the class {opt.__name__}" if isinstance(opt, type) else type(opt).__name__
        torch_optim = isinstance(opt, torch.optim.Optimizer) or (
            isinstance(opt, type) and issubclass(opt, torch.optim.Optimizer)
        )
        hint = (
            "; torch.optim optimizers update tensors in place, which cannot be differentiated "
            "through"
            if torch_optim
            else ""
        )
        raise TypeError(
            f"{where}: {opt_name} must be a metafunc.optim.Optimizer, e.g. "
            f"mf.optim.sgd(0.01, momentum=0.9) (got {got}){hint}"
        )
    return opt


def check_remat(where: str, remat: Any, randomness: str) -> bool:
    """A learner's ``remat``, checked against its ``randomness``: the recomputed steps of a
    rematerialised backward pass would draw new random numbers (new dropout masks), so the
    meta-gradient would not be that of the forward pass; replaying torch's generator state
    there is what the compiler refuses to trace (``torch.get_rng_state`` inside
    ``torch.compile``), so the two are not combined."""
    remat = _checks.boolean(where, "remat", remat)
    if remat and randomness != "error":
        raise ValueError(
            f"{where}: remat=True recomputes each inner step in the backward pass, where a "
            "random operation (dropout) would draw new numbers; use remat=False with "
            f"randomness={randomness!r}, or chunk_size= to bound memory "
            f"(got remat=True and randomness={randomness!r})"
        )
    return remat


def check_params(
    where: str, params: Any, inner: float | Any | Optimizer, lr_name: str = "inner_lr"
) -> None:
    """The parameters a learner's ``init`` gets, and its inner rates when they are a tree
    (which must fit the parameters, see ``_checks.learning_rate_like``)."""
    _checks.params_tree(where, "params", params)
    if not isinstance(inner, (float, Optimizer)):
        _checks.learning_rate_like(where, lr_name, inner, params, "params")


def inner_loop(
    params: Any,
    data: Any,
    *,
    loss: Loss,
    steps: int,
    lr: float | Any = None,
    opt: Optimizer | None = None,
    first_order: bool = False,
    mask: Any = None,
) -> Any:
    """The inner loop on one task, validated: ``steps`` updates from ``params`` on ``loss``.

    Give ``lr`` (plain SGD: a number, or a pytree of rates like ``params``) or ``opt`` (any
    ``mf.optim`` optimizer, e.g. ``mf.optim.sgd(0.01, momentum=0.9)``). Differentiable through
    every step (see the learners for the meta-gradient built on it).

    Args:
        params: pytree of tensors, the starting point.
        data: the task's support data, passed unchanged to ``loss``.
        loss: ``loss(params, data) -> scalar tensor``.
        steps: number of updates (0 returns ``params``).
        lr: the SGD step size; exclusive with ``opt``.
        opt: the inner optimizer; exclusive with ``lr``.
        first_order: detach inner gradients.
        mask: which leaves adapt (a name, names, a predicate on dotted names, or a tree of bools);
            ``None`` for all.

    Example:
        >>> adapted = mf.inner_loop(params, (x, y), loss=loss, lr=0.01, steps=5)
    """
    where = "inner_loop"
    _checks.function(where, "loss", loss, "loss(params, data)")
    steps = _checks.integer(where, "steps", steps, minimum=0)
    _checks.boolean(where, "first_order", first_order)
    _tree.picked(params, mask, where=where, name="mask")
    pick = _tree.picker(mask, where=where, name="mask")
    inner = inner_update(where, lr, opt, lr_name="lr", opt_name="opt")
    check_params(where, params, inner, lr_name="lr")
    return adapt(
        params,
        data,
        loss=loss,
        steps=steps,
        opt=optimizer(inner, params, pick),
        first_order=first_order,
        pick=pick,
    )
