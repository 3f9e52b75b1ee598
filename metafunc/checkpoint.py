"""Checkpoints: a flat ``{key path: tensor}`` file, written atomically, checked on load.

A checkpoint is a plain ``dict`` of CPU tensors saved with ``torch.save``: one entry per leaf
of the saved tree (usually a :class:`~metafunc.TrainState`), keyed by its path
(``state.meta['0.weight']``, ``state.opt_state.mu['0.weight']``, ``state.step``), and entries
named ``metafunc.*``:

- ``metafunc.format``: the format version (2; format 1 files, which have no tree, digest or
  metadata, are still read with a template);
- ``metafunc.tree``: the tree's containers as JSON (UTF-8 bytes in a uint8 tensor), so that
  :func:`load` can rebuild it without a template;
- ``metafunc.digest``: SHA-256 of every other entry's name, dtype, shape and bytes, so that a
  damaged file is refused even where the zip's own CRCs were not written;
- ``metafunc.generator`` (optional): a generator's ``get_state()``;
- ``metafunc.metadata`` (optional): a JSON object, e.g. the options of the run.

No Python class is pickled, so ``torch.load(path, weights_only=True)`` reads the file and the
dict can be handed as is to ``safetensors.torch.save_file``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import pickle
import stat
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch

from . import _tree
from ._types import TrainState

FORMAT = 2
_FORMAT_KEY = "metafunc.format"
_TREE_KEY = "metafunc.tree"
_DIGEST_KEY = "metafunc.digest"
_GENERATOR_KEY = "metafunc.generator"
_METADATA_KEY = "metafunc.metadata"
_OWN_KEYS = {_FORMAT_KEY, _TREE_KEY, _DIGEST_KEY, _GENERATOR_KEY, _METADATA_KEY}
_NAME_MAX = 255  # bytes in a file name on common file systems (ext4, XFS, btrfs, APFS)
_FULL = "; the disk (or the user's quota) may be full"
_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def save(
    path: str | os.PathLike[str],
    state: Any,
    *,
    generator: torch.Generator | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``state`` (and the state of ``generator``, and ``metadata``) to ``path`` atomically.

    The file is written beside ``path`` under a fixed temporary name (``.<name>.tmp``), flushed
    to disk, then renamed over ``path``, so a crash or a kill during the write leaves the
    previous checkpoint whole; a temporary file left by a kill is replaced by the next save. If
    ``path`` is a symbolic link, the file it points to is written and the link kept.

    Args:
        path: the checkpoint file; its folder must exist and be writable.
        state: a pytree of tensors (dicts, lists, tuples, named tuples, ``None``), usually the
            :class:`~metafunc.TrainState` from :func:`metafunc.init_state` or a step. Every
            floating-point element must be finite.
        generator: the task stream's generator, saved so that a resumed run draws the same
            tasks as an uninterrupted one.
        metadata: a JSON object (dict with str keys; values str, int, finite float, bool,
            ``None``, list or dict) stored with the state, e.g. the run's options; read it back
            with :func:`~metafunc.checkpoint.read_metadata`. NaN and infinity are refused, not written.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        FloatingPointError: a leaf holds NaN or infinity (nothing is written).
        TypeError: a leaf is not a tensor, or an argument has the wrong type.
        ValueError: metadata with NaN or infinity, which strict JSON cannot hold.
        FileNotFoundError, PermissionError, ValueError: a path that cannot be written, found
            before any work (see :func:`~metafunc.checkpoint.check_writable`).
        OSError: the write failed (e.g. the disk is full); ``path`` keeps what it held.

    Example:
        >>> mf.save("run/checkpoint.pt", state, generator=g, metadata={"seed": 0})
        PosixPath('run/checkpoint.pt')
    """
    _check_generator("save", generator)
    target = check_writable(path, "save")
    flat = _flatten(state, path)
    flat[_FORMAT_KEY] = torch.tensor(FORMAT)
    flat[_TREE_KEY] = _json_tensor(_describe(state))
    if generator is not None:
        flat[_GENERATOR_KEY] = generator.get_state()
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise TypeError(
                f"save: metadata must be a dict or None (got {type(metadata).__name__})"
            )
        _check_json(metadata, "metadata")
        flat[_METADATA_KEY] = _json_tensor(metadata)
    flat[_DIGEST_KEY] = _digest(flat)
    _write(flat, target, path)
    return Path(path)


