"""Every code block of the README's Recipes section runs: the first (your own model and data)
sets up ``sampler``, ``opt``, ``fn`` and ``state`` for the others, each of which runs in a fresh
scope after it. Steps are eager and 3 instead of the thousands shown (the compiled paths of
each recipe's feature are tested in their own files)."""

import functools
import re
from pathlib import Path

import pytest

import metafunc as mf

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SECTION = re.search(r"\n## Recipes\n(.*?)\n## ", README, re.S).group(1)
BLOCKS = [
    (re.findall(r"\*\*(.+?)\*\*", text)[-1].rstrip("."), code)
    for text, code in re.findall(r"(.*?)```python\n(.*?)```", SECTION, re.S)
]
PRELUDE = BLOCKS[0][1]


def shortened(code):
    """3 training steps for the thousands shown (``decay_steps=`` and the like stay); the phases
    recipe runs to steps 2 and 3, then 3 more."""
    code = re.sub(r"\bsteps=(2_000|100)\b", "steps=3", code)
    return code.replace("(first, 1_000), (second, 2_000)", "(first, 2), (second, 3)")


def test_the_recipes_section_holds_the_recipes_the_issue_asks_for():
    titles = [t.lower() for t, _ in BLOCKS]
    for word in ("own model", "schedule", "inner adam", "dropout", "frozen", "bfloat16"):
        assert any(word in t for t in titles), word
    for word in ("load and predict", "validation", "several phases", "your own learner"):
        assert any(word in t for t in titles), word


@pytest.mark.parametrize(("title", "code"), BLOCKS, ids=[t for t, _ in BLOCKS])
def test_recipe_runs(title, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the load recipe writes checkpoint.pt, the phases one run/
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(mf, "make_step", functools.partial(mf.make_step, compile=False))
    scope: dict = {}
    exec(compile(shortened(PRELUDE), "README.md (Recipes: own model)", "exec"), scope)
    assert int(scope["state"].step) == 3
    if code is PRELUDE:
        return
    exec(compile(shortened(code), f"README.md (Recipes: {title})", "exec"), scope)
    if "prediction" in scope:
        assert scope["prediction"].shape == (16, 10, 1)
        assert scope["unadapted"].shape == (10, 1)
    if "history" in scope:
        # validated every 500 steps, none of which a 3-step run reaches, and at its end
        assert [step for step, _ in scope["history"]] == [3]
        (_, score), learner = scope["history"][0], scope["learner"]
        assert score == mf.evaluate(learner, scope["state"].meta, scope["held_out"]).loss.mean
    if "accuracy" in scope:  # the prototypes recipe: per task, on padded tasks
        assert scope["accuracy"].values.shape == (8,) and 0 <= scope["accuracy"].mean <= 1
    if "query_loss" in scope:
        assert isinstance(scope["query_loss"], float) and scope["query_loss"] > 0
    if "batches" in scope:  # the phases ran to 3, then 3 steps on the list of batches
        assert int(scope["state"].step) == 6
        assert int(mf.load("run/ckpt.pt", like=scope["state"]).step) == 3
    elif "state" in scope:
        assert int(scope["state"].step) == 3
