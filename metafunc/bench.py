"""Benchmarks: one full outer step (meta-gradient and Adam update) against the alternatives.

Every implementation gets the same workload, the same initial weights and the same batch.
Before anything is timed, each one takes one step from those weights and its meta-gradient,
read back from Adam's first moment (``m = (1 − b1) g`` after one step), must agree with the
blog-style reference loop; a row that does not is refused, not reported. Repeats are
interleaved (implementation A, B, C, A, B, C, ...) in one process, so ratios are fair on a
noisy machine. The entry point is ``metafunc bench`` (or ``python benchmarks/bench.py``).

Optional implementations (higher, TorchOpt, JAX + optax) run when importable
(``pip install -e .[bench]``) and are skipped with the reason otherwise.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import metafunc as mf

from . import _tree

OUTER_LR = 1e-3
B1 = 0.9  # Adam's first-moment decay, the same in every implementation
WAYS, SHOTS, QUERIES = 5, 1, 15  # the image workload: 5-way 1-shot, 15 queries per class


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark configuration (the MAML paper's hyper-parameters by default)."""

    name: str
    kind: str  # "sinusoid": 1-h-h-1 ReLU MLP, MSE; "conv": the 4-block conv net, cross-entropy
    tasks: int
    inner_steps: int
    first_order: bool = False
    hidden: int = 40  # the MLP's hidden width, or the conv net's channels
    inner_lr: float = 0.01
    # how far (relative to the largest entry) a meta-gradient may be from the blog loop's
    tolerance: float = 1e-4

    def describe(self) -> str:
        order = "first" if self.first_order else "second"
        if self.kind == "sinusoid":
            net = f"1-{self.hidden}-{self.hidden}-1 MLP, 10+10 points, MSE"
        else:
            net = (
                f"conv net 4x{self.hidden}, 28x28, {WAYS}-way {SHOTS}-shot, {QUERIES} queries/class"
            )
        return f"{net}, {self.tasks} tasks, {self.inner_steps} inner steps {order} order"


WORKLOADS = {
    w.name: w
    for w in (
        Workload("sine-1step", "sinusoid", 25, 1),
        Workload("sine-5step", "sinusoid", 25, 5),
        Workload("sine-5step-fo", "sinusoid", 25, 5, first_order=True),
        # float32 rounding, reassociated by inductor's fused reductions, reaches 4.3e-4 here
        # in both compiled rows (metafunc's and the hand-written one); in float64 the compiled
        # meta-gradient equals the blog loop's to 2.3e-15
        Workload("conv-5way1shot", "conv", 32, 1, hidden=64, inner_lr=0.4, tolerance=1e-3),
    )
}


def make_net(w: Workload) -> nn.Module:
    """The workload's network with weights drawn from a fixed generator (no global seed)."""
    if w.kind == "sinusoid":
        net = mf.models.mlp([1, w.hidden, w.hidden, 1])
    else:
        net = mf.models.conv_net(WAYS, channels=w.hidden)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                bound = 1 / math.sqrt(module.weight[0].numel())
                for p in (module.weight, module.bias):
                    p.copy_((2 * torch.rand(p.shape, generator=g) - 1) * bound)
    return net


def make_batch(w: Workload, device: torch.device) -> mf.Tasks:
    """The one batch every implementation sees (float32, fixed seed)."""
    g = torch.Generator().manual_seed(1)
    if w.kind == "sinusoid":
        return mf.tasks.sinusoid(g, tasks=w.tasks, device=device)
    n = WAYS * (SHOTS + QUERIES)
    images = torch.randn(w.tasks, n, 1, 28, 28, generator=g).to(device)
    labels = torch.arange(WAYS).repeat(SHOTS + QUERIES).expand(w.tasks, n).to(device)
    k = WAYS * SHOTS
    return mf.Tasks((images[:, :k], labels[:, :k]), (images[:, k:], labels[:, k:]))


def criterion(w: Workload) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return F.mse_loss if w.kind == "sinusoid" else F.cross_entropy


@dataclasses.dataclass
class Impl:
    """A ready implementation: ``step()`` runs one outer step and returns when it is done;
    ``first_moment()`` is Adam's first moment (name -> float64 CPU tensor)."""

    step: Callable[[], None]
    first_moment: Callable[[], dict[str, torch.Tensor]]


Factory = Callable[[Workload, nn.Module, mf.Tasks, torch.device], Impl]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _names(net: nn.Module) -> list[str]:
    return [name for name, _ in net.named_parameters()]


