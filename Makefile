# One-command set-up for a fresh machine: `make demo` (the main job) and `make test` (the test suite)
# both create .venv, install torch first (pinned), then dynfuse with its extras.
# Tiers: `make test` = the fast tier (not slow, not gpu) + the Triton interpreter tier;
# `make test-all` = every CPU test, slow ones included (what CI runs, after `make check`).
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo quickstart test test-all test-interpreter lint typecheck docs check bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev,timm,triton,compare,hub,docs]"
	touch $@

demo: install
	$(PY) examples/train_dff.py --dataset synthetic --overwrite

quickstart: install
	$(PY) examples/quickstart.py

# The Triton interpreter tier is its own pytest process: Triton fixes its mode (compiled or CPU
# interpreter) once per process, from TRITON_INTERPRET at start-up; the main run deselects it.
test: install
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)
	$(MAKE) test-interpreter

test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) test-interpreter

test-interpreter: install
	TRITON_INTERPRET=1 $(PY) -m pytest $(PYTEST_ARGS) -m interpreter

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Every gate CI applies before the tests: lint, format, types, the documentation site.
check: lint typecheck docs

bench: install
	$(PY) benchmarks/bench_fusion.py