def load(
    path: str | os.PathLike[str],
    *,
    like: Any = None,
    generator: torch.Generator | None = None,
) -> Any:
    """The tree saved at ``path``; with ``like``, rebuilt into the structure of ``like``.

    The file is verified first: a damaged file (a flipped bit, a truncated write) is refused,
    never loaded as a different state. Without ``like`` the saved tree comes back on the CPU
    as it was saved, except that named tuples other than :class:`~metafunc.TrainState` become
    dicts keyed by their field names (an ``AdamState`` becomes ``{"count": ..., "mu": ...,
    "nu": ...}``), since no class is stored in the file. With ``like``, every leaf of ``like``
    must have an entry in the file with the same shape and dtype, and the file must hold
    nothing else; the first mismatch is named; tensors are placed on the device of the
    corresponding leaf of ``like``. If ``generator`` is given, its state is set (in place) to
    the one saved with the checkpoint, so the task stream continues where it stopped.

    Args:
        path: a file written by :func:`save`.
        like: ``None``, or a tree of the same model and optimizer to load into, e.g. a fresh
            ``mf.init_state(...)`` (required for files of format 1).
        generator: the task stream's generator to restore.

    Returns:
        the saved tree (a :class:`~metafunc.TrainState` if one was saved).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a damaged file, not a metafunc checkpoint, another format version, a
            file holding NaN or infinity (which :func:`save` never writes, but format 1 files
            may), a missing or extra entry, a shape mismatch, a generator state that does not
            fit ``generator``, or no generator state when ``generator`` is given.
        TypeError: a dtype mismatch, or arguments of the wrong type.

    Example:
        >>> path = mf.save("run/checkpoint.pt", state, generator=g)
        >>> state = mf.load(path, like=mf.init_state(learner, opt, params), generator=g)
        >>> state = mf.load(path)  # for inference: state.meta, on the CPU
        >>> type(state).__name__, sorted(state.opt_state)  # the AdamState comes back a dict
        ('TrainState', ['count', 'mu', 'nu'])
    """
    _check_generator("load", generator)
    if like is not None:
        _check_like(like)
    flat, version = _read(path)
    _check_finite(flat, path, version)
    if like is None:
        if version == 1:
            raise ValueError(
                f"load: {str(path)!r} has checkpoint format 1, which stores no tree structure; "
                "pass like= (a state of the same model and optimizer, e.g. from init_state) "
                "to load it"
            )
        tree = _rebuild(flat, path)
    else:
        tree = _fill(like, flat, path)
    if generator is not None:
        _restore(generator, flat, path)
    return tree


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``metadata`` saved with the checkpoint at ``path``, or ``None`` if none was.

    The whole file is verified, as by :func:`load`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a damaged file or not a metafunc checkpoint.

    Example:
        >>> path = mf.save("run/checkpoint.pt", state, metadata={"seed": 0, "meta_batch": 25})
        >>> mf.checkpoint.read_metadata(path)
        {'seed': 0, 'meta_batch': 25}
    """
    flat, _ = _read(path)
    if _METADATA_KEY not in flat:
        return None
    metadata: dict[str, Any] = _json_entry(flat, _METADATA_KEY, path)  # save wrote a dict
    return metadata


def check_writable(path: str | os.PathLike[str], where: str) -> Path:
    """Raise now, not after a run, if a checkpoint cannot be written to ``path``.

    Checks that ``path`` (or the file a symbolic link ``path`` points to) is not a folder or
    another non-regular file, that its name fits the file system, and that its folder exists
    and is writable by this process (``os.access``; a full disk is found only by writing).

    Args:
        path: the checkpoint file.
        where: the caller's name, which starts each message, e.g. ``"train"``.

    Returns:
        The file that a save writes, ``path`` or the target of the link ``path``.

    Raises:
        TypeError: ``path`` is not a str or path.
        FileNotFoundError: the folder of ``path`` does not exist.
        PermissionError: the folder is not writable.
        ValueError: ``path`` is a folder, a special file, or has too long a name.

    Example:
        >>> mf.checkpoint.check_writable("run/checkpoint.pt", "train")
        PosixPath('run/checkpoint.pt')
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{where}: the checkpoint path must be a str or path (got {path!r})")
    shown = str(path)
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    via = "" if target == Path(path) else f" (a link to {str(target)!r})"
    size = len(os.fsencode(target.name))
    if size > _NAME_MAX:
        raise ValueError(
            f"{where}: the checkpoint's file name is {size} bytes; file systems allow "
            f"{_NAME_MAX} (got {shown!r})"
        )
    if target.is_dir():
        raise ValueError(
            f"{where}: the checkpoint path must be a file, not a folder (got {shown!r}{via}, "
            f"a folder); e.g. {str(Path(path, 'checkpoint.pt'))!r}"
        )
    if target.exists() and not target.is_file():
        raise ValueError(
            f"{where}: the checkpoint path must be a regular file (got {shown!r}{via}, "
            "a special file)"
        )
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{where}: the folder of the checkpoint must exist (got {shown!r}{via}, whose "
            f"folder {str(folder)!r} does not exist); create it first"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{where}: the folder of the checkpoint must be writable (got {shown!r}{via}, "
            f"whose folder {str(folder)!r} this user cannot write to)"
        )
    return target


def _flatten(state: Any, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for key, leaf in _tree.named_leaves(state, "state"):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"save: {key} must be a tensor (got {type(leaf).__name__})")
        if leaf.is_meta:
            raise TypeError(f"save: {key} must hold data (got a tensor on the meta device)")
        flat[key] = leaf.detach().to("cpu", copy=True).contiguous()
    if not flat:
        raise ValueError(f"save: state must hold at least one tensor (got {state!r})")
    bad = next((k for k, t in flat.items() if not _user_state(k) and not _finite(t)), None)
    if bad is not None:
        raise FloatingPointError(
            f"save: {bad} is not finite (it holds NaN or infinity); refusing to write it, so "
            f"{str(path)!r} keeps what it holds"
        )
    return flat


def _finite(t: torch.Tensor) -> bool:
    if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
        return True
    if t.is_complex():
        return bool(torch.isfinite(t).all())
    # aminmax propagates NaN and shows an infinity, in one pass with no temporary tensor
    # (10x faster on the CPU than isfinite(t).all())
    lo, hi = torch.aminmax(t)
    return bool(lo.isfinite() & hi.isfinite())


def _user_state(key: str) -> bool:
    """``state.extra`` is the user's own bookkeeping, not checked for finiteness (a best loss
    may start at inf)."""
    return key.startswith("state.extra")


def _check_finite(
    flat: dict[str, torch.Tensor], path: str | os.PathLike[str], version: int
) -> None:
    """Refuse a file with a non-finite entry: save refuses to write one, but format 1 files (and
    files written by other programs) were never checked."""
    key = next(
        (
            key
            for key, t in flat.items()
            if key not in _OWN_KEYS
            and not _user_state(key)
            and isinstance(t, torch.Tensor)
            and not _finite(t)
        ),
        None,
    )
    if key is None:
        return
    origin = (
        " It has checkpoint format 1, written by an older metafunc whose save did not refuse "
        "non-finite states."
        if version == 1
        else ""
    )
    raise ValueError(
        f"load: {str(path)!r} holds non-finite values: {key} is the first entry with NaN or "
        f"infinity, so the state cannot be used.{origin} Resume from an earlier checkpoint, "
        "or start afresh"
    )


def _describe(state: Any) -> Any:
    try:
        return _tree.describe(state, "state")
    except TypeError as e:
        raise TypeError(f"save: {e}") from None


def _json_tensor(value: Any) -> torch.Tensor:
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8)


