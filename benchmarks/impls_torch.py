"""The torch implementations of one full outer step (meta-gradient and Adam update).

Each factory takes the workload, the shared network (weights loaded) and batch on the device,
and returns an ``Impl``. metafunc's rows use only its public API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

import metafunc as mf

from .impls import Impl
from .workloads import B1, OUTER_LR, Workload


def _criterion(w: Workload) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return F.mse_loss if w.kind == "sinusoid" else F.cross_entropy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_peak(device: torch.device) -> Callable[[], float | None]:
    if device.type != "cuda":
        return lambda: None
    return lambda: torch.cuda.max_memory_allocated(device) / 2**20


def _numpy(moments: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().double().cpu().numpy() for k, v in moments.items()}


def _adam_first_moment(opt: torch.optim.Adam, net: nn.Module) -> dict[str, np.ndarray]:
    named = list(net.named_parameters())
    missing = [n for n, p in named if "exp_avg" not in opt.state[p]]
    if missing:  # Adam keeps no state for a parameter that never had a gradient
        raise RuntimeError(f"no meta-gradient reached the initial weights {missing}")
    return _numpy({n: opt.state[p]["exp_avg"] for n, p in named})


def blog_loop(w: Workload, net: nn.Module, tasks: mf.Tasks, device: torch.device) -> Impl:
    """The blog-style step: a Python loop over tasks, ``torch.autograd.grad(create_graph=True)``
    for the inner steps, one backward of the mean query loss, ``torch.optim.Adam``."""
    names, params = [n for n, _ in net.named_parameters()], list(net.parameters())
    opt = torch.optim.Adam(params, lr=OUTER_LR)
    crit = _criterion(w)
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

    return Impl(step, lambda: _adam_first_moment(opt, net), _cuda_peak(device))


def metafunc_step(
    w: Workload,
    net: nn.Module,
    tasks: mf.Tasks,
    device: torch.device,
    *,
    compile: bool,
    mode: str | None = None,
    backend: str | None = None,
    options: dict[str, Any] | None = None,
) -> Impl:
    """``mf.make_step`` (vmap over tasks, grad of grad, ``mf.optim.adam``), eager or compiled
    (``backend`` only where a run asks for another than torch's default; ``options`` are
    ``make_step``'s ``torch.compile`` options)."""
    fn, params = mf.pure(net)
    loss = mf.supervised(fn, mf.losses.mse if w.kind == "sinusoid" else mf.losses.cross_entropy)
    learner = mf.maml(loss, inner_lr=w.inner_lr, inner_steps=w.inner_steps)
    learner = mf.first_order(learner) if w.first_order else learner
    opt = mf.optim.adam(OUTER_LR)
    held = [mf.init_state(learner, opt, params)]
    chosen: dict[str, Any] = {} if backend is None else {"backend": backend}
    # with CUDA graphs (reduce-overhead) make_step marks each step and copies what it returns
    step_fn = mf.make_step(learner, opt, compile=compile, mode=mode, options=options, **chosen)

    def step() -> None:
        held[0], _ = step_fn(held[0], tasks)
        _sync(device)

    return Impl(step, lambda: _numpy(held[0].opt_state.mu), _cuda_peak(device))


def adapted_by_hand(
    w: Workload, net: nn.Module, crit: Callable[..., torch.Tensor], p: dict, support: Any
) -> dict:
    """One task's inner loop written by hand with ``torch.func``: ``w.inner_steps`` SGD steps
    on the support loss, differentiable (first order: the inner gradients detached)."""
    for _ in range(w.inner_steps):
        g = grad(lambda p: crit(functional_call(net, p, (support[0],)), support[1]))(p)
        if w.first_order:
            g = {k: v.detach() for k, v in g.items()}
        p = {k: p[k] - w.inner_lr * g[k] for k in p}
    return p


def adam_by_hand(
    p: dict, m: dict, v: dict, t: torch.Tensor, g: dict, b2: float = 0.999, eps: float = 1e-8
) -> tuple[dict, dict, dict, torch.Tensor]:
    """One Adam update written by hand on dicts (``torch.optim.Adam``'s arithmetic, the
    benchmark's outer rate): the new parameters, moments and count."""
    t = t + 1
    m = {k: B1 * m[k] + (1 - B1) * g[k] for k in g}
    v = {k: b2 * v[k] + (1 - b2) * g[k] ** 2 for k in g}
    p = {k: p[k] - OUTER_LR * (m[k] / (1 - B1**t)) / ((v[k] / (1 - b2**t)).sqrt() + eps) for k in g}
    return p, m, v, t


def torch_func_compiled(
    w: Workload,
    net: nn.Module,
    tasks: mf.Tasks,
    device: torch.device,
    *,
    backend: str | None = None,
    compile: bool = True,
) -> Impl:
    """The same math written by hand with ``torch.func`` (no metafunc): ``vmap`` over tasks,
    ``grad`` of ``grad``, Adam on dicts, the whole step under ``torch.compile(fullgraph=True)``
    (``compile=False``: the same function run eagerly). What metafunc's abstractions, checks and
    guards cost is the gap to the matching metafunc row."""
    from torch.func import vmap

    params = {k: v.detach() for k, v in net.named_parameters()}
    crit = _criterion(w)

    def task_loss(p, support, query):
        return crit(
            functional_call(net, adapted_by_hand(w, net, crit, p, support), (query[0],)), query[1]
        )

    def meta_loss(p, support, query):
        return vmap(task_loss, in_dims=(None, 0, 0))(p, support, query).mean()

    def adam(p, m, v, t, support, query):
        return adam_by_hand(p, m, v, t, grad(meta_loss)(p, support, query))

    compiled = (
        torch.compile(adam, fullgraph=True, dynamic=False, backend=backend or "inductor")
        if compile
        else adam
    )
    # two sets of zeros: moments that alias each other would make Dynamo recompile on call 2
    m, v = ({k: torch.zeros_like(t) for k, t in params.items()} for _ in range(2))
    held = [params, m, v, torch.zeros((), device=device)]

    def step() -> None:
        held[:] = compiled(*held, tasks.support, tasks.query)
        _sync(device)

    return Impl(step, lambda: _numpy(held[1]), _cuda_peak(device))


def higher_loop(w: Workload, net: nn.Module, tasks: mf.Tasks, device: torch.device) -> Impl:
    """higher's MAML recipe: ``innerloop_ctx`` per task, backward per task, ``torch.optim``.

    First order is ``track_higher_grads=False``, which detaches the initial weights from the
    adapted ones: no meta-gradient reaches them, and the agreement check reports it.
    """
    import higher

    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=OUTER_LR)
    inner = torch.optim.SGD(params, lr=w.inner_lr)
    crit = _criterion(w)
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

    return Impl(step, lambda: _adam_first_moment(opt, net), _cuda_peak(device))


