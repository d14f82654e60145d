# The two commands: `make demo` (set up, then run the main job on the embedded synthetic dataset) and
# `make test` (set up, then run the test suite). Both create .venv when missing and reinstall only when
# pyproject.toml changed, so a second run spends seconds on setup.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sam3lite-installed
# torch 2.14.1 / torchvision 0.29.1 install from local disk here; a GPU host may override, e.g.
#   make test TORCH_SPEC="torch==2.11.0 torchvision==0.26.0"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= pipeline,serve,dev,vendor,bench
DEMO_DIR ?= .sam3lite-demo
PYTEST_ARGS ?=

.PHONY: setup lint format test test-all demo ui parity bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

setup: $(STAMP)

# ruff: lint rules and the formatter's check (`make format` rewrites); CI runs it before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything, slow tests included (several GiB of memory, minutes of CPU).
test-all: setup
	$(BIN)/python -m pytest -m '' $(PYTEST_ARGS)

# Full-size parity with the upstream model (slow: minutes, ~10 GiB): same outputs on one 1008 px image and two
# prompts within 1e-4, and our exported sam3 checkpoint loading into the upstream builder with no missing key.
parity: setup
	SAM3LITE_REQUIRE_VENDOR=1 $(BIN)/python -m pytest -m slow -k "full_size or upstream_builder" -v $(PYTEST_ARGS)

demo: setup
	DEMO_DIR=$(DEMO_DIR) $(BIN)/python -m sam3lite_pipeline.demo

# The Dagster UI (webserver + daemon: sensors, schedules, the run queue) on the demo's instance and storage.
# SIGINT/SIGTERM are reset first: started from a script with `&`, dagster dev would inherit SIGINT ignored and
# could then only be stopped with SIGKILL, leaving its webserver, daemon and code servers behind.
ui: setup
	mkdir -p $(DEMO_DIR)/dagster_home && cp deploy/dagster.yaml $(DEMO_DIR)/dagster_home/dagster.yaml
	DAGSTER_HOME=$(abspath $(DEMO_DIR))/dagster_home SAM3LITE_HOME=$(abspath $(DEMO_DIR)) $(BIN)/python -c \
		'import os, signal, sys; [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)]; os.execv(sys.argv[1], sys.argv[1:])' \
		$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build dist *.egg-info

# On a CUDA host, with no network: the CUDA tests, torchrun on the GPUs with fp16 and a bf16 resume, the sam3
# training step against the vendor's (scripts/gpu_check.sh; at most 8 minutes). PYTHON=... picks the interpreter.
gpu-check:
	bash scripts/gpu_check.sh
