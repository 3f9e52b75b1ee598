"""The demo command end to end, in a short eager run."""

import json
import subprocess
import sys

import pytest

from metafunc.cli import main


def test_train_writes_figures_and_results(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--steps",
            "20",
            "--meta-batch",
            "4",
            "--eval-draws",
            "8",
            "--log-every",
            "5",
            "--no-compile",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "b = 0" in printed and "b = pi" in printed
    for name in ("maml-sine.png", "learning-curve.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 20 and results["compiled"] is False
    assert results["history"]["step"] == [5, 10, 15, 20]
    for phase in ("0", "pi"):
        assert results["grid_mse"][phase]["draws"] == 8 and results["grid_mse"][phase]["mean"] > 0


def test_console_script_help():
    done = subprocess.run(
        [sys.executable, "-m", "metafunc.cli", "train", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--meta-batch" in done.stdout


def test_import_does_not_import_matplotlib():
    code = "import sys, metafunc; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_public_api_is_exported():
    import metafunc as mf

    for name in mf.__all__:
        assert getattr(mf, name) is not None, name
    assert callable(mf.maml) and callable(mf.make_step) and callable(mf.optim.adam)


@pytest.mark.parametrize(
    ("algo", "figure"),
    [
        ("fomaml", "maml-sine.png"),
        ("reptile", "reptile-sine.png"),
        ("meta-sgd", "meta-sgd-sine.png"),
        ("anil", "anil-sine.png"),
        ("daml", "daml-sine.png"),
    ],
)
def test_train_runs_every_algorithm(tmp_path, capsys, algo, figure):
    out = tmp_path / algo
    args = ["train", "--algo", algo, "--steps", "3", "--meta-batch", "2", "--eval-draws", "3"]
    assert main([*args, "--no-compile", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "b = pi" in printed
    assert ("1 unlabeled source input" in printed) == (algo == "daml")
    assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text())["algo"] == algo
