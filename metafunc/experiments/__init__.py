"""The project's applications, on top of the library: the blog's MAML and DAML sine demos, the
few-shot classification run and the published sine-regression table.

Each is ``run(config) -> result``: it takes a frozen config, returns data (the trained state,
histories, scores, timings) and prints, plots and writes nothing but the checkpoints its config
asks for; the ``metafunc`` command (:mod:`metafunc.cli`) prints and plots. The library never
imports this package.
"""

from .algorithms import ALGORITHMS as ALGORITHMS
from .algorithms import build_learner as build_learner

__all__ = ["ALGORITHMS", "build_learner"]
