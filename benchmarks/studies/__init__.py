"""One-off studies beside the fair harness, each started one way:
``python -m benchmarks.studies.<name> [--help]``.

- ``step_variants``: the compiled step built several ways, timed side by side in one process;
- ``eager``: the eager step beside torch.func by hand, with and without the work it reports;
- ``memory``: memory and time of long inner loops, iMAML and chunked meta-batches;
- ``nonfinite_guard``: what the non-finite guard costs per compiled step;
- ``distributed``: data-parallel throughput against the number of processes (torchrun);
- ``evaluation``: ``mf.evaluate`` compiled against eager on new few-shot tasks;
- ``startup``: first calls cold and warm, and the changes a notebook makes in one process;
- ``background``: time to N steps from a cold start, eager, compiled and compiled in the background;
- ``seeds``: the demo's result for several seeds.

Importing a study runs nothing; each runs from its ``main()``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any


def write(path: Path, study: str, argv: list[str], record: dict[str, Any]) -> None:
    """Write a study's ``record`` as JSON to ``path``, with the command that reran it (``python
    -m benchmarks.studies.<study> argv...``) and the machine, and say so."""
    from ..harness import _cpu_name  # (it imports torch: not before a child times its imports)

    command = shlex.join(["python", "-m", f"benchmarks.studies.{study}", *argv])
    machine = {"cpu": _cpu_name(), "machine": platform.machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command, **machine, **record}, indent=2) + "\n")
    print(f"wrote {path}")


def child(
    study: str, argv: list[str], cache: str, threads: int = 1, tmp: str | None = None
) -> dict[str, Any]:
    """Run ``python -m benchmarks.studies.<study> argv...`` in a new process with the compile
    cache ``cache``, ``threads`` threads and, if given, the temporary folder ``tmp`` (where
    torch keeps its precompiled headers); the JSON it prints last."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": str(threads)}
    if tmp is not None:
        env["TMPDIR"] = tmp
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.studies.{study}", *argv],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{study} {shlex.join(argv)}: {done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def graphs() -> tuple[int, int]:
    """(loaded, compiled) steps of this process: compiled ahead of time (metafunc's own cache)
    or by ``torch.compile`` (torch's caches), without importing Dynamo where nothing did."""
    from metafunc import _ahead

    loaded, traced = _ahead.COUNTS["loaded"], _ahead.COUNTS["compiled"]
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is not None:
        loaded += utils.counters["dynamo_cache"]["dynamo_cache_hit"]
        traced += utils.counters["stats"]["unique_graphs"]
    return loaded, traced