def blog_loop(w: Workload, net: nn.Module, tasks: mf.Tasks, device: torch.device) -> Impl:
    """The blog-style step: a Python loop over tasks, ``torch.autograd.grad(create_graph=True)``
    for the inner steps, one backward of the mean query loss, ``torch.optim.Adam``."""
    net = copy.deepcopy(net).to(device)
    names, params = _names(net), list(net.parameters())
    opt = torch.optim.Adam(params, lr=OUTER_LR)
    crit = criterion(w)
    (xs, ys), (xq, yq) = tasks.support, tasks.query

    def forward(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(net, dict(zip(names, weights, strict=True)), (x,))

    def step() -> None:
        opt.zero_grad()
        total = 0.0
        for i in range(w.tasks):
            fast = params
            for _ in range(w.inner_steps):
                loss = crit(forward(fast, xs[i]), ys[i])
                grads = torch.autograd.grad(loss, fast, create_graph=not w.first_order)
                fast = [p - w.inner_lr * g for p, g in zip(fast, grads, strict=True)]
            total = total + crit(forward(fast, xq[i]), yq[i])
        (total / w.tasks).backward()
        opt.step()
        _sync(device)

    def first_moment() -> dict[str, torch.Tensor]:
        return _adam_first_moment(opt, names, params)

    return Impl(step, first_moment)


def _adam_first_moment(
    opt: torch.optim.Adam, names: list[str], params: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    missing = [n for n, p in zip(names, params, strict=True) if "exp_avg" not in opt.state[p]]
    if missing:  # Adam keeps no state for a parameter that never had a gradient
        raise RuntimeError(f"no meta-gradient reached the initial weights {missing}")
    return {n: opt.state[p]["exp_avg"].double().cpu() for n, p in zip(names, params, strict=True)}


def metafunc_step(*, compile: bool, mode: str | None = None) -> Factory:
    """``mf.make_step`` (vmap over tasks, grad of grad, ``mf.optim.adam``), eager or compiled."""

    def factory(w: Workload, net: nn.Module, tasks: mf.Tasks, device: torch.device) -> Impl:
        fn, params = mf.pure(copy.deepcopy(net).to(device))
        loss = mf.supervised(fn, mf.losses.mse if w.kind == "sinusoid" else mf.losses.cross_entropy)
        learner = mf.maml(
            loss, inner_lr=w.inner_lr, inner_steps=w.inner_steps, first_order=w.first_order
        )
        opt = mf.optim.adam(OUTER_LR)
        held = [mf.init_state(learner, opt, params)]
        step_fn = mf.make_step(learner, opt, compile=compile, mode=mode)
        graphs = mode in ("reduce-overhead", "max-autotune")  # the modes with CUDA graphs

        def step() -> None:
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            state, _ = step_fn(held[0], tasks)
            # CUDA graphs reuse their output buffers on the next replay: copy what you keep.
            held[0] = _tree.map(torch.clone, state) if graphs else state
            _sync(device)

        def first_moment() -> dict[str, torch.Tensor]:
            return {k: v.double().cpu() for k, v in held[0].opt_state.mu.items()}

        return Impl(step, first_moment)

    return factory


def torch_func_compiled(w: Workload, net: nn.Module, tasks: mf.Tasks, device: torch.device) -> Impl:
    """The same math written by hand with ``torch.func`` (no metafunc): ``vmap`` over tasks,
    ``grad`` of ``grad``, Adam on dicts, the whole step under ``torch.compile(fullgraph=True)``.
    What metafunc's abstractions, checks and guards cost is the gap to the compiled row."""
    from torch.func import grad, vmap

    net = copy.deepcopy(net).to(device)
    params = {k: v.detach() for k, v in net.named_parameters()}
    crit = criterion(w)

    def task_loss(p, support, query):
        for _ in range(w.inner_steps):
            g = grad(lambda p: crit(functional_call(net, p, (support[0],)), support[1]))(p)
            if w.first_order:
                g = {k: v.detach() for k, v in g.items()}
            p = {k: p[k] - w.inner_lr * g[k] for k in p}
        return crit(functional_call(net, p, (query[0],)), query[1])

    def meta_loss(p, support, query):
        return vmap(task_loss, in_dims=(None, 0, 0))(p, support, query).mean()

    def adam(p, m, v, t, support, query, b2=0.999, eps=1e-8):
        g = grad(meta_loss)(p, support, query)
        t = t + 1
        m = {k: B1 * m[k] + (1 - B1) * g[k] for k in g}
        v = {k: b2 * v[k] + (1 - b2) * g[k] ** 2 for k in g}
        p = {
            k: p[k] - OUTER_LR * (m[k] / (1 - B1**t)) / ((v[k] / (1 - b2**t)).sqrt() + eps)
            for k in g
        }
        return p, m, v, t

    compiled = torch.compile(adam, fullgraph=True, dynamic=False)
    # two sets of zeros: moments that alias each other would make Dynamo recompile on call 2
    m, v = ({k: torch.zeros_like(t) for k, t in params.items()} for _ in range(2))
    held = [params, m, v, torch.zeros((), device=device)]

    def step() -> None:
        held[:] = compiled(*held, tasks.support, tasks.query)
        _sync(device)

    def first_moment() -> dict[str, torch.Tensor]:
        return {k: v.double().cpu() for k, v in held[1].items()}

    return Impl(step, first_moment)


def higher_loop(w: Workload, net: nn.Module, tasks: mf.Tasks, device: torch.device) -> Impl:
    """higher's MAML recipe: ``innerloop_ctx`` per task, backward per task, ``torch.optim``.

    First order is ``track_higher_grads=False``, which detaches the initial weights from the
    adapted ones: no meta-gradient reaches them, and the agreement check reports it.
    """
    import higher

    net = copy.deepcopy(net).to(device)
    names, params = _names(net), list(net.parameters())
    opt = torch.optim.Adam(params, lr=OUTER_LR)
    inner = torch.optim.SGD(params, lr=w.inner_lr)
    crit = criterion(w)
    (xs, ys), (xq, yq) = tasks.support, tasks.query

    def step() -> None:
        opt.zero_grad()
        for i in range(w.tasks):
            with higher.innerloop_ctx(
                net, inner, copy_initial_weights=False, track_higher_grads=not w.first_order
            ) as (fnet, diffopt):
                for _ in range(w.inner_steps):
                    diffopt.step(crit(fnet(xs[i]), ys[i]))
                (crit(fnet(xq[i]), yq[i]) / w.tasks).backward()
        opt.step()
        _sync(device)

    def first_moment() -> dict[str, torch.Tensor]:
        return _adam_first_moment(opt, names, params)

    return Impl(step, first_moment)


def torchopt_loop(w: Workload, net: nn.Module, tasks: mf.Tasks, device: torch.device) -> Impl:
    """TorchOpt's functional API: a loop over tasks with ``torchopt.sgd`` inner updates
    (``inplace=False``, differentiable) and a functional ``torchopt.adam`` outer update."""
    import torchopt

    fn, params = mf.pure(copy.deepcopy(net).to(device))
    params = {k: v.requires_grad_() for k, v in params.items()}
    outer, inner = torchopt.adam(OUTER_LR), torchopt.sgd(w.inner_lr)
    held = [params, outer.init(params)]
    crit = criterion(w)
    (xs, ys), (xq, yq) = tasks.support, tasks.query

    def step() -> None:
        params, state = held
        total = 0.0
        for i in range(w.tasks):
            fast, inner_state = params, inner.init(params)
            for _ in range(w.inner_steps):
                grads = torch.autograd.grad(
                    crit(fn(fast, xs[i]), ys[i]),
                    tuple(fast.values()),
                    create_graph=not w.first_order,
                )
                updates, inner_state = inner.update(
                    dict(zip(fast, grads, strict=True)), inner_state, inplace=False
                )
                fast = torchopt.apply_updates(fast, updates, inplace=False)
            total = total + crit(fn(fast, xq[i]), yq[i])
        grads = torch.autograd.grad(total / w.tasks, tuple(params.values()))
        updates, state = outer.update(dict(zip(params, grads, strict=True)), state, inplace=False)
        new = torchopt.apply_updates(params, updates, inplace=False)
        held[:] = [{k: v.detach().requires_grad_() for k, v in new.items()}, state]
        _sync(device)

    def first_moment() -> dict[str, torch.Tensor]:
        (adam_state,) = [s for s in held[1] if hasattr(s, "mu")]
        # TorchOpt keeps the moments as a list of leaves, in optree's (sorted-key) order
        return {k: v.double().cpu() for k, v in zip(sorted(held[0]), adam_state.mu, strict=True)}

    return Impl(step, first_moment)


def jax_jit(w: Workload, net: nn.Module, tasks: mf.Tasks, device: torch.device) -> Impl:
    """The JAX equivalent: ``jax.jit`` of ``grad`` of a ``vmap``-ed MAML loss and optax Adam."""
    import jax
    import jax.numpy as jnp
    import optax

    to_jax = _to_jax(jnp)
    params = {k: to_jax(v) for k, v in net.named_parameters()}
    forward = _jax_mlp(jnp) if w.kind == "sinusoid" else _jax_conv(jax, jnp)

    def loss(p, data):
        x, y = data
        pred = forward(p, x)
        if w.kind == "sinusoid":
            return jnp.mean((pred - y) ** 2)
        logp = jax.nn.log_softmax(pred)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def task_loss(p, support, query):
        for _ in range(w.inner_steps):
            g = jax.grad(loss)(p, support)
            if w.first_order:
                g = jax.lax.stop_gradient(g)
            p = jax.tree_util.tree_map(lambda a, b: a - w.inner_lr * b, p, g)
        return loss(p, query)

    def meta_loss(p, support, query):
        return jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0))(p, support, query))

    tx = optax.adam(OUTER_LR)

    @jax.jit
    def jstep(p, opt_state, support, query):
        g = jax.grad(meta_loss)(p, support, query)
        updates, opt_state = tx.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    support = tuple(to_jax(t) for t in tasks.support)
    query = tuple(to_jax(t) for t in tasks.query)
    held = [params, tx.init(params)]

    def step() -> None:
        held[:] = jstep(held[0], held[1], support, query)
        jax.block_until_ready(held)

    def first_moment() -> dict[str, torch.Tensor]:
        mu = held[1][0].mu
        return {k: torch.tensor(jax.device_get(v)).double() for k, v in mu.items()}

    return Impl(step, first_moment)


