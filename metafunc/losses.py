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
    """Mean squared error."""
    _same_shape("mse", pred, target)
    return F.mse_loss(pred, target)


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error, written so it compiles in a second-order step.

    ``F.l1_loss`` and ``abs`` fail inside a compiled second-order step under vmap on torch
    2.13 (an invalid meta-device gradient during tracing); ``where(d > 0, d, -d)`` is the same
    function with the same (sub)gradient, 0 at d = 0 like ``abs``, and compiles.
    """
    _same_shape("l1", pred, target)
    d = pred - target
    return torch.where(d > 0, d, -d).mean()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (n, classes) against integer ``labels`` (n,)."""
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
    """

    def loss(params: Any, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = data
        return criterion(fn(params, x), y)

    return loss


def _same_shape(name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: prediction and target must have the same shape "
            f"(got {tuple(pred.shape)} and {tuple(target.shape)})"
        )
