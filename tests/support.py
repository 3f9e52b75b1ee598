"""What the tests share: small models and tasks, float64 references, and the comparisons
every numerical path is held to."""

import pytest
import torch
from PIL import Image
from torch import nn
from torch.func import functional_call

import metafunc as mf
from metafunc import _tree

ALPHA = 0.1
F64 = torch.float64


def tanh_net(width: int = 5, seed: int = 0) -> nn.Module:
    """A small smooth network: non-zero Hessians everywhere, so second-order terms matter."""
    torch.manual_seed(seed)  # test-only: fixes nn.Linear's default initialisation
    return nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1)).double()


def bn_net(seed: int = 0, **bn) -> nn.Module:
    """``tanh_net``'s shape with a BatchNorm layer (``bn``: its settings), for model state."""
    torch.manual_seed(seed)  # test-only: fixes nn.Linear's default initialisation
    return nn.Sequential(
        nn.Linear(1, 4), nn.BatchNorm1d(4, **bn), nn.Tanh(), nn.Linear(4, 1)
    ).double()


class TanhFeatures(nn.Module):
    """A smooth model that returns its output and its hidden activations (for DAML)."""

    def __init__(self):
        super().__init__()
        self.hidden, self.out = nn.Linear(1, 4), nn.Linear(4, 1)

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        return self.out(h), (h,)


def sine_tasks(n: int = 3, seed: int = 1, shots: int = 4, queries: int = 5) -> mf.Tasks:
    g = torch.Generator().manual_seed(seed)
    return mf.tasks.sinusoid(g, tasks=n, shots=shots, queries=queries, dtype=torch.float64)


