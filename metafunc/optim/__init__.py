"""Functional optimizers in optax's shape: ``(init, update)`` records of pure functions on pytrees.

``update(grads, state, params) -> (updates, state)`` is pure and ``apply_updates(params,
updates)`` adds the updates, so an optimizer step traces into one compiled graph with the
meta-gradient, and the same optimizers serve as differentiable inner optimizers under
``torch.func.grad`` and ``vmap``. Pieces compose with :func:`chain`; every learning rate is a
number or a schedule of the update count. The arithmetic follows ``torch.optim.SGD``, ``Adam``
and ``AdamW`` operation for operation; the tests compare them in float64.

Example:
    >>> schedule = mf.optim.warmup_cosine_decay_schedule(0.0, 1e-3, 500, 20_000)
    >>> opt = mf.optim.apply_if_finite(
    ...     mf.optim.chain(mf.optim.clip_by_global_norm(1.0), mf.optim.adamw(schedule))
    ... )
"""

from ._adam import AdamState as AdamState
from ._adam import adam as adam
from ._adam import adamw as adamw
from ._base import EmptyState as EmptyState
from ._base import Optimizer as Optimizer
from ._base import Schedule as Schedule
from ._base import apply_updates as apply_updates
from ._base import chain as chain
from ._clip import clip as clip
from ._clip import clip_by_global_norm as clip_by_global_norm
from ._guard import ApplyIfFiniteState as ApplyIfFiniteState
from ._guard import apply_if_finite as apply_if_finite
from ._guard import is_guarded as is_guarded
from ._guard import last_finite as last_finite
from ._schedules import constant_schedule as constant_schedule
from ._schedules import cosine_decay_schedule as cosine_decay_schedule
from ._schedules import exponential_decay as exponential_decay
from ._schedules import linear_schedule as linear_schedule
from ._schedules import piecewise_constant_schedule as piecewise_constant_schedule
from ._schedules import warmup_cosine_decay_schedule as warmup_cosine_decay_schedule
from ._sgd import SGDState as SGDState
from ._sgd import sgd as sgd

__all__ = [
    "AdamState",
    "ApplyIfFiniteState",
    "EmptyState",
    "Optimizer",
    "SGDState",
    "Schedule",
    "adam",
    "adamw",
    "apply_if_finite",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "is_guarded",
    "last_finite",
    "linear_schedule",
    "piecewise_constant_schedule",
    "sgd",
    "warmup_cosine_decay_schedule",
]