def _to_jax(jnp: Any) -> Callable[[torch.Tensor], Any]:
    return lambda t: jnp.asarray(t.detach().cpu().numpy())


def _jax_mlp(jnp: Any) -> Callable[[dict, Any], Any]:
    def forward(p, x):
        for i in (0, 2):
            x = jnp.maximum(x @ p[f"{i}.weight"].T + p[f"{i}.bias"], 0)
        return x @ p["4.weight"].T + p["4.bias"]

    return forward


def _jax_conv(jax: Any, jnp: Any) -> Callable[[dict, Any], Any]:
    def forward(p, x):
        for b in range(4):
            c, n = f"{4 * b}", f"{4 * b + 1}"
            x = jax.lax.conv_general_dilated(
                x,
                p[f"{c}.weight"],
                (1, 1),
                ((1, 1), (1, 1)),
                dimension_numbers=("NCHW", "OIHW", "NCHW"),
            )
            x = x + p[f"{c}.bias"][:, None, None]
            mean = x.mean(axis=(0, 2, 3), keepdims=True)
            var = x.var(axis=(0, 2, 3), keepdims=True)
            x = (x - mean) / jnp.sqrt(var + 1e-5) * p[f"{n}.weight"][:, None, None]
            x = jnp.maximum(x + p[f"{n}.bias"][:, None, None], 0)
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        return x.reshape(x.shape[0], -1) @ p["17.weight"].T + p["17.bias"]

    return forward


