"""Which of Dynamo's guards the compiled step evaluates on every call.

Before each call of a compiled function Dynamo checks its guards: the inputs' shapes, dtypes,
strides and aliasing, the global state (grad mode, autocast), and the identity of every
module, function and class the traced code looked up. For the step that is about a thousand
checks, up to a tenth of a small step's time (``python -m benchmarks.studies.step_variants``).
:func:`keep` drops only identity checks of objects that no run changes: modules, builtins,
and functions, classes and code objects of torch, optree, the standard library and metafunc
itself, looked up through those modules (or the step module's own globals). Everything
reached through user code (a user module's globals, closures, the model's attributes and
hooks) stays guarded, so rebinding a global the loss reads, or switching the model to eval
mode, still recompiles as it would without the filter.
"""

from __future__ import annotations

import re
import types
from collections.abc import Sequence
from typing import Any

_LIBRARIES = frozenset(
    {"torch", "metafunc", "optree", "builtins", "functools", "contextlib", "collections"}
    | {"typing", "math", "operator", "itertools", "dataclasses", "abc", "enum"}
)
_IDENTITY = frozenset(
    {"ID_MATCH", "TYPE_MATCH", "CLOSURE_MATCH", "FUNCTION_MATCH", "MODULE_MATCH"}
    | {"BUILTIN_MATCH", "CLASS_MATCH"}
)
# G['__import_torch_dot_nn'] (a module), G['__builtins_dict___0'], G['name'] (the compiled
# frame's globals: metafunc's step module)
_ROOT = re.compile(r"^G\['(?:__import_(?P<module>\w+?)|__builtins_dict___\d+|\w+)'\]")


def keep(entries: Sequence[Any]) -> list[bool]:
    """Dynamo's ``guard_filter_fn``: for each guard, whether to evaluate it on every call."""
    return [
        not (e.guard_type in _IDENTITY and e.has_value and _fixed(e.name, e.value)) for e in entries
    ]


def _fixed(name: str, value: Any) -> bool:
    root = _ROOT.match(name)
    if root is None:  # reached through the inputs or a closure: user code may change it
        return False
    module = root.group("module")
    if module is not None and module.split("_dot_")[0] not in _LIBRARIES:
        return False  # a user module's attribute: rebinding it must recompile
    if isinstance(value, (types.ModuleType, types.BuiltinFunctionType, types.BuiltinMethodType)):
        return True
    if isinstance(value, types.CodeType):
        return any(f"/{lib}/" in value.co_filename for lib in ("torch", "metafunc", "optree"))
    if isinstance(value, (types.FunctionType, type)):
        return (getattr(value, "__module__", None) or "").split(".")[0] in _LIBRARIES
    return False
