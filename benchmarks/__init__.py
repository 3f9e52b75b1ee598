"""metafunc's benchmarks: one full outer step against the alternatives, each implementation in
its own fresh process (``python -m benchmarks --help``; see benchmarks/README.md)."""
