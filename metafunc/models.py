"""Small reference networks used by the demos, tests and benchmarks."""

from __future__ import annotations

import itertools
import math
from typing import cast

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


def mlp(
    sizes: list[int] | tuple[int, ...],
    *,
    features: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """A ReLU multilayer perceptron with PyTorch's default initialisation.

    ``mlp([1, 40, 40, 1])`` is the MAML paper's sinusoid network. With ``features=True`` it is
    a :class:`FeatureMLP` (same parameters) that also returns its hidden activations. With a
    ``generator`` the initialisation (``nn.Linear``'s default, drawn layer by layer)
    draws from it instead of torch's global generator.

    Example:
        >>> net = mf.models.mlp([1, 40, 40, 1], generator=torch.Generator().manual_seed(0))
        >>> fn, params = mf.pure(net)
        >>> fn(params, torch.zeros(7, 1)).shape
        torch.Size([7, 1])
        >>> out, (h1, h2) = mf.models.mlp([1, 40, 40, 1], features=True)(torch.zeros(7, 1))
        >>> h1.shape, h2.shape
        (torch.Size([7, 40]), torch.Size([7, 40]))
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
    net = (FeatureMLP if features else nn.Sequential)(*layers)
    return _default_init(net, generator)


def _default_init(net: nn.Sequential, generator: torch.Generator | None) -> nn.Sequential:
    """With a generator, redraw every linear and convolution layer's default initialisation
    from it, layer by layer, weight then bias, with PyTorch's own bounds (``kaiming_uniform_``
    with ``a=√5`` for the weight, ``U[−1/√fan_in, 1/√fan_in]`` for the bias): the result equals
    ``torch.manual_seed(seed)`` followed by building the network, without touching torch's
    global generator's seed (tested)."""
    if generator is not None:
        with torch.no_grad():
            for layer in net:
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    fan_in = layer.weight[0].numel()
                    gain = math.sqrt(2.0 / (1 + 5))  # nn.init.calculate_gain("leaky_relu", √5)
                    bound = math.sqrt(3.0) * gain / math.sqrt(fan_in)
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    bound = 1 / math.sqrt(fan_in)
                    if layer.bias is not None:
                        layer.bias.uniform_(-bound, bound, generator=generator)
    return net


def blog_sine_net(
    generator: torch.Generator, *, hidden: int = 32, features: bool = False
) -> nn.Sequential:
    """The blog's 1-32-32-1 ReLU network with its initialisation.

    First-layer weights ``U[−1, 1]``, the other weights ``U[−1/√32, 1/√32]``, biases zero.
    ``features=True`` returns ``(output, (h1, h2))`` for DAML (see :class:`FeatureMLP`).

    Example:
        >>> net = mf.models.blog_sine_net(torch.Generator().manual_seed(0))
        >>> [tuple(p.shape) for p in net.parameters()]
        [(32, 1), (32,), (32, 32), (32,), (1, 32), (1,)]
    """
    net = mlp([1, hidden, hidden, 1], features=features)
    bound = 1 / math.sqrt(hidden)
    with torch.no_grad():
        for i, b in zip((0, 2, 4), (1.0, bound, bound), strict=True):
            layer = cast(nn.Linear, net[i])
            layer.weight.uniform_(-b, b, generator=generator)
            layer.bias.zero_()
    return net


def daml_loss_net(generator: torch.Generator, *, hidden: int = 32) -> nn.Sequential:
    """The blog's DAML adaptation-loss network: 65 inputs (``concat[y, h2, h1]`` of
    :func:`blog_sine_net` with ``features=True``) → 32 → 32 → 1, ReLU, ``nn.Linear``'s
    initialisation drawn from ``generator``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model, loss_net = mf.models.blog_sine_net(g, features=True), mf.models.daml_loss_net(g)
        >>> y, (h1, h2) = model(torch.zeros(4, 1))
        >>> loss_net(torch.cat([y, h2, h1], dim=-1)).shape
        torch.Size([4, 1])
    """
    return mlp([1 + 2 * hidden, hidden, hidden, 1], generator=generator)


