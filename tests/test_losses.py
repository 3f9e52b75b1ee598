"""``mf.losses``: the numbers torch's own losses give, and derivatives that hold under
``torch.func`` transforms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

import metafunc as mf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mse_is_torchs_mse_loss_to_the_bit(dtype):
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 10, 250):
        pred, target = (torch.randn(n, 1, generator=g, dtype=dtype) for _ in range(2))
        assert torch.equal(mf.losses.mse(pred, target), F.mse_loss(pred, target))


def test_mse_second_order_gradient_under_vmap_is_torchs_in_float64():
    """One inner step on each of 3 tasks and the query loss, differentiated with respect to the
    starting weight: ``mf.losses.mse`` and ``F.mse_loss`` give the same meta-gradient (they
    differ only in how the derivative is written)."""
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(2, 1, generator=g, dtype=torch.float64)
    xs, ys, xq, yq = (
        torch.randn(3, 5, 2 if i % 2 == 0 else 1, generator=g, dtype=torch.float64)
        for i in range(4)
    )

    def meta_loss(w, criterion):
        def task(xs, ys, xq, yq):
            inner = grad(lambda w: criterion(torch.tanh(xs @ w), ys))(w)
            return criterion(torch.tanh(xq @ (w - 0.5 * inner)), yq)

        return vmap(task)(xs, ys, xq, yq).mean()

    ours = grad(meta_loss)(w0, mf.losses.mse)
    torchs = grad(meta_loss)(w0, F.mse_loss)
    assert torch.allclose(ours, torchs, rtol=1e-13, atol=1e-15)
    assert not torch.equal(ours, torch.zeros_like(ours))