def peak_bytes(fn) -> int:
    """The most CPU memory ``fn()`` held at once above what was allocated before it, from the
    allocator's events as torch.profiler records them (deterministic, unlike the RSS)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def reference_meta_grad(
    net, params, tasks, *, lr, steps, first_order, criterion=None, with_losses=False
):
    """Per task: inner SGD with autograd.grad(create_graph=True), then the query loss; the
    mean over tasks is differentiated with autograd.grad. The default criterion is MSE.
    ``with_losses`` also returns the mean query loss after and before adapting, as the step's
    metrics ``{"loss", "loss_before"}``."""
    names = sorted(params)
    theta0 = [params[k].clone().requires_grad_() for k in names]

    def loss(theta, data):
        x, y = data
        pred = functional_call(net, dict(zip(names, theta, strict=True)), (x,))
        return ((pred - y) ** 2).mean() if criterion is None else criterion(pred, y)

    total, before = 0.0, 0.0
    n = tasks.support[0].shape[0]
    for i in range(n):
        support = tuple(t[i] for t in tasks.support)
        query = tuple(t[i] for t in tasks.query)
        before += loss(theta0, query).item() / n
        theta = theta0
        for _ in range(steps):
            grads = torch.autograd.grad(loss(theta, support), theta, create_graph=not first_order)
            rates = [lr[k] for k in names] if isinstance(lr, dict) else [lr] * len(names)
            theta = [p - a * g for p, a, g in zip(theta, rates, grads, strict=True)]
        total = total + loss(theta, query)
    grads = dict(zip(names, torch.autograd.grad(total / n, theta0), strict=True))
    if not with_losses:
        return grads
    return grads, {"loss": total.item() / n, "loss_before": before}


def assert_metrics_equal(metrics, want):
    """The step's loss metrics against the reference's, both after and before adapting."""
    for key in ("loss", "loss_before"):
        assert getattr(metrics, key).item() == pytest.approx(want[key], rel=1e-10), key


def assert_trees_close(a, b, **kw):
    assert _tree.structure(a) == _tree.structure(b)
    for (path, x), y in zip(_tree.named_leaves(a), _tree.leaves(b), strict=True):
        torch.testing.assert_close(x, y, msg=lambda m, path=path: f"{path}: {m}", **kw)


def assert_compiled_step_equals_eager(learner, params, tasks=2):
    """Two Adam steps of ``learner`` compiled (aot_eager, so cheap) equal the eager ones on
    fresh float64 sine tasks (``tasks`` per step), with one compiled frame for both."""
    from torch._dynamo.testing import CompileCounterWithBackend

    opt = mf.optim.adam(1e-2)
    eager = mf.make_step(learner, opt, compile=False)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = mf.make_step(learner, opt, backend=counter)
    s_eager = s_comp = mf.init_state(learner, opt, params)
    for seed in range(2):
        batch = sine_tasks(n=tasks, seed=seed)
        s_eager, m_eager = eager(s_eager, batch)
        s_comp, m_comp = compiled(s_comp, batch)
        assert_trees_close(s_comp, s_eager, rtol=1e-12, atol=1e-14)
        assert_trees_close(m_comp, m_eager, rtol=1e-12, atol=1e-14)
    assert counter.frame_count == 1


def linear_tasks(n=3, shots=5, queries=6, seed=0) -> mf.Tasks:
    g = torch.Generator().manual_seed(seed)
    make = lambda m: (  # noqa: E731
        torch.randn(n, m, 3, generator=g, dtype=F64),
        torch.randn(n, m, 1, generator=g, dtype=F64),
    )
    return mf.Tasks(make(shots), make(queries))


def linear_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 1).double()


def daml_setup(inner_steps=1):
    torch.manual_seed(0)
    model = TanhFeatures().double()
    lossnet = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    fn, params = mf.pure(model)
    loss_fn, phi = mf.pure(lossnet)

    def adaptation_loss(phi, y, features):
        return loss_fn(phi, torch.cat([y, *features], -1)).pow(2).mean()

    learner = mf.daml(
        fn, adaptation_loss, phi, mf.losses.mse, inner_lr=ALPHA, inner_steps=inner_steps
    )
    tasks = mf.tasks.daml_sine(
        torch.Generator().manual_seed(3), tasks=3, sources=2, queries=5, dtype=F64
    )
    return model, lossnet, params, phi, learner, tasks


class GaussianNoise(nn.Module):
    """Adds N(0, std²) noise in training mode: a random op that is not dropout."""

    def __init__(self, std):
        super().__init__()
        self.std = std

    def forward(self, x):
        return x + self.std * torch.randn_like(x) if self.training else x


def dropout_net(seed=0, width=8, noise=0.0):
    torch.manual_seed(seed)  # test-only: fixes nn.Linear's default initialisation
    return nn.Sequential(
        nn.Linear(1, width), nn.Tanh(), GaussianNoise(noise), nn.Dropout(0.5), nn.Linear(width, 1)
    ).double()


def assert_equal_states(a, b):
    assert _tree.structure(a) == _tree.structure(b)
    for x, y in zip(_tree.leaves(a), _tree.leaves(b), strict=True):
        assert torch.equal(x, y)


def labelled_dataset(classes=7, examples=6):
    """Each image holds its class in pixel (0, 0) and its example in pixel (0, 1)."""
    images = torch.zeros(classes, examples, 1, 3, 3, dtype=torch.uint8)
    images[:, :, 0, 0, 0] = torch.arange(classes)[:, None]
    images[:, :, 0, 0, 1] = torch.arange(examples)
    return mf.tasks.ImageClasses(images, tuple(map(str, range(classes))))


def graphs() -> int:
    """Compiled graphs of this process so far: traced here, or loaded from torch's caches or
    the cache folder of steps compiled ahead of time (a compiled step of the same
    configuration saved by an earlier process counts as one)."""
    from metafunc import _ahead

    counters = torch._dynamo.utils.counters
    dynamo = counters["stats"]["unique_graphs"] + counters["dynamo_cache"]["dynamo_cache_hit"]
    return dynamo + _ahead.COUNTS["compiled"] + _ahead.COUNTS["loaded"]


ALPHABETS = {"images_background": ["Latin", "Greek"], "images_evaluation": ["Futurama"]}
DRAWINGS = 3  # Omniglot has 20 per character; the loader takes any equal number


def write_omniglot(root, side=12, characters=2):
    """Omniglot's layout, <part>/<alphabet>/<character>/*.png, white paper and black ink.
    Character number c has ink in the pixel (0, c) only, drawing d also in (d + 1, 0):
    every image says where it came from, and is not symmetric under rotation. Returns the
    characters' names, by number."""
    names = []
    for part, alphabets in ALPHABETS.items():
        for alphabet in alphabets:
            for k in range(characters):
                c = len(names)
                names.append(f"{part}/{alphabet}/character{k + 1:02d}")
                folder = root / names[-1]
                folder.mkdir(parents=True)
                for d in range(DRAWINGS):
                    pixels = torch.full((side, side), 255, dtype=torch.uint8)
                    pixels[0, c + 1] = pixels[d + 1, 0] = 0
                    Image.frombytes("L", (side, side), bytes(pixels.flatten().tolist())).save(
                        folder / f"{c:04d}_{d + 1:02d}.png"
                    )
    return names
