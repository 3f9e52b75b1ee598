"""Checkpoints: a flat ``{key path: tensor}`` file, written atomically, loaded against a template.

A checkpoint is a plain ``dict`` of CPU tensors saved with ``torch.save``: one entry per leaf
of the :class:`~metafunc.TrainState`, keyed by its path (``state.meta['0.weight']``,
``state.opt_state.mu['0.weight']``, ``state.step``), plus ``metafunc.format`` (the format
version) and, when a generator is given, ``metafunc.generator`` (its ``get_state()``, a uint8
tensor). No Python class is pickled, so ``torch.load(path, weights_only=True)`` reads it, and
the dict can be handed as is to ``safetensors.torch.save_file``. The tree structure is not
stored: :func:`load` rebuilds it from a template state, and checks every key, shape and dtype.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from pathlib import Path

import torch

from . import _tree
from ._types import TrainState

FORMAT = 1
_FORMAT_KEY = "metafunc.format"
_GENERATOR_KEY = "metafunc.generator"


def save(
    path: str | os.PathLike[str], state: TrainState, *, generator: torch.Generator | None = None
) -> Path:
    """Write ``state`` (and the state of ``generator``) to ``path`` atomically.

    The file is written to a temporary file in the same directory, flushed to disk, then
    renamed over ``path`` (``os.replace``), so a crash or a kill during the write leaves the
    previous checkpoint whole; at worst a ``.<name>.*.tmp`` file is left beside it.

    Args:
        path: the checkpoint file; its directory must exist.
        state: from :func:`metafunc.init_state` or a step.
        generator: the task stream's generator, saved so that a resumed run draws the same
            tasks as an uninterrupted one.

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> mf.save("run/checkpoint.pt", state, generator=g)
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"save: state must be a metafunc.TrainState (got {type(state).__name__})")
    _check_generator("save", generator)
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"save: the directory of path must exist (got {str(path)!r}, whose directory "
            f"{str(path.parent)!r} does not exist)"
        )
    flat: dict[str, torch.Tensor] = {}
    for key, leaf in _tree.named_leaves(state, "state"):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"save: {key} must be a tensor (got {type(leaf).__name__})")
        flat[key] = leaf.detach().to("cpu", copy=True).contiguous()
    flat[_FORMAT_KEY] = torch.tensor(FORMAT)
    if generator is not None:
        flat[_GENERATOR_KEY] = generator.get_state()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(flat, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def load(
    path: str | os.PathLike[str],
    *,
    like: TrainState,
    generator: torch.Generator | None = None,
) -> TrainState:
    """The state saved at ``path``, rebuilt with the tree structure of ``like``.

    Every leaf of ``like`` must have an entry in the file with the same shape and dtype, and
    the file must hold nothing else; the first mismatch is named. Tensors are placed on the
    device of the corresponding leaf of ``like``. If ``generator`` is given, its state is set
    (in place) to the one saved with the checkpoint, so the task stream continues where it
    stopped.

    Args:
        path: a file written by :func:`save`.
        like: a state of the same model and optimizer, e.g. a fresh ``mf.init_state(...)``.
        generator: the task stream's generator to restore.

    Returns:
        the saved :class:`~metafunc.TrainState`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a metafunc checkpoint, another format version, a missing or extra
            entry, a shape mismatch, or no generator state when ``generator`` is given.
        TypeError: a dtype mismatch, or arguments of the wrong type.

    Example:
        >>> state = mf.load("run/checkpoint.pt", like=mf.init_state(learner, opt, params), generator=g)
    """
    if not isinstance(like, TrainState):
        raise TypeError(
            f"load: like must be a metafunc.TrainState to load into, e.g. from init_state "
            f"(got {type(like).__name__})"
        )
    _check_generator("load", generator)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"load: path must be a checkpoint file (got {str(path)!r}, no such file)"
        )
    try:
        flat = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"load: {str(path)!r} is not a readable metafunc checkpoint ({first_line})"
        ) from e
    if not isinstance(flat, dict) or _FORMAT_KEY not in flat:
        raise ValueError(
            f"load: {str(path)!r} is not a metafunc checkpoint (no {_FORMAT_KEY!r} entry)"
        )
    version = int(flat[_FORMAT_KEY])
    if version != FORMAT:
        raise ValueError(
            f"load: {str(path)!r} has checkpoint format {version}; this metafunc reads format {FORMAT}"
        )
    named = _tree.named_leaves(like, "state")
    leaves = []
    for key, ref in named:
        if key not in flat:
            raise ValueError(
                f"load: {str(path)!r} has no entry {key}, which like has (was it saved with "
                "another model or optimizer?)"
            )
        t = flat[key]
        if not isinstance(t, torch.Tensor):
            raise ValueError(
                f"load: {key} must be a tensor (got {type(t).__name__} in {str(path)!r})"
            )
        if t.shape != ref.shape:
            raise ValueError(
                f"load: {key} must have shape {tuple(ref.shape)} as in like (got shape "
                f"{tuple(t.shape)} in {str(path)!r})"
            )
        if t.dtype != ref.dtype:
            raise TypeError(
                f"load: {key} must have dtype {ref.dtype} as in like (got {t.dtype} in {str(path)!r})"
            )
        leaves.append(t.to(ref.device))
    extra = sorted(set(flat) - {key for key, _ in named} - {_FORMAT_KEY, _GENERATOR_KEY})
    if extra:
        raise ValueError(
            f"load: {str(path)!r} holds {extra[0]}, which like does not have (was it saved with "
            "another model or optimizer?)"
        )
    if generator is not None:
        if _GENERATOR_KEY not in flat:
            raise ValueError(
                f"load: a generator was given but {str(path)!r} holds no generator state "
                "(it was saved without generator=)"
            )
        generator.set_state(flat[_GENERATOR_KEY])
    return _tree.unflatten(like, leaves)


def _check_generator(where: str, generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{where}: generator must be a torch.Generator or None (got {type(generator).__name__})"
        )
