"""Few-shot classification: the Omniglot loader on a generated folder, the N-way K-shot
sampler's invariants, the synthetic glyphs, every algorithm on the conv net, and learning."""

import json
import math
import subprocess
import sys
from statistics import NormalDist

import pytest
import torch
from PIL import Image
from support import ALPHABETS, DRAWINGS, assert_trees_close, labelled_dataset, write_omniglot
from torch._dynamo.testing import CompileCounterWithBackend
from torch.func import functional_call

import metafunc as mf
from metafunc import _tree
from metafunc.cli import main
from metafunc.evaluation import mean_ci95
from metafunc.experiments.scores import fewshot_accuracy

# ---------------------------------------------------------------- Omniglot loader


def character_of(image):
    """Which character a fixture image came from (its top-row ink, after inversion)."""
    return int(image[0, 0, 1:].argmax())


def test_omniglot_loads_the_split_with_rotations_as_new_classes(tmp_path):
    written = write_omniglot(tmp_path)
    n = len(written)  # 6 characters
    train = mf.tasks.omniglot(tmp_path, split="train", train_classes=4, image_size=12)
    test = mf.tasks.omniglot(tmp_path, split="test", train_classes=4, image_size=12)
    for data, chars in ((train, 4), (test, n - 4)):
        assert data.images.shape == (4 * chars, DRAWINGS, 1, 12, 12)
        assert data.images.dtype == torch.uint8 and len(data.names) == 4 * chars
        # Inverted: ink is 255, paper 0; each drawing of a class is the same character.
        assert set(data.images.unique().tolist()) == {0, 255}
        for k in range(4):  # class k * chars + i is character i rotated by 90k degrees
            rotated = data.images[k * chars : (k + 1) * chars]
            torch.testing.assert_close(rotated, data.images[:chars].rot90(k, dims=(-2, -1)))
            assert all(name.endswith(f"/rot{90 * k}") for name in data.names[k * chars :][:chars])
    originals = lambda data: {name.rsplit("/", 1)[0] for name in data.names}  # noqa: E731
    assert originals(train).isdisjoint(originals(test))
    assert len(originals(train) | originals(test)) == n
    assert originals(train) | originals(test) >= {"images_evaluation/Futurama/character02"}
    # Images are where their names say: the ink pixel tells the character.
    for data in (train, test):
        for image, name in zip(data.images[: len(data.names) // 4], data.names, strict=False):
            assert written[character_of(image[0])] == name.rsplit("/", 1)[0]
    # The split is a seeded shuffle: the same seed gives it again, another seed another one.
    again = mf.tasks.omniglot(tmp_path, split="train", train_classes=4, image_size=12)
    assert again.names == train.names and torch.equal(again.images, train.images)
    other = [
        mf.tasks.omniglot(tmp_path, split="train", train_classes=4, image_size=12, seed=s).names
        for s in range(1, 6)
    ]
    assert any(names != train.names for names in other)


def test_omniglot_resizes_and_can_leave_out_rotations(tmp_path):
    write_omniglot(tmp_path, side=40)
    data = mf.tasks.omniglot(tmp_path, split="test", train_classes=5, rotations=False)
    assert data.images.shape == (1, DRAWINGS, 1, 28, 28) and data.images.dtype == torch.uint8
    assert len(data.names) == 1 and "rot" not in data.names[0]


def test_omniglot_bad_folders_say_what_is_expected(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"omniglot: root must be a folder holding images_background/ and "
        r"images_evaluation/ \(unzip python/images_background.zip .*brendenlake/omniglot.*\); "
        r".* has no images_background/ or images_evaluation/",
    ):
        mf.tasks.omniglot(tmp_path, split="train")
    write_omniglot(tmp_path)
    with pytest.raises(
        ValueError, match=r"omniglot: split must be 'train' or 'test' \(got 'val'\)"
    ):
        mf.tasks.omniglot(tmp_path, split="val")
    with pytest.raises(
        ValueError,
        match=r"omniglot: train_classes must leave some characters for the test split; .* has "
        r"6 characters \(got train_classes=1200\)",
    ):
        mf.tasks.omniglot(tmp_path, split="train")
    for character in (tmp_path / "images_background").glob("*/*"):  # 4 of the 6 characters
        Image.new("L", (12, 12), 255).save(character / "extra.png")
    with pytest.raises(
        ValueError,
        match=r"omniglot: every character folder must hold the same number of drawings "
        r"\(Omniglot has 20\); .* has characters with \[3, 4\]",
    ):
        mf.tasks.omniglot(tmp_path, split="train", train_classes=5)


def test_omniglot_a_folder_one_level_too_deep_says_where_the_drawings_are(tmp_path):
    """Unzipping into a folder of the same name nests each part once more; the loader must
    say what it found, not blame train_classes."""
    write_omniglot(tmp_path / "nested")
    for part in ALPHABETS:
        (tmp_path / part).mkdir()
        (tmp_path / "nested" / part).rename(tmp_path / part / part)
    with pytest.raises(ValueError) as info:
        mf.tasks.omniglot(tmp_path, split="train", train_classes=4, image_size=12)
    assert str(info.value) == (
        "omniglot: found no <alphabet>/<character>/ folders of .png drawings under "
        f"{tmp_path / 'images_background'}; the first drawing found, "
        "images_background/Greek/character01/0002_01.png, is 3 folder(s) deep where 2 are "
        "expected"
    )
    # a part without any drawing says what it holds
    for part in ALPHABETS:
        for png in (tmp_path / part).rglob("*.png"):
            png.unlink()
    (tmp_path / "images_background" / "README").write_text("")
    with pytest.raises(ValueError) as info:
        mf.tasks.omniglot(tmp_path, split="train", train_classes=4, image_size=12)
    assert str(info.value).endswith(
        "images_background; it holds no .png file at any depth (it holds: README, "
        "images_background/)"
    )


def test_omniglot_a_truncated_drawing_is_named(tmp_path):
    write_omniglot(tmp_path, side=40)
    load = lambda: mf.tasks.omniglot(tmp_path, split="test", train_classes=5, rotations=False)  # noqa: E731
    png = sorted((tmp_path / load().names[0]).glob("*.png"))[1]
    png.write_bytes(png.read_bytes()[:-30])
    with pytest.raises(ValueError) as info:
        load()
    assert str(info.value).startswith(f"omniglot: cannot read the drawing {png} (OSError: ")
    assert str(info.value).endswith("replace it with a good copy from the Omniglot zip files")
    assert "truncated" in str(info.value)


@pytest.mark.slow
def test_import_metafunc_loads_no_pil():
    code = "import sys, metafunc; print(sorted(m for m in sys.modules if m.split('.')[0] == 'PIL'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


# ---------------------------------------------------------------- sampler


@pytest.mark.parametrize(("ways", "shots", "queries"), [(5, 1, 1), (3, 2, 4), (7, 1, 5), (1, 1, 5)])
def test_fewshot_tasks_are_n_way_k_shot_with_labels_0_to_n_minus_1(ways, shots, queries):
    data = labelled_dataset()
    tasks = mf.tasks.fewshot(
        torch.Generator().manual_seed(0),
        data,
        tasks=40,
        ways=ways,
        shots=shots,
        queries=queries,
        dtype=torch.float64,
    )
    (xs, ys), (xq, yq) = tasks.support, tasks.query
    assert xs.shape == (40, ways * shots, 1, 3, 3) and ys.shape == (40, ways * shots)
    assert xq.shape == (40, ways * queries, 1, 3, 3) and yq.shape == (40, ways * queries)
    assert xs.dtype == torch.float64 and ys.dtype == torch.int64
    assert float(xs.max()) <= 6 / 255 + 1e-12  # scaled from uint8 to [0, 1]
    cls = lambda x: (x[:, :, 0, 0, 0] * 255).round().long()  # noqa: E731
    ex = lambda x: (x[:, :, 0, 0, 1] * 255).round().long()  # noqa: E731
    for t in range(40):
        label_to_class = {}
        for x, y in ((xs, ys), (xq, yq)):
            for c, label in zip(cls(x)[t].tolist(), y[t].tolist(), strict=True):
                assert label_to_class.setdefault(label, c) == c  # one class per label
        assert sorted(label_to_class) == list(range(ways))
        assert len(set(label_to_class.values())) == ways  # N distinct classes
        support = set(zip(cls(xs)[t].tolist(), ex(xs)[t].tolist(), strict=True))
        query = set(zip(cls(xq)[t].tolist(), ex(xq)[t].tolist(), strict=True))
        assert len(support) == ways * shots and len(query) == ways * queries
        assert support.isdisjoint(query)  # no image in both
    # Labels are a fresh random assignment: the class labelled 0 varies between tasks.
    assert len(set(cls(xs)[:, 0].tolist())) > 1


def test_fewshot_is_a_pure_function_of_the_generator():
    data = labelled_dataset()
    draw = lambda seed: mf.tasks.fewshot(  # noqa: E731
        torch.Generator().manual_seed(seed), data, tasks=4, queries=3
    )
    assert_trees_close(draw(3), draw(3), rtol=0, atol=0)
    assert not torch.equal(draw(3).support[0], draw(4).support[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"ways": 8},
            ValueError,
            r"fewshot: ways must be at most the dataset's 7 classes \(got 8\)",
        ),
        (
            {"shots": 2, "queries": 5},
            ValueError,
            r"fewshot: shots \+ queries must be at most the dataset's 6 examples per class "
            r"\(got 2 \+ 5 = 7\)",
        ),
        ({"ways": 0}, ValueError, r"fewshot: ways must be an integer >= 1 \(got 0\)"),
        ({"tasks": 2.0}, TypeError, r"fewshot: tasks must be an integer \(got 2.0 of type float\)"),
        (
            {"dataset": torch.zeros(7, 6, 1, 3, 3)},
            TypeError,
            r"fewshot: dataset must be a metafunc.tasks.ImageClasses \(got Tensor\)",
        ),
        (
            {"dataset": mf.tasks.ImageClasses(torch.zeros(7, 6, 3, 3), ())},
            ValueError,
            r"fewshot: dataset.images must be uint8 of shape \(classes, examples, channels, "
            r"height, width\) \(got torch.float32 of shape \(7, 6, 3, 3\)\)",
        ),
    ],
)
def test_fewshot_bad_input(kwargs, error, message):
    args = {"dataset": labelled_dataset(), "tasks": 2, "ways": 5, "shots": 1, "queries": 5}
    with pytest.raises(error, match=message):
        mf.tasks.fewshot(torch.Generator(), **{**args, **kwargs})


# ---------------------------------------------------------------- synthetic glyphs


def test_synthetic_glyphs_are_distinct_classes_of_varied_drawings():
    data = mf.tasks.synthetic_glyphs(torch.Generator().manual_seed(0), classes=30, examples=6)
    assert data.images.shape == (30, 6, 1, 28, 28) and data.images.dtype == torch.uint8
    again = mf.tasks.synthetic_glyphs(torch.Generator().manual_seed(0), classes=30, examples=6)
    assert torch.equal(again.images, data.images)
    x = data.images.double().flatten(2)
    assert (x.std(dim=1).mean(dim=-1) > 10).all()  # examples of a class differ
    # Distinguishable: even nearest-neighbour on raw pixels, 5-way 1-shot, beats chance.
    g = torch.Generator().manual_seed(1)
    tasks = mf.tasks.fewshot(g, data, tasks=200, ways=5, shots=1, queries=5, dtype=torch.float64)
    (xs, ys), (xq, yq) = tasks.support, tasks.query
    nearest = torch.cdist(xq.flatten(2), xs.flatten(2)).argmin(dim=-1)
    accuracy = (ys.gather(1, nearest) == yq).double().mean().item()
    assert accuracy > 0.4  # chance is 0.2


def test_synthetic_glyphs_bad_input():
    with pytest.raises(ValueError, match=r"synthetic_glyphs: image_size must be an integer >= 4"):
        mf.tasks.synthetic_glyphs(torch.Generator(), image_size=2)


