"""The one registry of the algorithms the applications run, by their command-line names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import metafunc as mf

# The supervised family: learner(loss, head, inner_lr, inner_steps). DAML needs a model with
# features and a learned loss; the sine experiment builds it.
_SUPERVISED: dict[str, Callable[..., mf.Learner]] = {
    "maml": lambda loss, head, **inner: mf.maml(loss, **inner),
    "fomaml": lambda loss, head, **inner: mf.fomaml(loss, **inner),
    "reptile": lambda loss, head, **inner: mf.reptile(loss, **inner),
    "meta-sgd": lambda loss, head, **inner: mf.meta_sgd(loss, **inner),
    "anil": lambda loss, head, **inner: mf.anil(loss, head=head, **inner),
    "imaml": lambda loss, head, **inner: mf.imaml(loss, **inner),
}
ALGORITHMS = (*_SUPERVISED, "daml")


def build_learner(
    algo: str, loss: Callable[[Any, Any], Any], *, head: str, inner_lr: float, inner_steps: int
) -> mf.Learner:
    """The learner of a supervised algorithm; ``head`` names the layer ANIL adapts."""
    if algo not in _SUPERVISED:
        raise ValueError(
            f"build_learner: algo must be one of {list(_SUPERVISED)} (got {algo!r}; DAML runs "
            "on the DAML sine only)"
        )
    return _SUPERVISED[algo](loss, head, inner_lr=inner_lr, inner_steps=inner_steps)
