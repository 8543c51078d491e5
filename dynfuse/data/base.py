"""The dataset base class: load a raw sample, apply the joint transform, normalise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from .transforms import IMAGENET_MEAN, IMAGENET_STD, Compose, Normalize, check_sample

__all__ = ["EdgeDataset"]


def _contains_normalize(transform: Any) -> bool:
    if isinstance(transform, Normalize):
        return True
    if isinstance(transform, Compose):
        return any(_contains_normalize(t) for t in transform)
    return False


class EdgeDataset(Dataset):
    """Base of the edge datasets.

    ``__getitem__(i)`` returns a dict that the default collate batches:

    * ``"image"``: float32 (3, H, W), normalised with ``mean`` / ``std`` (ImageNet by default);
      padding is exactly 0,
    * ``"edges"``: float32 (K, H, W) with values in {0, 1},
    * ``"valid"``: bool (H, W), False on padding (and on ignored pixels where the label format
      has them),
    * ``"name"``: str, an identifier of the item (file stem, or ``synthetic/<split>/<i>``).

    Subclasses implement ``__len__`` and ``load(index)``, which returns the sample before the
    transform: image float32 (3, H, W) in [0, 1], edges bool (K, H, W), valid bool (H, W), name.

    Args:
        transform: a joint transform ``t(sample) -> sample`` (see ``dynfuse.data.transforms``),
            applied before normalisation; it must not normalise itself.
        mean: per-channel mean of the normalisation.
        std: per-channel standard deviation of the normalisation.
    """

    num_classes: int = 0

    def __init__(
        self,
        transform: Callable[..., dict[str, Any]] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(f"transform: expected a callable or None, got {type(transform)}")
        if _contains_normalize(transform):
            raise ValueError(
                "transform: must not contain Normalize; datasets normalise last themselves "
                "(so that padding is exactly 0)"
            )
        self.transform = transform
        self.normalize = Normalize(mean, std)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_index(self, index: Any) -> int:
        if isinstance(index, bool) or not isinstance(index, int):
            if isinstance(index, torch.Tensor) and not index.is_floating_point() and index.numel() == 1:
                index = int(index.item())
            elif hasattr(index, "__index__"):
                index = int(index.__index__())
            else:
                raise TypeError(f"index: expected an int, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index: {index} out of range for a dataset of length {n}")
        return index % n

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        sample = self.load(index)
        if self.transform is not None:
            sample = self.transform(sample)
        check_sample(sample)
        sample = self.normalize(sample)
        return {
            "image": sample["image"].to(torch.float32).contiguous(),
            "edges": sample["edges"].to(torch.float32).contiguous(),
            "valid": sample["valid"].to(torch.bool).contiguous(),
            "name": str(sample["name"]),
        }
