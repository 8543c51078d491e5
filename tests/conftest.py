import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Keep CPU tests predictable on the 2-core CI machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
