"""The data types shared by every module."""

from __future__ import annotations

from typing import Any, NamedTuple


class Tasks(NamedTuple):
    """A meta-batch: ``support`` (adapt on it) and ``query`` (score the adapted model on it).

    Each is a pytree of tensors, e.g. ``(x, y)``, whose leading dimension indexes tasks and
    whose second dimension indexes examples within a task.
    """

    support: Any
    query: Any
