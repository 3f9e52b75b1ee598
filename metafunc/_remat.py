"""The exact meta-gradient with rematerialised inner steps (:func:`metafunc.remat`).

Reverse mode through the inner loop keeps every step's activations (and those of its inner
backward pass) until the outer backward pass uses them: memory grows with the steps. Here the
forward pass runs the steps keeping only their carries (θ_k and the optimizer state), then the
backward pass walks them in reverse, each step differentiated by its own ``torch.func.vjp``
(which runs that step once more) and freed before the next: the activations of one step are
alive at a time, for one more forward pass of the inner loop. The arithmetic is that of
differentiating through the loop, so the meta-gradient is the same bit for bit (tested in
float64). It is written with ``vjp`` rather than ``torch.utils.checkpoint`` (which
``torch.func`` refuses: no saved-tensor hooks) or a custom ``autograd.Function`` (which Dynamo
inlines without its backward under ``vmap``), so it compiles to the same meta-gradient in one
graph. The memory bound holds eagerly and compiled with ``backend="aot_eager"``; Inductor's
compiled step does not keep it (measured: its peak grows with the inner steps as without
remat, with its CSE, pattern matching and reordering for locality switched off too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.func import vjp, vmap

from . import _tree
from ._inner import Carry, Loop, finish, start, step
from ._types import Tasks

if TYPE_CHECKING:
    from ._learner import Learner, Losses


def remat_gradient(learner: Learner, meta: Any, tasks: Tasks) -> tuple[Any, Losses]:
    """The exact meta-gradient of ``learner`` (whose ``inner`` is a :class:`Loop`), one inner
    step alive at a time. Each piece is vmapped over the tasks inside its vjp, as the exact
    rule's grad is outside its vmap: the batching, and so the arithmetic, is the same."""
    from ._learner import Losses

    loop = cast(Loop, learner.inner)  # mf.remat checked it
    support, query = tasks
    carries = [start(loop, meta)]
    for k in range(loop.steps):
        carries.append(_forward(loop, k, meta, carries[-1], support))

    def after(meta: Any, theta: list[torch.Tensor], query: Any) -> torch.Tensor:
        return learner.outer(finish(loop, meta, (theta, None)), query)

    batched = vmap(after, in_dims=(None, 0 if loop.steps else None, 0))
    mean, pull = pullback(lambda m, t: batched(m, t, query).mean(), meta, carries[-1][0])
    grads, theta_cotangent = pull(torch.ones_like(mean))
    # the cotangent of the last carry: the loss reads only its parameters
    floats, _ = _tree.split_leaves(carries.pop(), _is_floating)
    cotangent = [
        *theta_cotangent,
        *(torch.zeros_like(t) for t in floats[len(theta_cotangent) :]),
    ]
    for k in reversed(range(loop.steps)):
        g, cotangent = _backward(loop, k, meta, carries[k], support, cotangent)
        grads = _tree.map(torch.add, grads, g)
    _, pull = pullback(lambda m: _tree.split_leaves(start(loop, m), _is_floating)[0], meta)
    grads = _tree.map(torch.add, grads, pull(cotangent)[0])
    outer = learner.outer
    before = vmap(lambda m, q: outer(learner.params(m), q), in_dims=(None, 0))(meta, query)
    return grads, Losses(mean, before.mean())


def _forward(loop: Loop, k: int, meta: Any, carry: Carry, support: Any) -> Carry:
    # Step k of every task. The carry before the first step does not depend on the task
    # (in_dims None); leaves that are not tensors (None: state an optimizer does not keep)
    # pass through vmap unchanged.
    tensors, merge = _tree.split_leaves(carry, _is_tensor)
    f = lambda m, t, d: _tree.split_leaves(step(loop, m, merge(t), d), _is_tensor)[0]  # noqa: E731
    return cast(
        Carry, merge(vmap(f, in_dims=(None, None if k == 0 else 0, 0))(meta, tensors, support))
    )


def _backward(
    loop: Loop, k: int, meta: Any, carry: Carry, support: Any, cotangent: Any
) -> tuple[Any, Any]:
    # vjp of step k, which runs it once more: its activations live only in here.
    floats, merge = _tree.split_leaves(carry, _is_floating)
    f = lambda m, c: _tree.split_leaves(_forward(loop, k, m, merge(c), support), _is_floating)[0]  # noqa: E731
    _, pull = pullback(f, meta, floats)
    return cast(tuple[Any, Any], pull(cotangent))


def pullback(f: Callable[..., Any], *primals: Any) -> tuple[Any, Callable[..., Any]]:
    """``torch.func.vjp`` without auxiliary outputs: ``(output, pullback)``."""
    out, pull = vjp(f, *primals)[:2]
    return out, pull


def _is_tensor(leaf: Any) -> bool:
    return isinstance(leaf, torch.Tensor)


def _is_floating(leaf: Any) -> bool:
    return isinstance(leaf, torch.Tensor) and leaf.is_floating_point()
