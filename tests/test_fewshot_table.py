"""The few-shot table (``metafunc table --task fewshot``) in tiny eager runs: the JSON and the
figure, a cell equal to the few-shot run with the same options, resuming, refusing another
table's or other settings' JSON, Omniglot through --data-dir, and the Markdown table."""

import functools
import json
from pathlib import Path

import pytest
import torch
from support import write_omniglot

import metafunc as mf
from metafunc.cli import main
from metafunc.experiments import fewshot, fewshot_table
from metafunc.experiments.algorithms import outer_rate

ROOT = Path(__file__).resolve().parents[1]

TINY = ["table", "--task", "fewshot", "--steps", "2", "--meta-batch", "2", "--channels", "2"]
TINY += ["--queries", "2", "--glyph-classes", "12", "--eval-tasks", "3", "--settings", "3w1s"]
TINY += ["--no-compile", "--no-progress"]
PNG = b"\x89PNG\r\n\x1a\n"


def rows_of(path):
    return json.loads(path.read_text())["rows"]


@pytest.mark.slow
def test_the_table_writes_its_cells_and_figure_and_resumes_keeping_them(tmp_path, capsys):
    out = tmp_path / "t.json"
    args = [*TINY, "--out", str(out), "--seeds", "0", "1", "--seeded-algos", "protonet"]
    assert main([*args, "--algos", "anil", "protonet"]) == 0
    rows = rows_of(out)
    assert [(r["algo"], r["ways"], r["shots"], r["seed"]) for r in rows] == [
        ("anil", 3, 1, 0),
        ("protonet", 3, 1, 0),
        ("protonet", 3, 1, 1),
    ]
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG
    for r in rows:
        assert r["tasks"] == 3 and r["steps"] == 2 and r["data"] == "synthetic glyphs"
        assert r["train_s"] >= r["first_call_s"] > 0 and r["eval_s"] > 0
        assert r["machine"]["cpu"] and r["machine"]["torch"] == torch.__version__
        assert r["config"]["channels"] == 2 and r["config"]["compile"] is False
        assert r["history"]["step"] == [1, 2]
    assert (rows[0]["inner_steps"], rows[1]["inner_steps"]) == (1, 0)
    means = json.loads(out.read_text())["seed_means"]
    assert means == [
        {
            "algo": "protonet",
            "ways": 3,
            "shots": 1,
            "seeds": [0, 1],
            "accuracy": [rows[1]["accuracy"], rows[2]["accuracy"]],
            "mean": (rows[1]["accuracy"] + rows[2]["accuracy"]) / 2,
        }
    ]
    printed = capsys.readouterr().out
    assert (
        "0 of the 3 cells are done" in printed and "[3/3] ProtoNet, 3-way 1-shot, seed 1" in printed
    )
    assert "| ProtoNet | mean of 2 |" in printed
    # The cell is the few-shot run of the same options: `metafunc train --task fewshot`.
    run = tmp_path / "run"
    train = ["train", "--task", "fewshot", "--algo", "anil", "--ways", "3", "--steps", "2"]
    train += ["--meta-batch", "2", "--channels", "2", "--queries", "2", "--glyph-classes", "12"]
    train += ["--eval-tasks", "3", "--no-compile", "--no-progress", "--out", str(run)]
    assert main(train) == 0
    alone = json.loads((run / "results.json").read_text())["test_accuracy"]
    assert (rows[0]["accuracy"], rows[0]["ci95"]) == (alone["mean"], alone["ci95"])
    # Rerunning with a row more keeps the three cells as they are and runs only the new one.
    capsys.readouterr()
    assert main([*args, "--algos", "anil", "protonet", "maml"]) == 0
    again = rows_of(out)
    assert again[:3] == rows and [r["algo"] for r in again[3:]] == ["maml"]
    assert "3 of the 4 cells are done" in capsys.readouterr().out


