"""N-way K-shot classification: the sampler, and a synthetic glyph dataset that needs no download.

A dataset is an :class:`ImageClasses`: one ``uint8`` tensor ``(classes, examples, 1, H, W)``
(ink is 255, background 0) and a name per class. Tasks are drawn from it by :func:`fewshot`,
a pure function of an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import _checks
from .._types import Tasks


class ImageClasses(NamedTuple):
    """Images grouped by class, kept as one tensor for fast sampling.

    ``images`` is ``uint8`` of shape ``(classes, examples, channels, height, width)``;
    ``names[c]`` says where class ``c`` comes from (e.g. ``"Latin/character01/rot90"``).
    """

    images: torch.Tensor
    names: tuple[str, ...]


def fewshot(
    generator: torch.Generator,
    dataset: ImageClasses,
    *,
    tasks: int,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tasks:
    """N-way K-shot tasks: ``ways`` distinct classes per task, ``shots`` support and
    ``queries`` query images of each, no image in both; labels are 0..ways−1 in a random
    order per task (the class drawn first gets label 0).

    Args:
        generator: the only source of randomness (CPU generator).
        dataset: an :class:`ImageClasses`, e.g. from :func:`synthetic_glyphs` or
            :func:`metafunc.tasks.omniglot`.
        tasks: number of tasks in the meta-batch.
        ways, shots, queries: classes per task, support and query images per class.
        dtype, device: of the returned images, scaled to [0, 1]; labels are ``int64``.

    Returns:
        ``Tasks(support=(x, y), query=(x, y))``; support ``x`` is ``(tasks, ways * shots,
        channels, height, width)`` and ``y`` is ``(tasks, ways * shots)``, class by class;
        the query likewise with ``ways * queries`` images.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> glyphs = mf.tasks.synthetic_glyphs(g, classes=10, examples=4)
        >>> tasks = mf.tasks.fewshot(g, glyphs, tasks=3, ways=5, shots=1, queries=2)
        >>> (x, y), (xq, yq) = tasks.support, tasks.query
        >>> x.shape, y.shape, xq.shape
        (torch.Size([3, 5, 1, 28, 28]), torch.Size([3, 5]), torch.Size([3, 10, 1, 28, 28]))
        >>> sorted(y[0].tolist())  # one support image of each of the 5 labels
        [0, 1, 2, 3, 4]
    """
    where = "fewshot"
    if not isinstance(dataset, ImageClasses):
        raise TypeError(
            f"{where}: dataset must be a metafunc.tasks.ImageClasses (got {type(dataset).__name__})"
        )
    images = dataset.images
    if images.ndim != 5 or images.dtype != torch.uint8:
        raise ValueError(
            f"{where}: dataset.images must be uint8 of shape (classes, examples, channels, "
            f"height, width) (got {images.dtype} of shape {tuple(images.shape)})"
        )
    n = _checks.integer(where, "tasks", tasks, minimum=1)
    ways = _checks.integer(where, "ways", ways, minimum=1)
    shots = _checks.integer(where, "shots", shots, minimum=1)
    queries = _checks.integer(where, "queries", queries, minimum=1)
    n_classes, n_examples = images.shape[:2]
    if ways > n_classes:
        raise ValueError(
            f"{where}: ways must be at most the dataset's {n_classes} classes (got {ways})"
        )
    if shots + queries > n_examples:
        raise ValueError(
            f"{where}: shots + queries must be at most the dataset's {n_examples} examples per "
            f"class (got {shots} + {queries} = {shots + queries})"
        )
    # A random permutation per task (per class) by sorting uniform draws; keep the first few.
    classes = torch.rand(n, n_classes, generator=generator).argsort(dim=1)[:, :ways]
    picks = torch.rand(n, ways, n_examples, generator=generator).argsort(dim=2)
    picks = picks[:, :, : shots + queries]
    x = images[classes[:, :, None], picks]  # (tasks, ways, shots + queries, C, H, W)
    x = x.to(device=device, dtype=dtype) / 255
    y = torch.arange(ways, device=device).expand(n, ways)

    def part(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = hi - lo
        labels = y[:, :, None].expand(n, ways, k).reshape(n, ways * k)
        return x[:, :, lo:hi].reshape(n, ways * k, *images.shape[2:]), labels

    return Tasks(part(0, shots), part(shots, shots + queries))


def synthetic_glyphs(
    generator: torch.Generator,
    *,
    classes: int = 200,
    examples: int = 20,
    image_size: int = 28,
    strokes: int = 3,
) -> ImageClasses:
    """Procedural Omniglot-like characters: each class is a glyph of ``strokes`` random
    strokes (a pen path through 3 random points each); each example redraws it with a random
    shift, scale, rotation and per-point jitter, a random pen width, and pixel noise.

    The classes are genuinely distinct (a fresh random glyph each) while examples of a
    class vary, so an N-way K-shot learner must generalise from few examples — with no
    download, for the demo, the benchmarks and the tests.

    Returns:
        an :class:`ImageClasses` of ``uint8`` images ``(classes, examples, 1, size, size)``.

    Example:
        >>> glyphs = mf.tasks.synthetic_glyphs(torch.Generator().manual_seed(0), classes=10)
        >>> glyphs.images.shape, glyphs.images.dtype, len(glyphs.names)
        (torch.Size([10, 20, 1, 28, 28]), torch.uint8, 10)
    """
    where = "synthetic_glyphs"
    c = _checks.integer(where, "classes", classes, minimum=1)
    e = _checks.integer(where, "examples", examples, minimum=1)
    size = _checks.integer(where, "image_size", image_size, minimum=4)
    s = _checks.integer(where, "strokes", strokes, minimum=1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    # Glyph: control points in [-0.7, 0.7]^2, 3 per stroke -> 2 segments per stroke.
    points = (rand(c, 1, s, 3, 2) * 2 - 1) * 0.7
    # Per example: rotation up to ±15°, scale 0.85–1.15, shift ±0.1, jitter ±0.06 per point.
    angle = (rand(c, e, 1) * 2 - 1) * math.radians(15)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.cat([cos, -sin], -1), torch.cat([sin, cos], -1)], -2)
    scale = 0.85 + 0.3 * rand(c, e, 1, 1, 1)
    shift = (rand(c, e, 1, 1, 2) * 2 - 1) * 0.1
    pts = points + (rand(c, e, s, 3, 2) * 2 - 1) * 0.06
    pts = scale * torch.einsum("ceij,cesqj->cesqi", rot, pts) + shift
    a, b = pts[:, :, :, :-1].reshape(c, e, -1, 2), pts[:, :, :, 1:].reshape(c, e, -1, 2)
    # Distance from each pixel centre to each segment; ink falls off with it.
    axis = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    pix = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    ab = (b - a)[:, :, :, None]  # (c, e, segments, 1, 2)
    ap = pix - a[:, :, :, None]  # (c, e, segments, pixels, 2)
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    dist = (ap - t[..., None] * ab).norm(dim=-1).amin(dim=2)  # (c, e, pixels)
    width = (1.5 + rand(c, e, 1)) / size  # pen half-width 1.5 to 2.5 pixels
    ink = (1.5 - dist / width).clamp(0, 1) + 0.1 * torch.randn(
        c, e, size * size, generator=generator, dtype=torch.float64
    )
    images = (ink.clamp(0, 1) * 255).round().to(torch.uint8).reshape(c, e, 1, size, size)
    return ImageClasses(images, tuple(f"glyph{i:04d}" for i in range(c)))
