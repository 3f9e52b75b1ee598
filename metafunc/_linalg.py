"""Linear algebra the algorithms share, written for vmap and the compiler: fixed iteration
counts, no branch on values."""

from __future__ import annotations

from typing import Any

import torch


def conjugate_gradient(matvec: Any, b: list[torch.Tensor], *, steps: int) -> list[torch.Tensor]:
    """``steps`` conjugate-gradient iterations on ``A x = b`` from ``x = 0`` (Hestenes and
    Stiefel, 1952), ``A`` symmetric positive definite given as ``matvec(v) -> A v`` on lists of
    tensors. A fixed number of iterations and no branch on values, so it compiles; once the
    residual or the curvature along the search direction is zero (solved, or ``A`` not positive
    definite there) the iterate stops moving instead of dividing by zero."""

    def dot(u: list[torch.Tensor], v: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([(ui * vi).sum() for ui, vi in zip(u, v, strict=True)]).sum()

    x = [torch.zeros_like(t) for t in b]
    r, p = b, b
    rr = dot(r, r)
    for _ in range(steps):
        ap = matvec(p)
        curvature = dot(p, ap)
        alpha = torch.where(curvature > 0, rr / curvature, torch.zeros_like(rr))
        x = [xi + alpha * pi for xi, pi in zip(x, p, strict=True)]
        r = [ri - alpha * ai for ri, ai in zip(r, ap, strict=True)]
        new_rr = dot(r, r)
        beta = torch.where(rr > 0, new_rr / rr, torch.zeros_like(rr))
        p = [ri + beta * pi for ri, pi in zip(r, p, strict=True)]
        rr = new_rr
    return x
