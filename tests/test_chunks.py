"""Meta-gradients over a meta-batch a chunk of tasks at a time (``mf.chunked``): the same
meta-gradient, one chunk's memory, and compiled as a loop rather than one copy per chunk."""

from __future__ import annotations

import pytest
import torch
from support import (
    assert_compiled_step_equals_eager,
    assert_equal_states,
    assert_trees_close,
    dropout_net,
    peak_bytes,
    sine_tasks,
    tanh_net,
)
from torch._dynamo.testing import CompileCounterWithBackend

import metafunc as mf

FN, PARAMS = mf.pure(tanh_net(width=3))
LOSS = mf.supervised(FN, mf.losses.mse)
LEARNERS = {
    "maml": lambda: mf.maml(LOSS, inner_lr=0.1, inner_steps=2),
    "maml-remat": lambda: mf.remat(mf.maml(LOSS, inner_lr=0.1, inner_steps=2)),
    "meta_sgd": lambda: mf.meta_sgd(LOSS, inner_lr=0.1),
    "reptile": lambda: mf.reptile(LOSS, inner_lr=0.1, inner_steps=2),
    "imaml": lambda: mf.imaml(LOSS, inner_lr=0.1, inner_steps=2, cg_steps=2),
}


@pytest.mark.parametrize("name", LEARNERS)
@pytest.mark.parametrize("size", [1, 2, 5, 8])
def test_chunked_meta_gradient_equals_the_whole_batch(name, size):
    whole, chunked = LEARNERS[name](), mf.chunked(LEARNERS[name](), size)
    tasks = sine_tasks(n=5)  # size 2: two chunks and a remainder of one task
    meta = whole.init(PARAMS)
    want, want_metrics = whole.meta_grad(meta, tasks)
    got, got_metrics = chunked.meta_grad(meta, tasks)
    assert_trees_close(got, want, rtol=1e-12, atol=1e-14)
    assert_trees_close(got_metrics, want_metrics, rtol=1e-12, atol=1e-14)


@pytest.mark.compile
@pytest.mark.parametrize("name", ["maml", "imaml"])
def test_compiled_chunked_step_equals_eager_with_one_graph(name):
    learner = mf.chunked(LEARNERS[name](), 2)
    assert_compiled_step_equals_eager(learner, PARAMS, tasks=5)


@pytest.mark.compile
def test_compiled_chunks_are_a_loop_not_one_copy_per_chunk():
    graphs = {}

    def compile_counting(n):
        def backend(gm, example_inputs):
            graphs[n] = gm
            return gm.forward

        learner = mf.chunked(LEARNERS["maml"](), 2)
        opt = mf.optim.sgd(0.1)
        step = mf.make_step(learner, opt, backend=backend)
        step(mf.init_state(learner, opt, PARAMS), sine_tasks(n=n))

    compile_counting(4)
    torch._dynamo.reset()
    compile_counting(16)
    nodes = {n: len(gm.graph.nodes) for n, gm in graphs.items()}
    assert nodes[4] == nodes[16]  # unrolled, 8 chunks would hold four times the 2 chunks' ops
    scans = [n for n in graphs[16].graph.nodes if n.target is torch.ops.higher_order.scan]
    assert len(scans) == 1


@pytest.mark.compile
@pytest.mark.parametrize("compiled", [False, True])
def test_chunks_bound_the_memory(compiled):
    fn, params = mf.pure(tanh_net(width=16))
    loss = mf.supervised(fn, mf.losses.mse)
    tasks = sine_tasks(n=8, shots=50, queries=10)

    def peak(chunk_size):
        learner = mf.maml(loss, inner_lr=0.01, inner_steps=3)
        if chunk_size is not None:
            learner = mf.chunked(learner, chunk_size)
        run = learner.meta_grad
        if compiled:
            run = torch.compile(run, fullgraph=True, backend="aot_eager")
            run(params, tasks)  # compile outside the measurement
        return peak_bytes(lambda: run(params, tasks))

    whole, chunks = peak(None), peak(2)
    # measured: 1.24 MB for the 8 tasks at once, 0.31 MB in chunks of 2 (eager); 0.53 MB and
    # 0.14 MB compiled (aot_eager)
    assert chunks < whole / 2.5


@pytest.mark.compile
def test_compiled_chunked_step_with_dropout_equals_eager_with_one_graph():
    """Random draws inside the compiled chunk loop (scan) are those of the eager chunk loop."""
    fn, params = mf.pure(dropout_net(width=4, noise=0.1))
    loss = mf.supervised(fn, mf.losses.mse)
    learner = mf.stochastic(mf.chunked(mf.maml(loss, inner_lr=0.1, inner_steps=2), 2))
    opt = mf.optim.adam(1e-2)
    eager = mf.make_step(learner, opt, compile=False)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = mf.make_step(learner, opt, backend=counter)
    s_eager = s_comp = mf.init_state(learner, opt, params, seed=3)
    for seed in range(2):
        tasks = sine_tasks(n=5, seed=seed)
        s_eager, _ = eager(s_eager, tasks)
        s_comp, _ = compiled(s_comp, tasks)
        assert_equal_states(s_comp, s_eager)
    assert counter.frame_count == 1
