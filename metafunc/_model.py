"""Models as pure functions over parameter pytrees."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from . import _tree
from .models import BatchNorm

Params = dict[str, torch.Tensor]


class Pure:
    """A module as a pure function, ``fn(params, *inputs)``; made by :func:`pure`."""

    def __init__(self, module: nn.Module, constants: Params) -> None:
        self._module = module  # a private copy, never handed out
        self._constants = constants  # buffers and frozen parameters
        self._pristine = _tree.copy(constants)
        self._buffers = {name for name, _ in module.named_buffers()}
        # the names params must have; with exactly these, a call takes the fast path
        self._learned = {name for name, _ in module.named_parameters()} - set(constants)
        self._shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
        self._batchnorms = [
            name
            for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
        ]
        # running statistics that a pure function would drop (refused: mf.stateful keeps them)
        self._tracking_batchnorms = [
            name
            for name, m in module.named_modules()
            if isinstance(m, BatchNorm) and m.training and m.track_running_stats
        ]
        instancenorms = [
            (name, m)
            for name, m in module.named_modules()
            if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.training
        ]
        # written on every call, transformed or not
        self._tracking_instancenorms = [n for n, m in instancenorms if m.track_running_stats]
        # wrong second-order gradients under vmap (torch 2.13), as torch's BatchNorm
        self._affine_instancenorms = [n for n, m in instancenorms if m.affine]
        self._slots = _slots(module, self._learned | set(constants))

    def __call__(self, params: Params, *args: Any, **kwargs: Any) -> Any:
        self._refuse()
        if self._tracking_batchnorms:
            model = type(self._module).__name__
            raise ValueError(_message(_TRACKING_BATCHNORM, model, self._tracking_batchnorms))
        constants = self._constants
        if torch.compiler.is_compiling():
            return functional_call(self._module, (params, constants), args, kwargs, strict=True)
        versions = {name: b._version for name, b in constants.items()}
        exact = isinstance(params, dict) and params.keys() == self._learned
        try:
            if exact and self._slots is not None:
                out = _call_with(self._module, self._slots, (params, constants), args, kwargs)
            else:
                strict = not exact  # with exactly the module's names torch's check is skipped
                out = functional_call(
                    self._module, (params, constants), args, kwargs, strict=strict
                )
        except RuntimeError as e:
            self._check_shapes(params, e)
            # Under grad or vmap, torch refuses most writes into a buffer with its own message,
            # which names neither the buffer nor the model. Rerun the forward (only on this
            # failure path) watching for a write into a constant, to name it instead.
            written = self._find_write(params, args, kwargs) if constants else None
            self._undo(versions)
            if written is None:
                raise
            raise ValueError(self._written_message(written)) from e
        written = next((n for n, b in constants.items() if b._version != versions[n]), None)
        if written is not None:
            self._undo(versions)
            raise ValueError(self._written_message(written))
        return out

    def _refuse(self) -> None:
        """The norm layers refused as the docstring of :func:`pure` says."""
        model = type(self._module).__name__
        if self._tracking_instancenorms:
            raise ValueError(_message(_TRACKING_INSTANCENORM, model, self._tracking_instancenorms))
        if torch._C._functorch.peek_interpreter_stack() is not None:
            if self._batchnorms:
                raise ValueError(_message(_BATCHNORM, model, self._batchnorms))
            if self._affine_instancenorms:
                raise ValueError(_message(_AFFINE_INSTANCENORM, model, self._affine_instancenorms))

    def _check_shapes(self, params: Any, error: Exception) -> None:
        """After a failed forward: a parameter whose shape is not the module's is named as the
        cause (torch would blame the data: "mat1 and mat2 shapes cannot be multiplied")."""
        if not isinstance(params, dict):
            return
        for name, p in params.items():
            want = self._shapes.get(name)
            if want is not None and isinstance(p, torch.Tensor) and tuple(p.shape) != want:
                raise ValueError(
                    f"pure: params[{name!r}] must have the shape of "
                    f"{type(self._module).__name__}'s parameter {name!r}, {want} (got "
                    f"{tuple(p.shape)}); params must be the parameters of the model fn was made "
                    "from (mf.pure), or a checkpoint of that model"
                ) from error

    def _find_write(self, params: Params, args: Any, kwargs: Any) -> str | None:
        """The first constant the forward writes into, found by running it again under a mode
        that stops at that write (``None`` if it writes none before failing again)."""
        watch = _WriteWatch(self._constants)
        try:
            with watch:
                functional_call(self._module, (params, self._constants), args, kwargs, strict=True)
        except _Written as w:
            return w.name
        except Exception:  # the same failure again, with no write into a constant before it
            return None
        return None

    def _written_message(self, name: str) -> str:
        what = "buffer" if name in self._buffers else "frozen parameter"
        return (
            f"pure: {type(self._module).__name__} wrote into its {what} {name!r} during "
            "forward; a pure model keeps no state between calls (under vmap every task would "
            f"write the same {what}): compute it from the inputs, or call module.eval() before "
            "mf.pure if the layer has an evaluation mode"
        )

    def _undo(self, versions: dict[str, int]) -> None:
        """Put back the constants that a forward wrote into: the next call is clean."""
        for name, b in self._constants.items():
            if b._version != versions[name]:
                self._constants[name] = self._pristine[name].clone()

    def __repr__(self) -> str:
        mode = "train" if self._module.training else "eval"
        return f"mf.pure({type(self._module).__name__}, {mode} mode)"


class PureStateful(Pure):
    """A module with model state as a pure function, ``fn(params, state, *inputs) -> (out,
    state)``; made by :func:`stateful`."""

    def __init__(self, module: nn.Module, constants: Params, state: tuple[str, ...]) -> None:
        super().__init__(module, constants)
        self._state = state  # the names of the buffers that are state

    def __call__(self, params: Params, state: Params, *args: Any, **kwargs: Any) -> Any:
        self._refuse()
        if torch.compiler.is_compiling():
            merged = {**params, **self._constants, **state}
            out = functional_call(self._module, merged, args, kwargs, strict=True)
            return out, {name: merged[name] for name in state}
        if not isinstance(state, dict) or set(state) != set(self._state):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"stateful: state must be a dict of the model's state, named {sorted(self._state)}"
                f", as mf.stateful(module) returned it (got {got})"
            )
        given = {**self._constants, **state}
        versions = {name: t._version for name, t in given.items()}
        merged = {**params, **given}
        # functional_call gives a buffer that the forward rebinds (BatchNorm's new running
        # statistics) back in the dict it was given
        try:
            out = functional_call(self._module, merged, args, kwargs, strict=True)
        except RuntimeError as e:
            self._check_shapes(params, e)
            raise
        written = next((n for n, t in given.items() if t._version != versions[n]), None)
        if written is not None:
            raise ValueError(
                self._written_message(written).replace("pure:", "stateful:", 1)
                + "; a layer that updates state gives its buffer a new value instead "
                "(self.running_mean = new), which mf.stateful returns"
            )
        return out, {name: merged[name] for name in state}

    def __repr__(self) -> str:
        return super().__repr__().replace("mf.pure", "mf.stateful", 1)


def stateful(module: nn.Module) -> tuple[Callable[..., Any], Params, Params]:
    """Split ``module`` into a pure function of its parameters and its **model state**, the
    buffers its forward updates (BatchNorm's running statistics), like Flax's ``batch_stats``
    and equinox's ``State``.

    ``fn(params, state, *inputs) -> (out, state)`` runs the module's forward on a private copy
    and returns the output and the new state; nothing is written in place, so under ``vmap``
    each task gets its own state. Every buffer of the module is state (a buffer the forward
    leaves alone comes back unchanged); frozen parameters are constants, as in :func:`pure`.
    torch's BatchNorm layers (``nn.BatchNorm1d/2d/3d``) are replaced in the copy by
    :class:`metafunc.models.BatchNorm` with the same settings, parameters and buffers, the same
    function in plain ops whose second-order gradients are right under ``vmap``; in training
    mode they normalise with the batch's statistics and update the running ones, in eval mode
    (``module.eval()`` before, or :func:`eval_mode`) they normalise with the running ones.

    A learner built on a loss of ``fn`` (``mf.supervised(fn, criterion)``) threads the state
    through its inner steps and query pass; :func:`metafunc.make_step` keeps it in
    ``TrainState.model_state`` (give it to :func:`metafunc.init_state`), combined across the
    tasks of a meta-batch by their mean, and checkpoints it with the rest.

    Args:
        module: any ``torch.nn.Module``.

    Returns:
        ``(fn, params, state)``: ``params`` and ``state`` are dicts of detached copies keyed by
        ``named_parameters()`` and ``named_buffers()`` names.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: ``module`` has no trainable parameters; from ``fn``: a state that is not
            the module's, a forward that writes into a buffer in place.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
        >>> fn, params, state = mf.stateful(net)
        >>> sorted(state)
        ['1.num_batches_tracked', '1.running_mean', '1.running_var']
        >>> out, new = fn(params, state, torch.randn(8, 2))
        >>> int(new["1.num_batches_tracked"]), int(state["1.num_batches_tracked"])
        (1, 0)
        >>> out, _ = torch.func.vmap(fn, in_dims=(None, None, 0))(params, state, torch.randn(3, 8, 2))
        >>> out.shape
        torch.Size([3, 8, 1])
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"stateful: module must be a torch.nn.Module (got {type(module).__name__})")
    private = copy.deepcopy(module)
    for parent in list(private.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, BatchNorm.like(child))
    named = dict(module.named_parameters())
    params = _tree.copy({k: p for k, p in named.items() if p.requires_grad})
    if not params:
        raise ValueError(f"stateful: module {type(module).__name__} has no parameters to learn")
    frozen = _tree.copy({k: p for k, p in named.items() if not p.requires_grad})
    state = _tree.copy(dict(private.named_buffers()))
    return PureStateful(private, frozen, tuple(state)), params, state


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
    still runs. torch's InstanceNorm layers in training mode are refused with
    ``track_running_stats=True`` on every call (they write their statistics into buffers), and
    with ``affine=True`` inside a transform (wrong second-order gradients under ``vmap``);
    ``nn.GroupNorm(channels, channels)`` is instance normalisation with a learned scale and
    shift that differentiates correctly. A forward that writes into a buffer or a frozen
    parameter (``self.count += 1``, ``buf.mul_(0.9)``, ``buf[0] = ...``, ``out=buf``) is refused
    with a ``ValueError`` that names it, under a transform or not, and the value is restored.

    Args:
        module: any ``torch.nn.Module``.

    Returns:
        ``(fn, params)``.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: ``module`` has no trainable parameters; and from ``fn``: a forward that
            writes into a buffer or frozen parameter, or a norm layer refused as above.

    Example:
        >>> fn, params = mf.pure(nn.Linear(1, 1))
        >>> sorted(params)
        ['bias', 'weight']
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
    if isinstance(fn, PureStateful):
        return PureStateful(copy.deepcopy(fn._module).eval(), fn._constants, fn._state)
    return Pure(copy.deepcopy(fn._module).eval(), fn._constants)


