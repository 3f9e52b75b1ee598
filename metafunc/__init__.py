"""metafunc: gradient-based meta-learning for PyTorch as pure functions.

Models are pure functions over parameter pytrees (``pure``), the inner loop is
``torch.func.grad``, a meta-batch is ``vmap``-ed, and the whole outer step is one function
compiled with ``torch.compile`` (``make_step``).
"""

from . import distributed as distributed
from . import losses as losses
from . import models as models
from . import optim as optim
from . import tasks as tasks
from ._inner import inner_loop as inner_loop
from ._learner import Learner as Learner
from ._model import eval_mode as eval_mode
from ._model import pure as pure
from ._types import Tasks as Tasks
from ._types import TrainState as TrainState
from .algorithms import anil as anil
from .algorithms import daml as daml
from .algorithms import fomaml as fomaml
from .algorithms import imaml as imaml
from .algorithms import maml as maml
from .algorithms import meta_sgd as meta_sgd
from .algorithms import reptile as reptile
from .checkpoint import load as load
from .checkpoint import save as save
from .evaluation import Evaluation as Evaluation
from .evaluation import Score as Score
from .evaluation import evaluate as evaluate
from .losses import supervised as supervised
from .step import init_state as init_state
from .step import make_step as make_step
from .train import Log as Log
from .train import train as train

__version__ = "0.1.0"

__all__ = [
    "Evaluation",
    "Learner",
    "Log",
    "Score",
    "Tasks",
    "TrainState",
    "anil",
    "daml",
    "distributed",
    "eval_mode",
    "evaluate",
    "fomaml",
    "imaml",
    "init_state",
    "inner_loop",
    "load",
    "losses",
    "make_step",
    "maml",
    "meta_sgd",
    "models",
    "optim",
    "pure",
    "reptile",
    "save",
    "supervised",
    "tasks",
    "train",
]
