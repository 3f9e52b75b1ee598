"""Eager validation of hyper-parameters and data, with messages that name what was wrong.

Every public entry point checks its input here, outside compiled code, so a mistake surfaces
as ``"maml: inner_lr must be a positive finite number (got -0.1)"`` rather than as a stack
trace from deep inside torch.
"""

from __future__ import annotations

import functools
import math
import operator
from collections import OrderedDict
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import torch

from . import _tree
from ._types import Tasks


def positive_number(where: str, name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a float; ``ValueError``/``TypeError`` unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{where}: {name} must be a number (got {value!r} of type {type(value).__name__})"
        )
    number = float(value)
    bound_ok = number >= 0 if allow_zero else number > 0
    if not math.isfinite(number) or not bound_ok:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{where}: {name} must be {kind} finite number (got {value!r})")
    return number


def fraction(where: str, name: str, value: Any) -> float:
    """``value`` as a float in [0, 1)."""
    number = positive_number(where, name, value, allow_zero=True)
    if number >= 1:
        raise ValueError(f"{where}: {name} must be in [0, 1) (got {number!r})")
    return number


def integer(where: str, name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(
            f"{where}: {name} must be an integer (got {value!r} of type {type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def boolean(where: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False (got {value!r})")
    return value


def function(where: str, name: str, value: Any, usage: str) -> Any:
    """A callable; ``usage`` says how it is called, e.g. ``"loss(params, data)"``."""
    if not callable(value):
        raise TypeError(f"{where}: {name} must be callable as {usage} (got {value!r})")
    return value


# Each inner step is unrolled into the compiled graph and keeps its activations for the
# meta-gradient: beyond this a first call would run for hours instead of failing.
MAX_STEPS = 10_000


def steps(
    where: str, name: str, value: Any, *, minimum: int = 0, differentiated: bool = True
) -> int:
    """A count of inner steps: an integer in [minimum, MAX_STEPS]; ``differentiated``: the
    meta-gradient goes through them (not so for iMAML's, which the message then says)."""
    count = integer(where, name, value, minimum=minimum)
    if count > MAX_STEPS:
        why = (
            "differentiated through and traced into the compiled step, so a first call would "
            "run for hours; for long inner loops use mf.imaml, whose memory does not grow with "
            "the steps"
            if differentiated
            else "traced into the compiled step, so a first call would run for hours"
        )
        raise ValueError(
            f"{where}: {name} must be at most {MAX_STEPS} (got {count}): every step is {why}"
        )
    return count


def learning_rate(where: str, name: str, value: Any) -> float | Any:
    """A positive number, a positive 0-d tensor, or a pytree of tensors (one rate per
    parameter leaf)."""
    if isinstance(value, (bool, Real)):
        return positive_number(where, name, value)
    if isinstance(value, torch.Tensor) and value.ndim != 0:
        raise ValueError(
            f"{where}: {name} as a tensor must be 0-d, one rate for every parameter (a tree of "
            f"tensors like the parameters gives each its own) (got shape {tuple(value.shape)})"
        )
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{where}: {name} must be a floating-point tensor (got {value.dtype})")
        if not bool(torch.isfinite(value)) or not bool(value > 0):
            raise ValueError(
                f"{where}: {name} must be a positive finite number (got tensor {value.item()!r})"
            )
        return value
    tensors = _tree.leaves(value)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError(
            f"{where}: {name} must be a positive number or a pytree of tensors like the "
            f"parameters (got {type(value).__name__})"
        )
    return value


def learning_rate_like(where: str, name: str, lr: Any, params: Any, params_name: str) -> None:
    """A pytree learning rate fits ``params``: same structure, and every leaf a tensor with the
    parameter's dtype and device whose shape broadcasts to the parameter's without changing it
    (a ``(4, 1)`` rate for a ``(4,)`` bias would silently turn the bias into ``(4, 4)``)."""
    _tree.check_same_structure(params, lr, where=where, expected_name=params_name, got_name=name)
    named = _tree.named_leaves(lr, name)
    for (path, rate), p in zip(named, _tree.leaves(params), strict=True):
        if not isinstance(rate, torch.Tensor):
            raise TypeError(f"{where}: {path} must be a tensor (got {type(rate).__name__})")
        if rate.dtype != p.dtype or rate.device != p.device:
            raise TypeError(
                f"{where}: {path} must have its parameter's dtype and device {p.dtype} on "
                f"{p.device} (got {rate.dtype} on {rate.device})"
            )
        if not bool(torch.isfinite(rate).all()) or bool((rate < 0).any()):
            raise ValueError(
                f"{where}: {path} must hold finite non-negative rates (got min "
                f"{rate.min().item():.4g}, max {rate.max().item():.4g})"
            )
        try:
            fits = torch.broadcast_shapes(rate.shape, p.shape) == p.shape  # type: ignore[no-untyped-call]
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{where}: {path} must have a shape that broadcasts to its parameter's shape "
                f"{tuple(p.shape)} (got shape {tuple(rate.shape)})"
            )