@pytest.mark.slow
def test_an_interrupted_table_resumes_at_the_next_cell(tmp_path, monkeypatch):
    out = tmp_path / "t.json"
    args = [*TINY, "--algos", "maml", "fomaml", "--seeds", "0", "--out", str(out)]
    ran = []
    real = fewshot_table.run_cell

    def interrupted(config, cell, **kw):
        if cell.algo == "fomaml":
            raise KeyboardInterrupt
        ran.append(cell)
        return real(config, cell, **kw)

    monkeypatch.setattr(fewshot_table, "run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    first = rows_of(out)
    assert [r["algo"] for r in first] == ["maml"]
    monkeypatch.setattr(
        fewshot_table, "run_cell", lambda c, cell, **kw: ran.append(cell) or real(c, cell, **kw)
    )
    assert main(args) == 0
    assert [c.algo for c in ran] == ["maml", "fomaml"]  # the finished cell was not run again
    assert rows_of(out)[0] == first[0]


@pytest.mark.slow
def test_a_json_of_other_settings_or_another_table_is_refused(tmp_path, capsys):
    out = tmp_path / "t.json"
    args = [*TINY, "--algos", "protonet", "--seeds", "0", "--out", str(out)]
    assert main(args) == 0
    written = out.read_text()
    capsys.readouterr()
    for change, message in (
        (["--channels", "3"], "holds cells run with --channels 2 but this run has --channels 3"),
        (["--steps", "3"], "holds cells run with --steps 2 but this run has --steps 3"),
    ):
        assert main([*args, *change]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"metafunc table: --out {str(out)!r} {message}: a table's cells share their "
            "settings; rerun with the ones it was made with to add cells, or give another "
            "--out, or move it away\n"
        )
    with_compile = [a for a in args if a != "--no-compile"]
    assert main(with_compile) == 2
    assert "run with --no-compile but this run has a compiled step" in capsys.readouterr().err
    sine = ["table", "--steps", "1", "--eval-tasks", "2", "--no-progress", "--out", str(out)]
    assert main(sine) == 2
    assert capsys.readouterr().err == (
        f"metafunc table: --out {str(out)!r} holds the fewshot table, not the sine one; give "
        "another --out, or move it away\n"
    )
    assert out.read_text() == written  # nothing was run or written
    out.write_text("{not json")
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(
        f"metafunc table: --out {str(out)!r} is not a table's JSON (JSONDecodeError: "
    )


def test_a_sine_table_of_other_settings_is_refused_too(tmp_path, capsys):
    """The sine table shares the check (it used to drop the cells of other settings and start
    afresh); the committed file, of an older format, records its options under other names."""
    out = tmp_path / "sine.json"
    args = ["table", "--algos", "maml", "--shots", "5", "--eval-tasks", "2", "--no-compile"]
    args += ["--no-progress", "--out", str(out)]
    assert main([*args, "--steps", "1"]) == 0
    capsys.readouterr()
    assert main([*args, "--steps", "2"]) == 2
    assert "holds cells run with --steps 1 but this run has --steps 2" in capsys.readouterr().err
    out.write_text((ROOT / "docs/sinusoid-table.json").read_text())
    assert main([*args, "--steps", "2"]) == 2
    assert (
        "holds cells run with --steps 70000 but this run has --steps 2" in capsys.readouterr().err
    )
    # Its settings but for the one it does not record (it has no_compile, not compiled).
    assert main([*args, "--steps", "70000", "--eval-tasks", "4000"]) == 2
    assert capsys.readouterr().err == (
        f"metafunc table: --out {str(out)!r} does not record the setting 'compiled' its cells ran "
        "with (a file of an older format), so no cells can be added to it; give another --out, "
        "or move it away\n"
    )


@pytest.mark.slow
def test_data_dir_reaches_the_omniglot_loader(tmp_path, capsys, monkeypatch):
    args = [*TINY, "--algos", "protonet", "--seeds", "0", "--out", str(tmp_path / "t.json")]
    assert main([*args, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"metafunc table: --data-dir {str(tmp_path)!r}: omniglot: root must be a folder holding "
        "images_background/ and images_evaluation/"
    )
    # A tiny Omniglot: 6 characters of 3 drawings, 4 of them (16 classes with rotations) train.
    write_omniglot(tmp_path / "omniglot")
    monkeypatch.setattr(mf.tasks, "omniglot", functools.partial(mf.tasks.omniglot, train_classes=4))
    assert main([*args, "--data-dir", str(tmp_path / "omniglot")]) == 0
    (row,) = rows_of(tmp_path / "t.json")
    assert row["data"] == "Omniglot" and (row["train_classes"], row["test_classes"]) == (16, 8)
    assert row["config"]["data_dir"] == str(tmp_path / "omniglot")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--task", "fewshot", "--settings", "5x1"],
            "metafunc table: argument --settings: must be N-way K-shot written NwKs, N and K at "
            "least 1, e.g. 5w1s (got 5x1)",
        ),
        (
            ["--task", "fewshot", "--settings", "0w1s"],
            "metafunc table: argument --settings: must be N-way K-shot written NwKs, N and K at "
            "least 1, e.g. 5w1s (got 0w1s)",
        ),
        (
            ["--task", "fewshot", "--shots", "5"],
            "metafunc table: --shots does not apply to --task fewshot (it is an option of the "
            "sine table, --task sine)",
        ),
        (["--channels", "8"], "metafunc table: --channels does not apply to --task sine"),
        (
            ["--algos", "anil"],
            "metafunc table: --algos anil is not a row of the sine table (its rows: maml, "
            "meta-sgd, fomaml, reptile)",
        ),
    ],
)
def test_bad_table_options_are_one_line_and_exit_2(args, message, capsys):
    try:
        code = main(["table", *args, "--no-progress"])
    except SystemExit as e:  # argparse's own exit
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_the_markdown_table_has_a_line_per_seed_and_the_mean_over_seeds():
    rows = [
        {"algo": a, "ways": w, "shots": k, "seed": s, "accuracy": acc, "ci95": 0.01}
        for a, w, k, s, acc in (
            ("maml", 5, 1, 0, 0.9),
            ("maml", 5, 1, 1, 0.8),
            ("maml", 20, 1, 0, 0.5),
            ("maml", 20, 1, 1, 0.6),
            ("anil", 5, 1, 0, 0.7),
        )
    ]
    assert fewshot_table.format_table(rows).splitlines() == [
        "| algorithm | seed | 5-way 1-shot | 20-way 1-shot |",
        "|---|---|---|---|",
        "| MAML | 0 | 90.00 ± 1.00 | 50.00 ± 1.00 |",
        "| MAML | 1 | 80.00 ± 1.00 | 60.00 ± 1.00 |",
        "| MAML | mean of 2 | **85.00** | **55.00** |",
        "| ANIL | 0 | 70.00 ± 1.00 | – |",
    ]


