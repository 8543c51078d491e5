"""Procedural semantic-edge scenes: a dataset that needs no download and a small CNN can learn.

Each scene is a background with a few class-less clutter shapes (grey tones: image edges that are
*not* semantic edges), then ``num_shapes`` instances of ellipses, rotated rectangles and star
polygons, each of a random class, painted in order so later shapes occlude earlier ones. An
instance's colour is its class hue (evenly spaced on the colour wheel, saturated) with a small
per-instance jitter, plus a stripe texture; Gaussian pixel noise is added last. The edge labels
are exact: :func:`~dynfuse.data.edges.mask_to_edges` of the painted label and instance maps
(instance-sensitive, radius ``radius``).

Item ``i`` is a pure function of ``(seed, split, i)`` (its numpy generator is seeded with that
triple), so datasets are reproducible across processes, workers and machines.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .base import EdgeDataset
from .edges import mask_to_edges
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Synthetic", "SyntheticScene"]

_SPLITS = {"train": 0, "val": 1, "test": 2}


class SyntheticScene(NamedTuple):
    """One rendered scene (numpy arrays).

    image: float32 (H, W, 3) RGB in [0, 1]; labels: int64 (H, W), class 0..K-1 or -1 (background);
    instances: int64 (H, W), 1..N for painted shapes, 0 for background; edges: bool (K, H, W).
    """

    image: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    edges: np.ndarray


def _shape_mask(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, extent: float):
    """A random ellipse, rotated rectangle or star polygon as a bool mask."""
    h, w = yy.shape
    cy = rng.uniform(0, h)
    cx = rng.uniform(0, w)
    radius = rng.uniform(0.12, 0.35) * extent
    theta = rng.uniform(0, np.pi)
    kind = int(rng.integers(3))
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    if kind == 0:  # ellipse
        a = radius
        b = radius * rng.uniform(0.45, 1.0)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == 1:  # rotated rectangle
        a = radius
        b = radius * rng.uniform(0.35, 1.0)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    # star-shaped polygon with 3..7 vertices, by the even-odd crossing rule
    n = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.55, 1.0, n)
    vy = cy + radii * np.sin(angles)
    vx = cx + radii * np.cos(angles)
    inside = np.zeros((h, w), dtype=bool)
    for j in range(n):
        y1, x1, y2, x2 = vy[j], vx[j], vy[(j + 1) % n], vx[(j + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > yy) != (y2 > yy)
        x_at = x1 + (yy - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (xx < x_at)
    return inside


def _stripes(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, amplitude: float):
    freq = rng.uniform(0.04, 0.25)
    phi = rng.uniform(0, np.pi)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * freq * (xx * np.cos(phi) + yy * np.sin(phi)) + phase)
    return amplitude * wave


def render_scene(
    rng: np.random.Generator,
    num_classes: int,
    size: tuple[int, int],
    *,
    num_shapes: tuple[int, int] = (2, 6),
    clutter: tuple[int, int] = (0, 2),
    noise: float = 0.04,
    radius: float = 2.0,
) -> SyntheticScene:
    """Render one scene with the generator ``rng`` (see the module docstring)."""
    h, w = size
    extent = float(min(h, w))
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")

    # Background: a desaturated smooth gradient with a faint texture.
    hue = rng.uniform()
    c0 = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0, 0.15), rng.uniform(0.3, 0.7)))
    c1 = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0, 0.15), rng.uniform(0.3, 0.7)))
    phi = rng.uniform(0, 2 * np.pi)
    t = ((xx * np.cos(phi) + yy * np.sin(phi)) / extent + 1.0) / 2.0
    image = c0 * (1 - t[..., None]) + c1 * t[..., None]
    image += _stripes(rng, yy, xx, 0.03)[..., None]

    # Clutter: class-less grey shapes, edges in the image that must not be detected.
    for _ in range(int(rng.integers(clutter[0], clutter[1] + 1))):
        mask = _shape_mask(rng, yy, xx, extent)
        grey = rng.uniform(0.2, 0.8)
        image[mask] = grey + _stripes(rng, yy, xx, 0.05)[mask][:, None]

    labels = np.full((h, w), -1, dtype=np.int64)
    instances = np.zeros((h, w), dtype=np.int64)
    jitter = 0.15 / num_classes
    for inst in range(1, int(rng.integers(num_shapes[0], num_shapes[1] + 1)) + 1):
        mask = _shape_mask(rng, yy, xx, extent)
        k = int(rng.integers(num_classes))
        hue = (k / num_classes + rng.uniform(-jitter, jitter)) % 1.0
        colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 0.95), rng.uniform(0.65, 0.95)))
        image[mask] = colour + _stripes(rng, yy, xx, 0.07)[mask][:, None]
        labels[mask] = k
        instances[mask] = inst

    image = image + rng.normal(0.0, noise, size=image.shape)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    edges = mask_to_edges(labels, num_classes, radius=radius, instance_map=instances)
    return SyntheticScene(image, labels, instances, edges)


class Synthetic(EdgeDataset):
    """Procedural K-class scenes of overlapping shapes with exact multi-label edges.

    Args:
        num_classes: K (1..64).
        size: H = W, or (H, W), of every image.
        length: number of items.
        seed: base seed; item i is a pure function of (seed, split, i).
        split: "train", "val" or "test" (independent streams).
        transform: a joint transform (``dynfuse.data.transforms``), applied before normalising.
        radius: edge radius passed to ``mask_to_edges`` (2, as in the paper).
        num_shapes: (min, max) labelled shapes per scene; clutter: (min, max) class-less shapes.
        noise: standard deviation of the Gaussian pixel noise (image in [0, 1]).

    Items are dicts as described in :class:`~dynfuse.data.base.EdgeDataset`.
    """

    def __init__(
        self,
        num_classes: int = 4,
        size: int | Sequence[int] = 64,
        length: int = 256,
        seed: int = 0,
        split: str = "train",
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        radius: float = 2.0,
        num_shapes: Sequence[int] = (2, 6),
        clutter: Sequence[int] = (0, 2),
        noise: float = 0.04,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(transform, mean, std)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(f"num_classes: expected an int, got {type(num_classes).__name__}")
        if not 1 <= num_classes <= 64:
            raise ValueError(f"num_classes: expected 1..64, got {num_classes}")
        if isinstance(size, int) and not isinstance(size, bool):
            hw = (size, size)
        elif isinstance(size, Sequence) and len(size) == 2:
            hw = (int(size[0]), int(size[1]))
        else:
            raise TypeError(f"size: expected an int or (H, W), got {size!r}")
        if min(hw) < 8:
            raise ValueError(f"size: expected H, W >= 8, got {hw}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length: expected a positive int, got {length!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        if split not in _SPLITS:
            raise ValueError(f"split: expected one of {sorted(_SPLITS)}, got {split!r}")
        for name, pair in (("num_shapes", num_shapes), ("clutter", clutter)):
            if len(pair) != 2 or pair[0] < 0 or pair[0] > pair[1]:
                raise ValueError(f"{name}: expected (min, max) with 0 <= min <= max, got {pair}")
        if num_shapes[1] < 1:
            raise ValueError(f"num_shapes: expected max >= 1, got {num_shapes}")
        if not noise >= 0:
            raise ValueError(f"noise: expected >= 0, got {noise}")
        self.num_classes = num_classes
        self.size = hw
        self.length = length
        self.seed = seed
        self.split = split
        self.radius = float(radius)
        self.num_shapes = (int(num_shapes[0]), int(num_shapes[1]))
        self.clutter = (int(clutter[0]), int(clutter[1]))
        self.noise = float(noise)

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> SyntheticScene:
        """The raw scene of item ``index`` (label / instance maps included)."""
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        return render_scene(
            rng,
            self.num_classes,
            self.size,
            num_shapes=self.num_shapes,
            clutter=self.clutter,
            noise=self.noise,
            radius=self.radius,
        )

    def load(self, index: int) -> dict[str, Any]:
        scene = self.scene(index)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(scene.image.transpose(2, 0, 1))),
            "edges": torch.from_numpy(scene.edges),
            "valid": torch.ones(self.size, dtype=torch.bool),
            "name": f"synthetic/{self.split}/{index:06d}",
        }

    def __repr__(self) -> str:
        return (
            f"Synthetic(num_classes={self.num_classes}, size={self.size}, length={self.length}, "
            f"seed={self.seed}, split={self.split!r})"
        )