# ---------------------------------------------------------------- the conv net, every algorithm


def tiny_setup(dtype=torch.float32, channels=4, blocks=2, size=8, ways=3):
    torch.manual_seed(0)  # test-only: fixes the layers' default initialisation
    net = mf.models.conv_net(ways, channels=channels, blocks=blocks, image_size=size).to(dtype)
    fn, params = mf.pure(net)
    data = mf.tasks.synthetic_glyphs(
        torch.Generator().manual_seed(0), classes=12, examples=5, image_size=size
    )
    return net, fn, params, data


def learners(loss, head, embed):
    return {
        "maml": mf.maml(loss, inner_lr=0.4, inner_steps=1),
        "fomaml": mf.fomaml(loss, inner_lr=0.4, inner_steps=1),
        "reptile": mf.reptile(loss, inner_lr=0.4, inner_steps=2),
        "meta-sgd": mf.meta_sgd(loss, inner_lr=0.4, inner_steps=1),
        "anil": mf.anil(loss, head=head, inner_lr=0.4, inner_steps=1),
        "boil": mf.boil(loss, head=head, inner_lr=0.4, inner_steps=1),
        "protonet": mf.protonet(embed),
        "protomaml": mf.protomaml(embed, inner_lr=0.4, inner_steps=1),
    }


