"""Task samplers: pure functions of an explicit ``torch.Generator`` returning ``Tasks``."""

from .._types import Tasks as Tasks
from .sine import daml_sine as daml_sine
from .sine import sine as sine
from .sine import sinusoid as sinusoid

__all__ = ["Tasks", "daml_sine", "sine", "sinusoid"]
