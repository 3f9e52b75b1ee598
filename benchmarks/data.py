"""The workloads' networks and batches, drawn with torch from fixed generators (no global seed).

The harness writes them to one ``.npz`` per workload (:func:`write`); the torch workers rebuild
the network and load the same weights (:func:`load`), the JAX worker reads the arrays.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

import metafunc as mf

from .workloads import QUERIES, SHOTS, WAYS, Workload, params_of


def make_net(w: Workload) -> nn.Module:
    """The workload's network with weights drawn from a fixed generator."""
    if w.kind == "sinusoid":
        net = mf.models.mlp([1, w.hidden, w.hidden, 1])
    else:
        net = mf.models.conv_net(WAYS, channels=w.hidden, blocks=w.blocks, image_size=w.image_size)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                bound = 1 / math.sqrt(module.weight[0].numel())
                for p in (module.weight, module.bias):
                    p.copy_((2 * torch.rand(p.shape, generator=g) - 1) * bound)
    return net


def make_batch(w: Workload) -> mf.Tasks:
    """The one batch every implementation sees (float32, fixed seed)."""
    g = torch.Generator().manual_seed(1)
    if w.kind == "sinusoid":
        return mf.tasks.sinusoid(g, tasks=w.tasks)
    n = WAYS * (SHOTS + QUERIES)
    images = torch.randn(w.tasks, n, 1, w.image_size, w.image_size, generator=g)
    labels = torch.arange(WAYS).repeat(SHOTS + QUERIES).expand(w.tasks, n)
    k = WAYS * SHOTS
    return mf.Tasks((images[:, :k], labels[:, :k]), (images[:, k:], labels[:, k:]))


def write(w: Workload, path: Path) -> Path:
    """The workload's initial weights and batch as one ``.npz`` (see ``workloads.load_arrays``)."""
    arrays = {f"param/{k}": v.detach().numpy() for k, v in make_net(w).named_parameters()}
    tasks = make_batch(w)
    for part, (x, y) in (("support", tasks.support), ("query", tasks.query)):
        arrays[f"{part}/0"], arrays[f"{part}/1"] = x.numpy(), y.numpy()
    np.savez(path, **arrays)
    return path


def load(
    w: Workload, arrays: dict[str, np.ndarray], device: torch.device
) -> tuple[nn.Module, mf.Tasks]:
    """The network holding the shared weights, and the shared batch, on ``device``."""
    net, weights = make_net(w), params_of(arrays)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(weights[name]))
    part = {k: torch.from_numpy(arrays[k]).to(device) for k in arrays if not k.startswith("param/")}
    tasks = mf.Tasks((part["support/0"], part["support/1"]), (part["query/0"], part["query/1"]))
    return net.to(device), tasks
