"""Checkpoint files and model weights, in one place: read, unwrap, strip, load with a full report.

Every path that reads weights from disk (``create_model(pretrained_backbone=...)``,
:func:`~dynfuse.models.load_official_dff`, ``dynfuse-train --resume``, ``dynfuse-predict``) goes
through :func:`read_checkpoint`, so a file that is not a checkpoint gets one message, naming the
file and what it is instead (a folder, an empty file, text, random bytes, a truncated archive, a
pickle of Python objects), never torch's internals (``KeyError: 101``, an empty ``EOFError``).
Files are read with ``torch.load(weights_only=True)``: loading never runs pickled code.

Then :func:`extract_model_state` finds the weights in the layouts we accept (a dynfuse training
checkpoint ``{"format", "model": ...}``, ``{"state_dict": ...}`` as the DFF authors saved them,
``{"model_state_dict": ...}``, or a bare state dict), removing a DDP ``module.`` prefix
(:func:`strip_module_prefix`), and :func:`load_state_checked` copies them into a module, raising
:class:`CheckpointMismatchError` with every missing, unexpected and mis-shaped key at once.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODEL_STATE_KEYS",
    "OPTIONAL_SUFFIXES",
    "TRAINING_CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "LoadReport",
    "extract_model_state",
    "load_state_checked",
    "read_checkpoint",
    "strip_module_prefix",
]

#: The ``"format"`` entry of a dynfuse training checkpoint (``dynfuse.training.checkpoint`` writes
#: it; inference recognises it here without importing the trainer; a test keeps the two equal).
TRAINING_CHECKPOINT_FORMAT = "dynfuse-train-checkpoint"

#: Keys under which a wrapped checkpoint keeps its model weights, tried in this order.
MODEL_STATE_KEYS: tuple[str, ...] = ("state_dict", "model", "model_state_dict")

#: Buffers that older PyTorch versions did not save (BatchNorm's counter appeared in 0.4.1); files
#: without them are still complete for inference and fine-tuning.
OPTIONAL_SUFFIXES: tuple[str, ...] = ("num_batches_tracked",)

_DDP_PREFIX = "module."
_ZIP_MAGIC = b"PK"
_PICKLE_MAGIC = b"\x80"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, not a checkpoint, of another format or does not fit."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (also a ``FileNotFoundError``)."""


class CheckpointMismatchError(CheckpointError):
    """A state dict does not fit a module; the message lists every problem."""


@dataclass
class LoadReport:
    """What happened while loading: keys loaded, ignored on purpose, tolerated as missing."""

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing_optional: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading files
def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the sample is still text.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(ch.isprintable() or ch in "\t\n\r" for ch in text)


def _what_it_is(path: Path, head: bytes, exc: BaseException) -> str:
    """Describe, for a user, what a file that torch could not load is instead."""
    glob = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if glob is not None:
        return (
            f"it holds pickled Python objects ({glob.group(1)}), which a safe load "
            "(torch.load(weights_only=True)) refuses because unpickling them can run code. If you "
            "trust the file, re-save just its tensors, e.g. torch.save(torch.load(path, "
            "weights_only=False)['state_dict'], 'weights.pt')"
        )
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):  # no readable central directory: the end is missing
            return (
                "it is a zip archive that is corrupt, truncated or incomplete (an interrupted save or copy?)"
            )
        return "it is a zip archive, but not one written by torch.save"
    if head.startswith(_PICKLE_MAGIC):
        return "it is a pickle that torch cannot read: corrupt, truncated, or a plain Python pickle"
    if _looks_like_text(head):
        first = head.decode("utf-8", errors="replace").strip().splitlines()
        start = first[0][:40] if first else ""
        return f"it is a text file (starting {start!r}), not a torch checkpoint"
    return (
        "it is not a torch checkpoint: neither a torch zip archive nor a pickle "
        f"(first bytes {head[:8].hex(' ')})"
    )


