"""What a step says when the model, the loss or the data fail: the first-call probe and the
messages that name the cause, when it can be told."""

from __future__ import annotations

from pathlib import Path

import torch

from . import _tree
from . import distributed as _dist
from ._types import Step, Tasks, TrainState


def probe(step: Step, state: TrainState, tasks: Tasks) -> None:
    """Run the eager ``step`` once on copies of the state and of as few tasks as the process
    group allows (one without torchrun), so that a model or loss that cannot run as a pure
    function fails here with a message that says what it must not do, with the data it was
    given (compiled, the same mistake surfaces as a compiler message), and so that one that
    writes into its inputs or parameters in place is caught before it changes the caller's
    tensors."""
    n = min(_tree.leaves(tasks.support)[0].shape[0], _dist.world_size())
    # state.extra (the user's own, perhaps numbers and strings) is passed through untouched
    copy = _tree.map(torch.clone, state._replace(extra=None))._replace(extra=state.extra)
    few = _tree.map(lambda t: t[:n].clone(), tasks)
    watched = _tree.named_leaves(copy._replace(extra=None), "state")
    watched += _tree.named_leaves(few, "tasks")
    versions = [t._version for _, t in watched]
    try:
        with torch.no_grad():
            step(copy, few)
    except Exception as e:
        if _raised_by_metafunc(e):
            raise
        raise user_code_error(e, state, tasks) from e
    for (name, t), version in zip(watched, versions, strict=True):
        if t._version != version:
            raise ValueError(
                f"step: the model or loss wrote in place into {name} during the step; under "
                "vmap and grad they must be pure functions: compute new tensors (x = x * 2) "
                "instead of modifying the ones they are given (x *= 2, x.mul_(2), "
                "x[0] = ..., param.data.copy_(...))"
            )


_HINTS = (
    (
        ("randomness error mode",),
        "The model draws random numbers (dropout or another random operation), which a "
        "learner refuses by default: wrap it, learner = mf.stochastic(learner), and give "
        "mf.init_state a seed.",
    ),
    (
        ("error(s) in reparametrizing", "unexpected key", "missing key"),
        "The parameters do not fit the model: state.meta must hold the parameters of the model "
        "fn was made from (mf.pure), by name; a checkpoint of another model, loaded without a "
        "template, does not.",
    ),
    (
        ("inplace", "in-place", "in place"),
        "The model or loss writes in place into a tensor it was given (an input, a parameter "
        "or a buffer); under vmap and grad it must be pure: write x = x * 2, not x *= 2 or "
        "x.mul_(2).",
    ),
    (
        (".item()", "tolist", "data-dependent", "data dependent", "boolean value of tensor"),
        "The model or loss reads a tensor's value on the host (.item(), .tolist(), float(t), "
        "bool(t) or an if on a tensor); under vmap and grad values stay tensors: use "
        "torch.where instead of if.",
    ),
    (
        ("to return a scalar",),
        "The loss must return one scalar per task, e.g. the mean over the examples.",
    ),
    (
        ("shapes cannot be multiplied", "size mismatch", "must match the size", "sizes of tensors"),
        "The data does not fit the model: check the feature dimensions of the task tensors "
        "(tasks, examples, features...) against the model's input.",
    ),
    (
        ("scalar type", "same dtype", "dtype", "should be the same", "byte", "unsigned char"),
        "The data's dtype does not fit the model's: convert the inputs, e.g. x.float() for "
        "uint8 images, and keep labels int64.",
    ),
    (
        ("out of bounds", "out of range"),
        "A class label is out of range for the model's outputs (labels 0..classes-1).",
    ),
)


def user_code_error(e: Exception, state: TrainState, tasks: Tasks) -> Exception:
    """``e`` said again with the data it got and, when its cause can be told from its
    message, what to do; of ``e``'s type where that type takes a message (raise it ``from
    e``, which keeps the original traceback)."""
    text = str(e).strip() or type(e).__name__
    low = text.lower()
    hints = [hint for keys, hint in _HINTS if any(k in low for k in keys)]
    data = ", ".join(
        f"{name} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
        for name, t in _tree.named_leaves(tasks, "tasks")
    )
    message = (
        f"step: the model or loss failed on its first call with this data (state.step "
        f"{int(state.step)}; {data}): {type(e).__name__}: {text}"
    )
    if hints:
        message += " " + hints[0]
    try:
        error = type(e)(message)
    except Exception:
        return RuntimeError(message)
    return error if str(error) == message else RuntimeError(message)


def _raised_by_metafunc(e: BaseException) -> bool:
    """Whether the innermost frame of ``e`` is metafunc's own (its messages are already ours)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    here = Path(__file__).parent
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).is_relative_to(here)


def out_of_memory(e: Exception, tasks: Tasks) -> Exception:
    """``e`` (an allocation that failed) with what to do about it."""
    n = _tree.leaves(tasks.support)[0].shape[0]
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return type(e)(
        f"step: out of memory for a meta-batch of {n} tasks ({first}); vmap holds every task's "
        f"activations at once: wrap the learner to hold fewer, e.g. "
        f"mf.chunked(learner, {max(n // 4, 1)}), or use a smaller meta-batch"
    )


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )
