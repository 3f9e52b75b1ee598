"""The examples in the docstrings run, as doctests, with the names of ``doctest_globals``
(tests/conftest.py): a small net and its loss, a learner, an optimizer and its state, tasks,
gradients.

MODULES lists the modules whose examples are run; a module whose examples are still sketches
is added once they run. Nothing here compiles (each example runs eagerly, in well under a
second), and warnings are errors as in the rest of the suite.

The API reference (docs/api/*.rst, built by ``make docs``) documents every public name: read
from the pages' autodoc directives, as autodoc would find the names, without building the site.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import metafunc as mf

MODULES = [
    "metafunc",
    "metafunc.optim",
    "metafunc.optim._adam",
    "metafunc.optim._base",
    "metafunc.optim._clip",
    "metafunc.optim._guard",
    "metafunc.optim._schedules",
    "metafunc.optim._sgd",
    "metafunc.tasks.fewshot",
    "metafunc.tasks.omniglot",
    "metafunc.tasks.sine",
    "metafunc.models",
    "metafunc.losses",
    "metafunc.checkpoint",
    "metafunc.evaluation",
    "metafunc._tree",
    "metafunc._model",
    "metafunc._state",
    "metafunc._per_step",
    "metafunc._phases",
    "metafunc.step",
    "metafunc._random",
    "metafunc._compile",
    "metafunc.train",
    "metafunc.hooks",
    "metafunc._learner",
    "metafunc._inner",
    "metafunc._wrappers",
    "metafunc.distributed",
    "metafunc.algorithms.anil",
    "metafunc.algorithms.daml",
    "metafunc.algorithms.imaml",
    "metafunc.algorithms.maml",
    "metafunc.algorithms.mamlpp",
    "metafunc.algorithms.meta_sgd",
    "metafunc.algorithms.reptile",
]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        found += [t for t in finder.find(module, name) if t.examples]
    return sorted(found, key=lambda t: t.name)


EXAMPLES = examples()


def test_the_examples_cover_the_public_functions_of_these_modules():
    """A docstring example dropped, or a module's examples no longer found, shows here."""
    names = {t.name for t in EXAMPLES}
    for must in (
        "metafunc",
        "metafunc.optim._sgd.sgd",
        "metafunc.optim._guard.apply_if_finite",
        "metafunc.checkpoint.load",
        "metafunc.evaluation.evaluate",
        "metafunc._model.pure",
        "metafunc._model.stateful",
        "metafunc._state.Stateful",
        "metafunc._learner.Context",
        "metafunc.losses.supervised",
        "metafunc.tasks.sine.sine",
        "metafunc.step.init_state",
        "metafunc.step.make_step",
        "metafunc.step.outer_step",
        "metafunc.step.validated",
        "metafunc._compile.compiled",
        "metafunc._compile.background",
        "metafunc._random.seeded",
        "metafunc.train.train",
        "metafunc.hooks.Run",
        "metafunc.hooks.Hook",
        "metafunc.hooks.Logger",
        "metafunc.hooks.Every",
        "metafunc.hooks.Checkpoints",
        "metafunc._learner.Learner",
        "metafunc._learner.Losses",
        "metafunc._learner.Batching",
        "metafunc._learner.exact",
        "metafunc._inner.Loop",
        "metafunc._inner.inner_loop",
        "metafunc._wrappers.chunked",
        "metafunc._wrappers.remat",
        "metafunc._wrappers.first_order",
        "metafunc._wrappers.stochastic",
        "metafunc.distributed.init",
        "metafunc.distributed.data_parallel",
        "metafunc.algorithms.maml.maml",
        "metafunc.algorithms.maml.fomaml",
        "metafunc.algorithms.mamlpp.mamlpp",
        "metafunc._per_step.multi_step_weights",
        "metafunc._phases.join_steps",
        "metafunc._phases.derivative_annealing",
        "metafunc.algorithms.anil.anil",
        "metafunc.algorithms.daml.daml",
        "metafunc.algorithms.imaml.imaml",
        "metafunc.algorithms.meta_sgd.meta_sgd",
        "metafunc.algorithms.reptile.reptile",
    ):
        assert must in names, must
    assert len(EXAMPLES) >= 73, len(EXAMPLES)


