"""One file per algorithm, each a factory returning a :class:`metafunc.Learner`."""

from .maml import fomaml as fomaml
from .maml import maml as maml

__all__ = ["fomaml", "maml"]
