"""Data parallel over the tasks of a meta-batch, with ``torch.distributed`` (gloo on CPU, NCCL
on GPU) launched by ``torchrun``.

Every rank draws the same full meta-batch from the same generator (so the task stream,
checkpoints and resume are those of one process), takes its contiguous shard of the tasks,
computes the meta-gradient of its shard, and the ranks average the meta-gradients (and the
metrics) with one ``all_reduce`` per dtype. With equal shards the mean of the shard means is the
mean over the whole meta-batch, so every rank applies the same update a single process would
(up to the order of float additions) and the states stay identical.

:func:`data_parallel` wraps a learner this way; :func:`metafunc.train` logs, shows progress and
writes checkpoints on rank 0 only.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

# Imported before any process group exists: this module evaluates group.WORLD into its
# functions' default arguments when first imported, and the functional collectives (through
# FSDP) and Dynamo import it lazily. Imported after init, it would keep the group, and gloo's
# worker threads, alive past destroy_process_group into interpreter shutdown.
import torch.distributed.nn.functional

from . import _checks, _tree
from ._learner import Learner, Losses, check_learner
from ._types import Tasks


def active() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process logs, shows progress and writes files (rank 0)."""
    return rank() == 0


def init(backend: str | None = None, *, timeout: float = 60.0) -> bool:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``); do nothing outside torchrun.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; ``None`` picks NCCL when CUDA is available, else gloo.
            With NCCL the process's CUDA device is set to ``cuda:LOCAL_RANK``.
        timeout: seconds any collective (and the start-up rendezvous) may wait for the other
            ranks before it raises, so a rank that hangs or vanishes ends the job instead of
            blocking it.

    Returns:
        ``True`` if a process group is (now) initialised.

    Example:
        >>> mf.distributed.init()  # True under torchrun --nproc_per_node 2 script.py
        False
        >>> mf.distributed.rank(), mf.distributed.world_size(), mf.distributed.is_main()
        (0, 1, True)
    """
    _checks.positive_number("distributed.init", "timeout", timeout)
    if backend not in (None, "gloo", "nccl"):
        raise ValueError(
            f"distributed.init: backend must be 'gloo', 'nccl' or None (got {backend!r})"
        )
    if dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return True


def data_parallel(learner: Learner) -> Learner:
    """``learner`` spread over the ranks of the process group: each rank adapts its contiguous
    share of every meta-batch, and meta-gradient, meta-loss and metrics are averaged over the
    ranks with a functional ``all_reduce`` that ``torch.compile`` traces into the step's one
    graph. Every rank passes the same full meta-batch; its size must be a multiple of the world
    size. On the first call with a new signature the ranks check that they agree on the task
    count and the parameter count. Without a process group of more than one rank (no torchrun)
    the learner is returned as it is, so one script runs both ways.

    Example:
        >>> mf.distributed.init()
        False
        >>> mf.distributed.data_parallel(learner) is learner  # one process: as it is
        True
        >>> step = mf.make_step(mf.distributed.data_parallel(learner), opt, compile=False)
        >>> int(step(state, tasks)[0].step)
        1
    """
    check_learner("distributed.data_parallel", learner)
    if not active():
        return learner
    # A name, not the process group: a compiled graph that read dist.group.WORLD would keep the
    # group (and gloo's worker threads) alive past destroy_process_group, into shutdown.
    world = dist.group.WORLD
    assert world is not None  # active(): a process group exists
    group = world.group_name
    rule, check_tasks = learner.rule, learner.check

    def sharded(learner: Learner, meta: Any, tasks: Tasks) -> tuple[Any, Losses]:
        # the rank is a constant of the compiled graph; the all-reduce is traced into it
        grads, losses = all_reduce_mean(rule(learner, meta, shard(tasks)), group)
        return grads, losses

    def check(where: str, tasks: Tasks, params: Any) -> None:
        check_tasks(where, tasks, params)
        shard(tasks, where)  # refuses a meta-batch that does not split evenly
        check_same(
            where,
            _tree.leaves(params)[0].device,
            tasks=_tree.leaves(tasks.support)[0].shape[0],
            parameters=sum(t.numel() for t in _tree.leaves(params)),
        )

    return learner._replace(rule=sharded, check=check)


def shard(tasks: Tasks, where: str = "step") -> Tasks:
    """This rank's contiguous slice of the tasks; the task count must divide by the world size."""
    world, r = world_size(), rank()
    n = _tree.leaves(tasks.support)[0].shape[0]
    if n % world:
        raise ValueError(
            f"{where}: the meta-batch must split evenly over the {world} ranks "
            f"(got {n} tasks); use a meta-batch that is a multiple of {world}"
        )
    k = n // world
    return Tasks(*_tree.map(lambda t: t[r * k : (r + 1) * k], tuple(tasks)))


def all_reduce_mean(tree: Any, group: str) -> Any:
    """The mean over ranks of every tensor of ``tree`` (integers floored), one ``all_reduce`` per
    dtype; functional (no in-place op), so ``torch.compile`` traces it into the caller's graph.

    ``group`` is the process group's name (``dist.group.WORLD.group_name``), read before
    compiling: the graph then holds a string, not the process group, and
    ``destroy_process_group`` can join gloo's worker threads before the interpreter exits."""
    leaves = _tree.leaves(tree)
    out: list[Any] = list(leaves)
    world = world_size()
    for dtype in dict.fromkeys(t.dtype for t in leaves):
        idx = [i for i, t in enumerate(leaves) if t.dtype == dtype]
        flat = torch.cat([leaves[i].reshape(-1) for i in idx])
        flat = funcol.all_reduce(flat, "sum", group)  # type: ignore[arg-type]
        # an integer leaf (a model state's count of batches) is the same on every rank
        flat = flat / world if dtype.is_floating_point else flat // world
        for i, piece in zip(idx, flat.split([leaves[i].numel() for i in idx]), strict=True):
            out[i] = piece.reshape(leaves[i].shape)
    return _tree.unflatten(tree, out)


def check_same(where: str, device: torch.device, **values: int) -> None:
    """Raise a ``ValueError`` if ``values`` differ between ranks, naming each rank's value."""
    mine = torch.tensor(list(values.values()), dtype=torch.int64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(everyone, mine)
    for name, column in zip(values, torch.stack(everyone).T.cpu(), strict=True):
        if not bool((column == column[0]).all()):
            raise ValueError(
                f"{where}: every rank must run the same configuration, but {name} differs "
                f"between ranks (rank: value {dict(enumerate(column.tolist()))})"
            )


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (one small ``all_reduce``)."""
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if active():
        dist.barrier()
