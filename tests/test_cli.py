"""The demo command end to end, in a short eager run."""

import json
import subprocess
import sys

import pytest
import torch

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
    assert results["outer_lr"] == 3e-2  # the demo's default, not the blog's 1e-2
    assert results["history"]["step"] == [5, 10, 15, 20]
    for phase in ("0", "pi"):
        assert results["grid_mse"][phase]["draws"] == 8 and results["grid_mse"][phase]["mean"] > 0


SHORT = [
    "train",
    "--meta-batch",
    "2",
    "--inner-steps",
    "1",
    "--eval-draws",
    "2",
    "--log-every",
    "2",
    "--no-compile",
    "--no-progress",
]


def test_resume_continues_a_run_bit_exact(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*SHORT, "--steps", "6", "--out", str(straight)]) == 0
    assert main([*SHORT, "--steps", "3", "--out", str(split)]) == 0
    assert (
        main([*SHORT, "--steps", "6", "--resume", "--checkpoint-every", "2", "--out", str(split)])
        == 0
    )
    assert "resumed from" in capsys.readouterr().out
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    assert a.keys() == b.keys() and int(b["state.step"]) == 6
    for k in a:
        assert torch.equal(a[k], b[k]), k
    results = json.loads((split / "results.json").read_text())
    assert results["resumed_from_step"] == 3 and results["history"]["step"] == [6]


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    assert main([*SHORT, "--steps", "2", "--resume", "--out", str(tmp_path)]) == 2
    assert (
        "metafunc train: cannot resume: load: path must be a checkpoint file"
        in capsys.readouterr().err
    )


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
    results = json.loads((out / "results.json").read_text())
    assert results["algo"] == algo
    assert results["outer_lr"] == 1e-2  # only maml's default departs from the blog's rate


def test_table_writes_rows_and_resumes_where_it_stopped(tmp_path, capsys):
    out = tmp_path / "table.json"
    args = ["table", "--steps", "2", "--eval-tasks", "5", "--shots", "5", "--no-compile"]
    args += ["--no-progress", "--out", str(out)]
    assert main([*args, "--algos", "maml"]) == 0
    first = json.loads(out.read_text())["rows"]
    assert [(r["algo"], r["shots"]) for r in first] == [("maml", 5)]
    assert first[0]["paper"] == 1.13 and first[0]["mse"] > 0 and first[0]["ci95"] > 0
    # A second run with more algorithms keeps the finished cell and adds the new one.
    assert main([*args, "--algos", "maml", "reptile"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0] == first[0] and [(r["algo"], r["inner_steps"]) for r in rows][1] == (
        "reptile",
        5,
    )
    printed = capsys.readouterr().out
    assert "maml, 5-shot: done in" in printed and "| reptile | " in printed
