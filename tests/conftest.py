import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Keep CPU tests predictable on the 2-core CI machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Triton decides once per process whether its kernels run compiled or in the CPU interpreter (from
# TRITON_INTERPRET at start-up), so the interpreter tier is its own process:
#     TRITON_INTERPRET=1 pytest -m interpreter
# (the Makefile's `test` target runs it after the main suite). A process started without the variable
# deselects the interpreter tests.
INTERPRETER_TIER = "TRITON_INTERPRET=1 python -m pytest -m interpreter"
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def pytest_collection_modifyitems(config, items):
    if _INTERPRET:
        return
    tier = [item for item in items if item.get_closest_marker("interpreter")]
    if not tier:
        return
    if (config.getoption("markexpr") or "").strip() == "interpreter":
        raise pytest.UsageError(
            f"the interpreter tier needs TRITON_INTERPRET=1 from the start of the process: {INTERPRETER_TIER}"
        )
    config.hook.pytest_deselected(items=tier)
    items[:] = [item for item in items if not item.get_closest_marker("interpreter")]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Small CPU workloads run faster and steadier on one intra-op thread when cores are shared."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