def _check_json(value: Any, where: str) -> None:
    """Refuse what strict JSON cannot hold, or would read back as something else."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"save: {where} must have str keys, as JSON objects do (got {k!r})")
            _check_json(v, f"{where}[{k!r}]")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"save: {where} must be finite; strict JSON has no {value} (got {value})")
    elif value is not None and not isinstance(value, (str, int, float)):
        raise TypeError(
            f"save: {where} must be a str, int, float, bool, None, list or dict, which JSON "
            f"reads back as written (got {type(value).__name__}: {value!r})"
        )


def _digest(flat: dict[str, torch.Tensor]) -> torch.Tensor:
    h = hashlib.sha256()
    for key in sorted(flat):
        if key == _DIGEST_KEY:
            continue
        t = flat[key]
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        data = t.contiguous().reshape(-1)
        if data.numel() == 1 and data.stride(0) != 1:  # contiguous, yet view(uint8) refuses it
            data = data.clone(memory_format=torch.contiguous_format)
        # a numpy array is a buffer; the stubs for Python 3.10 have no Buffer type to say so
        h.update(data.view(torch.uint8).numpy())  # type: ignore[arg-type]
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8)


class _FdWriter:
    """A file for ``torch.save`` that writes every byte or raises ``OSError``.

    A Python file object can report a short write (a full disk), which ``torch.save`` turns
    into ``RuntimeError: ... unexpected pos``; this keeps the operating system's error.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.error: OSError | None = None  # torch may raise its own error on top of this one

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as e:
            self.error = self.error or e
            raise
        return size

    def flush(self) -> None:
        pass


