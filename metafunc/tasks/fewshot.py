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
    return _draw("fewshot", generator, dataset, tasks, ways, shots, queries, dtype, device)


def _draw(
    where: str,
    generator: torch.Generator,
    dataset: ImageClasses,
    tasks: int,
    ways: int,
    shots: int,
    queries: int,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> Tasks:
    """:func:`fewshot`'s tasks, its errors naming ``where``."""
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


def variable_fewshot(
    generator: torch.Generator,
    dataset: ImageClasses,
    *,
    tasks: int,
    ways: int | tuple[int, int] = (2, 5),
    shots: int | tuple[int, int] = (1, 5),
    queries: int = 15,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tasks:
    """Tasks of different ways and shots in one meta-batch, padded to the largest: each task
    draws its ways and its shots uniformly from the inclusive ranges ``ways`` and ``shots``
    (or takes the one number given), then its classes and images as :func:`fewshot` does.

    Every task has the same shapes whatever it drew (``max ways × max shots`` support slots,
    ``max ways × queries`` query slots, class by class), so one compiled step serves every
    meta-batch; a bool mask says which slots hold an example. Padding slots hold zero images
    and label 0, and every loss of :mod:`metafunc.losses`, :func:`metafunc.evaluate`, and the
    prototypes of :func:`metafunc.protonet` and :func:`metafunc.protomaml` ignore them:
    a padded task scores and trains exactly as it would alone. (A network whose batch
    statistics mix examples, e.g. :class:`metafunc.models.BatchNorm`, would still see the
    padding; and a classifier with a fixed head of ``max ways`` outputs keeps its unused
    classes in the softmax, as it would on the task alone.)

    Returns:
        ``Tasks(support=(x, y, mask), query=(x, y, mask))``; support ``x`` is ``(tasks,
        max_ways * max_shots, channels, height, width)``, ``y`` and ``mask`` ``(tasks,
        max_ways * max_shots)``; the query likewise with ``max_ways * queries`` slots.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> glyphs = mf.tasks.synthetic_glyphs(g, classes=10, examples=8)
        >>> tasks = mf.tasks.variable_fewshot(g, glyphs, tasks=4, ways=(2, 5), shots=(1, 3), queries=2)
        >>> (x, y, mask), _ = tasks
        >>> x.shape, mask.shape
        (torch.Size([4, 15, 1, 28, 28]), torch.Size([4, 15]))
        >>> mask.sum(dim=1).tolist()  # ways x shots examples in each task
        [2, 8, 5, 8]
    """
    where = "variable_fewshot"
    lo_ways, hi_ways = _range(where, "ways", ways)
    lo_shots, hi_shots = _range(where, "shots", shots)
    largest = _draw(where, generator, dataset, tasks, hi_ways, hi_shots, queries, dtype, device)
    n = largest.support[1].shape[0]
    task_ways = torch.randint(lo_ways, hi_ways + 1, (n, 1, 1), generator=generator)
    task_shots = torch.randint(lo_shots, hi_shots + 1, (n, 1, 1), generator=generator)
    classes = torch.arange(hi_ways)[None, :, None] < task_ways  # (tasks, ways, 1)
    support = classes & (torch.arange(hi_shots)[None, None, :] < task_shots)
    query = classes.expand(n, hi_ways, queries)

    def pad(
        part: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        x, y = part
        keep = keep.reshape(n, -1).to(y.device)
        return torch.where(keep[:, :, None, None, None], x, 0), torch.where(keep, y, 0), keep

    return Tasks(pad(largest.support, support), pad(largest.query, query))


def _range(where: str, name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    """An integer >= 1, or an inclusive range ``(low, high)`` of them, as ``(low, high)``."""
    if isinstance(value, tuple) and len(value) == 2:
        low = _checks.integer(where, f"{name}[0]", value[0], minimum=1)
        high = _checks.integer(where, f"{name}[1]", value[1], minimum=low)
        return low, high
    if isinstance(value, (tuple, list)):
        raise TypeError(
            f"{where}: {name} must be an integer or a range (low, high) of integers (got {value!r})"
        )
    value = _checks.integer(where, name, value, minimum=1)
    return value, value


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
