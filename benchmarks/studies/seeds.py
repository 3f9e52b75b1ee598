"""How much the demo's result varies with the seed: ``metafunc train`` (MAML on the blog's sine,
its defaults) for several seeds, one after another in this process, each scored on the dense
grid after adapting on 4 points (1000 draws per phase, as the demo reports it).

    OMP_NUM_THREADS=1 python -m benchmarks.studies.seeds [--seeds 0 1 2 3 4]
        [--out docs/maml-sine-seeds.json]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from . import write


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.seeds",
        description="the demo's dense-grid MSE for several seeds",
    )
    cli.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    cli.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = cli.parse_args(argv)
    import torch

    from metafunc.evaluation import mean_ci95
    from metafunc.experiments import sine

    torch.set_num_threads(1)
    runs = {}
    for seed in args.seeds:
        config = sine.SineConfig(seed=seed, progress=False, **sine.ALGO_DEFAULTS["maml"])
        t = time.perf_counter()
        result = sine.run(config)
        mse = {}
        for phase, label in ((0.0, "0"), (math.pi, "pi")):
            mean, half = mean_ci95(result.grid[phase].mse)
            mse[label] = {"mean": mean, "ci95": half}
        runs[str(seed)] = {"grid_mse": mse, "wall_s": time.perf_counter() - t}
        print(f"seed {seed}: grid MSE b=0 {mse['0']['mean']:.4f}, b=pi {mse['pi']['mean']:.4f}")
    means = [m["mean"] for r in runs.values() for m in r["grid_mse"].values()]
    print(f"over the seeds and phases: {min(means):.4f} to {max(means):.4f}")
    if args.out is not None:
        record = {
            "what": "metafunc train (MAML on the blog's sine, its defaults) for several seeds: "
            "dense-grid MSE after adapting on 4 points, mean and 95% half-width over 1000 draws",
            "torch": torch.__version__,
            "threads": 1,
            "steps": sine.ALGO_DEFAULTS["maml"]["steps"],
            "runs": runs,
            "range": [min(means), max(means)],
        }
        write(args.out, "seeds", sys.argv[1:] if argv is None else argv, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
