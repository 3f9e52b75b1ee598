"""The demo command end to end, in a short eager run."""

import json
import math
import os
import random
import subprocess
import sys
from statistics import NormalDist

import pytest
import torch
from torch.func import functional_call

import metafunc as mf
from metafunc.cli import main


@pytest.mark.slow
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
    # The reported scores, recomputed from the checkpoint by hand: 8 fresh draws per phase from
    # the evaluation seed (seed + 1), 5 SGD steps on L1 with torch.autograd, MSE on the grid.
    net = mf.models.blog_sine_net(torch.Generator())  # the architecture; weights from the file
    meta = mf.load(out / "checkpoint.pt").meta
    g = torch.Generator().manual_seed(1)
    for phase, label in ((0.0, "0"), (math.pi, "pi")):
        draws = mf.tasks.sine(g, tasks=8, shots=4, queries=1, phase=phase)
        errors = []
        for t in range(8):
            theta = adapt_by_hand(net, meta, draws.support[0][t], draws.support[1][t])
            errors.append(grid_mse_by_hand(net, theta, phase))
        reported = results["grid_mse"][label]
        assert reported["draws"] == 8
        assert reported["mean"] == pytest.approx(sum(errors) / 8, rel=1e-5)
        assert reported["ci95"] == pytest.approx(ci95_by_hand(errors), rel=1e-4)


def adapt_by_hand(net, meta, x, y, *, steps=5, lr=3e-2):
    """The demo's inner loop on one task: SGD on the L1 loss, with torch.autograd."""
    theta = {k: v.clone().requires_grad_() for k, v in meta.items()}
    for _ in range(steps):
        loss = (functional_call(net, theta, (x,)) - y).abs().mean()
        grads = torch.autograd.grad(loss, list(theta.values()))
        theta = {
            k: (v - lr * d).detach().requires_grad_()
            for (k, v), d in zip(theta.items(), grads, strict=True)
        }
    return theta


def grid_mse_by_hand(net, theta, phase, step=0.01):
    n = math.ceil(4 * math.pi / step)
    grid = torch.tensor([[-2 * math.pi + k * step] for k in range(n)])
    with torch.no_grad():
        return ((functional_call(net, theta, (grid,)) - torch.sin(grid + phase)) ** 2).mean().item()


def ci95_by_hand(values):
    n = len(values)
    mean = sum(values) / n
    deviation = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return NormalDist().inv_cdf(0.975) * deviation / math.sqrt(n)


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