def read_checkpoint(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint file with ``torch.load(weights_only=True)``; it must hold a dict.

    Args:
        path: the file.
        map_location: where tensors go (``torch.load``'s argument).

    Returns:
        The dict the file holds (tensors on ``map_location``).

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointError: ``path`` is a folder, an empty file, text, random bytes, a truncated or
            corrupt archive, a pickle that needs code to load, or holds something other than a
            dict. The message names the file and says which.
    """
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    if not path.exists():
        raise CheckpointNotFoundError(f"{where} does not exist")
    if path.is_dir():
        raise CheckpointError(f"cannot read {where}: it is a folder, not a checkpoint file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise CheckpointError(f"cannot read {where}: {exc.strerror or exc}") from exc
    if size == 0:
        raise CheckpointError(f"cannot read {where}: the file is empty (0 bytes), not a checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises KeyError, EOFError, RuntimeError, UnpicklingError ...
        raise CheckpointError(f"cannot read {where}: {_what_it_is(path, head, exc)}") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{where} holds a {type(obj).__name__}, not a dict of weights (a state dict or a checkpoint dict)"
        )
    return dict(obj)


# ---------------------------------------------------------------- finding the weights
def strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Remove the ``module.`` that ``DataParallel``/DDP put before every key (only when every key
    has it, so a model with a child literally named ``module`` is left alone)."""
    keys = list(state)
    if keys and all(isinstance(k, str) and k.startswith(_DDP_PREFIX) for k in keys):
        return {k[len(_DDP_PREFIX) :]: v for k, v in state.items()}
    return dict(state)


def extract_model_state(
    obj: Mapping[str, Any],
    *,
    nested_keys: Iterable[str] = MODEL_STATE_KEYS,
    where: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """The model's ``{key: tensor}`` inside a checkpoint dict, with any ``module.`` prefix removed.

    Accepted layouts: a dynfuse training checkpoint (weights under ``"model"``), the DFF authors'
    ``{"epoch", "state_dict", "optimizer"}``, ``{"model_state_dict": ...}`` and a bare state dict.
    The first of ``nested_keys`` that holds a mapping wins.

    Raises:
        CheckpointError: an entry is not a tensor (so this is not a state dict).
    """
    state: Mapping[str, Any] = obj
    for key in nested_keys:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            state = inner
            break
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{where} is not a state dict: entry {key!r} holds {type(value).__name__}, expected a tensor"
            )
        out[key] = value
    return strip_module_prefix(out)


# ---------------------------------------------------------------- loading into a module
def _format_list(title: str, items: list[str], limit: int = 40) -> str:
    shown = items[:limit]
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    " + "\n    ".join(shown) + more


def load_state_checked(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    ignore: Callable[[str], bool] | None = None,
    what: str = "checkpoint",
    hint: str = "",
) -> LoadReport:
    """Copy ``state_dict`` into ``module``: an exact fit up to ``ignore`` and optional keys.

    Keys for which ``ignore(key)`` is true are skipped (e.g. torchvision's ``fc.*``). Missing
    ``num_batches_tracked`` buffers are tolerated (old files lack them). Anything else missing,
    unexpected or of the wrong shape raises :class:`CheckpointMismatchError` listing all of it
    (``what`` names the source in the message, ``hint`` is appended to its first line); nothing
    is copied in that case. Values are cast to each parameter's dtype and device.
    """
    from .heads import upgrade_state_dict  # lazy: heads -> backbones -> this module

    own = module.state_dict()
    ignored = sorted(k for k in state_dict if ignore is not None and ignore(k))
    given = {k: v for k, v in state_dict.items() if not (ignore is not None and ignore(k))}
    # Files written before a head format change (version 1: a fixed head's bias under
    # learner.bias) load like current ones; keys this module already has are never renamed.
    upgraded = upgrade_state_dict(given)
    if set(upgraded) != set(given) and set(upgraded) <= set(own):
        given = upgraded
    missing = [k for k in own if k not in given]
    missing_optional = [k for k in missing if k.endswith(OPTIONAL_SUFFIXES)]
    missing = [k for k in missing if not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = sorted(k for k in given if k not in own)
    mismatched = [
        f"{k}: {what} has {tuple(given[k].shape)}, model expects {tuple(own[k].shape)}"
        for k in own
        if k in given and tuple(given[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"{what} does not fit {type(module).__name__}{hint}:"]
        if missing:
            parts.append(_format_list("missing keys", missing))
        if unexpected:
            parts.append(_format_list("unexpected keys", unexpected))
        if mismatched:
            parts.append(_format_list("shape mismatches", mismatched))
        raise CheckpointMismatchError("\n".join(parts))
    with torch.no_grad():
        for key, value in given.items():
            target = own[key]
            target.copy_(value.to(device=target.device, dtype=target.dtype))
    return LoadReport(loaded=sorted(given), ignored=ignored, missing_optional=missing_optional)
