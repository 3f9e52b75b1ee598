"""metafunc: gradient-based meta-learning for PyTorch as pure functions.

Models are pure functions over parameter pytrees (``pure``), the inner loop is
``torch.func.grad``, a meta-batch is ``vmap``-ed, and the whole outer step is one function
compiled with ``torch.compile`` (``make_step``).

Example:
    >>> import functools
    >>> fn, params = mf.pure(mf.models.mlp([1, 40, 40, 1]))
    >>> learner = mf.maml(mf.supervised(fn, mf.losses.mse), inner_lr=0.01, inner_steps=5)
    >>> opt = mf.optim.adam(1e-3)
    >>> state = mf.init_state(learner, opt, params)
    >>> step = mf.make_step(learner, opt, compile=False)  # compiled by default
    >>> sampler = functools.partial(mf.tasks.sine, tasks=4)
    >>> state = mf.train(step, state, sampler, steps=5, progress=False)
    >>> int(state.step)
    5
"""

from . import distributed as distributed
from . import hooks as hooks
from . import losses as losses
from . import models as models
from . import optim as optim
from . import tasks as tasks
from ._inner import Loop as Loop
from ._inner import inner_loop as inner_loop
from ._learner import Batching as Batching
from ._learner import Context as Context
from ._learner import Learner as Learner
from ._learner import Losses as Losses
from ._learner import exact as exact
from ._model import eval_mode as eval_mode
from ._model import pure as pure
from ._model import stateful as stateful
from ._per_step import multi_step_weights as multi_step_weights
from ._phases import derivative_annealing as derivative_annealing
from ._phases import join_steps as join_steps
from ._state import Stateful as Stateful
from ._tree import combine as combine
from ._tree import complement as complement
from ._tree import partition as partition
from ._types import Metrics as Metrics
from ._types import Step as Step
from ._types import Tasks as Tasks
from ._types import TrainState as TrainState
from ._version import __version__ as __version__
from ._wrappers import chunked as chunked
from ._wrappers import first_order as first_order
from ._wrappers import remat as remat
from ._wrappers import stochastic as stochastic
from .algorithms import anil as anil
from .algorithms import boil as boil
from .algorithms import classifier as classifier
from .algorithms import daml as daml
from .algorithms import fomaml as fomaml
from .algorithms import imaml as imaml
from .algorithms import maml as maml
from .algorithms import mamlpp as mamlpp
from .algorithms import meta_sgd as meta_sgd
from .algorithms import protomaml as protomaml
from .algorithms import protonet as protonet
from .algorithms import reptile as reptile
from .checkpoint import load as load
from .checkpoint import save as save
from .evaluation import Evaluation as Evaluation
from .evaluation import Score as Score
from .evaluation import evaluate as evaluate
from .losses import supervised as supervised
from .step import background as background
from .step import compiled as compiled
from .step import init_state as init_state
from .step import make_step as make_step
from .step import outer_step as outer_step
from .step import seeded as seeded
from .step import validated as validated
from .train import Log as Log
from .train import train as train

__all__ = [
    "Batching",
    "Context",
    "Evaluation",
    "Learner",
    "Log",
    "Loop",
    "Losses",
    "Metrics",
    "Score",
    "Stateful",
    "Step",
    "Tasks",
    "TrainState",
    "anil",
    "background",
    "boil",
    "chunked",
    "classifier",
    "combine",
    "compiled",
    "complement",
    "daml",
    "derivative_annealing",
    "distributed",
    "eval_mode",
    "evaluate",
    "exact",
    "first_order",
    "fomaml",
    "hooks",
    "imaml",
    "init_state",
    "inner_loop",
    "join_steps",
    "load",
    "losses",
    "make_step",
    "maml",
    "mamlpp",
    "meta_sgd",
    "models",
    "multi_step_weights",
    "optim",
    "outer_step",
    "partition",
    "protomaml",
    "protonet",
    "pure",
    "remat",
    "reptile",
    "save",
    "seeded",
    "stateful",
    "stochastic",
    "supervised",
    "tasks",
    "train",
    "validated",
]