@pytest.mark.slow
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
    assert results["resumed_from_step"] == 3 and results["history"]["step"] == [4, 6]


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    assert main([*SHORT, "--steps", "2", "--resume", "--out", str(tmp_path)]) == 2
    assert "metafunc train: cannot resume: there is no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_help():
    done = subprocess.run(
        [sys.executable, "-m", "metafunc.cli", "train", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--meta-batch" in done.stdout


@pytest.mark.slow
def test_import_loads_no_plotting_images_or_applications():
    """The library never imports matplotlib, PIL (the Omniglot loader imports it on use) or its
    own applications (the experiments and the CLI)."""
    code = (
        "import sys, metafunc; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('matplotlib', 'PIL') or m.startswith(('metafunc.experiments', 'metafunc.cli', "
        "'metafunc.plotting'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


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
        ("boil", "boil-sine.png"),
        ("daml", "daml-sine.png"),
    ],
)
@pytest.mark.slow
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
    assert first[0]["paper"] == 1.13
    mse, ci95 = table_cell_by_hand(steps=2, shots=5, eval_tasks=5)
    assert first[0]["mse"] == pytest.approx(mse, rel=1e-4)
    assert first[0]["ci95"] == pytest.approx(ci95, rel=1e-3)
    # A second run with more algorithms keeps the finished cell and adds the new one.
    assert main([*args, "--algos", "maml", "reptile"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0] == first[0] and [(r["algo"], r["inner_steps"]) for r in rows][1] == (
        "reptile",
        5,
    )
    printed = capsys.readouterr().out
    assert "maml, 5-shot: done in" in printed and "| reptile | " in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--inner-lr", "nan"],
            "metafunc train: argument --inner-lr: must be a positive finite number (got nan)",
        ),
        (
            ["--inner-steps", "-1"],
            "metafunc train: argument --inner-steps: must be an integer >= 0 (got -1)",
        ),
        (["--device", "bogus"], "metafunc train: argument --device: is not a torch device ("),
        (
            ["--data-dir", "x"],
            "metafunc train: --data-dir does not apply to --task sine (it is an option of --task fewshot)",
        ),
        (["--ways", "3"], "metafunc train: --ways does not apply to --task sine"),
        (
            ["--task", "fewshot", "--eval-draws", "3"],
            "metafunc train: --eval-draws does not apply to --task fewshot",
        ),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args, message, capsys):
    try:
        code = main(["train", *args, "--no-progress"])
    except SystemExit as e:  # argparse's own exit
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_an_out_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("")
    assert main([*SHORT, "--steps", "2", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"metafunc train: --out {str(out)!r} is a file; it must be a folder (or not exist yet)\n"
    )


def test_an_out_that_cannot_be_written_is_refused_before_training(tmp_path, capsys, monkeypatch):
    # This suite may run as root, for whom every folder is writable: os.access is what decides.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != tmp_path and real_access(p, mode))
    assert main([*SHORT, "--steps", "2", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"metafunc train: --out {str(tmp_path)!r} is not writable\n"
    assert captured.out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("resume", [[], ["--resume"]], ids=["new", "resume"])
def test_a_checkpoint_path_that_is_a_folder_is_refused_before_training(tmp_path, capsys, resume):
    (tmp_path / "checkpoint.pt").mkdir()
    assert main([*SHORT, "--steps", "2", *resume, "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"metafunc train: {str(tmp_path / 'checkpoint.pt')!r}, where the checkpoint is written, "
        "is not a file; move it away or give another --out\n"
    )
    assert captured.out == "" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_results_are_strict_json_with_null_for_non_finite_numbers(tmp_path):
    from metafunc.cli import _write_json

    path = _write_json(tmp_path / "r.json", {"mse": float("nan"), "rows": [{"x": float("inf")}]})
    assert json.loads(path.read_text()) == {"mse": None, "rows": [{"x": None}]}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--meta-batch", "4"], "was trained with --meta-batch 2 but this run has 4"),
        (["--seed", "1"], "was trained with --seed 0 but this run has 1"),
        (["--algo", "fomaml"], "was trained with --algo maml but this run has fomaml"),
        (["--task", "fewshot"], "was trained with --task sine but this run has fewshot"),
    ],
)
def test_resume_with_other_options_is_refused_naming_the_option(tmp_path, capsys, change, message):
    assert main([*SHORT, "--steps", "2", "--out", str(tmp_path)]) == 0
    args = [*SHORT, "--steps", "4", "--resume", "--out", str(tmp_path)]
    if "--task" in change:  # the sine-only option would be refused first
        i = args.index("--eval-draws")
        del args[i : i + 2]
    assert main([*args, *change]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metafunc train: cannot resume: ") and message in err, err
    assert err.endswith(
        "resume with the options it was started with, or give a new run another --out\n"
    )


def _flip_a_bit(data):
    data = bytearray(data)
    data[len(data) // 2] ^= 0x10
    return bytes(data)


DAMAGE = {
    "a-flipped-bit": (_flip_a_bit, "is damaged and cannot be used"),
    "empty": (lambda data: b"", "is empty (0 bytes), not a checkpoint"),
    "truncated": (lambda data: data[: len(data) // 2], "is truncated, damaged or not a checkpoint"),
    "random-bytes": (
        lambda data: random.Random(0).randbytes(len(data)),
        "is truncated, damaged or not a checkpoint",
    ),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_resume_from_a_damaged_checkpoint_says_so_in_one_line(tmp_path, capsys, how):
    assert main([*SHORT, "--steps", "2", "--out", str(tmp_path)]) == 0
    path = tmp_path / "checkpoint.pt"
    damage, message = DAMAGE[how]
    path.write_bytes(damage(path.read_bytes()))
    capsys.readouterr()
    assert main([*SHORT, "--steps", "4", "--resume", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(
        f"metafunc train: cannot resume: load: {str(path)!r} {message}"
    ), captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""


def table_cell_by_hand(*, steps, shots, eval_tasks):
    """A MAML cell of the table, written out: the 1-40-40-1 net from seed 0, ``steps`` outer
    Adam steps (1e-3) on 25 sinusoid tasks of ``shots`` + ``shots`` points drawn from seed 0,
    one second-order inner SGD step at 0.01 on MSE (torch.autograd, torch.optim.Adam); then
    ``eval_tasks`` new tasks from seed 1, adapted on ``shots`` points, MSE on 100 fresh ones."""
    net = mf.models.mlp([1, 40, 40, 1], generator=torch.Generator().manual_seed(0))
    theta0 = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    mse = lambda theta, x, y: ((functional_call(net, theta, (x,)) - y) ** 2).mean()  # noqa: E731

    def adapted(theta, x, y, create_graph):
        grads = torch.autograd.grad(
            mse(theta, x, y), list(theta.values()), create_graph=create_graph
        )
        return {k: v - 0.01 * d for (k, v), d in zip(theta.items(), grads, strict=True)}

    adam = torch.optim.Adam(theta0.values(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        (xs, ys), (xq, yq) = mf.tasks.sinusoid(g, tasks=25, shots=shots, queries=shots)
        loss = sum(mse(adapted(theta0, xs[t], ys[t], True), xq[t], yq[t]) for t in range(25)) / 25
        adam.zero_grad()
        loss.backward()
        adam.step()
    (xs, ys), (xq, yq) = mf.tasks.sinusoid(
        torch.Generator().manual_seed(1), tasks=eval_tasks, shots=shots, queries=100
    )
    errors = [
        mse(adapted(theta0, xs[t], ys[t], False), xq[t], yq[t]).item() for t in range(eval_tasks)
    ]
    return sum(errors) / eval_tasks, ci95_by_hand(errors)