def scalar_rate_like(where: str, name: str, rate: torch.Tensor, params: Any) -> None:
    """A 0-d tensor rate lives on the parameters' device or on the CPU (torch reads a 0-d CPU
    tensor as a scalar on any device)."""
    device = _tree.leaves(params)[0].device
    if rate.device != device and rate.device.type != "cpu":
        raise ValueError(
            f"{where}: {name} must be on the parameters' device {device} (got {rate.device})"
        )


def pair(where: str, name: str, value: Any, expected: str) -> None:
    """A pair ``(x, y)``, e.g. labeled data."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        got = f"a {type(value).__name__}" + (
            f" of {len(value)}" if isinstance(value, (tuple, list)) else ""
        )
        shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
        raise ValueError(f"{where}: {name} must be a pair {expected} (got {got}{shape})")


def params_tree(where: str, name: str, params: Any) -> None:
    """A non-empty pytree of floating-point tensors on one device with one dtype."""
    if isinstance(params, torch.nn.Module):
        raise TypeError(
            f"{where}: {name} must be a pytree of tensors, not a module (got "
            f"{type(params).__name__}); split the module first: fn, params = mf.pure(module)"
        )
    # Runs before every step: leaves only, and key paths (slow to build) only for a message.
    leaves = _tree.leaves(params)
    if not leaves:
        raise ValueError(f"{where}: {name} must be a non-empty pytree of tensors (got {params!r})")
    first = leaves[0]
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f"{where}: {_path(params, name, i)} must be a tensor (got {type(leaf).__name__})"
            )
        if not leaf.is_floating_point():
            raise TypeError(
                f"{where}: {_path(params, name, i)} must be a floating-point tensor (got {leaf.dtype})"
            )
        if leaf.device.type == "meta":
            raise ValueError(
                f"{where}: {_path(params, name, i)} is on the meta device, which holds shapes but "
                "no values; materialise the model first, e.g. module.to_empty(device='cpu') and "
                "initialise it, or build it outside torch.device('meta')"
            )
        if leaf.dtype != first.dtype or leaf.device != first.device:
            raise ValueError(
                f"{where}: all of {name} must share one dtype and device; "
                f"{_path(params, name, 0)} is {first.dtype} on {first.device} but "
                f"{_path(params, name, i)} is {leaf.dtype} on {leaf.device}"
            )


def keyed(where: str, name: str, value: Any, keys: tuple[str, ...], hint: str) -> None:
    """A dict with exactly ``keys`` (an algorithm's layout of its meta-parameters)."""
    if not isinstance(value, dict) or set(value) != set(keys):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ValueError(
            f"{where}: {name} must be a dict with keys {list(keys)} ({hint}) (got {got})"
        )


def _path(tree: Any, root: str, index: int) -> str:
    """The key path of leaf ``index`` of ``tree``, e.g. ``meta['0.weight']``."""
    return _tree.named_leaves(tree, root)[index][0]


def tasks(where: str, value: Any, *, like: Any = None, paired: bool = True) -> int:
    """Check a meta-batch; return its number of tasks.

    ``support`` and ``query`` must be pytrees of tensors with one leading task dimension of
    the same size everywhere (see :func:`batch`). If ``paired`` (support and query hold the
    same kind of data), they must also have the same structure and matching per-example shapes
    (only the number of examples, dimension 1, may differ). If ``like`` (the parameters) is
    given, floating-point data must share its dtype and device.
    """
    if not isinstance(value, Tasks):
        raise TypeError(
            f"{where}: tasks must be a metafunc.Tasks(support, query) (got {type(value).__name__})"
        )
    if paired:
        _tree.check_same_structure(
            value.support,
            value.query,
            where=where,
            expected_name="tasks.support",
            got_name="tasks.query",
        )
    n_tasks = batch(where, {"tasks.support": value.support, "tasks.query": value.query}, like)
    if paired:
        for i, (s, q) in enumerate(
            zip(_tree.leaves(value.support), _tree.leaves(value.query), strict=True)
        ):
            if s.shape[2:] != q.shape[2:]:
                raise ValueError(
                    f"{where}: {_path(value.support, 'tasks.support', i)} and "
                    f"{_path(value.query, 'tasks.query', i)} must have the same per-example "
                    f"shape; got {tuple(s.shape)} and {tuple(q.shape)} (shapes are (tasks, "
                    "examples, ...))"
                )
    return n_tasks


def batch(where: str, trees: dict[str, Any], like: Any = None) -> int:
    """Check task data, ``{name: pytree}``; return the number of tasks.

    Every leaf is a tensor ``(tasks, examples, ...)`` with the same number of tasks and at least
    one example. Floating-point leaves need a feature dimension too, ``(tasks, examples,
    features...)``: a float ``(5, 1)`` is refused because it reads both as one task of 5 points
    that lost its task dimension and as 5 tasks of one scalar point; integer leaves (labels) may
    be ``(tasks, examples)``. With ``like`` (the parameters), floating-point data must share its
    dtype, and all data its device.
    """
    ref = _tree.leaves(like)[0] if like is not None else None
    n_tasks, first = None, ""
    for name, tree in trees.items():
        found = _tree.leaves(tree)
        if not found:
            raise ValueError(f"{where}: {name} must hold at least one tensor (got {tree!r})")
        for i, t in enumerate(found):
            # key paths are built only for a message
            path = functools.partial(_path, tree, name, i)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{where}: {path()} must be a tensor (got {type(t).__name__})")
            floating = t.is_floating_point()
            if t.ndim < (3 if floating else 2):
                raise ValueError(_rank_message(where, path(), t, floating))
            if n_tasks is None:
                n_tasks, first = t.shape[0], path()
            if t.shape[0] != n_tasks:
                raise ValueError(
                    f"{where}: every tensor in the tasks must have the same number of tasks "
                    f"(leading dimension); {first} has {n_tasks} but {path()} has {t.shape[0]}"
                )
            if t.shape[1] == 0:
                raise ValueError(
                    f"{where}: {path()} must hold at least one example per task (got shape "
                    f"{tuple(t.shape)}: dimension 1, the examples, is empty)"
                )
            if ref is not None and floating and t.dtype != ref.dtype:
                raise TypeError(
                    f"{where}: {path()} has dtype {t.dtype} but the parameters are {ref.dtype}; "
                    f"convert the data with .to({ref.dtype})"
                )
            if ref is not None and t.device != ref.device:
                raise ValueError(
                    f"{where}: {path()} is on {t.device} but the parameters are on {ref.device}"
                )
    if not n_tasks:  # None: no tensors, refused above; 0: no tasks
        raise ValueError(f"{where}: tasks must hold at least one task (got an empty meta-batch)")
    return n_tasks


def class_labels(where: str, value: Any, params: Any) -> None:
    """Few-shot classification tasks for a learner that classifies by the support's classes
    (ProtoNet, ProtoMAML): support and query each ``(x, y)`` or, padded, ``(x, y, mask)``,
    int64 labels ``y`` ``(tasks, examples)`` in ``0..support examples - 1`` (a task's k-th
    class is labelled k), a bool ``mask`` of their shape, and a support example of every
    class that a kept query example has, in its task. The labels are read (once per
    signature, outside compiled code)."""
    tasks(where, value, like=params)
    parts = {"support": value.support, "query": value.query}
    for part, data in parts.items():
        if not (isinstance(data, (tuple, list)) and len(data) in (2, 3)):
            raise ValueError(
                f"{where}: tasks.{part} must be (x, y) with class labels y, or (x, y, mask) for "
                f"padded tasks (got {_kind(data)})"
            )
        y = data[1]
        if y.dtype != torch.int64 or y.ndim != 2:
            raise TypeError(
                f"{where}: tasks.{part}[1] must hold int64 class labels of shape (tasks, "
                f"examples) (got {y.dtype} of shape {tuple(y.shape)})"
            )
        if len(data) == 3 and (data[2].dtype != torch.bool or data[2].shape != y.shape):
            raise TypeError(
                f"{where}: tasks.{part}[2], the mask, must be bool of the labels' shape "
                f"{tuple(y.shape)} (got {data[2].dtype} of shape {tuple(data[2].shape)})"
            )
    n = value.support[1].shape[1]
    classes = torch.arange(n, device=value.support[1].device)
    have = []
    for part, data in parts.items():
        y = data[1]
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= n:
            raise ValueError(
                f"{where}: tasks.{part}[1] must hold labels in 0..{n - 1}, fewer than the "
                f"{n} support examples of a task: a task's k-th class is labelled k (got "
                f"labels in {low}..{high})"
            )
        keep = data[2] if len(data) == 3 else torch.ones_like(y, dtype=torch.bool)
        have.append(((y[..., None] == classes) & keep[..., None]).any(dim=1))
    missing = (have[1] & ~have[0]).nonzero()
    if len(missing):
        t, k = missing[0].tolist()
        raise ValueError(
            f"{where}: every query label must have a support example of its class in its "
            f"task; task {t} has query label {k} and no support example labelled {k}"
        )


def _kind(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _rank_message(where: str, path: str, t: torch.Tensor, floating: bool) -> str:
    shape = tuple(t.shape)
    if not floating:
        return (
            f"{where}: {path} must have shape (tasks, examples, ...) (got shape {shape}); "
            "one task needs a leading task dimension of 1: x[None]"
        )
    labels = (
        "; class labels are integers and need no feature dimension: y.long()" if t.ndim == 2 else ""
    )
    return (
        f"{where}: {path} must have shape (tasks, examples, features...) (got shape {shape}); "
        "floating-point task data needs all three: one task without its task dimension takes "
        f"x[None], scalar features take x[..., None]{labels}"
    )


def signature(tree: Any) -> Any:
    """What the eager checks of ``tree`` depend on: its structure and each tensor's shape, dtype
    and device (other leaves by value); ``None`` when a leaf cannot be hashed."""
    return signature_of(*_tree.flatten(tree))  # one pass: this runs before every step


def signature_of(leaves: list[Any], spec: Any) -> Any:
    """:func:`signature` of the tree flattened to ``leaves`` and ``spec``."""
    if _TENSORS.issuperset(map(type, leaves)):  # the usual case, in C
        return spec, tuple(map(_SHAPE_DTYPE_DEVICE, leaves))
    parts: list[tuple[Any, ...]] = []
    for t in leaves:
        if isinstance(t, torch.Tensor):
            parts.append((t.shape, t.dtype, t.device))
        elif t.__hash__ is None:
            return None
        else:
            parts.append((type(t), t))
    return spec, tuple(parts)


_TENSORS = frozenset({torch.Tensor, torch.nn.Parameter})
_SHAPE_DTYPE_DEVICE = operator.attrgetter("shape", "dtype", "device")


def once_per_signature(check: Callable[..., None], size: int = 64) -> Callable[..., None]:
    """``check`` run only for arguments whose :func:`signature` it has not passed yet (the last
    ``size`` kept). Every check it wraps must depend on nothing but that signature: structure,
    shapes, dtypes, devices and the non-tensor arguments."""
    passed: OrderedDict[Any, None] = OrderedDict()

    def checked(*args: Any, **kwargs: Any) -> None:
        key = signature((args, kwargs))
        if key is not None and key in passed:
            passed.move_to_end(key)
            return
        check(*args, **kwargs)
        if key is not None:
            passed[key] = None
            if len(passed) > size:
                passed.popitem(last=False)

    return checked