@pytest.mark.parametrize("test", EXAMPLES, ids=[t.name for t in EXAMPLES])
def test_docstring_example_runs(test, doctest_globals):
    test.globs = {**test.globs, **doctest_globals}
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out: list[str] = []
    result = runner.run(test, out=out.append, clear_globs=True)
    assert result.attempted > 0
    assert result.failed == 0, "".join(out)


# ---------------------------------------------------------------- the API reference

DOCS = Path(__file__).resolve().parents[1] / "docs"
PUBLIC_MODULES = [
    "metafunc.optim",
    "metafunc.tasks",
    "metafunc.models",
    "metafunc.losses",
    "metafunc.hooks",
    "metafunc.evaluation",
    "metafunc.distributed",
    "metafunc.checkpoint",
]
# ".. automodule:: metafunc.hooks" and the option lines under it (":members:", ...)
DIRECTIVE = re.compile(r"^\.\. (auto\w+|py:\w+):: (\S+)[ \t]*\n((?:[ \t]+:.*\n)*)", re.MULTILINE)


def public_names(module: Any) -> list[str]:
    """A module's public names as autodoc's ``:members:`` lists them: its ``__all__``, or
    without one the public functions and classes defined in it."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(v) or inspect.isclass(v))
        and v.__module__ == module.__name__
    ]


def api_pages() -> tuple[set[str], dict[str, Any]]:
    """The modules the API pages document with ``automodule``, and every name they document
    (full name: object): an ``automodule`` with ``:members:`` documents the module's public
    functions and classes that have a docstring, less its ``:exclude-members:``; ``autodata``,
    ``autofunction``, ``autoclass`` and ``py:data`` document the one name they give."""
    modules: set[str] = set()
    names: dict[str, Any] = {}
    for page in sorted((DOCS / "api").glob("*.rst")):
        for kind, target, options in DIRECTIVE.findall(page.read_text()):
            opts = dict(re.findall(r":([\w-]+):[ \t]*(.*)", options))
            if kind != "automodule":
                module, _, name = target.rpartition(".")
                names[target] = getattr(importlib.import_module(module), name)
                continue
            modules.add(target)
            if "members" not in opts:
                continue
            module = importlib.import_module(target)
            excluded = {n.strip() for n in opts.get("exclude-members", "").split(",")}
            for name in public_names(module):
                obj = getattr(module, name)
                if name in excluded or inspect.ismodule(obj):
                    continue
                if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__doc__:
                    names[f"{target}.{name}"] = obj
    return modules, names


def test_the_api_pages_are_in_the_table_of_contents():
    index = (DOCS / "index.rst").read_text()
    for page in sorted((DOCS / "api").glob("*.rst")):
        assert re.search(rf"^   api/{page.stem}$", index, re.MULTILINE), page.name


def test_the_api_reference_documents_every_public_name():
    """Each name of ``metafunc.__all__`` is on the package's page (a module: has its own page),
    and each public name of the public modules on the module's page, or, where the page leaves
    it out (``metafunc.tasks.Tasks``), the same object is documented under another name."""
    modules, names = api_pages()
    objects = [id(obj) for obj in names.values()]
    missing = []
    for name in mf.__all__:
        if inspect.ismodule(getattr(mf, name)):
            if f"metafunc.{name}" not in modules:
                missing.append(f"metafunc.{name} (no page)")
        elif f"metafunc.{name}" not in names:
            missing.append(f"metafunc.{name}")
    for module_name in PUBLIC_MODULES:
        assert module_name in modules, f"{module_name} has no page"
        module = importlib.import_module(module_name)
        for name in public_names(module):
            obj = getattr(module, name)
            if f"{module_name}.{name}" not in names and id(obj) not in objects:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"not in the API reference (docs/api/*.rst): {missing}"
    assert {"Checkpoints", "Every", "Hook", "Log", "Logger", "Run"} <= set(mf.hooks.__all__)
