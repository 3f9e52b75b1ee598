"""The benchmarks script: ``python benchmarks/bench.py [options]``, the same as ``metafunc bench``.

See benchmarks/README.md for what it measures and ``--help`` for the options.
"""

import sys

from metafunc.bench import main

if __name__ == "__main__":
    sys.exit(main())