def conv_net(
    ways: int,
    *,
    in_channels: int = 1,
    channels: int = 64,
    blocks: int = 4,
    image_size: int = 28,
    track_running_stats: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """The MAML paper's few-shot classifier (Finn et al., 2017, section 5.2).

    ``blocks`` blocks of 3×3 convolution (``channels`` filters, padding 1), batch
    normalisation with the batch's own statistics (:class:`BatchNorm`: no running
    statistics, so it works per task under ``vmap``), ReLU and 2×2 max-pooling, then a linear layer to ``ways`` logits. ``conv_net(5)`` is the 5-way
    Omniglot network for 28×28 single-channel images. With ``track_running_stats=True`` the
    batch norms keep running statistics too (MAML++): use it through :func:`metafunc.stateful`. With a ``generator`` the convolution
    and linear layers draw their (PyTorch default) initialisation from it.

    Example:
        >>> fn, params = mf.pure(mf.models.conv_net(5))
        >>> fn(params, torch.zeros(10, 1, 28, 28)).shape
        torch.Size([10, 5])
    """
    for name, value in (
        ("ways", ways),
        ("in_channels", in_channels),
        ("channels", channels),
        ("blocks", blocks),
        ("image_size", image_size),
    ):
        _checks.integer("conv_net", name, value, minimum=1)
    if image_size >> blocks < 1:
        raise ValueError(
            f"conv_net: image_size must be at least 2**blocks = {2**blocks} so that {blocks} "
            f"2x2 poolings leave a pixel (got {image_size})"
        )
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers += [
            nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1),
            BatchNorm(channels, track_running_stats=track_running_stats),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    side = image_size >> blocks  # each pooling floors the side to half
    layers += [nn.Flatten(), nn.Linear(channels * side * side, ways)]
    return _default_init(nn.Sequential(*layers), generator)


class BatchNorm(nn.Module):
    """Batch normalisation in plain tensor ops, with optional running statistics.

    For inputs ``(batch, channels, ...)``, the same function as torch's
    ``nn.BatchNorm1d/2d/3d`` (biased variance to normalise, ``eps`` inside the square root,
    learned scale and shift with ``affine=True``). Those modules' fused kernel gives wrong
    second-order gradients under ``vmap`` on torch 2.13 (a MAML meta-gradient off silently),
    so :func:`metafunc.pure` refuses them under transforms; these ops differentiate correctly,
    and :func:`metafunc.stateful` puts this layer in place of torch's.

    Without running statistics (the default, as the MAML paper's network) it normalises with
    the batch's statistics in training and in eval mode. With ``track_running_stats=True`` it
    keeps ``running_mean``, ``running_var`` (of the unbiased batch variance) and
    ``num_batches_tracked`` as torch does: in training mode it normalises with the batch's
    statistics and updates them, ``r ← (1 − momentum)·r + momentum·batch`` (``momentum=None``:
    the cumulative average), by giving the buffers new values rather than writing into them;
    in eval mode it normalises with them. Those buffers are model state: use the module through
    :func:`metafunc.stateful`, which returns them as a pytree and threads them through the
    step (:func:`metafunc.pure` refuses such a layer in training mode, since it would drop the
    update).

    Example:
        >>> norm = mf.models.BatchNorm(3)
        >>> out = norm(torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0)))
        >>> out.mean(dim=(0, 2, 3)).abs().max() < 1e-6
        tensor(True)
        >>> tracking = mf.models.BatchNorm(3, track_running_stats=True)
        >>> sorted(name for name, _ in tracking.named_buffers())
        ['num_batches_tracked', 'running_mean', 'running_var']
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        channels: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = False,
    ) -> None:
        super().__init__()
        _checks.integer("BatchNorm", "channels", channels, minimum=1)
        self.eps = _checks.positive_number("BatchNorm", "eps", eps)
        if momentum is not None:
            momentum = _checks.positive_number("BatchNorm", "momentum", momentum, allow_zero=True)
            if momentum > 1:
                raise ValueError(
                    f"BatchNorm: momentum must be in [0, 1] or None (got {momentum!r})"
                )
        self.momentum = momentum
        self.affine = _checks.boolean("BatchNorm", "affine", affine)
        self.track_running_stats = _checks.boolean(
            "BatchNorm", "track_running_stats", track_running_stats
        )
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def like(cls, norm: nn.modules.batchnorm._BatchNorm) -> BatchNorm:
        """This layer in place of torch's ``norm`` (``BatchNorm1d/2d/3d``): the same settings,
        mode, parameters and buffers (the tensors themselves, not copies)."""
        new = cls(
            norm.num_features,
            eps=norm.eps,
            momentum=norm.momentum,
            affine=norm.affine,
            track_running_stats=norm.track_running_stats,
        )
        new._parameters = norm._parameters.copy()
        new._buffers = {k: v for k, v in norm._buffers.items() if v is not None}
        return new.train(norm.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (0, *range(2, x.ndim))  # every dimension but the channels
        shape = (-1,) + (1,) * (x.ndim - 2)
        if self.training or not self.track_running_stats:
            mean = x.mean(dim=dims, keepdim=True)
            var = x.var(dim=dims, correction=0, keepdim=True)
            if self.training and self.track_running_stats:
                self._track(mean.detach().view(-1), var.detach().view(-1), x.numel() // x.shape[1])
        else:
            mean, var = self.running_mean.view(shape), self.running_var.view(shape)
        scale = torch.rsqrt(var + self.eps)
        if not self.affine:
            return (x - mean) * scale
        return (x - mean) * (self.weight.view(shape) * scale) + self.bias.view(shape)

    def _track(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        """New running statistics, as new tensors (never written in place: under ``vmap`` each
        task gets its own, and :func:`metafunc.stateful` returns them)."""
        count = self.num_batches_tracked + 1
        factor: float | torch.Tensor = (
            1.0 / count.to(mean.dtype) if self.momentum is None else self.momentum
        )
        unbiased = var * (n / max(n - 1, 1))
        self.num_batches_tracked = count
        self.running_mean = (1 - factor) * self.running_mean + factor * mean
        self.running_var = (1 - factor) * self.running_var + factor * unbiased
