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


class Pure:
    """A module as a pure function, ``fn(params, *inputs)``; made by :func:`pure`."""

    def __init__(self, module: nn.Module, constants: Params) -> None:
        self._module = module  # a private copy, never handed out
        self._constants = constants  # buffers and frozen parameters
        self._pristine = _tree.copy(constants)
        self._batchnorms = [
            name
            for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
        ]

    def __call__(self, params: Params, *args: Any, **kwargs: Any) -> Any:
        model = type(self._module).__name__
        if self._batchnorms and torch._C._functorch.peek_interpreter_stack() is not None:
            raise ValueError(_batchnorm_message(model, self._batchnorms))
        constants = self._constants
        if torch.compiler.is_compiling():
            return functional_call(self._module, (params, constants), args, kwargs, strict=True)
        versions = {name: b._version for name, b in constants.items()}
        out = functional_call(self._module, (params, constants), args, kwargs, strict=True)
        for name, b in constants.items():
            if b._version != versions[name]:
                constants[name] = self._pristine[name].clone()  # undo: the next call is clean
                raise ValueError(
                    f"pure: {model} wrote into its buffer {name!r} during forward; a pure model "
                    "keeps no state between calls (under vmap every task would write the same "
                    "buffer): compute it from the inputs, or call module.eval() before mf.pure "
                    "if the layer has an evaluation mode"
                )
        return out

    def __repr__(self) -> str:
        mode = "train" if self._module.training else "eval"
        return f"mf.pure({type(self._module).__name__}, {mode} mode)"


def pure(module: nn.Module) -> tuple[Callable[..., Any], Params]:
    """Split ``module`` into a pure function and a dict of parameter copies.

    ``fn(params, *inputs)`` runs the module's forward with ``params`` in place of its
    parameters. The module itself is never touched: ``fn`` calls a private deep copy, in the
    train or eval mode the module was in (see :func:`eval_mode`), and ``params`` holds detached
    copies keyed by ``named_parameters()`` names. Buffers are copied once and held constant,
    and so are **frozen parameters** (``requires_grad=False``): they are not in ``params``, so
    they are never adapted, meta-learned, given a gradient or an optimizer state, nor written
    to a checkpoint (rebuild ``fn`` from the same module to use one).

    torch's BatchNorm layers in training mode are refused inside a ``torch.func`` transform
    (``ValueError`` saying what to use instead): with running statistics they would update
    buffers in place, which is impure and impossible per task under ``vmap``; without them,
    torch 2.13 computes wrong second-order gradients under ``vmap`` (a MAML meta-gradient off
    in the fourth digit, silently). :class:`metafunc.models.BatchNorm` is the same
    normalisation in plain ops, correct under every transform. Called plainly, such a model
    still runs.

    Args:
        module: any ``torch.nn.Module``.

    Returns:
        ``(fn, params)``.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: ``module`` has no trainable parameters.

    Example:
        >>> fn, params = pure(nn.Linear(1, 1))
        >>> fn(params, torch.zeros(3, 1)).shape
        torch.Size([3, 1])
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"pure: module must be a torch.nn.Module (got {type(module).__name__})")
    named = dict(module.named_parameters())
    params = _tree.copy({k: p for k, p in named.items() if p.requires_grad})
    frozen = _tree.copy({k: p for k, p in named.items() if not p.requires_grad})
    if not params:
        frozen_note = f" (all {len(frozen)} have requires_grad=False)" if frozen else ""
        raise ValueError(
            f"pure: module {type(module).__name__} has no parameters to learn{frozen_note}"
        )
    constants = {**_tree.copy(dict(module.named_buffers())), **frozen}
    return Pure(copy.deepcopy(module), constants), params


def eval_mode(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (from :func:`pure`) with its module in eval mode, as ``module.eval()`` would put it.

    Dropout is then off and torch's BatchNorm uses its stored statistics, so the function is
    deterministic: use it to score and predict with a model trained in train mode. It takes
    the same ``params``; ``fn`` itself is unchanged.

    Args:
        fn: a pure function from :func:`pure`.

    Raises:
        TypeError: ``fn`` does not come from :func:`pure`.

    Example:
        >>> fn, params = mf.pure(nn.Sequential(nn.Linear(1, 8), nn.Dropout(0.1), nn.Linear(8, 1)))
        >>> predict = mf.eval_mode(fn)
        >>> torch.equal(predict(params, x), predict(params, x))
        True
    """
    if not isinstance(fn, Pure):
        raise TypeError(
            f"eval_mode: fn must be a function from mf.pure(module) (got {type(fn).__name__})"
        )
    return Pure(copy.deepcopy(fn._module).eval(), fn._constants)


def _batchnorm_message(model: str, names: list[str]) -> str:
    return (
        f"pure: {model} has torch BatchNorm layer(s) {names} in training mode, which "
        "are refused under vmap and grad: with running statistics every task would write the "
        "same buffers, and without them torch gives wrong second-order gradients under vmap. "
        "Use mf.models.BatchNorm (per-batch statistics in plain ops, as in the MAML paper), "
        "nn.GroupNorm or nn.LayerNorm, or call module.eval() before mf.pure to use the "
        "stored statistics as constants."
    )
