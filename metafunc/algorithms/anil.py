"""ANIL: almost no inner loop.

Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020 (arXiv:1909.09157, 2019). Only the head (a chosen subset of
the parameters, usually the last layer) adapts in the inner loop; the body is shared by all
tasks and still meta-learned through the adapted head. It is MAML with a mask.
"""

from __future__ import annotations

from typing import Any

from .. import _tree
from .._learner import Learner
from ..optim import Optimizer
from .maml import Loss, masked


def anil(
    loss: Loss,
    *,
    head: _tree.Selector,
    inner_lr: float | Any | None = None,
    inner_opt: Optimizer | None = None,
    inner_steps: int = 1,
) -> Learner:
    """ANIL (Raghu et al., 2019): :func:`metafunc.maml` where only the ``head`` parameters
    adapt.

    Args:
        loss: ``loss(params, data) -> scalar`` for the support and the query set.
        head: which parameters adapt: a module name (``"4"`` picks ``"4.weight"`` and
            ``"4.bias"``), a list of names, a predicate on dotted names, or a tree of bools
            like the parameters (any pytree). It must pick at least one parameter.
        inner_lr, inner_opt, inner_steps: as for :func:`metafunc.maml` (only the head's rates
            of a tree of rates are used).

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are all the parameters.

    Example:
        >>> fn, params = mf.pure(mf.models.mlp([1, 40, 40, 1]))
        >>> learner = mf.anil(mf.supervised(fn, mf.losses.mse), head="4", inner_lr=0.01)
        >>> adapted = learner.adapt(params, tasks.support)
        >>> torch.equal(adapted["0.weight"][0], params["0.weight"])  # the body stays
        True
        >>> torch.equal(adapted["4.weight"][0], params["4.weight"])  # the head adapts
        False
        >>> grads, _ = learner.meta_grad(params, tasks)
        >>> bool(grads["0.weight"].abs().sum() > 0)  # the body is meta-learned all the same
        True
    """
    if head is None:
        raise TypeError(
            "anil: head must be a module name, a list of names, a predicate on parameter names "
            "or a tree of bools (got None); mf.maml adapts every parameter"
        )
    return masked("anil", loss, inner_lr, inner_opt, inner_steps, head, "head")
