"""BOIL: body only update in the inner loop.

Oh, Yoo, Kim, Yun. "BOIL: Towards Representation Change for Few-shot Learning", ICLR 2021
(arXiv:2008.08882). The reverse of ANIL: in the inner loop the body (the feature extractor)
adapts and the head (the classifier) stays where it is; both are meta-learned, the head
through the adapted body. It is MAML with the mask ``complement(head)``.
"""

from __future__ import annotations

from typing import Any

from .. import _tree
from .._learner import Learner
from ..optim import Optimizer
from .maml import Loss, masked


def boil(
    loss: Loss,
    *,
    head: _tree.Selector,
    inner_lr: float | Any | None = None,
    inner_opt: Optimizer | None = None,
    inner_steps: int = 1,
) -> Learner:
    """BOIL (Oh et al., 2021): :func:`metafunc.maml` where every parameter but the ``head``
    adapts; the head is frozen in the inner loop and still meta-learned.

    Args:
        loss: ``loss(params, data) -> scalar`` for the support and the query set.
        head: the parameters that stay fixed in the inner loop, picked as
            :func:`metafunc.anil` picks the ones that adapt; at least one must be left to adapt.
        inner_lr, inner_opt, inner_steps: as for :func:`metafunc.maml` (only the body's rates
            of a tree of rates are used). All parameters are meta-learned.

    Example:
        >>> fn, params = mf.pure(mf.models.mlp([1, 40, 40, 1]))
        >>> learner = mf.boil(mf.supervised(fn, mf.losses.mse), head="4", inner_lr=0.01)
    """
    if head is None:
        raise TypeError(
            "boil: head must be a module name, a list of names, a predicate on parameter names "
            "or a tree of bools (got None); mf.maml adapts every parameter"
        )
    return masked("boil", loss, inner_lr, inner_opt, inner_steps, _tree.complement(head), "head")
