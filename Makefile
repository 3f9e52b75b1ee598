# Two entry points, each sets everything up from a fresh clone:
#   make demo   -> the blog's MAML sine experiment (metafunc train)
#   make test   -> lint + mypy + the whole test suite
#   make test-fast -> lint + the suite without the compile-heavy and slow tests (the edit loop)
#   make bench  -> the benchmarks (benchmarks/README.md), with the optional alternatives
#   make docs   -> the API reference from the docstrings into site/ (warnings are errors)
#   make typecheck -> mypy, strict on the whole package (part of make test)
#   make gpu-check -> on a CUDA machine: CUDA tests and GPU benchmarks, one JSON (benchmarks/gpu.sh);
#                  it uses that machine's Python and torch ($(PYTHON)), not the venv
# TORCH picks the torch build: the default resolves to the CPU wheel on a machine that has one
# locally and to PyPI's CUDA wheel on a Linux GPU machine; override it for another CUDA version,
# e.g. make demo TORCH="torch==2.13.0 --index-url <PyTorch's index for your CUDA>".
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint setup bench gpu-check clean docs typecheck

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/metafunc train --out out/maml-sine

bench: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m benchmarks

gpu-check:
	PYTHON=$(PYTHON) bash benchmarks/gpu.sh

lint: setup
	$(BIN)/ruff check metafunc tests benchmarks
	$(BIN)/ruff format --check metafunc tests benchmarks

# one pytest worker per core (pytest-xdist), each file on one worker (its compiled steps shared),
# one thread each: the tests are mostly compiling, which a second thread does not speed up
test: lint typecheck
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --dist loadfile

# the edit loop: everything but the tests that compile a step or run for seconds
test-fast: lint typecheck
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --dist loadfile -m "not compile and not slow"

# -W: warnings are errors; -n: every cross-reference must resolve (docs/conf.py lists the
# exceptions); -E: read every docstring afresh
docs: setup
	$(BIN)/python -m sphinx -b html -W --keep-going -n -q -E docs site

typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out site