EVERY = ["maml", "fomaml", "reptile", "meta-sgd", "anil", "boil", "protonet", "protomaml"]


@pytest.mark.parametrize("algo", EVERY)
def test_every_algorithm_adapts_the_conv_net_under_vmap(algo):
    net, fn, params, data = tiny_setup(torch.float64)
    embed, body = mf.pure(net[:-1])  # ProtoNet and ProtoMAML: the net without its classifier
    learner = learners(mf.supervised(fn, mf.losses.cross_entropy), str(len(net) - 1), embed)[algo]
    params = body if algo in ("protonet", "protomaml") else params
    g = torch.Generator().manual_seed(0)
    tasks = mf.tasks.fewshot(g, data, tasks=3, ways=3, shots=1, queries=2, dtype=torch.float64)
    opt = mf.optim.adam(1e-3)
    state = mf.init_state(learner, opt, params)
    new, metrics = mf.make_step(learner, opt, compile=False)(state, tasks)
    assert bool(metrics.finite) and float(metrics.grad_norm) > 0
    # Adapting on the support lowers the support loss of each task, as one SGD step should
    # (ProtoNet: its prototypes classify the support better than the uniform guess).
    meta = learner.init(params)
    every = learner.adapt(meta, tasks.support)
    for t in range(3):
        support = tuple(x[t] for x in tasks.support)
        adapted = _tree.map(lambda v, t=t: v[t], every)
        after = learner.outer(adapted, support)
        assert float(after) < float(learner.outer(learner.params(meta), support))
    assert not torch.equal(learner.params(new.meta)["0.weight"], params["0.weight"])


