"""What the non-finite guard costs on the demo's compiled step (blog net 1-32-32-1, 32 tasks,
5 second-order inner steps, L1, SGD), in ms per step:

  before   the step body without the guard (as it was before checkpoints/guards were added)
  guard    the step body with the guard (torch.where on every leaf, per-leaf finite flags)
  +read    the same, reading the finite flag on the host after every step (what
           train(on_nonfinite="raise") does)
  public   mf.make_step (eager validation of state and tasks before each call) + read

Runs are interleaved and repeated because shared machines are noisy; medians are reported.
Usage: python benchmarks/nonfinite_guard.py [threads]
"""

import functools
import statistics
import sys
import time

import torch

import metafunc as mf
from metafunc import _tree
from metafunc.optim import apply_updates
from metafunc.step import TrainState

if len(sys.argv) > 1:
    torch.set_num_threads(int(sys.argv[1]))
g = torch.Generator().manual_seed(0)
fn, params = mf.pure(mf.models.blog_sine_net(g))
learner = mf.maml(mf.supervised(fn, mf.losses.l1), inner_lr=3e-2, inner_steps=5)
opt = mf.optim.sgd(1e-2)
state0 = mf.init_state(learner, opt, params)


def before(state, tasks):
    grads, metrics = learner.meta_grad(state.meta, tasks)
    updates, opt_state = opt.update(grads, state.opt_state, state.meta)
    meta = apply_updates(state.meta, updates)
    finite = _tree.all_finite(grads) & torch.isfinite(metrics["loss"])
    metrics = {**metrics, "grad_norm": _tree.global_norm(grads), "finite": finite}
    return TrainState(meta, opt_state, state.step + 1), metrics


def guard(state, tasks):  # the body of mf.make_step's step
    grads, metrics = learner.meta_grad(state.meta, tasks)
    updates, opt_state = opt.update(grads, state.opt_state, state.meta)
    meta = apply_updates(state.meta, updates)
    leaf_ok = _tree.finite_leaves(grads)
    finite = leaf_ok.all() & torch.isfinite(metrics["loss"])
    meta = _tree.map(lambda new, old: torch.where(finite, new, old), meta, state.meta)
    opt_state = _tree.map(
        lambda new, old: torch.where(finite, new, old), opt_state, state.opt_state
    )
    metrics = {
        **metrics,
        "grad_norm": _tree.global_norm(grads),
        "finite": finite,
        "finite_leaves": leaf_ok,
    }
    return TrainState(meta, opt_state, state.step + 1), metrics


compile = functools.partial(torch.compile, fullgraph=True, dynamic=False)
steps = {
    "before": compile(before),
    "guard": compile(guard),
    "public": mf.make_step(learner, opt, compile=True),
}
batches = [mf.tasks.sine(g, tasks=32) for _ in range(200)]
for f in steps.values():
    f(state0, batches[0])  # compile


def run(f, read):
    s = state0
    t0 = time.perf_counter()
    for b in batches:
        s, m = f(s, b)
        if read:
            bool(m["finite"])
    return (time.perf_counter() - t0) / len(batches) * 1e3


plan = {
    "before": (steps["before"], False),
    "guard": (steps["guard"], False),
    "+read": (steps["guard"], True),
    "public": (steps["public"], True),
}
times = {k: [] for k in plan}
for _ in range(11):
    for k, (f, read) in plan.items():
        times[k].append(run(f, read))
for k, v in times.items():
    print(f"{k:7s} median {statistics.median(v):.3f} ms/step  (min {min(v):.3f}, 11 x 200 steps)")
print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