def test_mamlpp_anneals_its_outer_rate_by_a_cosine_only_when_asked():
    """The table keeps MAML++'s outer rate constant, as every other row's, unless
    --mamlpp-cosine; `metafunc train` anneals it unless --no-cosine."""
    assert outer_rate("mamlpp", 1e-3, 10, cosine=False) == outer_rate("maml", 1e-3, 10) == 1e-3
    schedule = outer_rate("mamlpp", 1e-3, 10)
    assert [float(schedule(torch.tensor(t))) for t in (0, 5, 10)] == pytest.approx(
        [1e-3, 0.505e-3, 1e-5]
    )
    cell = fewshot_table.Cell("mamlpp", 5, 1, 0)
    assert fewshot_table.cell_config(fewshot_table.FewshotTableConfig(), cell).cosine is False
    on = fewshot_table.FewshotTableConfig(mamlpp_cosine=True)
    assert fewshot_table.cell_config(on, cell).cosine is True


@pytest.mark.slow
@pytest.mark.parametrize(("flag", "cosine"), [([], True), (["--no-cosine"], False)])
def test_train_cosine_reaches_the_outer_rate(tmp_path, monkeypatch, flag, cosine):
    seen = []
    real = fewshot.outer_rate
    monkeypatch.setattr(
        fewshot, "outer_rate", lambda *a, **kw: seen.append(kw["cosine"]) or real(*a, **kw)
    )
    train = ["train", "--task", "fewshot", "--algo", "mamlpp", "--ways", "3", "--steps", "1"]
    train += ["--meta-batch", "2", "--channels", "2", "--queries", "2", "--glyph-classes", "12"]
    train += ["--eval-tasks", "2", "--no-compile", "--no-progress", "--out", str(tmp_path)]
    assert main([*train, *flag]) == 0
    assert seen == [cosine]
    assert json.loads((tmp_path / "results.json").read_text())["cosine"] is cosine
