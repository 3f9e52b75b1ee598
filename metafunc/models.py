"""Small reference networks used by the demos, tests and benchmarks."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from . import _checks


class FeatureMLP(nn.Sequential):
    """A ReLU MLP whose forward returns ``(output, hidden)``: ``hidden`` is the tuple of
    activations after each ReLU, first layer first (what DAML's adaptation loss sees)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        hidden = []
        for layer in self:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                hidden.append(x)
        return x, tuple(hidden)


def mlp(sizes: list[int] | tuple[int, ...], *, features: bool = False) -> nn.Sequential:
    """A ReLU multilayer perceptron with PyTorch's default initialisation.

    ``mlp([1, 40, 40, 1])`` is the MAML paper's sinusoid network. With ``features=True`` it is
    a :class:`FeatureMLP` (same parameters) that also returns its hidden activations.
    """
    if len(sizes) < 2:
        raise ValueError(
            f"mlp: sizes must list at least an input and an output width (got {sizes!r})"
        )
    for s in sizes:
        _checks.integer("mlp", "each of sizes", s, minimum=1)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return (FeatureMLP if features else nn.Sequential)(*layers)


def blog_sine_net(
    generator: torch.Generator, *, hidden: int = 32, features: bool = False
) -> nn.Sequential:
    """The blog's 1-32-32-1 ReLU network with its initialisation.

    First-layer weights ``U[−1, 1]``, the other weights ``U[−1/√32, 1/√32]``, biases zero.
    ``features=True`` returns ``(output, (h1, h2))`` for DAML (see :class:`FeatureMLP`).
    """
    net = mlp([1, hidden, hidden, 1], features=features)
    bound = 1 / math.sqrt(hidden)
    with torch.no_grad():
        for layer, b in zip((net[0], net[2], net[4]), (1.0, bound, bound), strict=True):
            layer.weight.uniform_(-b, b, generator=generator)
            layer.bias.zero_()
    return net
