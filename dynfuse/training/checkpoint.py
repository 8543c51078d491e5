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

from dynfuse.atomic import atomic_write

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


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt, of another format or does not fit the run."""


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
            (npst["name"], keys, int(npst["pos"]), int(npst["has_gauss"]),
             float(npst["cached_gaussian"]))
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

    Raises:
        CheckpointError: the file is missing, unreadable/corrupt/truncated, not a dynfuse training
            checkpoint, of an unsupported version, or lacks required entries.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt archives
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} (corrupt, truncated or not a torch file): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(ckpt).__name__}, expected a dict"
        )
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
    dict or a bare state dict, with any DDP ``module.`` prefix removed."""
    if obj.get("format") == CHECKPOINT_FORMAT:
        state = obj["model"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        state = obj["state_dict"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        state = obj["model"]
    else:
        state = obj
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"model state entry {key!r} is a {type(value).__name__}, expected a tensor"
            )
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state, strict=True)`` with a readable error on any mismatch.

    Raises:
        CheckpointError: naming up to five missing keys, unexpected keys and shape mismatches.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:5]})")
        raise CheckpointError(
            "checkpoint weights do not fit the model (was it trained with another --model, "
            "--backbone or number of classes?): " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)
