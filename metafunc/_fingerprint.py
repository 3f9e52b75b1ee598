"""A fingerprint of everything a compiled step's graph depends on besides its tensor inputs.

The compiled step is keyed by it: in a process, a step built again from an equal configuration
reuses the compiled graph, and across processes it names the graph saved on disk. Dynamo's own
guards cannot do this (they compare object identities, which no other process shares), so the
fingerprint walks the learner and the optimizer as Dynamo would trace them: functions by their
code, their source and the line it starts on (torch refuses a saved graph once the user's lines
it inlined moved), the values their closures and defaults hold, the globals their code
reads and, in the user's own modules it reads, the attributes it names; ``nn.Module``s by
their class (its source and line), attributes and submodules; numbers, strings and flags by
value; tensors by dtype, shape and device only, since their values are inputs of the graph,
read on every call (so a learning rate held in a 0-d tensor can change without a new graph).
Code of torch, optree, the standard library and metafunc itself is named, not read (the
compile wrapper's key adds the versions and a digest of metafunc's code).
Anything it cannot describe makes the fingerprint ``None``: the step then compiles on its own,
as it would without a cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import sys
import types
from typing import Any

import torch

_LIBRARIES = ("torch", "metafunc", "optree", "functorch", "numpy")
_PRIMITIVES = (type(None), bool, int, float, complex, str, bytes)
_REPR = (torch.dtype, torch.device, torch.Size, torch.layout, torch.memory_format)


class _Opaque(Exception):
    """An object the fingerprint cannot describe."""


def fingerprint(*objects: Any, tensors: list[torch.Tensor] | None = None) -> str | None:
    """The SHA-256 of ``objects`` (see the module's docstring), or ``None`` when one of them
    holds something that cannot be described. ``tensors``: a list the tensors met are appended
    to, in the order met (the same for every configuration of the same fingerprint)."""
    walker = _Walker(tensors)
    try:
        for obj in objects:
            walker.visit(obj)
    except (_Opaque, RecursionError):
        return None
    return walker.digest.hexdigest()


class _Walker:
    def __init__(self, tensors: list[torch.Tensor] | None = None) -> None:
        self.tensors = [] if tensors is None else tensors
        self.digest = hashlib.sha256()
        self.seen: dict[int, int] = {}
        self.alive: list[Any] = []  # keeps ids unique while walking

    def emit(self, *parts: Any) -> None:
        self.digest.update(repr(parts).encode())
        self.digest.update(b"\0")

    def visit(self, obj: Any) -> None:
        if isinstance(obj, _PRIMITIVES):
            self.emit("v", type(obj).__name__, obj)
            return
        if isinstance(obj, _REPR):
            self.emit("r", repr(obj))
            return
        if isinstance(obj, torch.Tensor):
            self.emit("t", obj.dtype, tuple(obj.shape), obj.device.type, obj.requires_grad)
            self.tensors.append(obj)
            return
        if id(obj) in self.seen:  # a cycle, or an object met before
            self.emit("ref", self.seen[id(obj)])
            return
        self.seen[id(obj)] = len(self.seen)
        self.alive.append(obj)
        self._visit(obj)

    def _visit(self, obj: Any) -> None:
        if isinstance(obj, types.ModuleType):
            self.emit("module", obj.__name__)
        elif isinstance(obj, type):
            self._class(obj)
        elif isinstance(obj, types.FunctionType):
            self._function(obj)
        elif isinstance(obj, functools.partial):
            self.emit("partial")
            self.visit(obj.func)
            self.visit(obj.args)
            self.visit(obj.keywords)
        elif isinstance(obj, types.MethodType):
            self.emit("method")
            self.visit(obj.__self__)
            self.visit(obj.__func__)
        elif isinstance(obj, (tuple, list)):
            self.emit("seq", _qualified(type(obj)), len(obj))
            for item in obj:
                self.visit(item)
        elif isinstance(obj, dict):
            self.emit("dict", _qualified(type(obj)), len(obj))
            for k, v in obj.items():
                self.visit(k)
                self.visit(v)
        elif isinstance(obj, (set, frozenset)):
            self.emit("set", sorted(repr(x) for x in obj))
        elif dataclasses.is_dataclass(obj):
            self.emit("dataclass", _qualified(type(obj)))
            self._class(type(obj))
            for field in dataclasses.fields(obj):
                self.visit(field.name)
                self.visit(getattr(obj, field.name))
        elif hasattr(obj, "__dict__"):
            # modules (their parameters, buffers, submodules, hooks and training flag live in
            # __dict__), metafunc's records and the user's own objects
            self.emit("object")
            self._class(type(obj))
            self.visit(vars(obj))
        elif callable(obj) and _library(getattr(obj, "__module__", None) or "builtins"):
            # builtins and torch's ops: named, fixed by the versions in the key
            self.emit("callable", type(obj).__qualname__, _name(obj))
        else:
            raise _Opaque(type(obj))

    def _class(self, cls: type) -> None:
        self.emit("class", _qualified(cls))
        if _library(cls.__module__) or cls.__module__ == "builtins":
            return
        if not self._source(cls):  # the user's class: its source decides what its methods trace to
            raise _Opaque(cls)

    def _function(self, fn: types.FunctionType) -> None:
        self.emit("function", fn.__module__, fn.__qualname__)
        cells = [cell.cell_contents for cell in fn.__closure__ or ()]
        if not _library(fn.__module__ or ""):
            names = sorted(_names(fn.__code__))
            self._code(fn.__code__)
            self._source(fn)
            for name in names:
                if name in fn.__globals__:
                    self.visit(name)
                    self.visit(fn.__globals__[name])
            # a module of the user's read through a global or a closure: what the code names in it
            for value in [fn.__globals__.get(name) for name in names] + cells:
                self._attributes(value, names, set())
        self.visit(fn.__defaults__)
        self.visit(fn.__kwdefaults__)
        self.visit(cells)

    def _attributes(self, module: Any, names: list[str], met: set[str]) -> None:
        """What the code may read from a module of the user's (``mylib.act(x)`` traces
        ``act``): its attributes that the code names, and theirs in its submodules. A module
        is otherwise only named, so a function edited and reloaded in it would keep the key of
        the graph traced from the old one."""
        if (
            not isinstance(module, types.ModuleType)
            or _library(module.__name__)
            or module.__name__ in met
        ):
            return
        met.add(module.__name__)
        for name in names:
            if name in vars(module):
                self.emit("attribute", module.__name__, name)
                self.visit(vars(module)[name])
                self._attributes(vars(module)[name], names, met)

    def _source(self, obj: type | types.FunctionType) -> bool:
        """Emits the user's source of ``obj`` and the line it starts on; ``False`` when there is
        none (code made by ``exec``). Torch saves a graph with the lines of the user's code it
        inlined and refuses to load it once they moved (a warning and a traceback, then a
        compile): code that moved in its file gets another key instead."""
        try:
            lines, start = inspect.getsourcelines(obj)
        except (OSError, TypeError):
            return False
        self.emit("source", start, "".join(lines))
        return True

    def _code(self, code: types.CodeType) -> None:
        self.emit("code", code.co_code, code.co_names, code.co_varnames, code.co_freevars)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self._code(const)
            else:
                self.emit("const", repr(const))


def _names(code: types.CodeType) -> set[str]:
    """The global names ``code`` and the code nested in it may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _library(module: str) -> bool:
    root = module.split(".")[0]
    return root in _LIBRARIES or root in sys.stdlib_module_names


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', None) or getattr(obj, '__name__', repr(obj))}"
