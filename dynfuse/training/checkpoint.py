"""Atomic, validated training checkpoints with everything ``--resume`` needs to continue exactly.

A checkpoint is a dict saved with ``torch.save`` and readable with ``torch.load(weights_only=True)``
(no pickled code): the model/optimizer/scheduler/scaler state dicts, the number of finished
epochs and iterations, every rank's RNG states (python, numpy, torch CPU and CUDA), the data-order
state (seed and epoch of the sampler) and the run's configuration. Files are written to a
temporary file in the destination folder and moved into place with ``os.replace``, so a crash at
any moment leaves either the previous complete checkpoint or the new complete one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..checkpoints import CheckpointError, load_state_checked, read_checkpoint
from ..checkpoints import extract_model_state as _extract_model_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "atomic_torch_save",
    "capture_rng_state",
    "extract_model_state",
    "load_checkpoint",
    "load_model_state",
    "restore_rng_state",
]

CHECKPOINT_FORMAT = "dynfuse-train-checkpoint"
CHECKPOINT_VERSION = 1
_REQUIRED_KEYS = (
    "format",
    "version",
    "model",
    "optimizer",
    "scheduler",
    "epoch",
    "iteration",
    "rng",
    "sampler",
    "config",
)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`dynfuse.atomic.atomic_write`): a temp
    file in the same folder, fsync, rename; on any error the previous file at ``path`` is left
    untouched and the temp file removed."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (``weights_only``-loadable)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)  # noqa: NPY002
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states captured by :func:`capture_rng_state` (CUDA states only where present)."""
    try:
        py_version, py_internal, py_gauss = state["python"]
        random.setstate((int(py_version), tuple(int(v) for v in py_internal), py_gauss))
        npst = state["numpy"]
        keys = npst["keys"].numpy().astype(np.uint32)
        np.random.set_state(  # noqa: NPY002 (the global state is what we restore)
            (npst["name"], keys, int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"]))
        )
        torch.set_rng_state(state["torch"].cpu())
        cuda_states = state.get("cuda") or []
        if cuda_states and torch.cuda.is_available():
            n = min(len(cuda_states), torch.cuda.device_count())
            for i in range(n):
                torch.cuda.set_rng_state(cuda_states[i].cpu(), i)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint RNG state is malformed: {exc}") from exc


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and validate a training checkpoint written by the dynfuse trainer.

    The file is read by :func:`dynfuse.checkpoints.read_checkpoint` (one message for every file
    that is not a checkpoint); this adds the training format's checks.

    Raises:
        CheckpointError: the file is missing, unreadable/corrupt/truncated, not a dynfuse training
            checkpoint, of an unsupported version, or lacks required entries.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location=map_location)
    fmt = ckpt.get("format")
    if fmt != CHECKPOINT_FORMAT:
        hint = ""
        if "state_dict" in ckpt or all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            hint = " (it looks like bare model weights: use them for prediction, not --resume)"
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {fmt!r}, expected {CHECKPOINT_FORMAT!r}{hint}"
        )
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has version {ckpt.get('version')!r}, this dynfuse reads "
            f"version {CHECKPOINT_VERSION}"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks required entries {missing}")
    if not isinstance(ckpt["model"], Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r}: 'model' is not a state dict")
    return ckpt


def extract_model_state(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model state dict inside a dynfuse checkpoint, an authors'-style ``{"state_dict": ...}``
    dict or a bare state dict, with any DDP ``module.`` prefix removed
    (:func:`dynfuse.checkpoints.extract_model_state`)."""
    return _extract_model_state(obj)


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model`` exactly, with a readable error on any mismatch
    (:func:`dynfuse.checkpoints.load_state_checked`; missing ``num_batches_tracked`` buffers of
    old files are tolerated).

    Raises:
        CheckpointMismatchError: (a CheckpointError) listing every missing key, unexpected key and
            shape mismatch.
    """
    load_state_checked(
        model,
        state,
        what="checkpoint",
        hint=" (was it trained with another --model, --backbone or number of classes?)",
    )
