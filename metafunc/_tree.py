"""Pytree helpers: the one module that imports optree.

Parameters, gradients, optimizer moments and learning rates are all pytrees (usually a dict
of tensors keyed by ``named_parameters`` names). Every traversal in the library goes through
these functions so that leaf order, ``None`` handling and error messages are the same
everywhere. optree sorts dict keys when flattening; never zip its leaves against
``named_parameters()`` order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch

PyTree = Any

__all__ = [
    "PyTree",
    "all_finite",
    "axpy",
    "check_same_structure",
    "copy",
    "describe",
    "detach",
    "finite_leaves",
    "global_norm",
    "leaves",
    "map",
    "named_leaves",
    "structure",
    "unflatten",
    "zeros_like",
]


def map(f: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """``f`` applied leaf by leaf to ``tree`` and the trees in ``rest`` (same structure)."""
    return optree.tree_map(f, tree, *rest)


def leaves(tree: PyTree) -> list[Any]:
    """The leaves of ``tree`` in optree's (sorted-key) order."""
    return optree.tree_leaves(tree)


def structure(tree: PyTree) -> optree.PyTreeSpec:
    return optree.tree_structure(tree)


def unflatten(like: PyTree, leaves: list[Any]) -> PyTree:
    """A tree with the structure (and container types) of ``like`` holding ``leaves`` in
    :func:`leaves` order."""
    return optree.tree_unflatten(optree.tree_structure(like), leaves)


def named_leaves(tree: PyTree, root: str = "") -> list[tuple[str, Any]]:
    """``(path, leaf)`` pairs, the path written as Python would index it, e.g. ``meta['0.weight']``."""
    accessors, values, _ = optree.tree_flatten_with_accessor(tree)
    return [(a.codify(root), v) for a, v in zip(accessors, values, strict=True)]


def describe(tree: PyTree, root: str = "") -> Any:
    """The containers of ``tree`` as JSON-able data, each leaf replaced by its path.

    A leaf becomes its :func:`named_leaves` path (a string), ``None`` stays ``None``, a dict
    (also ordered and default) becomes ``{"dict": [[key, child], ...]}``, a list or deque
    ``{"list": [...]}``, a tuple ``{"tuple": [...]}`` and a named tuple
    ``{"namedtuple": name, "fields": [[field, child], ...]}``; enough to rebuild the tree
    without its classes.

    Raises:
        TypeError: a container optree knows but JSON cannot describe (a custom node, or a
            dict key that is not a str or int).
    """
    names = iter(name for name, _ in named_leaves(tree, root))
    kind = optree.PyTreeKind

    def node(spec: optree.PyTreeSpec, where: str) -> Any:
        if spec.is_leaf():
            return next(names)
        children = spec.children()
        if spec.kind == kind.NONE:
            return None
        if spec.kind in (kind.DICT, kind.ORDEREDDICT, kind.DEFAULTDICT):
            keys = spec.entries()
            for k in keys:
                if type(k) not in (str, int):
                    raise TypeError(
                        f"{where} has a key of type {type(k).__name__} ({k!r}); only str and "
                        "int keys can be described"
                    )
            return {
                "dict": [
                    [k, node(c, f"{where}[{k!r}]")] for k, c in zip(keys, children, strict=True)
                ]
            }
        if spec.kind in (kind.LIST, kind.DEQUE):
            return {"list": [node(c, f"{where}[{i}]") for i, c in enumerate(children)]}
        if spec.kind in (kind.TUPLE, kind.STRUCTSEQUENCE):
            return {"tuple": [node(c, f"{where}[{i}]") for i, c in enumerate(children)]}
        if spec.kind == kind.NAMEDTUPLE:
            fields = spec.type._fields
            return {
                "namedtuple": spec.type.__name__,
                "fields": [
                    [f, node(c, f"{where}.{f}")] for f, c in zip(fields, children, strict=True)
                ],
            }
        raise TypeError(
            f"{where} is a {spec.type.__name__}; only dicts, lists, tuples, named tuples and "
            "None can be described"
        )

    return node(optree.tree_structure(tree), root or "tree")


def axpy(a: float | torch.Tensor | PyTree, x: PyTree, y: PyTree) -> PyTree:
    """``a * x + y`` leaf by leaf; ``a`` is a number or a pytree like ``x``."""
    if isinstance(a, (int, float, torch.Tensor)):
        return optree.tree_map(lambda xi, yi: a * xi + yi, x, y)
    return optree.tree_map(lambda ai, xi, yi: ai * xi + yi, a, x, y)


def zeros_like(tree: PyTree) -> PyTree:
    return optree.tree_map(torch.zeros_like, tree)


def detach(tree: PyTree) -> PyTree:
    """Leaves detached from every autograd graph and ``torch.func`` transform level."""
    return optree.tree_map(torch.Tensor.detach, tree)


def copy(tree: PyTree) -> PyTree:
    """Detached copies of the leaves, sharing no storage with ``tree``."""
    return optree.tree_map(lambda t: t.detach().clone(), tree)


def global_norm(tree: PyTree) -> torch.Tensor:
    """The Euclidean norm of all leaves taken together."""
    return torch.sqrt(sum(torch.sum(t * t) for t in optree.tree_leaves(tree)))


def all_finite(tree: PyTree) -> torch.Tensor:
    """A bool tensor: every element of every leaf is finite (no host sync)."""
    return finite_leaves(tree).all()


def finite_leaves(tree: PyTree) -> torch.Tensor:
    """A bool vector, one entry per leaf in :func:`leaves` order: all its elements are finite."""
    return torch.stack([torch.isfinite(t).all() for t in optree.tree_leaves(tree)])


def check_same_structure(
    expected: PyTree, got: PyTree, *, where: str, expected_name: str, got_name: str
) -> None:
    """Raise ``ValueError`` naming the first key path where ``got`` differs from ``expected``."""
    spec_e, spec_g = optree.tree_structure(expected), optree.tree_structure(got)
    if spec_e == spec_g:
        return
    first = _first_difference(expected, got, expected_name, got_name)
    raise ValueError(
        f"{where}: {got_name} must have the same tree structure as {expected_name}; "
        f"first difference at {first}.\n  {expected_name}: {_short(spec_e)}\n"
        f"  {got_name}: {_short(spec_g)}"
    )


def _first_difference(expected: PyTree, got: PyTree, expected_name: str, got_name: str) -> str:
    """The first leaf path (with container types) at which two structures part."""
    acc_e, _, _ = optree.tree_flatten_with_accessor(expected)
    acc_g, _, _ = optree.tree_flatten_with_accessor(got)
    for a, b in zip(acc_e, acc_g, strict=False):
        if [(e.type, e.entry) for e in a] != [(e.type, e.entry) for e in b]:
            return f"{_typed(a, expected_name)} vs {_typed(b, got_name)}"
    if len(acc_e) > len(acc_g):
        return f"{_typed(acc_e[len(acc_g)], expected_name)} has no counterpart in {got_name}"
    if len(acc_g) > len(acc_e):
        return f"{_typed(acc_g[len(acc_e)], got_name)} has no counterpart in {expected_name}"
    # Same leaf paths: the containers differ in a way paths do not show (e.g. None children).
    return "a container with no leaves"


def _typed(accessor: optree.PyTreeAccessor, root: str) -> str:
    types = "/".join(e.type.__name__ for e in accessor)
    return f"{accessor.codify(root)} ({types or 'leaf'})"


def _short(spec: optree.PyTreeSpec, limit: int = 400) -> str:
    text = str(spec)
    return text if len(text) <= limit else text[: limit - 3] + "..."
