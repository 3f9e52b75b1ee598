"""Pytree helpers: the one module that imports optree (and torch's pytree, for :func:`split`).

Parameters, gradients, optimizer moments and learning rates are all pytrees (usually a dict
of tensors keyed by ``named_parameters`` names). Every traversal in the library goes through
these functions so that leaf order, ``None`` handling and error messages are the same
everywhere. optree sorts dict keys when flattening; never zip its leaves against
``named_parameters()`` order.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, cast

import optree
import torch
import torch.utils._pytree as torch_pytree
from torch.func import grad
from torch.fx.experimental.proxy_tensor import get_proxy_mode

PyTree = Any

__all__ = [
    "Complement",
    "PyTree",
    "Selector",
    "all_finite",
    "axpy",
    "by_name",
    "check_same_structure",
    "combine",
    "complement",
    "copy",
    "describe",
    "detach",
    "finite_leaves",
    "flatten",
    "global_norm",
    "leaves",
    "map",
    "named_leaves",
    "names",
    "partition",
    "picked",
    "picker",
    "split",
    "split_leaves",
    "structure",
    "unflatten",
    "zeros_like",
]

Selector = Any  # None | str | Sequence[str] | Callable[[str], bool] | a pytree of bools


@dataclasses.dataclass(frozen=True, repr=False)
class Complement:
    """The leaves a selector does not pick; made by :func:`complement` (a dataclass, so that
    the compile cache's fingerprint reads it)."""

    selector: Selector

    def __repr__(self) -> str:
        return f"complement({self.selector!r})"


def complement(selector: Selector) -> Selector:
    """Every leaf that ``selector`` does not pick, as a selector itself: the body when
    ``selector`` names the head (:func:`metafunc.boil` adapts it). It is checked as
    ``selector`` is (a name it lists must be in the tree) and must leave at least one leaf.

    Example:
        >>> body, head = mf.partition(params, mf.complement("4"))
        >>> sorted(k for k, v in head.items() if v is not None)
        ['4.bias', '4.weight']
    """
    if selector is None or isinstance(selector, Complement):
        raise TypeError(
            "complement: selector must be a name, a list of names, a predicate on dotted names "
            f"or a tree of bools (got {selector!r})"
        )
    return Complement(selector)


def map(f: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """``f`` applied leaf by leaf to ``tree`` and the trees in ``rest`` (same structure)."""
    return optree.tree_map(f, tree, *rest)


def flatten(tree: PyTree) -> tuple[list[Any], optree.PyTreeSpec]:
    """``(leaves(tree), structure(tree))`` in one pass."""
    return optree.tree_flatten(tree)


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


def names(tree: PyTree) -> list[str]:
    """Dotted leaf names: dict keys, sequence indices and NamedTuple fields joined by ``.``,
    e.g. ``"0.weight"`` for ``pure``'s flat dict or ``"head.w"`` for ``{"head": {"w": ...}}``
    (in the tree's own order, not :func:`leaves` order)."""
    return [_dotted(path) for path, _ in torch_pytree.tree_flatten_with_path(tree)[0]]


def by_name(tree: PyTree) -> dict[str, Any]:
    """The leaves keyed by their dotted names (see :func:`names`)."""
    return {_dotted(path): leaf for path, leaf in torch_pytree.tree_flatten_with_path(tree)[0]}


def picker(selector: Selector, *, where: str, name: str) -> Callable[[str], bool]:
    """``selector`` as a predicate on dotted leaf names (see :func:`names`).

    ``selector`` is ``None`` (every leaf), a name or a list of names (a name picks the leaf of
    that name and every leaf under it: ``"4"`` picks ``"4.weight"`` and ``"4.bias"``), a
    predicate on the name, or a tree of bools like the parameters. :func:`picked` checks it
    against a tree."""
    if selector is None:
        return lambda n: True
    if isinstance(selector, Complement):
        inner = picker(selector.selector, where=where, name=name)
        return lambda n: not inner(n)
    if callable(selector):
        return cast(Callable[[str], bool], selector)
    wanted = _wanted(selector)
    if wanted is not None:
        return lambda n: any(n == w or n.startswith(w + ".") for w in wanted)
    flags = optree.tree_leaves(selector)
    if flags and all(isinstance(b, bool) for b in flags):
        chosen = {
            n for n, f in zip(names(selector), torch_pytree.tree_leaves(selector), strict=True) if f
        }
        return lambda n: n in chosen
    raise TypeError(
        f"{where}: {name} must be a parameter or module name, a non-empty list of names, a "
        f"predicate on dotted parameter names, or a tree of bools like the parameters "
        f"(got {selector!r})"
    )


def picked(tree: PyTree, selector: Selector, *, where: str, name: str) -> list[str]:
    """The names of the leaves of ``tree`` that ``selector`` picks (see :func:`picker`), checked
    eagerly: a ``ValueError`` names ``where`` and ``name`` when a name it lists is not in the
    tree, when a tree of bools does not fit, or when it picks nothing (a :func:`complement`
    checks its selector so, and must leave a leaf)."""
    if isinstance(selector, Complement):
        inner = picked(tree, selector.selector, where=where, name=name)
        chosen = [n for n in names(tree) if n not in inner]
        if not chosen:
            raise ValueError(
                f"{where}: {name}={selector.selector!r} picks every parameter, leaving none "
                f"outside it; their names are {names(tree)}"
            )
        return chosen
    pick = picker(selector, where=where, name=name)
    all_names = names(tree)
    for w in _wanted(selector) or ():
        if not any(n == w or n.startswith(w + ".") for n in all_names):
            raise ValueError(
                f"{where}: {name} names {w!r}, which is neither a parameter nor a module of "
                f"the parameters; their names are {all_names}"
            )
    if selector is not None and not callable(selector) and _wanted(selector) is None:
        check_same_structure(tree, selector, where=where, expected_name="params", got_name=name)
    chosen = [n for n in all_names if pick(n)]
    if not chosen:
        raise ValueError(
            f"{where}: {name}={selector!r} selects no parameter; their names are {all_names}"
        )
    return chosen


def partition(tree: PyTree, selector: Selector) -> tuple[PyTree, PyTree]:
    """``(picked, rest)``: two trees like ``tree``, the first holding the leaves ``selector``
    picks and ``None`` elsewhere, the second the others (equinox's ``partition``).

    ``selector`` is a name or a list of names (a name picks the leaf of that name and every
    leaf under it: ``"4"`` picks ``"4.weight"`` and ``"4.bias"``), a predicate on dotted
    names, or a tree of bools like ``tree``; it must pick at least one leaf. :func:`combine`
    puts them back together.

    Example:
        >>> head, body = mf.partition(params, "4")
        >>> sorted(k for k, v in head.items() if v is not None)
        ['4.bias', '4.weight']
        >>> mf.combine(head, body).keys() == params.keys()
        True
    """
    if selector is None:
        raise TypeError(
            "partition: selector must be a name, a list of names, a predicate on dotted names "
            "or a tree of bools (got None)"
        )
    picked(tree, selector, where="partition", name="selector")
    pick = picker(selector, where="partition", name="selector")
    if pick is None:
        values, spec = torch_pytree.tree_flatten(tree)
        return values, lambda new: torch_pytree.tree_unflatten(new, spec)
    with_path, spec = torch_pytree.tree_flatten_with_path(tree)
    flags = [pick(_dotted(path)) for path, _ in with_path]
    chosen = [leaf if f else None for (_, leaf), f in zip(with_path, flags, strict=True)]
    others = [None if f else leaf for (_, leaf), f in zip(with_path, flags, strict=True)]
    return torch_pytree.tree_unflatten(chosen, spec), torch_pytree.tree_unflatten(others, spec)


def combine(*trees: PyTree) -> PyTree:
    """The trees of :func:`partition` put back together: at each leaf, the first that is not
    ``None`` (equinox's ``combine``).

    Example:
        >>> head, body = mf.partition(params, "4")
        >>> zeroed = {k: None if v is None else v * 0 for k, v in head.items()}
        >>> new = mf.combine(zeroed, body)
        >>> float(new["4.weight"].abs().sum()), bool((new["0.weight"] == params["0.weight"]).all())
        (0.0, True)
    """
    if not trees:
        raise TypeError("combine: give at least one tree (got none)")
    return torch_pytree.tree_map(
        lambda *xs: next((x for x in xs if x is not None), None),
        *trees,
        is_leaf=lambda x: x is None,
    )


def split(
    tree: PyTree, pick: Callable[[str], bool] | None
) -> tuple[list[Any], Callable[[list[Any]], PyTree]]:
    """``(leaves, merge)``: the leaves whose dotted names ``pick`` accepts (``None``: all), and
    a function that puts new values for them back, ``merge(new_leaves)``, keeping the other
    leaves of ``tree``.

    This is equinox's ``partition``/``combine`` in the form that ``torch.func`` and
    ``torch.compile`` need: ``grad`` differentiates a list of tensors (no ``None`` holes), and
    both directions go through ``torch.utils._pytree``, which Dynamo traces in one consistent
    order (its stand-ins for optree visit dicts in insertion order in ``tree_map`` but in sorted
    order in ``tree_leaves``)."""
    if type(tree) is dict and all(isinstance(v, torch.Tensor) for v in tree.values()):
        # a flat dict of tensors (mf.pure's parameters): the same order, without a walk in Python
        keys = list(tree)
        if pick is None:
            return list(tree.values()), lambda new: dict(zip(keys, new, strict=True))
        return _split(list(tree.values()), [pick(str(k)) for k in keys], keys)
    if pick is None:
        values, spec = torch_pytree.tree_flatten(tree)
        return values, lambda new: torch_pytree.tree_unflatten(new, spec)
    with_path, spec = torch_pytree.tree_flatten_with_path(tree)
    flags = [pick(_dotted(path)) for path, _ in with_path]
    return _split([leaf for _, leaf in with_path], flags, spec)


def split_leaves(
    tree: PyTree, keep: Callable[[Any], bool]
) -> tuple[list[Any], Callable[[list[Any]], PyTree]]:
    """``(leaves, merge)`` like :func:`split`, choosing leaves by value with ``keep`` (e.g. the
    floating-point tensors of an optimizer state that also holds integer counters or ``None``)."""
    values, spec = torch_pytree.tree_flatten(tree)
    return _split(values, [keep(v) for v in values], spec)


def _split(
    values: list[Any], flags: list[bool], spec: torch_pytree.TreeSpec | list[Any]
) -> tuple[list[Any], Callable[[list[Any]], PyTree]]:
    """``split``'s result for a tree flattened to ``values`` (``spec``, or the keys of a flat
    dict), keeping those whose flag is set."""

    def merge(new: list[Any]) -> PyTree:
        it = iter(new)
        merged = [next(it) if f else v for v, f in zip(values, flags, strict=True)]
        if isinstance(spec, list):
            return dict(zip(spec, merged, strict=True))
        return torch_pytree.tree_unflatten(merged, spec)

    return [v for v, f in zip(values, flags, strict=True) if f], merge


def _wanted(selector: Selector) -> list[str] | None:
    if isinstance(selector, str):
        return [selector]
    if (
        isinstance(selector, (list, tuple))
        and selector
        and all(isinstance(n, str) for n in selector)
    ):
        return list(selector)
    return None


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


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
        named = spec.type  # the node's class (None for None)
        if spec.kind == kind.NAMEDTUPLE and named is not None:
            fields = cast(tuple[str, ...], getattr(named, "_fields"))  # noqa: B009
            return {
                "namedtuple": named.__name__,
                "fields": [
                    [f, node(c, f"{where}.{f}")] for f, c in zip(fields, children, strict=True)
                ],
            }
        raise TypeError(
            f"{where} is a {getattr(named, '__name__', named)}; only dicts, lists, tuples, named tuples and "
            "None can be described"
        )

    return node(optree.tree_structure(tree), root or "tree")


def named_tuples(tree: PyTree) -> list[str]:
    """The class names of the named tuples in ``tree``, outermost first."""

    def walk(spec: optree.PyTreeSpec) -> list[str]:
        named = spec.type if spec.kind == optree.PyTreeKind.NAMEDTUPLE else None
        own = [named.__name__] if named is not None else []
        return own + [name for child in spec.children() for name in walk(child)]

    return walk(optree.tree_structure(tree))


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


def global_norm(tree: PyTree, *, foreach: bool = False) -> torch.Tensor:
    """The Euclidean norm of all leaves taken together. ``foreach``: with one ``foreach``
    reduction over the leaves instead of one per leaf (fewer operations; not under ``vmap``,
    which has no rule for it)."""
    leaves = optree.tree_leaves(tree)
    if foreach and foreach_ready(leaves):
        return cast(
            torch.Tensor, torch.linalg.vector_norm(torch.stack(torch._foreach_norm(leaves)))
        )
    squares = [torch.sum(t * t) for t in leaves]
    return torch.sqrt(functools.reduce(torch.add, squares))


def norm_and_finite_leaves(tree: PyTree) -> tuple[torch.Tensor, torch.Tensor]:
    """``(global_norm(tree), finite_leaves(tree))`` with ``foreach`` reductions. Eagerly on the
    CPU (:func:`readable`) one reduction serves both: a leaf whose 2-norm is finite has only
    finite elements, and only when a norm is not (a non-finite element, or an overflow of
    finite ones) are the leaves' largest magnitudes computed to tell which."""
    leaves = optree.tree_leaves(tree)
    if not (foreach_ready(leaves) and readable(leaves[0])):
        return global_norm(leaves, foreach=True), finite_leaves(leaves, foreach=True)
    norms = torch.stack(torch._foreach_norm(leaves))
    ok = norms.isfinite()
    if not bool(ok.all()):
        ok = finite_leaves(leaves, foreach=True)
    return torch.linalg.vector_norm(norms), ok


def all_finite(tree: PyTree, *, foreach: bool = False) -> torch.Tensor:
    """A bool tensor: every element of every leaf is finite (no host sync); ``foreach`` as in
    :func:`global_norm`."""
    numbers = [t for t in optree.tree_leaves(tree) if t.is_floating_point() or t.is_complex()]
    if not numbers:  # integers and booleans are always finite
        return torch.ones((), dtype=torch.bool, device=leaves(tree)[0].device)
    return finite_leaves(numbers, foreach=foreach).all()


def finite_leaves(tree: PyTree, *, foreach: bool = False) -> torch.Tensor:
    """A bool vector, one entry per leaf in :func:`leaves` order: all its elements are finite.
    ``foreach`` as in :func:`global_norm` (each leaf's largest magnitude, which is finite
    exactly when every element is: it cannot overflow)."""
    leaves = optree.tree_leaves(tree)
    if foreach and foreach_ready(leaves):
        return torch.stack(torch._foreach_norm(leaves, ord=math.inf)).isfinite()
    return torch.stack([torch.isfinite(t).all() for t in leaves])


def eager() -> bool:
    """Operations run one by one on real tensors: not compiled by Dynamo, not traced by
    ``make_fx`` (the step compiled ahead of time), not inside a ``torch.func`` transform."""
    return (
        not torch.compiler.is_compiling()
        and get_proxy_mode() is None
        and torch._C._functorch.peek_interpreter_stack() is None
    )


def grad_and_aux(
    f: Callable[[PyTree], tuple[torch.Tensor, Any]], tree: PyTree
) -> tuple[PyTree, Any]:
    """``torch.func.grad(f, has_aux=True)(tree)``: the gradient of ``f``'s scalar (zeros for a
    leaf it does not depend on) and its auxiliary outputs, detached.

    Run :func:`eager`, on leaves that require no gradient outside inference mode, by torch's
    autograd instead: the same operations in the same order, so the same numbers to the bit
    (tested), without the transform's wrapper on each operation of ``f`` (the eager sine step
    at S=1 took a fifth less time). Under a transform, a trace or a compile, or where a leaf's own
    graph would carry the gradient on, it is ``torch.func.grad``."""
    flat, spec = flatten(tree)
    if not eager() or torch.is_inference_mode_enabled() or any(t.requires_grad for t in flat):
        return cast(tuple[PyTree, Any], grad(f, has_aux=True)(tree))
    inputs = [t.detach().requires_grad_() for t in flat]
    with torch.enable_grad():
        value, aux = f(optree.tree_unflatten(spec, inputs))
    if value.requires_grad:
        grads = list(torch.autograd.grad(value, inputs, materialize_grads=True))
    else:  # f does not depend on the leaves
        grads = [torch.zeros_like(t) for t in flat]
    return optree.tree_unflatten(spec, grads), detach(aux)


def readable(t: torch.Tensor) -> bool:
    """Reading ``t``'s value in Python costs no wait and fixes nothing in a traced graph: a
    tensor on the CPU, run :func:`eager`."""
    return t.device.type == "cpu" and eager()


def foreach_ready(leaves: list[torch.Tensor]) -> bool:
    """torch's ``foreach`` kernels (one call for a list of tensors) work on these:
    floating-point, not empty, on one device, not inside a ``torch.func`` transform (``vmap``
    has no rule for them) and not while compiling (Inductor fuses the per-leaf operations
    itself, and its C++ wrapper runs ``_foreach_norm`` through a slow fallback)."""
    return (
        not torch.compiler.is_compiling()
        and torch._C._functorch.peek_interpreter_stack() is None
        and bool(leaves)
        and all(
            t.is_floating_point() and t.numel() > 0 and t.device == leaves[0].device for t in leaves
        )
    )


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