def torchopt_loop(w: Workload, net: nn.Module, tasks: mf.Tasks, device: torch.device) -> Impl:
    """TorchOpt's functional optimizers in a Python loop over tasks: ``torchopt.sgd`` inner
    updates (``inplace=False``, differentiable) and a functional ``torchopt.adam`` outer update
    with ``torchopt.apply_updates``."""
    import torchopt

    fn, params = mf.pure(net)
    params = {k: v.requires_grad_() for k, v in params.items()}
    outer, inner = torchopt.adam(OUTER_LR), torchopt.sgd(w.inner_lr)
    held = [params, outer.init(params)]
    crit = _criterion(w)
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

    def first_moment() -> dict[str, np.ndarray]:
        (adam_state,) = [s for s in held[1] if hasattr(s, "mu")]
        # TorchOpt keeps the moments as a list of leaves, in optree's (sorted-key) order
        return _numpy(dict(zip(sorted(held[0]), adam_state.mu, strict=True)))

    return Impl(step, first_moment, _cuda_peak(device))


def torchopt_vmap(w: Workload, net: nn.Module, tasks: mf.Tasks, device: torch.device) -> Impl:
    """TorchOpt's functional MAML example (``examples/FuncTorch/maml_omniglot_vmap.py``):
    ``vmap`` over tasks of an inner loop of ``grad`` and differentiable ``torchopt.sgd``
    updates (``update(..., inplace=False)``, ``torchopt.apply_updates(..., inplace=False)``),
    one backward of the query losses, ``torch.optim.Adam``.

    As in the example, except: ``torch.func`` where it used functorch's
    ``make_functional_with_buffers`` (gone from torch), the mean of the query losses where it
    took their sum (the workload's meta-loss), and first order (which the example does not
    have) by detaching the inner gradients.
    """
    import torchopt
    from torch.func import grad, vmap

    params = dict(net.named_parameters())
    meta_opt = torch.optim.Adam(params.values(), lr=OUTER_LR)
    crit = _criterion(w)

    def compute_loss(new_params, x, y):
        return crit(functional_call(net, new_params, (x,)), y)

    def loss_for_task(x_spt, y_spt, x_qry, y_qry):
        opt = torchopt.sgd(lr=w.inner_lr)
        opt_state = opt.init(params)
        new_params = params
        for _ in range(w.inner_steps):
            grads = grad(compute_loss)(new_params, x_spt, y_spt)
            if w.first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            updates, opt_state = opt.update(grads, opt_state, inplace=False)
            new_params = torchopt.apply_updates(new_params, updates, inplace=False)
        return compute_loss(new_params, x_qry, y_qry)

    (xs, ys), (xq, yq) = tasks.support, tasks.query

    def step() -> None:
        meta_opt.zero_grad()
        qry_losses = vmap(loss_for_task)(xs, ys, xq, yq)
        qry_losses.mean().backward()
        meta_opt.step()
        _sync(device)

    return Impl(step, lambda: _adam_first_moment(meta_opt, net), _cuda_peak(device))