_BATCHNORM = (
    "pure: {model} has torch BatchNorm layer(s) {names} in training mode, which "
    "are refused under vmap and grad: with running statistics every task would write the "
    "same buffers, and without them torch gives wrong second-order gradients under vmap. "
    "Use mf.models.BatchNorm (per-batch statistics in plain ops, as in the MAML paper) or "
    "nn.GroupNorm, call module.eval() before mf.pure to use the stored statistics as "
    "constants, or fn, params, state = mf.stateful(module) to keep running statistics as model "
    "state (each task its own, their mean across tasks)."
)


_TRACKING_BATCHNORM = (
    "pure: {model} has mf.models.BatchNorm layer(s) {names} with track_running_stats=True in "
    "training mode, whose running statistics are model state that a pure function would drop: "
    "use fn, params, state = mf.stateful(module), which returns and threads them, build them "
    "with track_running_stats=False (the batch's statistics only), or call module.eval() "
    "before mf.pure to use the stored statistics as constants."
)


_TRACKING_INSTANCENORM = (
    "pure: {model} has torch InstanceNorm layer(s) {names} with "
    "track_running_stats=True in training mode, which write their running statistics "
    "into buffers on every call: a pure model keeps no state between calls, and under "
    "vmap every task would write the same buffers. Build them with "
    "track_running_stats=False (instance normalisation uses each example's own "
    "statistics), use nn.GroupNorm(channels, channels) for instance normalisation with a "
    "learned scale and shift, or call module.eval() before mf.pure to use the stored "
    "statistics as constants."
)


