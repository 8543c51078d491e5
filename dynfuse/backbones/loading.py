"""Checked state-dict loading for backbones: the names this package has always exported.

The implementation lives in :mod:`dynfuse.checkpoints` (one reader and one checked loader for every
checkpoint in dynfuse); :func:`read_state_dict` keeps its path-or-mapping signature on top of it and
:func:`load_state_dict_checked` is :func:`dynfuse.checkpoints.load_state_checked`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch

from ..checkpoints import (
    MODEL_STATE_KEYS,
    OPTIONAL_SUFFIXES,
    CheckpointMismatchError,
    LoadReport,
    extract_model_state,
    read_checkpoint,
)
from ..checkpoints import load_state_checked as load_state_dict_checked

__all__ = [
    "OPTIONAL_SUFFIXES",
    "CheckpointMismatchError",
    "LoadReport",
    "load_state_dict_checked",
    "read_state_dict",
]


def read_state_dict(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    map_location: str | torch.device = "cpu",
    nested_keys: Iterable[str] = MODEL_STATE_KEYS,
) -> dict[str, torch.Tensor]:
    """Return a flat ``{key: tensor}`` mapping from a checkpoint path or an in-memory mapping.

    Wrapped checkpoints (``{"epoch": ..., "state_dict": {...}, "optimizer": ...}``) are unwrapped
    via the first of ``nested_keys`` present and a DDP ``module.`` prefix is removed
    (:func:`dynfuse.checkpoints.extract_model_state`). Files are read with
    :func:`dynfuse.checkpoints.read_checkpoint` (``weights_only=True``: no pickled code runs).

    Raises:
        CheckpointNotFoundError: a missing path (also a FileNotFoundError).
        CheckpointError: a file that is not a checkpoint, or anything that is not a mapping of
            tensors (also a ValueError).
        TypeError: ``source`` is neither a path nor a mapping.
    """
    if isinstance(source, (str, os.PathLike)):
        obj: Mapping[str, object] = read_checkpoint(source, map_location=map_location)
        where = f"checkpoint {os.fspath(source)!r}"
    elif isinstance(source, Mapping):
        obj = source
        where = "the given mapping"
    else:
        raise TypeError(f"source must be a path or a mapping (state dict), got {type(source).__name__}")
    return extract_model_state(obj, nested_keys=nested_keys, where=where)
