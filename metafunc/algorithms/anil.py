"""ANIL: almost no inner loop.

Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020 (arXiv:1909.09157, 2019). Only the head (a chosen subset of
the parameters, usually the last layer) adapts in the inner loop; the body is shared by all
tasks and still meta-learned through the adapted head, exactly (second order) or first order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import _checks, _inner, _tree
from .._learner import Learner, build_learner

Selector = str | Sequence[str] | Callable[[str], bool]


def anil(
    loss: Callable[[Any, Any], torch.Tensor],
    *,
    head: Selector,
    inner_lr: float | Any = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    chunk_size: int | None = None,
) -> Learner:
    """ANIL (Raghu et al., 2019): MAML where only the ``head`` parameters adapt.

    The parameters must be a flat dict of named tensors, as :func:`metafunc.functionalize`
    returns (``{"0.weight": ..., "4.bias": ...}``).

    Args:
        loss: ``loss(params, data) -> scalar`` for the support and the query set.
        head: which parameters adapt: a module name (``"4"`` selects ``"4.weight"`` and
            ``"4.bias"``), a list of module or parameter names, or a predicate on the
            parameter name. It must select at least one parameter.
        inner_lr: the inner SGD step size, a positive number or a pytree like the parameters
            (only the head's rates are used).
        inner_steps: SGD steps per task.
        first_order: detach the inner gradients.
        chunk_size: vmap the tasks this many at a time; ``None`` for all at once.

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are all the parameters.

    Example:
        >>> fn, params = mf.functionalize(mf.models.mlp([1, 40, 40, 1]))
        >>> learner = mf.anil(mf.supervised(fn, mf.losses.mse), head="4", inner_lr=0.01)
    """
    name = "anil"
    _checks.function(name, "loss", loss, "loss(params, data)")
    select = _selector(head)
    inner_lr = _checks.learning_rate(name, "inner_lr", inner_lr)
    inner_steps = _checks.integer(name, "inner_steps", inner_steps, minimum=0)
    first_order = _checks.boolean(name, "first_order", first_order)
    chunk_size = _checks.chunk_size(name, chunk_size)

    def check_meta(where: str, meta_name: str, meta: Any) -> None:
        if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
            raise TypeError(
                f"{where}: {meta_name} must be a flat dict of named tensors as "
                f"mf.functionalize returns (got {type(meta).__name__})"
            )
        if not any(select(k) for k in meta):
            raise ValueError(
                f"{where}: head={head!r} selects no parameter; the parameter names are {list(meta)}"
            )

    def init(params: Any) -> Any:
        _checks.params_and_rates(name, params, inner_lr)
        check_meta(name, "params", params)
        return _tree.copy(params)

    def adapt(meta: dict[str, torch.Tensor], support: Any) -> dict[str, torch.Tensor]:
        body = {k: v for k, v in meta.items() if not select(k)}
        top = {k: v for k, v in meta.items() if select(k)}
        lr = inner_lr if isinstance(inner_lr, float) else {k: inner_lr[k] for k in top}
        top = _inner.adapt(
            top,
            support,
            loss=lambda h, data: loss({**body, **h}, data),
            lr=lr,
            steps=inner_steps,
            first_order=first_order,
        )
        return {k: top.get(k, v) for k, v in meta.items()}

    return build_learner(
        name,
        init=init,
        adapt=adapt,
        loss=loss,
        chunk_size=chunk_size,
        check_meta=check_meta,
    )


def _selector(head: Any) -> Callable[[str], bool]:
    if callable(head):
        return head
    names = [head] if isinstance(head, str) else head
    if (
        not isinstance(names, Sequence)
        or not names
        or not all(isinstance(n, str) and n for n in names)
    ):
        raise TypeError(
            "anil: head must be a module name, a non-empty list of names, or a predicate on "
            f"parameter names (got {head!r})"
        )
    return lambda key: any(key == n or key.startswith(n + ".") for n in names)