@pytest.mark.compile
def test_compiled_step_on_the_conv_net_equals_eager():
    # One block keeps the second-order graph small enough to compile in seconds.
    _, fn, params, data = tiny_setup(torch.float64, channels=2, blocks=1, size=4)
    learner = mf.maml(mf.supervised(fn, mf.losses.cross_entropy), inner_lr=0.4, inner_steps=1)
    opt = mf.optim.adam(1e-3)
    counter = CompileCounterWithBackend("inductor")
    eager = mf.make_step(learner, opt, compile=False)
    compiled = mf.make_step(learner, opt, backend=counter)
    s_eager = s_comp = mf.init_state(learner, opt, params)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        tasks = mf.tasks.fewshot(g, data, tasks=2, ways=3, shots=1, queries=2, dtype=torch.float64)
        s_eager, m_eager = eager(s_eager, tasks)
        s_comp, m_comp = compiled(s_comp, tasks)
        assert_trees_close(s_comp, s_eager, rtol=1e-9, atol=1e-11)
        assert_trees_close(m_comp, m_eager, rtol=1e-9, atol=1e-11)
    assert counter.frame_count == 1  # one graph: no graph breaks, no recompiles


# ---------------------------------------------------------------- evaluation and learning


def test_fewshot_accuracy_of_a_constant_guess_is_one_in_n():
    data = labelled_dataset()
    guess = {"w": torch.tensor([1.0, 0.0, 0.0, 0.0])}  # always class 0
    predict = lambda p, x: p["w"].expand(x.shape[0], 4)  # noqa: E731
    learner = mf.maml(mf.supervised(predict, mf.losses.cross_entropy), inner_steps=0)
    acc = fewshot_accuracy(
        learner, predict, guess, data, torch.Generator(), tasks=7, ways=4, queries=3, batch=3
    )
    assert acc.shape == (7,)
    torch.testing.assert_close(acc, torch.full((7,), 0.25, dtype=torch.float64))


@pytest.mark.slow
def test_maml_learns_new_glyph_classes_well_above_chance():
    """Seeded, eager: a small conv net meta-trained on 30 glyph classes classifies new ones."""
    size, ways = 16, 5
    torch.manual_seed(0)  # test-only: fixes the layers' default initialisation
    fn, params = mf.pure(mf.models.conv_net(ways, channels=8, blocks=3, image_size=size))
    glyphs = mf.tasks.synthetic_glyphs(
        torch.Generator().manual_seed(0), classes=45, examples=8, image_size=size
    )
    train = mf.tasks.ImageClasses(glyphs.images[:30], glyphs.names[:30])
    test = mf.tasks.ImageClasses(glyphs.images[30:], glyphs.names[30:])
    learner = mf.maml(mf.supervised(fn, mf.losses.cross_entropy), inner_lr=0.4, inner_steps=1)
    opt = mf.optim.adam(3e-3)
    state = mf.init_state(learner, opt, params)
    step = mf.make_step(learner, opt, compile=False)
    g = torch.Generator().manual_seed(0)
    score = lambda meta: fewshot_accuracy(  # noqa: E731
        learner, fn, meta, test, torch.Generator().manual_seed(1), ways=ways, queries=3
    )
    before = score(state.meta)
    state = mf.train(
        step,
        state,
        lambda g: mf.tasks.fewshot(g, train, tasks=4, ways=ways, shots=1, queries=3),
        steps=120,
        generator=g,
        progress=False,
    )
    after = score(state.meta)
    mean, half = mean_ci95(after)
    assert after.shape == (600,)
    assert mean - half > 0.5, (mean, half)  # chance is 0.2
    assert mean > mean_ci95(before)[0] + 0.1