class _Part(nn.Module):
    """Layers that take and ignore the keyword arguments parallel-metalearn's ``MAML_Model``
    passes to its backbone and head (``training=``, ``num_step=``)."""

    def __init__(self, layers: nn.Module) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.layers(x)


def parallel_metalearn(w: Workload, net: nn.Module, tasks: mf.Tasks, device: torch.device) -> Impl:
    """parallel-metalearn 0.5.6 (``metalearn``) used as its README shows MAML: the network as
    ``MAML_Model(backbone, head)``, ``InnerSGD`` at a fixed rate (``learn_lr=False``: plain
    MAML, not Meta-SGD), ``torch.optim.Adam``, and ``MAML(...).step(batches)``, which
    ``vmap``s the inner loop of ``torch.func.grad`` steps over the tasks, calls backward on the
    mean query loss, steps the optimizer and reads the loss back (``.item()``), eagerly.

    The backbone is the shared network without its last layer, the head that layer (the same
    parameters every row starts from). It ships no regression loss: ``MSE`` below is the
    smallest ``BaseLoss`` a user would write. ``chunk_size`` is the whole meta-batch (its
    default is 80 tasks): one ``vmap``, as metafunc's step.
    """
    import itertools

    import torch.nn.functional as F
    from metalearn.algorithms import MAML
    from metalearn.inner_optimizers import InnerSGD
    from metalearn.loss import BaseLoss, CategoricalAccuracy, CrossEntropy
    from metalearn.model_wrappers import MAML_Model

    class MSE(BaseLoss):
        def forward(self, out_dict, targets, model_states=None, **kwargs):
            loss = F.mse_loss(out_dict["logits"], targets)
            return loss, loss.detach()

    model = MAML_Model(backbone=_Part(net[:-1]), head=_Part(net[-1:]))
    meta_opt = torch.optim.Adam(model.parameters(), lr=OUTER_LR)
    inner_opt = InnerSGD(
        initial_fast_weights=model.get_fast_weights(),
        inner_lr=w.inner_lr,
        first_order=w.first_order,
        max_inner_steps=w.inner_steps,
        learn_lr=False,
    )
    algorithm = MAML(
        model=model,
        optimizer=meta_opt,
        inner_optimizer=inner_opt,
        support_loss_fn=MSE() if w.kind == "sinusoid" else CrossEntropy(CategoricalAccuracy()),
        inner_steps=w.inner_steps,
        chunk_size=w.tasks,
        device=device,
    )
    (xs, ys), (xq, yq) = tasks.support, tasks.query
    if w.kind != "sinusoid":  # its classification losses read the labels from a dict
        ys, yq = {"labels": ys}, {"labels": yq}
    batches = itertools.repeat((xs, ys, xq, yq))

    def step() -> None:
        algorithm.step(batches)
        _sync(device)

    return Impl(step, lambda: _adam_first_moment(meta_opt, net), _cuda_peak(device))
