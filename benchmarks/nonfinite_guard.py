"""What the non-finite guard costs on the demo's compiled step (blog net 1-32-32-1, 32 tasks,
5 second-order inner steps, L1, outer SGD), in ms per step, all through the public step:

  plain    mf.make_step(learner, mf.optim.sgd(1e-2))
  guarded  mf.make_step(learner, mf.optim.apply_if_finite(mf.optim.sgd(1e-2)))
  +read    the guarded step, reading its finite flag on the host after every step (what
           train(on_nonfinite="raise") does)

Runs are interleaved and repeated because shared machines are noisy; medians are reported.
Usage: python benchmarks/nonfinite_guard.py [threads]
"""

import statistics
import sys
import time

import torch

import metafunc as mf

if len(sys.argv) > 1:
    torch.set_num_threads(int(sys.argv[1]))
g = torch.Generator().manual_seed(0)
fn, params = mf.pure(mf.models.blog_sine_net(g))
learner = mf.maml(mf.supervised(fn, mf.losses.l1), inner_lr=3e-2, inner_steps=5)
optimizers = {
    "plain": mf.optim.sgd(1e-2),
    "guarded": mf.optim.apply_if_finite(mf.optim.sgd(1e-2)),
}
steps = {k: mf.make_step(learner, opt) for k, opt in optimizers.items()}
states = {k: mf.init_state(learner, opt, params) for k, opt in optimizers.items()}
batches = [mf.tasks.sine(g, tasks=32) for _ in range(200)]
for k, step in steps.items():
    step(states[k], batches[0])  # compile


def run(name: str, read: bool) -> float:
    step, state = steps[name], states[name]
    t0 = time.perf_counter()
    for b in batches:
        state, m = step(state, b)
        if read:
            bool(m["finite"])
    return (time.perf_counter() - t0) / len(batches) * 1e3


plan = {"plain": ("plain", False), "guarded": ("guarded", False), "+read": ("guarded", True)}
times = {k: [] for k in plan}
for _ in range(11):
    for k, (name, read) in plan.items():
        times[k].append(run(name, read))
for k, v in times.items():
    print(f"{k:7s} median {statistics.median(v):.3f} ms/step  (min {min(v):.3f}, 11 x 200 steps)")
print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