def _write(flat: dict[str, torch.Tensor], target: Path, path: str | os.PathLike[str]) -> None:
    tmp = target.parent / _temporary_name(target.name)
    writer: _FdWriter | None = None
    fd: int | None = None
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a write that was killed
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            writer = _FdWriter(fd)
            torch.save(flat, cast(BinaryIO, writer))  # torch needs only write and flush
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):  # keep the permissions of the old file
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(tmp, target)
    except BaseException as e:
        if fd is not None:  # ours to remove (another process's if the create itself failed)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        error = writer.error if writer is not None and writer.error else e
        if isinstance(error, OSError):
            full = _FULL if error.errno in _FULL_ERRNOS else ""
            raise OSError(
                f"save: could not write the checkpoint {str(path)!r} "
                f"({error.strerror or error}){full}; the file keeps what it held before"
            ) from error
        raise


def _temporary_name(name: str) -> str:
    """``.<name>.tmp``, shortened with a hash of ``name`` when it would pass the name limit."""
    tmp = f".{name}.tmp"
    if len(os.fsencode(tmp)) <= _NAME_MAX:
        return tmp
    tag = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    keep = os.fsencode(name)[: _NAME_MAX - len(f"..{tag}.tmp")]
    return f".{os.fsdecode(keep)}.{tag}.tmp"


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], int]:
    """The verified entries of the checkpoint at ``path`` and its format version."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load: path must be a str or path (got {type(path).__name__})")
    p = Path(path)
    shown = repr(str(path))
    if not p.exists():
        raise FileNotFoundError(f"load: path must be a checkpoint file (got {shown}, no such file)")
    if p.is_dir():
        raise ValueError(f"load: path must be a checkpoint file (got {shown}, a folder)")
    if not p.is_file():
        raise ValueError(f"load: path must be a checkpoint file (got {shown}, a special file)")
    if p.stat().st_size == 0:
        raise ValueError(f"load: {shown} is empty (0 bytes), not a checkpoint; it cannot be used")
    _check_archive(p, shown)
    try:
        flat = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        marker = "WeightsUnpickler error: "
        if marker not in str(e):
            raise ValueError(
                f"load: {shown} is not a readable metafunc checkpoint and cannot be used "
                f"({_first_line(e)})"
            ) from e
        detail = str(e).split(marker, 1)[1].split(". ", 1)[0]
        raise ValueError(
            f"load: {shown} is not a metafunc checkpoint and cannot be used: it holds Python "
            f"objects other than tensors, which load does not unpickle ({detail})"
        ) from e
    except Exception as e:  # whatever the unpickler says, the file cannot be used
        raise ValueError(
            f"load: {shown} is not a readable metafunc checkpoint and cannot be used "
            f"({_first_line(e)})"
        ) from e
    if not isinstance(flat, dict) or not isinstance(flat.get(_FORMAT_KEY), torch.Tensor):
        raise ValueError(f"load: {shown} is not a metafunc checkpoint (no {_FORMAT_KEY!r} entry)")
    if _DIGEST_KEY in flat:  # checked first: a damaged entry must not be read as anything
        stored = flat[_DIGEST_KEY]
        if (
            any(not isinstance(v, torch.Tensor) for v in flat.values())
            or stored.dtype != torch.uint8
            or not torch.equal(_digest(flat), stored)
        ):
            raise ValueError(
                f"load: {shown} is damaged and cannot be used: its content does not match the "
                "SHA-256 digest stored when it was saved"
            )
    version = flat[_FORMAT_KEY]
    if version.numel() != 1 or version.is_floating_point() or int(version) not in (1, FORMAT):
        raise ValueError(
            f"load: {shown} has checkpoint format {version.tolist()}; this metafunc reads "
            f"formats 1 and {FORMAT}"
        )
    if int(version) == 1:
        return flat, 1
    for key in (_TREE_KEY, _DIGEST_KEY):
        if not isinstance(flat.get(key), torch.Tensor):
            raise ValueError(f"load: {shown} is damaged and cannot be used (no {key!r} entry)")
    return flat, FORMAT


def _check_archive(p: Path, shown: str) -> None:
    """Verify the CRC-32 of every zip member, which torch.load does not."""
    member = None
    try:
        with zipfile.ZipFile(p) as archive:
            for info in archive.infolist():
                if info.CRC == 0:  # torch.serialization.set_crc32_options(False) wrote none
                    continue
                member = info.filename
                with archive.open(info) as f:
                    while f.read(1 << 20):
                        pass
    except Exception as e:  # a damaged zip fails in many ways; each means the same here
        what = (
            f"is damaged and cannot be used: its entry {member!r} fails the zip integrity check"
            if member is not None
            else "is truncated, damaged or not a checkpoint, and cannot be used: it is not a zip "
            "archive as torch.save writes"
        )
        raise ValueError(f"load: {shown} {what} ({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _json_entry(flat: dict[str, torch.Tensor], key: str, path: str | os.PathLike[str]) -> Any:
    t = flat[key]
    try:
        if t.dtype != torch.uint8 or t.ndim != 1:
            raise ValueError(f"a {t.dtype} tensor of shape {tuple(t.shape)}")
        return json.loads(bytes(t.tolist()).decode())
    except ValueError as e:
        raise ValueError(
            f"load: {str(path)!r} is not a valid metafunc checkpoint: its {key!r} entry must "
            f"be UTF-8 JSON in a uint8 vector ({e})"
        ) from None


def _rebuild(flat: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> Any:
    """The saved tree from its JSON description; named tuples other than TrainState become
    dicts, as their classes are not stored."""
    shown = repr(str(path))
    used: set[str] = set()

    def build(node: Any) -> Any:
        if node is None:
            return None
        if isinstance(node, str):
            if node not in flat or node in _OWN_KEYS or node in used:
                raise ValueError(f"the tree names an entry {node!r} that the file lacks")
            used.add(node)
            return flat[node]
        if isinstance(node, dict) and len(node) == 1 and "dict" in node:
            return {k: build(c) for k, c in node["dict"]}
        if isinstance(node, dict) and len(node) == 1 and "list" in node:
            return [build(c) for c in node["list"]]
        if isinstance(node, dict) and len(node) == 1 and "tuple" in node:
            return tuple(build(c) for c in node["tuple"])
        if isinstance(node, dict) and set(node) == {"namedtuple", "fields"}:
            fields = {f: build(c) for f, c in node["fields"]}
            # files written before TrainState had its last fields hold fewer of them
            if (
                node["namedtuple"] == "TrainState"
                and tuple(fields) == TrainState._fields[: len(fields)]
            ):
                return TrainState(**fields)
            return fields
        raise ValueError(f"unknown tree node {str(node)[:80]}")

    try:
        tree = build(_json_entry(flat, _TREE_KEY, path))
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"load: {shown} is not a valid metafunc checkpoint: its {_TREE_KEY!r} entry does "
            f"not describe its tensors ({e})"
        ) from None
    unplaced = sorted(set(flat) - _OWN_KEYS - used)
    if unplaced:
        raise ValueError(
            f"load: {shown} is not a valid metafunc checkpoint: {unplaced[0]} is an entry "
            f"without a place in its {_TREE_KEY!r} entry"
        )
    return tree


def _fill(like: Any, flat: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> Any:
    """The file's tensors in the tree structure of ``like``, every leaf checked."""
    shown = repr(str(path))
    named = _tree.named_leaves(like, "state")
    leaves = []
    for key, ref in named:
        if key not in flat:
            raise ValueError(
                f"load: {shown} has no entry {key}, which like has (was it saved with "
                "another model or optimizer?)"
            )
        t = flat[key]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"load: {key} must be a tensor (got {type(t).__name__} in {shown})")
        if t.shape != ref.shape:
            raise ValueError(
                f"load: {key} must have shape {tuple(ref.shape)} as in like (got shape "
                f"{tuple(t.shape)} in {shown})"
            )
        if t.dtype != ref.dtype:
            raise TypeError(
                f"load: {key} must have dtype {ref.dtype} as in like (got {t.dtype} in {shown})"
            )
        leaves.append(t.to(ref.device))
    extra = sorted(set(flat) - {key for key, _ in named} - _OWN_KEYS)
    if extra:
        raise ValueError(
            f"load: {shown} holds {extra[0]}, which like does not have (was it saved with "
            "another model or optimizer?)"
        )
    return _tree.unflatten(like, leaves)


