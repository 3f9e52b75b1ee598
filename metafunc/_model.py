"""Models as pure functions over parameter pytrees."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from . import _tree

Params = dict[str, torch.Tensor]


def pure(module: nn.Module) -> tuple[Callable[..., Any], Params]:
    """Split ``module`` into a pure function and a dict of parameter copies.

    ``fn(params, *inputs)`` runs the module's forward with ``params`` in place of its
    parameters. The module itself is never touched: ``fn`` calls a private deep copy, and
    ``params`` holds detached copies keyed by ``named_parameters()`` names. Buffers are copied
    once and held constant. torch's BatchNorm layers in training mode are refused inside a
    ``torch.func`` transform (``ValueError`` saying what to use instead): with running
    statistics they would update buffers in place, which is impure and impossible per task
    under ``vmap``; without them, torch 2.13 computes wrong second-order gradients under
    ``vmap`` (a MAML meta-gradient off in the fourth digit, silently).
    :class:`metafunc.models.BatchNorm` is the same normalisation in plain ops, correct under
    every transform. Called plainly, such a model still runs.

    Args:
        module: any ``torch.nn.Module``.

    Returns:
        ``(fn, params)``.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: ``module`` has no parameters.

    Example:
        >>> fn, params = pure(nn.Linear(1, 1))
        >>> fn(params, torch.zeros(3, 1)).shape
        torch.Size([3, 1])
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"pure: module must be a torch.nn.Module (got {type(module).__name__})")
    params = _tree.copy(dict(module.named_parameters()))
    if not params:
        raise ValueError(f"pure: module {type(module).__name__} has no parameters to learn")
    buffers = _tree.copy(dict(module.named_buffers()))
    pristine = _tree.copy(buffers)
    private = copy.deepcopy(module)
    batchnorms = [
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]

    def fn(params: Params, *args: Any, **kwargs: Any) -> Any:
        if batchnorms and torch._C._functorch.peek_interpreter_stack() is not None:
            raise ValueError(_batchnorm_message(type(module).__name__, batchnorms))
        if torch.compiler.is_compiling():
            return functional_call(private, (params, buffers), args, kwargs, strict=True)
        versions = {name: b._version for name, b in buffers.items()}
        out = functional_call(private, (params, buffers), args, kwargs, strict=True)
        for name, b in buffers.items():
            if b._version != versions[name]:
                buffers[name] = pristine[name].clone()  # undo, so the next call is not affected
                raise ValueError(
                    f"pure: {type(module).__name__} wrote into its buffer {name!r} during "
                    "forward; a pure model keeps no state between calls (under vmap every task "
                    "would write the same buffer): compute it from the inputs, or call "
                    "module.eval() before mf.pure if the layer has an evaluation mode"
                )
        return out

    return fn, params


def _batchnorm_message(model: str, names: list[str]) -> str:
    return (
        f"pure: {model} has torch BatchNorm layer(s) {names} in training mode, which "
        "are refused under vmap and grad: with running statistics every task would write the "
        "same buffers, and without them torch gives wrong second-order gradients under vmap. "
        "Use mf.models.BatchNorm (per-batch statistics in plain ops, as in the MAML paper), "
        "nn.GroupNorm or nn.LayerNorm, or call module.eval() before mf.pure to use the "
        "stored statistics as constants."
    )
