"""The Omniglot dataset (Lake et al., 2015) from a local folder; nothing is downloaded.

Get ``python/images_background.zip`` and ``python/images_evaluation.zip`` from the Omniglot
repository, https://github.com/brendenlake/omniglot, and unzip both into one folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import _checks
from .fewshot import ImageClasses

PARTS = ("images_background", "images_evaluation")


def omniglot(
    root: str | Path,
    *,
    split: str,
    train_classes: int = 1200,
    rotations: bool = True,
    image_size: int = 28,
    seed: int = 0,
) -> ImageClasses:
    """Omniglot for N-way K-shot learning, with the MAML paper's split and augmentation.

    The characters of ``images_background/`` and ``images_evaluation/`` (each laid out as
    ``<alphabet>/<character>/*.png``) are pooled and shuffled with ``seed``; the first
    ``train_classes`` (1200 in Vinyals et al. 2016 and Finn et al. 2017) form the ``"train"``
    split and the rest (423 of 1623) the ``"test"`` split. With ``rotations`` each character
    also appears rotated by 90°, 180° and 270°, as new classes (4x the classes). Images are
    resized to ``image_size`` (Lanczos) and inverted so that ink is 255.

    Args:
        root: the folder holding ``images_background/`` and ``images_evaluation/``.
        split: ``"train"`` or ``"test"``.

    Returns:
        an :class:`ImageClasses` with ``uint8`` images ``(classes, 20, 1, size, size)``,
        loaded once (the whole train split at 28x28 with rotations is 75 MB).
    """
    where = "omniglot"
    if split not in ("train", "test"):
        raise ValueError(f"{where}: split must be 'train' or 'test' (got {split!r})")
    train_classes = _checks.integer(where, "train_classes", train_classes, minimum=1)
    rotations = _checks.boolean(where, "rotations", rotations)
    image_size = _checks.integer(where, "image_size", image_size, minimum=1)
    root = Path(root)
    missing = [p for p in PARTS if not (root / p).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{where}: root must be a folder holding {' and '.join(f'{p}/' for p in PARTS)} "
            f"(unzip python/images_background.zip and images_evaluation.zip from "
            f"https://github.com/brendenlake/omniglot into it); {root} has no "
            f"{' or '.join(f'{p}/' for p in missing)}"
        )
    characters = sorted(d for p in PARTS for d in _characters(root / p))
    if len(characters) <= train_classes:
        raise ValueError(
            f"{where}: train_classes must leave some characters for the test split; {root} "
            f"has {len(characters)} characters (got train_classes={train_classes})"
        )
    order = torch.randperm(len(characters), generator=torch.Generator().manual_seed(seed))
    chosen = order[:train_classes] if split == "train" else order[train_classes:]
    chars = [characters[i] for i in sorted(chosen.tolist())]
    loaded = [_load_character(d, image_size) for d in chars]
    counts = {len(x) for x in loaded}
    if len(counts) != 1:
        raise ValueError(
            f"{where}: every character folder must hold the same number of drawings (Omniglot "
            f"has 20); {root} has characters with {sorted(counts)}"
        )
    images = torch.stack(loaded)
    names = [str(d.relative_to(root).as_posix()) for d in chars]
    if rotations:
        images = torch.cat([images.rot90(k, dims=(-2, -1)) for k in range(4)])
        names = [f"{n}/rot{90 * k}" for k in range(4) for n in names]
    return ImageClasses(images.contiguous(), tuple(names))


def _characters(part: Path) -> list[Path]:
    """The ``<alphabet>/<character>/`` folders of ``part``, refused if none holds a drawing."""
    found = [d for d in part.glob("*/*") if d.is_dir()]
    if any(next(d.glob("*.png"), None) for d in found):
        return found
    first = min(part.rglob("*.png"), default=None)
    if first is None:
        inside = sorted(f"{c.name}/" if c.is_dir() else c.name for c in part.iterdir())
        listing = ", ".join(inside[:5]) + (", ..." if len(inside) > 5 else "")
        what = f"it holds no .png file at any depth (it holds: {listing or 'nothing'})"
    else:
        rel = first.relative_to(part)
        what = (
            f"the first drawing found, {rel.as_posix()}, is {len(rel.parts) - 1} folder(s) deep "
            "where 2 are expected"
        )
    raise ValueError(
        f"omniglot: found no <alphabet>/<character>/ folders of .png drawings under {part}; {what}"
    )


def _load_character(folder: Path, size: int) -> torch.Tensor:
    from PIL import Image  # here, not at the top: import metafunc must not load PIL

    files = sorted(folder.glob("*.png"))
    if not files:
        raise ValueError(
            f"omniglot: every character folder must hold .png drawings; {folder} has none"
        )
    drawings = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L").resize((size, size), Image.Resampling.LANCZOS)
                pixels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
            raise ValueError(
                f"omniglot: cannot read the drawing {f} ({type(e).__name__}: {e}); replace it "
                "with a good copy from the Omniglot zip files"
            ) from e
        drawings.append(255 - pixels.reshape(1, size, size))
    return torch.stack(drawings)
