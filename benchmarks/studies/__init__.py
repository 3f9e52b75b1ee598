"""One-off studies beside the fair harness, each started one way:
``python -m benchmarks.studies.<name> [--help]``.

- ``step_variants``: the compiled step built several ways, timed side by side in one process;
- ``memory``: memory and time of long inner loops, iMAML and chunked meta-batches;
- ``nonfinite_guard``: what the non-finite guard costs per compiled step;
- ``distributed``: data-parallel throughput against the number of processes (torchrun).

Importing a study runs nothing; each runs from its ``main()``.
"""
