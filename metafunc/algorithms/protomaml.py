"""ProtoMAML: MAML with a linear head initialised from the class prototypes.

Triantafillou, Zhu, Dumoulin, Lamblin, Evci, Xu, Goroshin, Gelada, Swersky, Manzagol,
Larochelle. "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples",
ICLR 2020 (arXiv:1903.03096, 2019), section 3. With squared Euclidean distances a
prototypical network is a linear classifier over the embedding, ``W_k = 2 c_k``,
``b_k = −‖c_k‖²`` (Snell et al., 2017, section 2.4); ProtoMAML starts each task's head there
and adapts it, with the embedding (all parameters, as the paper does) or alone, by gradient
steps on the support cross-entropy. The meta-gradient is exact: through the inner steps and
through the head's initialisation, which depends on the embedding. Classes are counted as
:func:`metafunc.protonet` counts them, so tasks of any ways share one head shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .. import _checks, _inner, _state, _tree
from .._learner import Learner
from ..losses import cross_entropy
from ..optim import Optimizer
from .protonet import Embed, class_means, features, query_loss


class Head(NamedTuple):
    """One task's adapted classifier: the embedding's parameters and a linear head over its
    features, ``(classes, features)`` weights and ``(classes,)`` biases; ``present`` as in
    ``Prototypes``."""

    params: Any
    weight: torch.Tensor
    bias: torch.Tensor
    present: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``W f + b`` for features ``(n, features)``, ``-inf`` for an absent class."""
        return torch.where(self.present, features @ self.weight.T + self.bias, float("-inf"))


def protomaml(
    embed: Embed,
    *,
    inner_lr: float | torch.Tensor | None = None,
    inner_opt: Optimizer | None = None,
    inner_steps: int = 1,
    adapt_body: bool = True,
) -> Learner:
    """ProtoMAML (Triantafillou et al., 2019) over the embedding ``embed``.

    Tasks are as for :func:`metafunc.protonet`; the outer loss is the query cross-entropy of
    the adapted head (at the meta-parameters the uniform guess's, ``log N``).

    Args:
        embed: ``embed(params, x) -> features`` ``(examples, ...)``, flattened per example.
        inner_lr, inner_opt: the inner update, as for :func:`metafunc.maml`, but no tree of
            rates (the head is made per task).
        inner_steps: inner steps per task (0 is :func:`metafunc.protonet` in linear form).
        adapt_body: adapt the embedding with the head (the paper); ``False``: the head alone.

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are the embedding's parameters and
        whose ``adapt`` gives ``Head``; score with ``predict=mf.classifier(embed)``.
        ``mf.first_order(learner)`` is the paper's first-order ProtoMAML.

    Example:
        >>> embed, params = mf.pure(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8)))
        >>> learner = mf.protomaml(embed, inner_lr=0.1, inner_steps=2)
        >>> x, y = torch.randn(2, 6, 4), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2)
        >>> learner.adapt(params, (x, y)).weight.shape  # one head row per class slot
        torch.Size([2, 6, 8])
    """
    where = "protomaml"
    _checks.function(where, "embed", embed, "embed(params, x) -> features")
    _state.refuse(where, embed)
    rate = _inner.inner_update(where, inner_lr, inner_opt)
    if not isinstance(rate, (float, torch.Tensor, Optimizer)):
        raise TypeError(
            f"{where}: inner_lr must be a number or a 0-d tensor: the head is made per task, "
            f"so a tree of rates has nothing to match (got a {type(rate).__name__})"
        )
    steps = _checks.steps(where, "inner_steps", inner_steps)
    pick = None if _checks.boolean(where, "adapt_body", adapt_body) else lambda n: n[:5] == "head."

    def init(params: Any) -> Any:
        _inner.check_params(where, params, rate)
        return _tree.copy(params)

    inner = Adapt(embed, rate, steps, pick)
    return Learner(init, inner, query_loss(embed, Head), check=_checks.class_labels)


@dataclass(frozen=True)
class Adapt:
    """ProtoMAML's adaptation of one task, ``inner(meta, support) -> Head``: the head started
    at the support's prototypes, then ``steps`` updates of the leaves ``pick`` chooses;
    ``first_order`` detaches the inner gradients (:func:`metafunc.first_order`, the paper's
    fo-Proto-MAML; the start at the prototypes stays differentiable)."""

    embed: Embed
    rate: Any
    steps: int
    pick: Callable[[str], bool] | None
    first_order: bool = False

    def __call__(self, meta: Any, support: Any) -> Head:
        x, y, *keep = support
        c, present = class_means(features(self.embed, meta, x), y, *keep)
        start = {"body": meta, "head": {"weight": 2 * c, "bias": -(c**2).sum(1)}}

        def loss(p: Any, data: Any) -> torch.Tensor:
            logits = Head(p["body"], **p["head"], present=present).logits
            return cross_entropy(logits(features(self.embed, p["body"], data[0])), *data[1:])

        opt = _inner.optimizer(self.rate, start, self.pick)
        loop = _inner.Loop(lambda _: (start, loss, opt), self.steps, self.first_order, self.pick)
        p = loop(None, support)
        return Head(p["body"], **p["head"], present=present)
