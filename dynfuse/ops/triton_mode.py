"""Whether the Triton backend can run in this process, decided once when dynfuse is imported.

This module is cheap to import (it does not import Triton): ``import dynfuse`` must not pull in
Triton, ``torch._inductor`` or ``torch._dynamo``. The Triton custom ops are registered by importing
:mod:`dynfuse.ops.triton_backend`, which :func:`dynfuse.ops.dynamic_fuse` does on its first call
that runs the Triton backend (eager, or while ``torch.compile`` traces it); :func:`load_triton_ops`
does it explicitly (e.g. before loading an exported program that calls ``torch.ops.dynfuse``).

``TRITON_INTERPRET`` is read here once: with ``TRITON_INTERPRET=1`` in the environment when the
process starts, Triton's kernels run in its CPU interpreter on CPU tensors (slow; for tests). Set or
unset it before starting Python: changing it later is refused when the kernels are first loaded.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

#: The ``triton`` package is installed (looked up once: torch.compile cannot trace importlib).
TRITON_INSTALLED: bool = importlib.util.find_spec("triton") is not None
#: Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1`` when dynfuse was imported).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available() -> bool:
    """True when Triton is installed and there is a device it can run on here.

    That is a CUDA GPU, or any machine when ``TRITON_INTERPRET=1`` (the CPU interpreter).
    """
    return TRITON_INSTALLED and (INTERPRET or torch.cuda.is_available())


def check_triton_usable(device: torch.device) -> None:
    """Raise a RuntimeError that names the problem when ``backend="triton"`` cannot run on ``device``."""
    if not TRITON_INSTALLED:
        raise RuntimeError(
            "backend='triton' needs the 'triton' package, which is not installed; "
            "install dynfuse[triton] or use backend='torch'"
        )
    if device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            f"backend='triton' runs on CUDA tensors (or any tensors when the process starts with "
            f"TRITON_INTERPRET=1), got tensors on {device}; use backend='torch' or 'auto'"
        )


def load_triton_ops() -> ModuleType:
    """Import the Triton backend, registering ``torch.ops.dynfuse.fusion_forward`` / ``_backward``.

    Idempotent. Imports Triton (and, through ``torch.library.triton_op``, parts of torch's compiler),
    which takes about a second, so it happens on first use rather than at ``import dynfuse``.
    """
    if not TRITON_INSTALLED:
        check_triton_usable(torch.device("cuda"))
    from . import triton_backend

    return triton_backend
