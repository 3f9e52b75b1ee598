#!/usr/bin/env bash
# The GPU check in one command (make gpu-check): the CUDA tests and the GPU benchmarks, one JSON
# with the device name in benchmarks/results/gpu-check.json (benchmarks/gpu.py says what runs).
#
#   bash benchmarks/gpu.sh              on a CUDA machine; under 8 minutes on an H100/H200
#   bash benchmarks/gpu.sh --dry-run    the same stages on a CPU at tiny sizes (the tests run it)
#
# It uses the Python in $PYTHON, else .venv/bin/python, else python3, with the torch installed
# there: it never installs torch. What metafunc and the benchmark need and that Python lacks
# (optree, tqdm, numpy, pytest, optax) is installed from benchmarks/wheels/ when that folder
# exists (for a machine without internet: fill it beforehand with `pip download -d
# benchmarks/wheels ...` for that machine's Python), else from the package index, constrained
# to the versions already installed so that torch and JAX stay as they are. metafunc itself is
# used from this checkout (PYTHONPATH), not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
dry_run=0
for arg in "$@"; do
  if [ "$arg" = --dry-run ]; then dry_run=1; fi
done

if ! "$py" -c "import torch" 2>/dev/null; then
  echo "gpu.sh: $py has no torch; this check uses the installed torch and never installs one" >&2
  exit 1
fi
missing=$("$py" - <<'PY'
import importlib.util

need = {"optree": "optree>=0.13", "tqdm": "tqdm>=4.60", "numpy": "numpy", "pytest": "pytest>=8",
        "optax": "optax>=0.2"}
print(" ".join(spec for module, spec in need.items() if importlib.util.find_spec(module) is None))
PY
)
if [ -n "$missing" ]; then
  if [ "$dry_run" = 1 ]; then
    echo "gpu.sh: dry run, not installing: $missing"
  else
    echo "gpu.sh: installing $missing"
    constraints=$(mktemp)
    # every installed package stays at its version (torch, JAX, numpy): nothing is replaced
    "$py" -m pip freeze --exclude-editable | grep -v ' @ ' > "$constraints" || true
    source_args=()
    if [ -d benchmarks/wheels ]; then source_args=(--no-index --find-links benchmarks/wheels); fi
    # shellcheck disable=SC2086  # $missing is a list of requirements
    "$py" -m pip install --quiet ${source_args[@]+"${source_args[@]}"} -c "$constraints" $missing ||
      echo "gpu.sh: could not install all of: $missing (what needs them fails or is skipped)" >&2
    rm -f "$constraints"
  fi
fi
if ! "$py" -c "import optree, tqdm, numpy" 2>/dev/null; then
  echo "gpu.sh: metafunc needs optree, tqdm and numpy, and $py still lacks one of them" >&2
  exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the script keeps its own 420 s limit; this is the backstop (SIGINT: the JSON so far stays)
exec timeout --signal=INT --kill-after=20 470 "$py" -m benchmarks.gpu "$@"
