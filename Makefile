# One-command set-up for a fresh machine: `make demo` (the main job) and `make test` (the test suite)
# both create .venv, install torch first (pinned), then dynfuse with its extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo quickstart test test-interpreter lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev,timm,triton,compare]"
	touch $@

demo: install
	$(PY) examples/train_dff.py --dataset synthetic

quickstart: install
	$(PY) examples/quickstart.py

# The Triton interpreter tier is its own pytest process: Triton fixes its mode (compiled or CPU
# interpreter) once per process, from TRITON_INTERPRET at start-up; the main run deselects it.
test: install
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) test-interpreter

test-interpreter: install
	TRITON_INTERPRET=1 $(PY) -m pytest $(PYTEST_ARGS) -m interpreter

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/bench_fusion.py
