"""Task losses that are safe under vmap, grad of grad and torch.compile.

Each checks that prediction and target have the same shape: a ``(n, 1)`` prediction against
an ``(n,)`` target would otherwise broadcast to ``(n, n)`` and train on a silently wrong loss.
Shapes are static, so the check costs nothing in a compiled step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error.

    Example:
        >>> mf.losses.mse(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
        tensor(2.)
    """
    _same_shape("mse", pred, target)
    return F.mse_loss(pred, target)


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error, written so it compiles in a second-order step.

    ``F.l1_loss`` and ``abs`` fail inside a compiled second-order step under vmap on torch
    2.13 (an invalid meta-device gradient during tracing); ``where(d > 0, d, -d)`` is the same
    function with the same (sub)gradient, 0 at d = 0 like ``abs``, and compiles.

    Example:
        >>> mf.losses.l1(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
        tensor(1.)
    """
    _same_shape("l1", pred, target)
    d = pred - target
    return torch.where(d > 0, d, -d).mean()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (n, classes) against int64 class indices ``labels`` (n,).

    Example:
        >>> mf.losses.cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3]))  # log 4
        tensor(1.3863)
    """
    _tensors("cross_entropy", logits, labels, "logits", "labels")
    if labels.dtype != torch.int64:
        raise TypeError(
            f"cross_entropy: labels must be int64 class indices in 0..classes-1 (got "
            f"{labels.dtype}); convert them with labels.long()"
        )
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy: expected logits (n, classes) and labels (n,) "
            f"(got {tuple(logits.shape)} and {tuple(labels.shape)})"
        )
    return F.cross_entropy(logits, labels)


def supervised(
    fn: Callable[..., torch.Tensor], criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> Callable[[Any, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The task loss ``loss(params, (x, y)) = criterion(fn(params, x), y)``.

    Example:
        >>> fn, params = mf.pure(net)
        >>> loss = mf.supervised(fn, mf.losses.l1)
        >>> loss(params, (x, torch.sin(x))).shape  # one scalar per task
        torch.Size([])
    """

    def loss(params: Any, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = data
        pred = fn(params, x)
        if not isinstance(pred, torch.Tensor):
            raise TypeError(
                "supervised: fn(params, x) must return one tensor, the prediction the "
                f"criterion compares with y (got {type(pred).__name__}); for a model that "
                "returns more, write the loss yourself, e.g. "
                "loss = lambda params, data: criterion(fn(params, data[0])[0], data[1])"
            )
        return criterion(pred, y)

    return loss


def _tensors(name: str, a: Any, b: Any, a_name: str, b_name: str) -> None:
    for value, what in ((a, a_name), (b, b_name)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: {what} must be a tensor (got {type(value).__name__})")


def _same_shape(name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    _tensors(name, pred, target, "prediction", "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: prediction and target must have the same shape "
            f"(got {tuple(pred.shape)} and {tuple(target.shape)})"
        )
