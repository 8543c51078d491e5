"""Feature descriptions shared by every backbone: channels, reduction (stride) and module name.

A DFF head needs, for each feature map a backbone returns, its channel count (to size the 1x1 side
convolution) and its reduction relative to the input (to size the upsampling). ``FeatureInfo`` is a
plain list of timm-style dicts ``{"num_chs": int, "reduction": int, "module": str}`` with timm's
helper methods, so code written for ``timm``'s ``feature_info`` works on our backbones and vice
versa.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["FeatureInfo", "parse_feature_info"]


class FeatureInfo(list):
    """List of ``{"num_chs", "reduction", "module"}`` dicts, one per returned feature, low -> top.

    ``channels()``, ``reduction()`` and ``module_name()`` return the per-feature values as lists
    (or a single value when given an index), like timm's ``FeatureInfo``.
    """

    def __init__(self, entries: Iterable[Mapping[str, Any]] = ()):
        checked = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                raise TypeError(f"feature_info[{i}] must be a mapping, got {type(entry).__name__}")
            for key in ("num_chs", "reduction"):
                value = entry.get(key)
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"feature_info[{i}][{key!r}] must be a positive int, got {value!r}")
            item = dict(entry)
            item.setdefault("module", f"feature{i}")
            checked.append(item)
        super().__init__(checked)

    @classmethod
    def from_lists(
        cls,
        channels: Sequence[int],
        reductions: Sequence[int],
        modules: Sequence[str] | None = None,
    ) -> FeatureInfo:
        """Build from parallel lists of channels and reductions (and optional module names)."""
        if len(channels) != len(reductions):
            raise ValueError(
                f"channels and reductions must have the same length, got {len(channels)} and "
                f"{len(reductions)}"
            )
        if modules is not None and len(modules) != len(channels):
            raise ValueError(f"modules must have one name per feature ({len(channels)}), got {len(modules)}")
        names = list(modules) if modules is not None else [f"feature{i}" for i in range(len(channels))]
        return cls(
            {"num_chs": int(c), "reduction": int(r), "module": m}
            for c, r, m in zip(channels, reductions, names, strict=True)
        )

    def _get(self, key: str, idx: int | None) -> Any:
        if idx is None:
            return [entry[key] for entry in self]
        return self[idx][key]

    def channels(self, idx: int | None = None) -> list[int] | int:
        """Channel count of each feature (or of feature ``idx``)."""
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None) -> list[int] | int:
        """Stride of each feature relative to the input (or of feature ``idx``)."""
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None) -> list[str] | str:
        """Name of the module producing each feature (or feature ``idx``)."""
        return self._get("module", idx)

    def get_dicts(self) -> list[dict[str, Any]]:
        """Copies of the entries as plain dicts (timm's name for it)."""
        return [dict(entry) for entry in self]


def parse_feature_info(feature_info: Any) -> list[tuple[int, int]]:
    """Channels and strides of each level, from timm's ``FeatureInfo``, a list of its dicts
    (``num_chs``, ``reduction``) or a plain list of ``(channels, stride)`` pairs."""
    if hasattr(feature_info, "channels") and hasattr(feature_info, "reduction"):
        chs, reds = feature_info.channels(), feature_info.reduction()
        return [(int(c), int(r)) for c, r in zip(chs, reds, strict=True)]
    if not isinstance(feature_info, Iterable):
        raise TypeError(
            "feature_info must be timm's FeatureInfo, a list of dicts with 'num_chs' and "
            f"'reduction', or a list of (channels, stride) pairs; got {type(feature_info).__name__}"
        )
    levels = []
    for i, item in enumerate(feature_info):
        if isinstance(item, dict):
            if "num_chs" not in item or "reduction" not in item:
                raise ValueError(f"feature_info[{i}] needs 'num_chs' and 'reduction', got {item!r}")
            levels.append((int(item["num_chs"]), int(item["reduction"])))
        elif isinstance(item, Sequence) and len(item) == 2:
            levels.append((int(item[0]), int(item[1])))
        else:
            raise ValueError(f"feature_info[{i}] must be a dict or a (channels, stride) pair, got {item!r}")
    return levels
