"""Checked state-dict loading: read a file or mapping and say exactly what does not fit.

``torch.nn.Module.load_state_dict`` reports missing and unexpected keys but fails on the first shape
mismatch with a long message, and ``strict=False`` silently drops everything. Loading weights that
someone else saved (torchvision's ImageNet files, the authors' DFF checkpoints) deserves one error
that lists every missing key, every unexpected key and every shape mismatch at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "CheckpointMismatchError",
    "LoadReport",
    "load_state_dict_checked",
    "read_state_dict",
]

# Buffers that older PyTorch versions did not save (BatchNorm's counter appeared in 0.4.1); files
# without them are still complete for inference and fine-tuning.
OPTIONAL_SUFFIXES: tuple[str, ...] = ("num_batches_tracked",)


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a module; the message lists every problem."""


@dataclass
class LoadReport:
    """What happened while loading: keys loaded, ignored on purpose, tolerated as missing."""

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing_optional: list[str] = field(default_factory=list)


def read_state_dict(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    map_location: str | torch.device = "cpu",
    nested_keys: Iterable[str] = ("state_dict", "model", "model_state_dict"),
) -> dict[str, torch.Tensor]:
    """Return a flat ``{key: tensor}`` mapping from a checkpoint path or an in-memory mapping.

    Wrapped checkpoints (``{"epoch": ..., "state_dict": {...}, "optimizer": ...}``) are unwrapped
    via the first of ``nested_keys`` present. Files are read with ``weights_only=True`` (no pickled
    code runs). Raises FileNotFoundError for a missing path and ValueError for anything that is not
    a mapping of tensors.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path!r}")
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # corrupt or foreign file: say which file, keep the cause
            raise ValueError(f"could not read checkpoint {path!r}: {exc}") from exc
        where = repr(path)
    elif isinstance(source, Mapping):
        obj = source
        where = "the given mapping"
    else:
        raise TypeError(
            f"source must be a path or a mapping (state dict), got {type(source).__name__}"
        )
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {where} must hold a mapping, got {type(obj).__name__}")
    for key in nested_keys:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"checkpoint {where} is not a state dict: entry {key!r} holds "
                f"{type(value).__name__}, expected a tensor"
            )
        state[key] = value
    return state


def _format_list(title: str, items: list[str], limit: int = 40) -> str:
    shown = items[:limit]
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    " + "\n    ".join(shown) + more


def load_state_dict_checked(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    ignore: Callable[[str], bool] | None = None,
    what: str = "checkpoint",
) -> LoadReport:
    """Copy ``state_dict`` into ``module``, exact fit up to ``ignore`` and optional keys.

    Keys for which ``ignore(key)`` is true are skipped (e.g. torchvision's ``fc.*``). Missing
    ``num_batches_tracked`` buffers are tolerated (old files lack them). Anything else missing,
    unexpected or of the wrong shape raises CheckpointMismatchError listing all of it; nothing is
    copied in that case. Values are cast to each parameter's dtype and device.
    """
    own = module.state_dict()
    ignored = sorted(k for k in state_dict if ignore is not None and ignore(k))
    given = {k: v for k, v in state_dict.items() if not (ignore is not None and ignore(k))}
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
        parts = [f"{what} does not fit {type(module).__name__}:"]
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
