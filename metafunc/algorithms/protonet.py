"""Prototypical Networks.

Snell, Swersky, Zemel. "Prototypical Networks for Few-shot Learning", NeurIPS 2017
(arXiv:1703.05175). A task's classifier is its support set itself: each class's prototype is
the mean embedding of its support examples, and a query is scored by the negative squared
Euclidean distance of its embedding to each prototype, softmaxed over the classes. Only the
embedding is meta-learned, through the prototypes; no gradient step adapts anything.

How many classes a task has is known statically without being given: a task of ``n`` support
examples has at most ``n`` classes, labelled ``0..n−1``, so prototypes are computed for ``n``
class slots and the slots no support example fills are ruled out (``-inf`` logits). Any label
order works, tasks of fewer ways in a padded meta-batch need nothing more, and no ``ways``
argument can disagree with the data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import _checks, _state, _tree
from .._learner import Learner
from ..losses import cross_entropy

Embed = Callable[[Any, torch.Tensor], torch.Tensor]


class Prototypes(NamedTuple):
    """One task's nearest-prototype classifier, what :func:`protonet` adapts to a support set.

    Attributes:
        params: the embedding's parameters.
        prototypes: ``(classes, features)``, the mean support embedding of each class slot.
        present: ``(classes,)`` bool, the slots with a support example (the task's classes).
    """

    params: Any
    prototypes: torch.Tensor
    present: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``-‖f − c_k‖²`` for features ``(n, features)``, ``-inf`` for an absent class."""
        c = self.prototypes
        distance = (features**2).sum(1, keepdim=True) - 2 * features @ c.T + (c**2).sum(1)
        return torch.where(self.present, -distance, float("-inf"))


def protonet(embed: Embed) -> Learner:
    """Prototypical Networks (Snell et al., 2017) over the embedding ``embed``.

    A task is ``Tasks(support=(x, y), query=(x, y))`` (or padded, ``(x, y, mask)``) with int64
    labels in ``0..n−1``, ``n`` the support examples per task, as :func:`metafunc.tasks.fewshot`
    draws them. The outer loss is the query cross-entropy of the distance logits; at the
    meta-parameters, with no support seen, it is the uniform guess's, ``log N``.

    Args:
        embed: ``embed(params, x) -> features`` ``(examples, ...)``, flattened per example;
            e.g. ``fn`` of :func:`metafunc.pure` of a network without its classifier.

    Returns:
        a :class:`metafunc.Learner` whose meta-parameters are the embedding's parameters and
        whose ``adapt`` gives ``Prototypes``; score with ``predict=mf.classifier(embed)``.

    Example:
        >>> embed, params = mf.pure(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8)))
        >>> learner = mf.protonet(embed)
        >>> x, y = torch.randn(2, 6, 4), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2)
        >>> learner.adapt(params, (x, y)).prototypes.shape  # 6 class slots, 3 present
        torch.Size([2, 6, 8])
    """
    _checks.function("protonet", "embed", embed, "embed(params, x) -> features")
    _state.refuse("protonet", embed)

    def init(params: Any) -> Any:
        _checks.params_tree("protonet", "params", params)
        return _tree.copy(params)

    def inner(meta: Any, support: Any) -> Prototypes:
        x, y, *keep = support
        return Prototypes(meta, *class_means(features(embed, meta, x), y, *keep))

    return Learner(init, inner, query_loss(embed, Prototypes), check=_checks.class_labels)


def classifier(embed: Embed) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """``predict(adapted, x) -> logits`` ``(examples, classes)`` for the learners that classify
    over an embedding (:func:`metafunc.protonet`, :func:`metafunc.protomaml`), e.g. for
    :func:`metafunc.evaluate`; an absent class's logit is ``-inf``.

    Example:
        >>> scores = mf.evaluate(learner, meta, tasks, predict=mf.classifier(embed))
    """
    return lambda adapted, x: adapted.logits(features(embed, adapted.params, x))


def features(embed: Embed, params: Any, x: torch.Tensor) -> torch.Tensor:
    return embed(params, x).flatten(1)


def class_means(
    f: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(means, present)`` of the features ``f`` ``(n, d)`` per class slot ``0..n−1`` over the
    examples ``keep`` keeps; an empty slot's mean is 0."""
    member = labels[:, None] == torch.arange(len(labels), device=labels.device)
    weights = (member if keep is None else member & keep[:, None]).to(f.dtype)
    counts = weights.sum(0)
    return weights.T @ f / counts.clamp_min(1)[:, None], counts > 0


def query_loss(embed: Embed, adapted_type: type) -> Callable[[Any, Any], torch.Tensor]:
    """The outer loss of a learner whose ``inner`` gives an ``adapted_type`` with ``logits``;
    at the meta-parameters themselves (``loss_before``) the uniform guess over the classes
    of the query."""

    def loss(adapted: Any, query: Any) -> torch.Tensor:
        x, y, *keep = query
        if isinstance(adapted, adapted_type):
            return cross_entropy(classifier(embed)(adapted, x), y, *keep)
        member = y[:, None] == torch.arange(len(y), device=y.device)
        present = (member if not keep else member & keep[0][:, None]).any(0)
        uniform = torch.where(present, 0.0, float("-inf")).to(x.dtype).expand(len(y), -1)
        return cross_entropy(uniform, y, *keep)

    return loss