def _check_like(like: Any) -> None:
    named = _tree.named_leaves(like, "like")
    bad = [(key, leaf) for key, leaf in named if not isinstance(leaf, torch.Tensor)]
    if bad or not named:
        got = f"{type(bad[0][1]).__name__} at {bad[0][0]}" if bad else "no tensor in it"
        raise TypeError(
            "load: like must be a tree of tensors to load into, e.g. a state from init_state, "
            f"or None to load the saved tree as it is (got {got})"
        )


def _restore(generator: torch.Generator, flat: dict[str, torch.Tensor], path: Any) -> None:
    shown = repr(str(path))
    if _GENERATOR_KEY not in flat:
        raise ValueError(
            f"load: a generator was given but {shown} holds no generator state "
            "(it was saved without generator=)"
        )
    saved, now = flat[_GENERATOR_KEY], generator.get_state()
    if not isinstance(saved, torch.Tensor) or saved.dtype != now.dtype or saved.shape != now.shape:
        got = (
            f"{saved.dtype} of shape {tuple(saved.shape)}"
            if isinstance(saved, torch.Tensor)
            else type(saved).__name__
        )
        raise ValueError(
            f"load: the generator state in {shown} must fit the {generator.device.type} "
            f"generator given, a {now.dtype} of shape {tuple(now.shape)} (got {got}: damaged, or "
            "saved from another kind of generator)"
        )
    try:
        generator.set_state(saved)
    except RuntimeError as e:
        raise ValueError(
            f"load: the generator state in {shown} is not valid ({_first_line(e)})"
        ) from e


def _check_generator(where: str, generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{where}: generator must be a torch.Generator or None (got {type(generator).__name__})"
        )