@pytest.mark.slow
def test_train_fewshot_command_writes_figures_and_results(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--task", "fewshot", "--algo", "anil", "--steps", "3", "--meta-batch", "2"]
    args += ["--channels", "4", "--glyph-classes", "15", "--eval-tasks", "5", "--log-every", "1"]
    assert main([*args, "--no-compile", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy on 5 new tasks of 5 new classes" in printed
    for name in ("anil-fewshot.png", "learning-curve.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "fewshot" and results["data"] == "synthetic glyphs"
    assert (results["train_classes"], results["test_classes"]) == (10, 5)
    assert results["history"]["step"] == [1, 2, 3] and results["test_accuracy"]["tasks"] == 5
    # The reported accuracy, recounted from the checkpoint: the test classes of the same seed
    # (the last third of 15 glyph classes), 5 new tasks from the evaluation seed (seed + 1),
    # ANIL's one SGD step at 0.4 on the head with torch.autograd, arg-max predictions counted.
    net = mf.models.conv_net(5, channels=4)  # the architecture; the weights come from the file
    meta = mf.load(out / "checkpoint.pt").meta
    glyphs = mf.tasks.synthetic_glyphs(torch.Generator().manual_seed(0), classes=15)
    test = mf.tasks.ImageClasses(glyphs.images[10:], glyphs.names[10:])
    tasks = mf.tasks.fewshot(torch.Generator().manual_seed(1), test, tasks=5, queries=5)
    head = [k for k in meta if k.startswith(f"{len(net) - 1}.")]
    right = []
    for t in range(5):
        theta = {k: v.clone().requires_grad_(k in head) for k, v in meta.items()}
        logits = functional_call(net, theta, (tasks.support[0][t],))
        loss = torch.nn.functional.cross_entropy(logits, tasks.support[1][t])
        grads = torch.autograd.grad(loss, [theta[k] for k in head])
        theta.update({k: theta[k] - 0.4 * d for k, d in zip(head, grads, strict=True)})
        with torch.no_grad():
            predicted = functional_call(net, theta, (tasks.query[0][t],)).argmax(dim=-1)
        right.append((predicted == tasks.query[1][t]).sum().item() / 25)
    assert results["test_accuracy"]["mean"] == pytest.approx(sum(right) / 5, abs=1e-12)
    n, mean = 5, sum(right) / 5
    deviation = math.sqrt(sum((r - mean) ** 2 for r in right) / (n - 1))
    half = NormalDist().inv_cdf(0.975) * deviation / math.sqrt(n)
    assert results["test_accuracy"]["ci95"] == pytest.approx(half, rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["boil", "protonet", "protomaml"])
def test_train_fewshot_runs_the_new_algorithms(tmp_path, capsys, algo):
    """The command meta-trains each, checkpoints, scores new classes and draws the figures;
    the reported accuracy is mf.evaluate's with the learner's own predict, recounted here."""
    out = tmp_path / algo
    args = ["train", "--task", "fewshot", "--algo", algo, "--steps", "2", "--meta-batch", "2"]
    args += ["--channels", "4", "--glyph-classes", "15", "--eval-tasks", "5", "--log-every", "1"]
    assert main([*args, "--no-compile", "--no-progress", "--out", str(out)]) == 0
    assert "test accuracy on 5 new tasks of 5 new classes" in capsys.readouterr().out
    assert (out / f"{algo}-fewshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["algo"] == algo and results["history"]["step"] == [1, 2]
    net = mf.models.conv_net(5, channels=4)  # the architecture; the weights come from the file
    embedding = algo in ("protonet", "protomaml")
    fn, _ = mf.pure(net[:-1] if embedding else net)
    learner = {
        "boil": lambda: mf.boil(
            mf.supervised(fn, mf.losses.cross_entropy), head=str(len(net) - 1), inner_lr=0.4
        ),
        "protonet": lambda: mf.protonet(fn),
        "protomaml": lambda: mf.protomaml(fn, inner_lr=0.4),
    }[algo]()
    meta = mf.load(out / "checkpoint.pt").meta
    glyphs = mf.tasks.synthetic_glyphs(torch.Generator().manual_seed(0), classes=15)
    test = mf.tasks.ImageClasses(glyphs.images[10:], glyphs.names[10:])
    tasks = mf.tasks.fewshot(torch.Generator().manual_seed(1), test, tasks=5, queries=5)
    predict = mf.classifier(fn) if embedding else fn
    want = mf.evaluate(learner, meta, tasks, predict=predict).accuracy.mean
    assert results["test_accuracy"]["mean"] == pytest.approx(want, abs=1e-12)


def test_train_sine_refuses_the_classification_only_algorithms(capsys):
    for algo in ("protonet", "protomaml"):
        assert main(["train", "--algo", algo]) == 2
        assert capsys.readouterr().err == (
            f"metafunc train: --algo {algo} classifies by class prototypes and runs on few-shot "
            "classification only (--task fewshot)\n"
        )


def test_train_fewshot_refuses_daml_and_a_folder_without_omniglot(tmp_path, capsys):
    assert main(["train", "--task", "fewshot", "--algo", "daml"]) == 2
    assert "--algo daml runs on the DAML sine only" in capsys.readouterr().err
    assert main(["train", "--task", "fewshot", "--data-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        f"metafunc train: --data-dir {str(tmp_path)!r}: omniglot: root must be a folder holding "
        "images_background/ and images_evaluation/"
    )


@pytest.mark.slow
def test_train_fewshot_writes_checkpoints_and_resumes_bit_exact(tmp_path):
    args = ["train", "--task", "fewshot", "--meta-batch", "2", "--channels", "4"]
    args += ["--glyph-classes", "15", "--eval-tasks", "2", "--no-compile", "--no-progress"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*args, "--steps", "4", "--out", str(straight)]) == 0
    assert main([*args, "--steps", "2", "--checkpoint-every", "1", "--out", str(split)]) == 0
    assert main([*args, "--steps", "4", "--resume", "--out", str(split)]) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    assert a.keys() == b.keys() and int(b["state.step"]) == 4
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((split / "results.json").read_text())["resumed_from_step"] == 2


@pytest.mark.slow
def test_train_fewshot_on_nonfinite_raises_or_skips(tmp_path, capsys):
    """An inner rate of 1e30 makes every step's meta-gradient non-finite."""
    args = ["train", "--task", "fewshot", "--meta-batch", "2", "--channels", "4", "--steps", "2"]
    args += ["--glyph-classes", "15", "--eval-tasks", "2", "--no-compile", "--no-progress"]
    args += ["--inner-lr", "1e30", "--log-every", "1"]
    with pytest.raises(FloatingPointError, match=r"^train: step 1 is not finite: "):
        main([*args, "--out", str(tmp_path / "raise")])
    assert not (tmp_path / "raise" / "checkpoint.pt").exists()
    assert main([*args, "--on-nonfinite", "skip", "--out", str(tmp_path / "skip")]) == 0
    assert "step 2: skipped 2 non-finite step(s) of the last 2" in capsys.readouterr().out
    saved = torch.load(tmp_path / "skip" / "checkpoint.pt", weights_only=True)
    assert int(saved["state.step"]) == 2 and int(saved["state.opt_state.total_notfinite"]) == 2
    text = (tmp_path / "skip" / "results.json").read_text()
    results = json.loads(text)  # strict JSON: the NaN losses of the skipped steps are null
    assert results["on_nonfinite"] == "skip" and results["history"]["loss"] == [None, None]
    assert "NaN" not in text


@pytest.mark.slow
def test_train_fewshot_resume_with_other_options_is_refused_naming_the_option(tmp_path, capsys):
    args = ["train", "--task", "fewshot", "--meta-batch", "2", "--glyph-classes", "15"]
    args += ["--eval-tasks", "2", "--no-compile", "--no-progress", "--out", str(tmp_path)]
    assert main([*args, "--channels", "4", "--steps", "1"]) == 0
    capsys.readouterr()
    assert main([*args, "--channels", "8", "--steps", "2", "--resume"]) == 2
    assert capsys.readouterr().err == (
        f"metafunc train: cannot resume: {str(tmp_path / 'checkpoint.pt')!r} was trained with "
        "--channels 4 but this run has 8; resume with the options it was started with, or give "
        "a new run another --out\n"
    )
