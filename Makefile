# Two entry points, both from a fresh clone: `make demo` (the main job) and `make test` (the whole suite).
# The venv pins torch/torchvision to the builds this machine type has on disk (see ../shared/ENVIRONMENT.md);
# the project and all its extras are installed in one pip command so pip never swaps the torch build, within the
# known-good versions of constraints.txt (pip's resolver otherwise backtracks to an unbuildable ninja sdist).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.trtopt-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast lint bench bench-gate clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[models,dev,edge,modelopt]' $(TORCH_PINS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/trtopt demo --out runs/demo --force

test: $(STAMP)
	$(BIN)/ruff check trtopt tests benchmarks
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/ruff check trtopt tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check trtopt tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_resnet18.py

# Latency regression gate against the committed baseline for this machine type (exit 1 on a regression).
bench-gate: $(STAMP)
	$(BIN)/python benchmarks/regression_suite.py --check

clean:
	rm -rf runs .pytest_cache
