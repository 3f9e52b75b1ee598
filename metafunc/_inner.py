"""The inner loop: a few optimizer steps on one task's loss, differentiable end to end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.func import grad

from . import _checks, _tree
from .optim import Optimizer, apply_updates
from .optim._base import rate
from .optim._sgd import transform as sgd

Loss = Callable[[Any, Any], torch.Tensor]
# The carry between steps: the adapted leaves (in ``_tree.split`` order) and the optimizer state,
# and the model state when the loss threads one (a ``Stateful`` loss).
Carry = tuple[Any, ...]


@dataclass(frozen=True)
class Loop:
    """One task's inner loop as a pure function of the meta-parameters: ``loop(meta, data)``
    runs ``steps`` updates and returns the adapted parameters.

    ``setup(meta) -> (params, loss, opt)`` gives the starting parameters θ0, the inner loss
    ``loss(params, data)`` and the inner optimizer. Whatever the steps depend on that the
    meta-gradient must reach (Meta-SGD's rates, DAML's loss network, the leaves that do not
    adapt) comes out of ``meta`` there and from nowhere else, so each step is a pure function
    ``step`` of ``(loop, meta, carry, data)``: the pieces a rematerialised meta-gradient
    differentiates one step at a time (:func:`metafunc.remat`). The steps are built with
    ``torch.func.grad`` and a functional optimizer, so the result stays differentiable in
    ``meta`` through every step, the optimizer's own state included.

    Attributes:
        setup: ``setup(meta) -> (params, loss, opt)``.
        steps: number of updates (0 returns θ0).
        first_order: detach the inner gradients (:func:`metafunc.first_order`); ``None`` when
            the meta-parameters reach the outer loss only through them, so detaching them is
            refused (DAML's learned loss).
        pick: which leaves of ``params`` adapt (a predicate on dotted names); ``None`` for all.

    Example:
        >>> loop = mf.Loop(lambda meta: (meta, loss, mf.optim.sgd(0.1)), steps=3)
        >>> support = tuple(t[0] for t in tasks.support)  # the first task's (x, y)
        >>> adapted = loop(params, support)
        >>> bool(loss(adapted, support) < loss(params, support))
        True
        >>> learner.inner  # mf.maml's inner is a Loop
        Loop(setup=<function ...>, steps=1, first_order=False, pick=None)
    """

    setup: Callable[[Any], tuple[Any, Loss, Optimizer]]
    steps: int
    first_order: bool | None = False
    pick: Callable[[str], bool] | None = None

    def __call__(self, meta: Any, data: Any, *state: Any) -> Any:
        # With a loss that threads model state (``Stateful``): loop(meta, data, state) ->
        # (adapted, state), the state carried through every step's forward pass.
        if self.steps == 0:
            return (self.setup(meta)[0], *state) if state else self.setup(meta)[0]
        carry = start(self, meta, *state)
        for _ in range(self.steps):
            carry = step(self, meta, carry, data)
        return finish(self, meta, carry)


def start(loop: Loop, meta: Any, *state: Any) -> Carry:
    """The carry before the first step: θ0's adapting leaves and the optimizer's first state
    (and the model state, when there is one)."""
    params, _, opt = loop.setup(meta)
    theta, _ = _tree.split(params, loop.pick)
    return (theta, opt.init(theta), *state)


def step(loop: Loop, meta: Any, carry: Carry, data: Any) -> Carry:
    """One inner update: the gradient of the inner loss at the carried leaves, through the
    optimizer."""
    params, loss, opt = loop.setup(meta)
    _, merge = _tree.split(params, loop.pick)
    theta, state, *model = carry
    if model:  # a Stateful loss: the forward pass's new model state comes out beside the grad
        threads = cast(Callable[..., tuple[torch.Tensor, Any]], loss)
        g, new = grad(lambda t: threads(merge(t), model[0], data), has_aux=True)(theta)
        model = [new]
    else:
        g = grad(lambda leaves: loss(merge(leaves), data))(theta)
    if loop.first_order:
        g = _tree.detach(g)
    updates, state = opt.update(g, state, theta)
    return (apply_updates(theta, updates), state, *model)


def finish(loop: Loop, meta: Any, carry: Carry) -> Any:
    """The adapted parameters: the carried leaves put back among the ones that do not adapt
    (and the model state after the steps, when there is one)."""
    params, _, _ = loop.setup(meta)
    _, merge = _tree.split(params, loop.pick)
    return (merge(carry[0]), carry[2]) if len(carry) > 2 else merge(carry[0])


def optimizer(
    inner: float | torch.Tensor | Any | Optimizer,
    params: Any,
    pick: Callable[[str], bool] | None = None,
) -> Optimizer:
    """The inner optimizer a learner was given: an ``Optimizer`` as it is, or a learning rate
    as :func:`metafunc.optim.sgd` over the leaves of ``params`` that ``pick`` chooses (the
    loop's list, in :func:`metafunc._tree.split` order): a number or a 0-d tensor for all of
    them, or a tree of rates like ``params``, matched by name."""
    if isinstance(inner, Optimizer):
        return inner
    if isinstance(inner, (float, torch.Tensor)):
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
    positive number, a positive 0-d tensor or a tree of rates; 0.01 when neither is given)."""
    if opt is None:
        checked = _checks.learning_rate(where, lr_name, 0.01 if lr is None else lr)
        # a number or a 0-d tensor is held in a one-element tensor: an input of the compiled
        # step, not a constant
        return rate(checked) if isinstance(checked, (float, torch.Tensor)) else checked
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


def check_params(
    where: str, params: Any, inner: float | Any | Optimizer, lr_name: str = "inner_lr"
) -> None:
    """The parameters a learner's ``init`` gets, and its inner rates when they are a tree
    (which must fit the parameters, see ``_checks.learning_rate_like``) or a tensor (which must
    have their dtype and device)."""
    _checks.params_tree(where, "params", params)
    if isinstance(inner, torch.Tensor):
        _checks.scalar_rate_like(where, lr_name, inner, params)
    elif not isinstance(inner, (float, Optimizer)):
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

    Give ``lr`` (plain SGD: a number, a 0-d tensor, or a pytree of rates like ``params``) or
    ``opt`` (any ``mf.optim`` optimizer, e.g. ``mf.optim.sgd(0.01, momentum=0.9)``).
    Differentiable through every step: an outer ``grad`` of a loss at the result is the exact
    meta-gradient, Hessian terms included (without them with ``first_order=True``). It is a
    :class:`Loop` run once; learners hold their :class:`Loop` and run it under ``vmap``. The
    arguments are checked when it is called directly; inside ``torch.func`` transforms and
    compiled code (a learner's ``inner``) they are not, so rates may be learned tensors of any
    value there, and the learner's ``init`` is where to check what it is given.

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
        >>> support = tuple(t[0] for t in tasks.support)  # the first task's (x, y)
        >>> query = tuple(t[0] for t in tasks.query)
        >>> adapted = mf.inner_loop(params, support, loss=loss, lr=0.01, steps=5)
        >>> bool(loss(adapted, support) < loss(params, support))
        True
        >>> def meta_loss(params):  # the query loss after adapting, differentiable
        ...     return loss(mf.inner_loop(params, support, loss=loss, lr=0.01, steps=5), query)
        >>> torch.func.grad(meta_loss)(params)["0.weight"].shape
        torch.Size([8, 1])
    """
    where = "inner_loop"
    pick = _tree.picker(mask, where=where, name="mask")
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        inner = opt if opt is not None else 0.01 if lr is None else lr
        inner = float(inner) if isinstance(inner, int) else inner
    else:
        _checks.function(where, "loss", loss, "loss(params, data)")
        steps = _checks.steps(where, "steps", steps)
        first_order = _checks.boolean(where, "first_order", first_order)
        _tree.picked(params, mask, where=where, name="mask")
        inner = inner_update(where, lr, opt, lr_name="lr", opt_name="opt")
        check_params(where, params, inner, lr_name="lr")
    opt = optimizer(inner, params, pick)
    return Loop(lambda _: (params, loss, opt), steps, first_order, pick)(None, data)