_AFFINE_INSTANCENORM = (
    "pure: {model} has torch InstanceNorm layer(s) {names} with affine=True in "
    "training mode, which are refused under vmap and grad: torch gives them wrong "
    "second-order gradients under vmap (a MAML meta-gradient off in the fourth digit). "
    "Use nn.GroupNorm(channels, channels), the same function with a learned scale and "
    "shift in a kernel that differentiates correctly, or affine=False."
)


class _Written(Exception):
    """Raised by :class:`_WriteWatch` at a write into a constant, before it happens."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


# Functions that write their running statistics when training (or use_input_stats) is true;
# the functional forms are seen instead of the torch.* ones they call.
_STATS_WRITERS: dict[Any, int | str] = {
    F.batch_norm: "training",
    F.instance_norm: "use_input_stats",
    torch.batch_norm: 5,  # (input, weight, bias, running_mean, running_var, training, ...)
    torch.instance_norm: 5,
}


# where each named tensor of a module lives: its owner's ``_parameters`` or ``_buffers``
# dict and its key there, every alias of a tied tensor included
Slots = dict[str, list[tuple[dict[str, Any], str]]]


def _slots(module: nn.Module, given: set[str]) -> Slots | None:
    """For each name in ``given``, the places ``functional_call`` (``tie_weights=True``)
    would put its value: the tensor's own and those of the names tied to it; ``None`` where
    the fast path of :func:`_call_with` does not apply (a scripted or data-parallel module,
    two given names for one tied tensor, a name that is not the module's)."""
    if isinstance(module, (torch.jit.ScriptModule, nn.DataParallel)):
        return None
    places: dict[str, tuple[dict[str, Any], str]] = {}
    aliases: dict[int, list[str]] = {}
    for kind, named in (
        ("_parameters", module.named_parameters(remove_duplicate=False)),
        ("_buffers", module.named_buffers(remove_duplicate=False)),
    ):
        for name, tensor in named:
            owner, _, key = name.rpartition(".")
            places[name] = (getattr(module.get_submodule(owner), kind), key)
            aliases.setdefault(id(tensor), []).append(name)
    tied = {name: names for names in aliases.values() for name in names}
    if not given <= places.keys() or any(len(given & set(tied[n])) > 1 for n in given):
        return None
    # in the module's order, not the set's: the step's fingerprint visits this dict
    return {name: [places[alias] for alias in tied[name]] for name in places if name in given}


def _call_with(
    module: nn.Module, slots: Slots, dicts: tuple[Params, ...], args: Any, kwargs: Any
) -> Any:
    """``functional_call(module, dicts, args, kwargs)`` for exactly the names of ``slots``,
    with the places found once: the same tensors in the same places, put back after, without
    the per-call walk over the module (about 20 µs of a 40-by-40 MLP's 35 µs call)."""
    held: list[tuple[dict[str, Any], str, Any]] = []
    try:
        for values in dicts:
            for name, value in values.items():
                for place, key in slots[name]:
                    held.append((place, key, place[key]))
                    place[key] = value
        return module(*args, **kwargs)
    finally:
        for place, key, old in reversed(held):
            place[key] = old


def _written_statistics(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The running statistics that a call of a normalisation function writes."""
    flag = _STATS_WRITERS[func]
    if isinstance(flag, int):
        return list(args[3:5]) if len(args) > flag and args[flag] else []
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    if not bound.arguments[flag]:
        return []
    return [bound.arguments["running_mean"], bound.arguments["running_var"]]


class _WriteWatch(TorchFunctionMode):
    """Stops a forward at its first write into one of ``constants``: an in-place method
    (``add_``, ``+=``, ``x[i] = ...``), an ``out=`` argument, or a normalisation that updates
    running statistics."""

    def __init__(self, constants: Params) -> None:
        super().__init__()
        # by storage, so that a write into a view (buffer[0] = ..., out=buffer[:2]) is found
        self._names: dict[int, str] = {}
        for name, t in constants.items():
            self._names.setdefault(_storage(t), name)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        targets: list[Any] = []
        if args and (_in_place(name) or name == "__setitem__"):
            targets.append(args[0])
        if "out" in kwargs:
            out = kwargs["out"]
            targets.extend(out if isinstance(out, (tuple, list)) else [out])
        if func in _STATS_WRITERS:
            targets.extend(_written_statistics(func, args, kwargs))
        for t in targets:
            name = self._names.get(_storage(t)) if isinstance(t, torch.Tensor) else None
            if name is not None:
                raise _Written(name)
        return func(*args, **kwargs)


def _storage(t: torch.Tensor) -> int:
    """The address of the storage under ``t`` and the transforms' wrappers around it (under
    grad, even a view of a constant comes wrapped); -1 for one without storage."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        t = functorch.get_unwrapped(t)
    if t.is_meta or t.layout != torch.strided:
        return -1
    return t.untyped_storage().data_ptr()


_AUGMENTED = {
    f"__i{op}__"
    for op in "add sub mul matmul truediv floordiv mod pow and or xor lshift rshift".split()
}


def _in_place(name: str) -> bool:
    """``add_``, ``__iadd__``: torch's names for functions that write their first argument."""
    return name in _AUGMENTED or (name.endswith("_") and not name.startswith("_"))


def _message(template: str, model: str, names: list[str]) -> str:
    return template.format(model=model, names=names)