def _needs(module: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        try:
            __import__(module)
        except Exception as e:  # an optional extra that is absent or broken is only skipped
            return f"{module} not importable ({type(e).__name__}: {e}); pip install -e .[bench]"
        return None

    return missing


def _cuda_only(device: torch.device) -> str | None:
    return None if device.type == "cuda" else "CUDA only (CUDA graphs)"


def _jax_unavailable(device: torch.device) -> str | None:
    reason = _needs("optax")() or _needs("jax")()
    if reason is None and device.type == "cuda":
        import jax

        if jax.default_backend() != "gpu":
            return "JAX has no GPU backend installed (jax[cuda] is needed)"
    return reason


# name -> (factory, reason it cannot run here or None); the first is the reference
IMPLEMENTATIONS: dict[str, tuple[Factory, Callable[[torch.device], str | None]]] = {
    "blog loop": (blog_loop, lambda d: None),
    "metafunc eager": (metafunc_step(compile=False), lambda d: None),
    "metafunc compiled": (metafunc_step(compile=True), lambda d: None),
    "metafunc compiled reduce-overhead": (
        metafunc_step(compile=True, mode="reduce-overhead"),
        _cuda_only,
    ),
    "metafunc compiled max-autotune": (
        metafunc_step(compile=True, mode="max-autotune"),
        _cuda_only,
    ),
    "torch.func compiled": (torch_func_compiled, lambda d: None),
    "higher": (higher_loop, lambda d: _needs("higher")()),
    "torchopt": (torchopt_loop, lambda d: _needs("torchopt")()),
    "learn2learn": (
        None,  # type: ignore[dict-item]
        lambda d: (
            "not benchmarked: learn2learn 0.2.0 does not build on Python 3.11 "
            "(its Cython sources include longintrepr.h, removed in 3.11)"
        ),
    ),
    "jax jit": (jax_jit, _jax_unavailable),
}


def meta_grad_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """Largest elementwise difference of two meta-gradients over the reference's largest entry."""
    scale = max(v.abs().max().item() for v in want.values())
    if set(got) != set(want):
        return math.inf
    diff = max((got[k] - want[k]).abs().max().item() for k in want)
    return diff / scale if math.isfinite(diff) else math.inf


def compare(
    w: Workload,
    factories: dict[str, Factory],
    *,
    device: torch.device,
    repeats: int,
    steps_per_repeat: int,
    budget_s: float | None = None,
    tolerance: float | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Build every implementation, check its meta-gradient against the first one's (within
    ``tolerance``, by default the workload's), then time
    ``repeats`` interleaved rounds of ``steps_per_repeat`` steps (fewer, but at least 3, once
    the rounds have taken ``budget_s`` seconds). Returns one row each."""
    tolerance = w.tolerance if tolerance is None else tolerance
    net, tasks = make_net(w), make_batch(w, device)
    rows, ready, reference = [], {}, None
    for name, factory in factories.items():
        row: dict[str, Any] = {"impl": name}
        rows.append(row)
        try:
            impl = factory(w, net, tasks, device)
            t0 = time.perf_counter()
            impl.step()  # the first call: compiles where the implementation compiles
            row["first_call_s"] = time.perf_counter() - t0
            grad = {k: v / (1 - B1) for k, v in impl.first_moment().items()}
        except Exception as e:
            row.update(ok=False, error=f"{type(e).__name__}: {e}"[:500])
            log(f"  {name}: failed ({row['error'][:200]})")
            continue
        if reference is None:
            reference = grad
        row["meta_grad_error"] = meta_grad_error(grad, reference)
        row["ok"] = row["meta_grad_error"] <= tolerance
        if not row["ok"]:
            log(
                f"  {name}: REFUSED, meta-gradient differs from the reference by "
                f"{row['meta_grad_error']:.2e} (tolerance {tolerance:.0e})"
            )
            continue
        impl.step()  # a second call: CUDA graphs record here, caches settle
        ready[name] = impl
        log(
            f"  {name}: agrees ({row['meta_grad_error']:.1e}), first call {row['first_call_s']:.2f} s"
        )
    times: dict[str, list[float]] = {name: [] for name in ready}
    started = time.perf_counter()
    for done in range(repeats):
        if budget_s is not None and done >= 3 and time.perf_counter() - started > budget_s:
            log(f"  timing budget of {budget_s:.0f} s used: {done} rounds")
            break
        for name, impl in ready.items():
            t0 = time.perf_counter()
            for _ in range(steps_per_repeat):
                impl.step()
            times[name].append((time.perf_counter() - t0) / steps_per_repeat)
    for row in rows:
        ts = times.get(row["impl"])
        if ts:
            q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
            row.update(
                median_ms=1e3 * statistics.median(ts),
                p25_ms=1e3 * q[0],
                p75_ms=1e3 * q[2],
                min_ms=1e3 * min(ts),
                tasks_per_s=w.tasks / statistics.median(ts),
                repeats=len(ts),
                steps_per_repeat=steps_per_repeat,
            )
    return rows


def selected(
    names: list[str] | None, device: torch.device
) -> tuple[dict[str, Factory], dict[str, str]]:
    """The implementations that can run here, and why the others are skipped."""
    run, skipped = {}, {}
    for name, (factory, unavailable) in IMPLEMENTATIONS.items():
        if names is not None and name not in names:
            continue
        reason = unavailable(device)
        if reason is None:
            run[name] = factory
        else:
            skipped[name] = reason
    return run, skipped


def peak_memory_mb(device: torch.device) -> float:
    """Peak RSS of this process on CPU, or the peak allocated CUDA memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # VmHWM starts afresh at exec; ru_maxrss would carry the parent's peak over a fork
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB where no /proc


def probe(workload: str, impl: str, device: str, steps: int) -> dict[str, Any]:
    """In this (fresh) process: first-call time, then ``steps`` steps, then peak memory."""
    dev = torch.device(device)
    w = WORKLOADS[workload]
    factory = IMPLEMENTATIONS[impl][0]
    net, tasks = make_net(w), make_batch(w, dev)
    t0 = time.perf_counter()
    made = factory(w, net, tasks, dev)
    made.step()
    first = time.perf_counter() - t0
    for _ in range(steps):
        made.step()
    out: dict[str, Any] = {"first_call_s": first, "peak_memory_mb": peak_memory_mb(dev)}
    if phases := compile_phases():  # read after the peak: importing Dynamo takes memory
        out["compile_phases_s"] = phases
    return out


# Where a first call's time goes, from torch.compile's own timers (``dynamo_timed``). They
# nest and overlap: the compile total holds Dynamo's tracing and the backend (AOTAutograd and
# inductor); inductor compiles C++ in worker processes while it generates the next kernels, and
# loading the compiled module waits for them.
COMPILE_PHASES = {
    "_compile.compile_inner": "compile, all",
    "bytecode_tracing": "Dynamo: tracing the Python",
    "aot_collect_metadata": "AOTAutograd: tracing the graph",
    "GraphLowering.run": "inductor: lowering",
    "Scheduler.__init__": "inductor: fusion",
    "Scheduler.codegen": "inductor: generating C++/Triton",
    "async_compile.wait": "inductor: waiting for the C++/Triton compiler",
    "PyCodeCache.load_by_key_path": "inductor: loading the compiled module (and the wait)",
}


# the fresh-process compile timings a workload's entry holds, by implementation
COMPILE_TIME_KEYS = {
    "metafunc compiled": "compile_time",
    "torch.func compiled": "baseline_compile_time",
}


def compile_phases() -> dict[str, float]:
    """Seconds spent in each of :data:`COMPILE_PHASES` by this process's compilations (a phase
    that did not run, e.g. code generation on a cache hit, is left out)."""
    from torch._dynamo.utils import compile_times

    names, values = compile_times(repr="csv", aggregate=True)
    seconds = dict(zip(names, values, strict=True))
    return {k: float(seconds[k]) for k in COMPILE_PHASES if k in seconds}


def run_probe(
    workload: str, impl: str, device: str, *, env: dict[str, str] | None = None, steps: int = 3
) -> dict[str, Any]:
    """:func:`probe` in a fresh Python process (its own imports, caches and memory peak)."""
    cmd = [
        sys.executable,
        "-m",
        "metafunc.bench",
        "--probe",
        impl,
        "--workload",
        workload,
        "--device",
        device,
        "--probe-steps",
        str(steps),
    ]
    out = subprocess.run(
        cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return {
            "error": out.stderr.strip().splitlines()[-1]
            if out.stderr.strip()
            else f"exit {out.returncode}"
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_times(workload: str, device: str, impl: str = "metafunc compiled") -> dict[str, Any]:
    """A compiled step's first call in a fresh process: cold (empty compile caches), then
    warm (a second fresh process reusing the caches the first one wrote)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
        cold = run_probe(workload, impl, device, env=env, steps=1)
        warm = run_probe(workload, impl, device, env=env, steps=1)
    return {
        "cold_s": cold.get("first_call_s"),
        "warm_s": warm.get("first_call_s"),
        "cold": cold,
        "warm": warm,
    }


def cuda_profile(w: Workload, impl: str, device: torch.device, steps: int = 5) -> dict[str, Any]:
    """On CUDA: GPU kernels launched per outer step, CUDA-graph launches per step and the
    host time per step, from ``torch.profiler`` (after a warm-up that compiles and records)."""
    from torch.profiler import ProfilerActivity, profile

    made = IMPLEMENTATIONS[impl][0](w, make_net(w), make_batch(w, device), device)
    for _ in range(3):
        made.step()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            made.step()
    events = prof.events()
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    graph_launches = sum(1 for e in events if e.name == "cudaGraphLaunch")
    return {
        "kernels_per_step": kernels / steps,
        "cuda_graph_launches_per_step": graph_launches / steps,
        "cuda_graphs_engaged": graph_launches > 0,
    }


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "device_type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "load_average": list(os.getloadavg()),
        "commit": _git_commit(),
    }
    for module in ("jax", "optax", "higher", "torchopt"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


SWEEPS = {
    "meta_batch": ("tasks", [1, 25, 200, 1024]),
    "inner_steps": ("inner_steps", [1, 5, 10, 20]),
    "hidden": ("hidden", [40, 80, 160, 320]),
}
SWEEP_IMPLS = ["blog loop", "metafunc eager", "metafunc compiled", "jax jit"]


def sweep(
    field: str,
    values: list[int],
    factories: dict[str, Factory],
    *,
    device: torch.device,
    repeats: int,
    memory: bool,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """The second-order 5-step sinusoid with one field varied; memory (fresh process) for the
    compiled step."""
    points = []
    for value in values:
        w = dataclasses.replace(WORKLOADS["sine-5step"], **{field: value})
        log(f"{field} = {value}")
        rows = compare(w, factories, device=device, repeats=repeats, steps_per_repeat=1, log=log)
        point: dict[str, Any] = {field: value, "rows": rows}
        if memory and "metafunc compiled" in factories:
            point["compiled_peak_memory_mb"] = _probe_workload(w, device).get("peak_memory_mb")
        points.append(point)
    return points


def _probe_workload(w: Workload, device: torch.device) -> dict[str, Any]:
    # the probe process rebuilds the workload from its fields
    spec = json.dumps(dataclasses.asdict(w))
    return run_probe(spec, "metafunc compiled", str(device), steps=3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metafunc bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=list(IMPLEMENTATIONS),
        default=None,
        help="default: all that can run here",
    )
    parser.add_argument(
        "--repeats", type=int, default=10, help="interleaved timing rounds (default 10)"
    )
    parser.add_argument("--steps-per-repeat", type=int, default=3)
    parser.add_argument(
        "--budget",
        type=float,
        default=300.0,
        help="seconds of timing rounds per workload, after which no new round starts once 3 "
        "are done (default 300)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and XLA CPU threads (default 1: tiny ops, shared cores)",
    )
    parser.add_argument("--sweeps", nargs="*", choices=list(SWEEPS), default=list(SWEEPS))
    for name, (_, values) in SWEEPS.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}-points",
            type=int,
            nargs="+",
            default=values,
            help=f"sizes of the {name} sweep (default {' '.join(map(str, values))})",
        )
    parser.add_argument("--sweep-repeats", type=int, default=3)
    parser.add_argument(
        "--no-compile-times",
        action="store_true",
        help="skip the cold/warm fresh-process compile timing",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the fresh-process memory probes"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--probe-steps", type=int, default=3, help=argparse.SUPPRESS)


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    if threads == 1 and "jax" not in sys.modules:
        os.environ.setdefault(
            "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )


def run(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    if args.probe:
        if args.workload.startswith("{"):
            w = Workload(**json.loads(args.workload))
            WORKLOADS[w.name] = w
            args.workload = w.name
        print(json.dumps(probe(args.workload, args.probe, args.device, args.probe_steps)))
        return 0
    device = torch.device(args.device)
    factories, skipped = selected(args.impls, device)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    result: dict[str, Any] = {
        "environment": environment(device, args.threads),
        "skipped": skipped,
        "workloads": {},
        "sweeps": {},
    }
    result["environment"]["command"] = (
        " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None
    )
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{device.type}.json"

    def save() -> None:  # after every workload and sweep: an interrupted run keeps its data
        result["environment"]["wall_s"] = time.perf_counter() - started
        result["environment"]["load_average_end"] = list(os.getloadavg())
        path.write_text(json.dumps(result, indent=2))
        path.with_suffix(".md").write_text(report(result))

    for name in args.workloads:
        w = WORKLOADS[name]
        print(f"\n{name}: {w.describe()}")
        rows = compare(
            w,
            factories,
            device=device,
            repeats=args.repeats,
            # the image workload's steps take seconds each on a CPU
            steps_per_repeat=1 if w.kind == "conv" else args.steps_per_repeat,
            budget_s=args.budget,
        )
        entry: dict[str, Any] = {
            "description": w.describe(),
            "tolerance": w.tolerance,
            "rows": rows,
        }
        if not args.no_memory:
            for row in rows:
                if row.get("ok"):
                    row["fresh_process"] = run_probe(name, row["impl"], args.device)
        if device.type == "cuda":
            entry["cuda_profile"] = {
                row["impl"]: cuda_profile(w, row["impl"], device)
                for row in rows
                if row.get("ok") and row["impl"].startswith("metafunc")
            }
        if not args.no_compile_times and name == "sine-5step":
            for impl, key in COMPILE_TIME_KEYS.items():
                if impl in factories:
                    entry[key] = compile_times(name, args.device, impl)
        result["workloads"][name] = entry
        save()
        print(table(entry))
    sweep_factories = {k: v for k, v in factories.items() if k in SWEEP_IMPLS}
    for name in args.sweeps:
        field = SWEEPS[name][0]
        values = getattr(args, f"{name}_points")
        print(f"\nsweep over {name}")
        result["sweeps"][name] = {
            "field": field,
            "points": sweep(
                field,
                values,
                sweep_factories,
                device=device,
                repeats=args.sweep_repeats,
                memory=not args.no_memory,
            ),
        }
        save()
    save()
    print(f"\nwrote {path} and {path.with_suffix('.md')}")
    if result["sweeps"]:
        from . import plotting

        for name, data in result["sweeps"].items():
            print(
                "wrote",
                plotting.scaling_chart(
                    args.out / f"scaling-{name}-{device.type}.png",
                    data,
                    device=result["environment"]["device"],
                ),
            )
    return 0


def report(result: dict[str, Any]) -> str:
    """The Markdown summary of a run: environment, one table per workload, sweep tables."""
    env = result["environment"]
    lines = [
        f"{env['device']} ({env['device_type']}), torch {env['torch']}, JAX {env.get('jax')}, "
        f"{env['torch_threads']} thread(s), {env['date']}, commit {str(env['commit'])[:10]}, "
        f"load average {env['load_average'][0]:.1f} at start and "
        f"{env.get('load_average_end', [float('nan')])[0]:.1f} at the end",
        "",
    ]
    for name, reason in result["skipped"].items():
        lines.append(f"- skipped {name}: {reason}")
    for name, entry in result["workloads"].items():
        lines += ["", f"### {name}: {entry['description']}", "", table(entry)]
    for name, data in result["sweeps"].items():
        field = data["field"]
        impls = list(dict.fromkeys(r["impl"] for p in data["points"] for r in p["rows"]))
        lines += ["", f"### sweep: {name} (ms per step, median)", ""]
        lines.append(f"| {field} | " + " | ".join(impls) + " | compiled peak memory MB |")
        lines.append("|---" * (len(impls) + 2) + "|")
        for p in data["points"]:
            ms = {r["impl"]: r.get("median_ms") for r in p["rows"]}
            cells = ["" if ms.get(i) is None else f"{ms[i]:.2f}" for i in impls]
            mem = p.get("compiled_peak_memory_mb")
            lines.append(
                f"| {p[field]} | "
                + " | ".join(cells)
                + f" | {'' if mem is None else f'{mem:.0f}'} |"
            )
    return "\n".join(lines) + "\n"


def table(entry: dict[str, Any]) -> str:
    """A Markdown table of one workload's rows, with speed-ups over the blog loop."""
    rows = entry["rows"]
    base = next(
        (r["median_ms"] for r in rows if r["impl"] == "blog loop" and "median_ms" in r), None
    )
    lines = [
        "| implementation | median ms/step (IQR) | tasks/s | vs blog loop | first call s | peak memory MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "median_ms" not in r:
            why = (
                r.get("error")
                or f"refused: meta-gradient off by {r.get('meta_grad_error', float('nan')):.1e}"
            )
            lines.append(f"| {r['impl']} | {why} | | | | |")
            continue
        fresh = r.get("fresh_process", {})
        mem = fresh.get("peak_memory_mb")
        speedup = f"{base / r['median_ms']:.1f}x" if base else ""
        lines.append(
            f"| {r['impl']} | {r['median_ms']:.2f} ({r['p25_ms']:.2f}-{r['p75_ms']:.2f}) | "
            f"{r['tasks_per_s']:.0f} | {speedup} | {fresh.get('first_call_s', r['first_call_s']):.2f} | "
            f"{'' if mem is None else f'{mem:.0f}'} |"
        )
    timed = {impl: entry[key] for impl, key in COMPILE_TIME_KEYS.items() if entry.get(key)}
    for impl, ct in timed.items():
        lines.append(
            f"\n{impl}, first call in a fresh process: cold {_seconds(ct['cold_s'])}, "
            f"warm {_seconds(ct['warm_s'])}"
        )
    phases = {
        (impl, k): ct[k].get("compile_phases_s", {})
        for impl, ct in timed.items()
        for k in ("cold", "warm")
    }
    if any(phases.values()):
        lines += [
            "",
            "| where the first call's time goes (s) | "
            + " | ".join(f"{impl}, {k}" for impl, k in phases)
            + " |",
            "|---" * (len(phases) + 1) + "|",
        ]
        for key, label in COMPILE_PHASES.items():
            if any(key in d for d in phases.values()):
                cells = [f"{d[key]:.2f}" if key in d else "-" for d in phases.values()]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "failed" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
