"""Task samplers: pure functions of an explicit ``torch.Generator`` returning ``Tasks``."""

from .._types import Tasks as Tasks
from .fewshot import ImageClasses as ImageClasses
from .fewshot import fewshot as fewshot
from .fewshot import synthetic_glyphs as synthetic_glyphs
from .fewshot import variable_fewshot as variable_fewshot
from .omniglot import omniglot as omniglot
from .sine import daml_sine as daml_sine
from .sine import sine as sine
from .sine import sinusoid as sinusoid

__all__ = [
    "ImageClasses",
    "Tasks",
    "daml_sine",
    "fewshot",
    "omniglot",
    "sine",
    "sinusoid",
    "synthetic_glyphs",
    "variable_fewshot",
]
