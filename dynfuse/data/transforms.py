"""Joint image + edge-label transforms (the authors' training augmentation).

A *sample* here is a dict with

* ``"image"``: float32 tensor (3, H, W), RGB in [0, 1] (not yet normalised),
* ``"edges"``: bool tensor (K, H, W),
* ``"valid"``: bool tensor (H, W), False where the loss must ignore a pixel (padding),
* any other keys (e.g. ``"name"``), passed through untouched.

Every transform is called as ``t(sample, generator=None)``; random choices are drawn with
``torch`` from ``generator`` (or the global torch RNG when None, which DataLoader seeds per
worker), so a pipeline is deterministic under a given ``torch.Generator``.

Labels are resized with nearest neighbour, as the authors do (PIL ``NEAREST`` on the bit-packed
PNG). Note that this changes edge thickness: a 5-pixel-wide edge band (radius 2) becomes about
``5 * s`` pixels wide at scale ``s``, and thin diagonal edges can break up when shrinking. The
authors accept this for Cityscapes (online random scale); for SBD they instead recompute edges from
the rescaled segmentation offline (``dynfuse-prepare sbd --scales``).

Padding goes to the bottom / right (as the authors do) with the mean colour, which is exactly 0
after :class:`Normalize`; padded pixels get ``valid = False`` and no edge.

Normalisation is not part of the pipelines a dataset takes as ``transform``: datasets always
normalise last (so that the padding value is 0), and reject a ``transform`` containing
:class:`Normalize`. Use :class:`Normalize` yourself only when building samples by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "RandomScale",
    "Resize",
    "RandomMirror",
    "RandomCrop",
    "CenterCrop",
    "PadTo",
    "Normalize",
    "train_transforms",
    "val_transforms",
    "check_sample",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Sample = dict[str, Any]


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, bool):
        raise TypeError(f"{name}: expected an int or (H, W), got {size!r}")
    if isinstance(size, int):
        pair = (size, size)
    elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) for s in size):
        pair = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"{name}: expected an int or a pair of ints (H, W), got {size!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name}: expected positive sizes, got {pair}")
    return pair


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    if high <= low:
        return low
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator).item())


def check_sample(sample: Any) -> tuple[int, int]:
    """Validate a sample dict (see the module docstring); returns (H, W)."""
    if not isinstance(sample, dict):
        raise TypeError(f"sample: expected a dict, got {type(sample).__name__}")
    for key in ("image", "edges", "valid"):
        if key not in sample:
            raise ValueError(f"sample: missing key {key!r}")
        if not isinstance(sample[key], Tensor):
            raise TypeError(f"sample[{key!r}]: expected a torch.Tensor, got {type(sample[key])}")
    image, edges, valid = sample["image"], sample["edges"], sample["valid"]
    if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"sample['image']: expected float (3, H, W), got {image.dtype} {tuple(image.shape)}")
    h, w = image.shape[1:]
    if edges.dim() != 3 or edges.shape[1:] != (h, w) or edges.dtype != torch.bool:
        raise ValueError(
            f"sample['edges']: expected bool (K, {h}, {w}), got {edges.dtype} {tuple(edges.shape)}"
        )
    if valid.shape != (h, w) or valid.dtype != torch.bool:
        raise ValueError(f"sample['valid']: expected bool ({h}, {w}), got {valid.dtype} {tuple(valid.shape)}")
    return int(h), int(w)


def _resize(sample: Sample, size: tuple[int, int]) -> Sample:
    h, w = check_sample(sample)
    if (h, w) == size:
        return sample
    out = dict(sample)
    image = sample["image"][None].float()
    # Antialiased bilinear, like PIL's BILINEAR resize the authors use.
    out["image"] = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)[
        0
    ].clamp_(0.0, 1.0)
    labels = torch.cat([sample["edges"], sample["valid"][None]], dim=0)[None].to(torch.uint8)
    # "nearest-exact" samples at pixel centres, like PIL's NEAREST.
    labels = F.interpolate(labels, size=size, mode="nearest-exact")[0].bool()
    out["edges"] = labels[:-1]
    out["valid"] = labels[-1]
    return out


class Compose:
    """Apply transforms in order, sharing one generator."""

    def __init__(self, transforms: Sequence[Callable[..., Sample]]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"transforms: expected callables, got {type(t).__name__}")

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        for t in self.transforms:
            sample = t(sample, generator=generator)
        return sample

    def __iter__(self):
        return iter(self.transforms)

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class RandomScale:
    """Random rescale by a short side drawn from a range, or by a factor drawn from a set.

    Args:
        short_side: (low, high): the new short side is a uniform integer in [low, high] and the
            long side keeps the aspect ratio (truncated), as the authors' Cityscapes pipeline
            (``base_size * 0.75 .. base_size * 2``; 480..1280 for crop 640).
        scales: a set of factors, one drawn uniformly; sizes are ``round(H * s), round(W * s)``.
    """

    def __init__(
        self,
        *,
        short_side: Sequence[int] | None = None,
        scales: Sequence[float] | None = None,
    ) -> None:
        if (short_side is None) == (scales is None):
            raise ValueError("RandomScale: give exactly one of short_side=(low, high) or scales=")
        self.short_side: tuple[int, int] | None = None
        self.scales: tuple[float, ...] | None = None
        if short_side is not None:
            if len(short_side) != 2 or not all(int(s) == s and s >= 1 for s in short_side):
                raise ValueError(f"short_side: expected (low, high) positive ints, got {short_side}")
            low, high = int(short_side[0]), int(short_side[1])
            if low > high:
                raise ValueError(f"short_side: expected low <= high, got {(low, high)}")
            self.short_side = (low, high)
        elif scales is not None:  # always, given the check above; narrows the type
            values = tuple(float(s) for s in scales)
            if not values or any(not s > 0 for s in values):
                raise ValueError(f"scales: expected positive factors, got {scales}")
            self.scales = values

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        h, w = check_sample(sample)
        if self.short_side is not None:
            short = _randint(self.short_side[0], self.short_side[1], generator)
            if h > w:
                size = (max(1, int(h * short / w)), short)
            else:
                size = (short, max(1, int(w * short / h)))
        else:
            assert self.scales is not None
            s = self.scales[_randint(0, len(self.scales) - 1, generator)]
            size = (max(1, round(h * s)), max(1, round(w * s)))
        return _resize(sample, size)

    def __repr__(self) -> str:
        if self.short_side is not None:
            return f"RandomScale(short_side={self.short_side})"
        return f"RandomScale(scales={self.scales})"


class Resize:
    """Deterministic resize to (H, W) (image bilinear, labels nearest)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size, "size")

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return _resize(sample, self.size)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class RandomMirror:
    """Horizontal flip with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        check_sample(sample)
        if _rand(generator) >= self.p:
            return sample
        out = dict(sample)
        out["image"] = sample["image"].flip(-1)
        out["edges"] = sample["edges"].flip(-1)
        out["valid"] = sample["valid"].flip(-1)
        return out

    def __repr__(self) -> str:
        return f"RandomMirror(p={self.p})"


def _pad_to(sample: Sample, size: tuple[int, int], fill: Sequence[float]) -> Sample:
    h, w = check_sample(sample)
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if ph == 0 and pw == 0:
        return sample
    out = dict(sample)
    image = sample["image"]
    padded = torch.empty((3, h + ph, w + pw), dtype=image.dtype, device=image.device)
    padded[:] = torch.as_tensor(fill, dtype=image.dtype, device=image.device).view(3, 1, 1)
    padded[:, :h, :w] = image
    out["image"] = padded
    out["edges"] = F.pad(sample["edges"], (0, pw, 0, ph), value=False)
    out["valid"] = F.pad(sample["valid"], (0, pw, 0, ph), value=False)
    return out


def _crop(sample: Sample, top: int, left: int, size: tuple[int, int]) -> Sample:
    out = dict(sample)
    rows = slice(top, top + size[0])
    cols = slice(left, left + size[1])
    out["image"] = sample["image"][:, rows, cols]
    out["edges"] = sample["edges"][:, rows, cols]
    out["valid"] = sample["valid"][rows, cols]
    return out


class PadTo:
    """Pad bottom / right to at least ``size`` with the mean colour; padding is not valid."""

    def __init__(self, size: int | Sequence[int], fill: Sequence[float] = IMAGENET_MEAN) -> None:
        self.size = _pair(size, "size")
        self.fill = tuple(float(f) for f in fill)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return _pad_to(sample, self.size, self.fill)

    def __repr__(self) -> str:
        return f"PadTo(size={self.size})"


class RandomCrop:
    """Random crop of ``size``, padding first (bottom / right, masked) when the input is smaller."""

    def __init__(self, size: int | Sequence[int], fill: Sequence[float] = IMAGENET_MEAN) -> None:
        self.size = _pair(size, "size")
        self.fill = tuple(float(f) for f in fill)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        sample = _pad_to(sample, self.size, self.fill)
        h, w = check_sample(sample)
        top = _randint(0, h - self.size[0], generator)
        left = _randint(0, w - self.size[1], generator)
        return _crop(sample, top, left, self.size)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size})"


class CenterCrop:
    """Centre crop of ``size`` (the authors' validation crop), padding first when smaller."""

    def __init__(self, size: int | Sequence[int], fill: Sequence[float] = IMAGENET_MEAN) -> None:
        self.size = _pair(size, "size")
        self.fill = tuple(float(f) for f in fill)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        sample = _pad_to(sample, self.size, self.fill)
        h, w = check_sample(sample)
        top = int(round((h - self.size[0]) / 2.0))
        left = int(round((w - self.size[1]) / 2.0))
        return _crop(sample, top, left, self.size)

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class Normalize:
    """``image = (image - mean) / std`` per channel (ImageNet statistics by default)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean/std: expected 3 values each, got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise ValueError(f"std: expected positive values, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        check_sample(sample)
        out = dict(sample)
        image = sample["image"].float()
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device).view(3, 1, 1)
        out["image"] = (image - mean) / std
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def train_transforms(
    crop_size: int | Sequence[int],
    *,
    short_side: Sequence[int] | None = None,
    scales: Sequence[float] | None = None,
    mirror: bool = True,
    fill: Sequence[float] = IMAGENET_MEAN,
) -> Compose:
    """The authors' training augmentation: mirror, optional random scale, pad + random crop.

    Cityscapes (paper): ``train_transforms(640, short_side=(480, 1280))``. SBD (paper): scales
    are offline, so ``train_transforms(352)``.
    """
    steps: list[Callable[..., Sample]] = []
    if mirror:
        steps.append(RandomMirror(0.5))
    if short_side is not None or scales is not None:
        steps.append(RandomScale(short_side=short_side, scales=scales))
    steps.append(RandomCrop(crop_size, fill=fill))
    return Compose(steps)


def val_transforms(
    crop_size: int | Sequence[int] | None = None, *, fill: Sequence[float] = IMAGENET_MEAN
) -> Compose:
    """Validation: the whole image (None), or pad + centre crop to ``crop_size``."""
    return Compose([] if crop_size is None else [CenterCrop(crop_size, fill=fill)])
