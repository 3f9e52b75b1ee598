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
    """3 training steps for the thousands shown (``decay_steps=`` and the like stay)."""
    return re.sub(r"\bsteps=2_000\b", "steps=3", code)


def test_the_recipes_section_holds_the_recipes_the_issue_asks_for():
    titles = [t.lower() for t, _ in BLOCKS]
    for word in ("own model", "schedule", "inner adam", "dropout", "frozen", "bfloat16"):
        assert any(word in t for t in titles), word
    for word in ("load and predict", "validation"):
        assert any(word in t for t in titles), word


@pytest.mark.parametrize(("title", "code"), BLOCKS, ids=[t for t, _ in BLOCKS])
def test_recipe_runs(title, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the load recipe writes checkpoint.pt
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
        assert [step for step, _ in scope["history"]] == [3]
        # validated at the last step: the scores of the final state on the held-out tasks
        (_, scores), learner = scope["history"][0], scope["learner"]
        assert isinstance(scores, mf.Evaluation) and scores.loss.values.shape == (16,)
        again = mf.evaluate(learner, scope["state"].meta, scope["held_out"])
        assert (scores.loss.mean, scores.loss_before.mean) == (
            again.loss.mean,
            again.loss_before.mean,
        )
        assert scores.loss.mean < scores.loss_before.mean  # 3 inner steps help on linear tasks
    if "query_loss" in scope:
        assert scope["query_loss"].ndim == 0
    if "state" in scope:
        assert int(scope["state"].step) == 3
