"""The README stays true: its two commands are the ones CI runs, and its example runs."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert README.index("```bash") < README.index("```python")
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_example_runs():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    # the same code with a short eager run instead of 80,000 compiled steps
    assert "steps=80_000" in code and "compile=True" in code
    code = code.replace("steps=80_000", "steps=3").replace("compile=True", "compile=False")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert int(scope["state"].step) == 3
    assert scope["prediction"].shape == (100, 1)


def test_every_python_m_module_the_readmes_name_exists():
    """A module renamed or removed (``python -m metafunc.reproduce`` was) must leave no
    command behind in the READMEs."""
    for readme in (ROOT / "README.md", ROOT / "benchmarks" / "README.md"):
        names = set(re.findall(r"python -m ([A-Za-z_][\w.]*)", readme.read_text()))
        assert names, readme
        for name in sorted(names):
            assert importlib.util.find_spec(name) is not None, (
                f"{readme.relative_to(ROOT)}: python -m {name}"
            )


def test_determinism_is_claimed_only_for_one_machine_and_thread_count():
    """Another CPU rounds differently (a rerun of the demo on another CPU differed from step 500
    on), so no run is called deterministic without saying where."""
    text = " ".join(README.split())
    claims = re.findall(r"\bis (?:deterministic|bitwise)\b.{0,40}", text)
    assert claims, "the README says nothing of determinism"
    for claim in claims:
        assert "on one machine and thread count" in claim, claim
