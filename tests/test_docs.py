"""The examples in the docstrings run, as doctests, with the names of ``doctest_globals``
(tests/conftest.py): a small net and its loss, a learner, an optimizer and its state, tasks,
gradients.

MODULES lists the modules whose examples are run; a module whose examples are still sketches
is added once they run. Nothing here compiles (each example runs eagerly, in well under a
second), and warnings are errors as in the rest of the suite.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

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
        "metafunc.losses.supervised",
        "metafunc.tasks.sine.sine",
        "metafunc.step.init_state",
        "metafunc.step.make_step",
        "metafunc.step.outer_step",
        "metafunc.step.validated",
        "metafunc._compile.compiled",
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
