"""Every notebook runs top to bottom in fast mode (METAFUNC_FAST=1: few steps, small
evaluations) in a kernel of this test's own Python, so a notebook that falls out of step with
the API fails the suite. nbclient and ipykernel are in the dev extra: if they are missing this
module fails to import, and the suite fails with it (nothing is skipped)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.slow  # trains, or runs whole processes

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_maml_sine", "02_daml_sine", "03_algorithms", "04_speed"]
TIMEOUT_S = 240  # per cell; fast mode takes seconds to tens of seconds per notebook


def test_the_four_notebooks_are_there() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec pointing at this interpreter, found first through JUPYTER_PATH, so the
    notebooks run against the metafunc installed here (a fresh .venv in CI)."""
    spec = tmp_path / "kernels" / "metafunc-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "metafunc test", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("METAFUNC_FAST", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return "metafunc-test"


def execute(name: str, kernel: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.perf_counter()
    client.execute()
    print(f"{name}: {time.perf_counter() - start:.1f} s in fast mode")
    return nb


def outputs(nb: nbformat.NotebookNode, output_type: str) -> list[dict]:
    return [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == output_type
    ]


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(nb, "display_data"))


# The checks each notebook prints, which must run and hold in fast mode too: notebook 01's
# compiled step is compiled (with aot_eager) and its loop is written with torch.autograd.
CHECKS = {
    "01_maml_sine": [
        "inner_loop() equals the hand-written step: True",
        "vmapped meta-gradient equals the autograd loop over tasks: True",
        "first call (compiles, aot_eager)",
        "compiled step equals eager step: True",
    ],
    "02_daml_sine": [],
    "03_algorithms": [],
}


@pytest.mark.parametrize(
    ("name", "figures"), [("01_maml_sine", 4), ("02_daml_sine", 4), ("03_algorithms", 2)]
)
def test_notebook_runs_in_fast_mode(name: str, figures: int, kernel: str) -> None:
    nb = execute(name, kernel)
    text = "".join(o.get("text", "") for o in outputs(nb, "stream"))
    assert "fast mode" in text
    assert images(nb) == figures
    assert "False" not in text, text  # the notebooks print their own checks as True/False
    for check in CHECKS[name]:
        assert check in text, (check, text)


def test_speed_notebook_reads_the_committed_results(kernel: str) -> None:
    """Notebook 04 plots benchmarks/results/bench-*.json; without them it must stop with a
    message that says which files it needs."""
    results = sorted((ROOT / "benchmarks" / "results").glob("bench-*.json"))
    if results:
        nb = execute("04_speed", kernel)
        # per results file: speed, first call and memory, and scaling when it has sweeps
        with_sweeps = sum(bool(json.loads(r.read_text()).get("sweeps")) for r in results)
        assert images(nb) == 2 * len(results) + with_sweeps
    else:
        with pytest.raises(nbclient.exceptions.CellExecutionError, match="no benchmark results"):
            execute("04_speed", kernel)
