"""One file per algorithm, each a factory returning a :class:`metafunc.Learner`."""

from .anil import anil as anil
from .boil import boil as boil
from .daml import daml as daml
from .imaml import imaml as imaml
from .maml import fomaml as fomaml
from .maml import maml as maml
from .mamlpp import mamlpp as mamlpp
from .meta_sgd import meta_sgd as meta_sgd
from .protomaml import protomaml as protomaml
from .protonet import classifier as classifier
from .protonet import protonet as protonet
from .reptile import reptile as reptile

__all__ = [
    "anil",
    "boil",
    "classifier",
    "daml",
    "fomaml",
    "imaml",
    "maml",
    "mamlpp",
    "meta_sgd",
    "protomaml",
    "protonet",
    "reptile",
]
