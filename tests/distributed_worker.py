"""One rank of the distributed tests, launched by torchrun from test_distributed.py.

``python -m torch.distributed.run --standalone --nproc_per_node 2 distributed_worker.py MODE OUT``
"""

import functools
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from support import TanhFeatures
from torch import nn

import metafunc as mf

ALGORITHMS = ["maml", "fomaml", "reptile", "meta_sgd", "anil", "daml"]
TASKS = 4  # per meta-batch, split 2 + 2 over the ranks
STEPS = 3


def setup(name):
    """(learner, params, sampler) in float64 for one algorithm, the same in every process."""
    torch.manual_seed(0)  # test-only: fixes nn.Linear's default initialisation
    if name == "daml":
        fn, params = mf.pure(TanhFeatures().double())
        loss_fn, phi = mf.pure(nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)).double())

        def adaptation_loss(phi, y, features):
            return loss_fn(phi, torch.cat([y, *features], -1)).pow(2).mean()

        learner = mf.daml(fn, adaptation_loss, phi, mf.losses.mse, inner_lr=0.1)
        sampler = functools.partial(
            mf.tasks.daml_sine, tasks=TASKS, sources=2, queries=5, dtype=torch.float64
        )
        return mf.distributed.data_parallel(learner), params, sampler
    net = nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    fn, params = mf.pure(net)
    loss = mf.supervised(fn, mf.losses.mse)
    learner = {
        "maml": lambda: mf.maml(loss, inner_lr=0.1, inner_steps=2),
        "fomaml": lambda: mf.fomaml(loss, inner_lr=0.1, inner_steps=2),
        "reptile": lambda: mf.reptile(loss, inner_lr=0.1, inner_steps=2),
        "meta_sgd": lambda: mf.meta_sgd(loss, inner_lr=0.1),
        "anil": lambda: mf.anil(loss, head="2", inner_lr=0.1),
    }[name]()
    sampler = functools.partial(
        mf.tasks.sinusoid, tasks=TASKS, shots=4, queries=5, dtype=torch.float64
    )
    # data parallel under torchrun; outside it (the single-process reference) the learner itself
    return mf.distributed.data_parallel(learner), params, sampler


def run(name, *, compile=False, backend="inductor", steps=STEPS):
    """``steps`` Adam steps from seed 1: the final state and the last metrics."""
    learner, params, sampler = setup(name)
    opt = mf.optim.adam(1e-2)
    step = mf.make_step(learner, opt, compile=compile, backend=backend)
    state = mf.init_state(learner, opt, params)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        state, metrics = step(state, sampler(g))
    return state, metrics


def native_threads():
    """The names of this process's threads, native ones included (gloo's are named ``gloo_*``
    and ``pt_gloo_*``); Linux only."""
    return sorted((t / "comm").read_text().strip() for t in Path("/proc/self/task").iterdir())


def main(mode, out):
    mf.distributed.init(timeout=10)
    rank = mf.distributed.rank()
    if mode == "equal":  # every algorithm eager, MAML compiled, train with checkpoints + resume
        results = {}
        for name in ALGORITHMS:
            state, metrics = run(name)
            results[name] = (state, metrics.loss)
        # Dynamo imported after init, as in a script that compiles on demand: it imports
        # torch.distributed.nn.functional, which would keep the process group alive if that
        # module first loaded now (metafunc imports it before any group exists)
        from torch._dynamo.testing import CompileCounterWithBackend

        counter = CompileCounterWithBackend("aot_eager")
        state, metrics = run("maml", compile=True, backend=counter)
        results["maml_compiled"] = (state, metrics.loss)
        (out / f"frames{rank}.json").write_text(json.dumps(counter.frame_count))
        learner, params, sampler = setup("maml")
        opt = mf.optim.adam(1e-2)
        step = mf.make_step(learner, opt, compile=False)
        init = mf.init_state(learner, opt, params)
        ckpt = out / "ckpt.pt"
        g = torch.Generator().manual_seed(1)
        hooks = [mf.hooks.Checkpoints(ckpt)]
        mf.train(step, init, sampler, steps=2, generator=g, hooks=hooks, progress=False)
        g = torch.Generator().manual_seed(99)  # resume restores the stream
        hooks = [mf.hooks.Checkpoints(ckpt, resume=True)]
        state = mf.train(step, init, sampler, steps=STEPS, generator=g, hooks=hooks, progress=False)
        results["maml_train_resumed"] = (state, torch.zeros(()))
        torch.save(
            {k: (mf._tree.leaves(s.meta), loss) for k, (s, loss) in results.items()},
            out / f"rank{rank}.pt",
        )
    elif mode == "raise":  # rank 1 fails after one step; rank 0 is left waiting in the next
        learner, params, sampler = setup("maml")
        opt = mf.optim.sgd(1e-2)
        step = mf.make_step(learner, opt, compile=False)
        state = mf.init_state(learner, opt, params)
        g = torch.Generator().manual_seed(1)
        state, _ = step(state, sampler(g))
        if rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
        for _ in range(1000):
            state, _ = step(state, sampler(g))
    elif mode == "hang":  # rank 1 stops answering (alive); rank 0's collective times out
        learner, params, sampler = setup("maml")
        opt = mf.optim.sgd(1e-2)
        step = mf.make_step(learner, opt, compile=False)
        state = mf.init_state(learner, opt, params)
        if rank == 1:
            time.sleep(300)
        step(state, sampler(torch.Generator().manual_seed(1)))
    elif mode == "signal":  # SIGTERM reaches rank 1 only, during step 2: both ranks stop
        learner, params, sampler = setup("maml")
        opt = mf.optim.sgd(1e-2)
        step = mf.make_step(learner, opt, compile=False)
        drawn = []

        def signalling(g):
            drawn.append(1)
            if rank == 1 and len(drawn) == 2:
                signal.raise_signal(signal.SIGTERM)
            return sampler(g)

        state = mf.init_state(learner, opt, params)
        mf.train(
            step,
            state,
            signalling,
            steps=10,
            progress=False,
            hooks=[mf.hooks.Checkpoints(out / "c.pt")],
        )
    elif mode == "mismatch":  # configurations the step refuses, on every rank
        learner, params, sampler = setup("maml")
        opt = mf.optim.sgd(1e-2)
        state = mf.init_state(learner, opt, params)
        g = torch.Generator().manual_seed(1)
        messages = []
        for tasks in (TASKS if rank == 0 else 2, 3):
            step = mf.make_step(learner, opt, compile=False)
            try:
                step(state, sampler(g, tasks=tasks))
            except ValueError as e:
                messages.append(str(e))
        (out / f"messages{rank}.json").write_text(json.dumps(messages))
    torch.distributed.destroy_process_group()
    (out / f"threads{rank}.json").write_text(json.dumps(native_threads()))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1], Path(sys.argv[2]))
