"""Synthetic scenes where the paper's Table 1 claim is testable: the reliable cue changes with location.

DFF's claim (Hu et al. 2019, Table 1) is that fusion weights should depend on the image and on the
location: fixed fusion (CASENet) < fixed fusion of normalised sides < per-image weights < per-location
weights. On the plain :class:`~dynfuse.data.synthetic.Synthetic` scenes every location needs the same
mix of cues, so nothing rewards per-location weights. Each scene here has three kinds of place, each
asking for a different mix of the class-less low-level sides (Side1-3, one channel each, fine
localisation) and the class-aware top side (Side5, K channels, stride 8):

* **Textured region** (a half-plane covering a fraction ``f`` of the image). A mosaic of small
  (``cell`` px), saturated cells of random hue (class hues included) with sharp borders: the
  low-level sides, which see a few pixels, fire on every cell border, yet none of them is a class
  edge. Only the top level, which sees that the mosaic is a texture and not an object, can tell. The
  right fusion here down-weights Side1-3 (or uses them only where Side5 says "object boundary").
* **Clean region** (the rest): a flat, desaturated background. Here an image edge is a class edge,
  and the low-level sides localise it to the pixel while Side5 (stride 8, upsampled) blurs it. The
  right fusion up-weights Side1-3. Objects (ellipses, rectangles, star polygons, flat class colour)
  lie in both regions, so the same class needs different weights in different places: the case only
  per-location (location-adaptive) weights can serve.
* **Thin structures**: bars 2-3 px wide, coloured by their class, placed in the clean region when
  there is one. Both borders fall inside the matching tolerance of each other; Side5 barely resolves
  them and the low-level sides, which have no class channel, localise them but cannot say which class
  they belong to. A good fusion takes the location from Side1-3 and the class from Side5 at that very
  place (the adaptive learner's per-class, per-location weights can do it; a fixed weight adds the
  low-level response to every class's channel alike).

The textured fraction ``f`` changes from scene to scene (0 with probability ``p_clean``, 1 with
probability ``p_textured``, uniform in ``fraction`` otherwise), so per-image weights (the
location-invariant learner) can beat fixed ones: a fully clean scene wants more low-level weight than
a fully textured one. Scenes that mix both regions are where per-location weights can beat per-image
ones. Which row tests what is summarised in ``docs/ablation.md``.

Item ``i`` is a pure function of ``(seed, split, i)``. Edge labels are exact and instance-sensitive
(:func:`~dynfuse.data.edges.mask_to_edges` of the painted label and instance maps); the texture
carries no label, so its borders are never positives.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .edges import mask_to_edges
from .synthetic import _SPLITS, Synthetic, _shape_mask
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["AblationScene", "SyntheticAblation", "render_ablation_scene"]

# Mixed into every item's seed so these scenes never share a random stream with Synthetic's.
_STREAM_TAG = 15


class AblationScene(NamedTuple):
    """One rendered scene (numpy arrays, H x W).

    image: float32 (H, W, 3) RGB in [0, 1]; labels: int64 (H, W), class 0..K-1 or -1 (no class);
    instances: int64 (H, W), 1..N per painted object or bar, 0 elsewhere; edges: bool (K, H, W);
    texture: bool (H, W), the textured region (objects painted over it included);
    thin: bool (H, W), pixels of the thin bars as painted (later paint may cover parts of them);
    fraction: the textured fraction ``f`` drawn for the scene.
    """

    image: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    edges: np.ndarray
    texture: np.ndarray
    thin: np.ndarray
    fraction: float


def _class_colour(rng: np.random.Generator, k: int, num_classes: int) -> np.ndarray:
    """A saturated colour of class ``k``'s hue with a small per-instance jitter (as Synthetic)."""
    jitter = 0.15 / num_classes
    hue = (k / num_classes + rng.uniform(-jitter, jitter)) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 0.95), rng.uniform(0.65, 0.95)))


def _half_plane(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, fraction: float) -> np.ndarray:
    """A bool mask of a random half-plane covering ``fraction`` of the pixels (0 and 1 exact)."""
    if fraction <= 0.0:
        return np.zeros(yy.shape, dtype=bool)
    if fraction >= 1.0:
        return np.ones(yy.shape, dtype=bool)
    phi = rng.uniform(0, 2 * np.pi)
    proj = xx * np.cos(phi) + yy * np.sin(phi)
    return proj < np.quantile(proj, fraction)


def _mosaic(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cell: tuple[float, float]
) -> np.ndarray:
    """(H, W, 3) rotated grid of square cells, each a random saturated colour of any hue."""
    size = rng.uniform(*cell)
    theta = rng.uniform(0, np.pi / 2)
    u = np.floor((xx * np.cos(theta) + yy * np.sin(theta)) / size).astype(np.int64)
    v = np.floor((-xx * np.sin(theta) + yy * np.cos(theta)) / size).astype(np.int64)
    ids = (u - u.min()) * (v.max() - v.min() + 1) + (v - v.min())
    uniq, inverse = np.unique(ids, return_inverse=True)
    hsv = np.stack(
        [rng.uniform(0, 1, uniq.size), rng.uniform(0.5, 1.0, uniq.size), rng.uniform(0.3, 1.0, uniq.size)],
        axis=1,
    )
    colours = np.array([colorsys.hsv_to_rgb(*c) for c in hsv])
    return colours[inverse.reshape(yy.shape)]


def _bar_mask(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, centre: tuple[float, float], extent: float
) -> np.ndarray:
    """A straight bar 2-3 px wide (half-width 0.8..1.4 px), 0.4..0.8 x extent long, any angle."""
    half_width = rng.uniform(0.8, 1.4)
    half_length = rng.uniform(0.2, 0.4) * extent
    theta = rng.uniform(0, np.pi)
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    return (np.abs(u) <= half_length) & (np.abs(v) <= half_width)


def render_ablation_scene(
    rng: np.random.Generator,
    num_classes: int,
    size: tuple[int, int],
    *,
    num_shapes: tuple[int, int] = (2, 4),
    num_thin: tuple[int, int] = (1, 3),
    texture: bool = True,
    p_clean: float = 0.2,
    p_textured: float = 0.15,
    fraction: tuple[float, float] = (0.3, 0.7),
    cell: tuple[float, float] = (3.0, 6.0),
    noise: float = 0.03,
    radius: float = 2.0,
) -> AblationScene:
    """Render one scene with the generator ``rng`` (see the module docstring).

    Paint order: clean background, textured half-plane, objects, thin bars, Gaussian noise.
    ``texture=False`` gives the control family (same objects and bars, no texture).
    """
    h, w = size
    extent = float(min(h, w))
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")

    # Clean background: one flat, desaturated tone (no image edges at all).
    bg = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.1), rng.uniform(0.35, 0.6)))
    image = np.broadcast_to(bg, (h, w, 3)).copy()

    # Textured region: the fraction f is drawn per scene (what per-image weights can adapt to).
    draw = rng.uniform()
    if not texture or draw < p_clean:
        f = 0.0
    elif draw < p_clean + p_textured:
        f = 1.0
    else:
        f = float(rng.uniform(*fraction))
    tex = _half_plane(rng, yy, xx, f)
    if tex.any():
        image[tex] = _mosaic(rng, yy, xx, cell)[tex]

    labels = np.full((h, w), -1, dtype=np.int64)
    instances = np.zeros((h, w), dtype=np.int64)
    inst = 0
    for _ in range(int(rng.integers(num_shapes[0], num_shapes[1] + 1))):
        mask = _shape_mask(rng, yy, xx, extent)
        k = int(rng.integers(num_classes))
        inst += 1
        image[mask] = _class_colour(rng, k, num_classes)
        labels[mask] = k
        instances[mask] = inst

    thin = np.zeros((h, w), dtype=bool)
    clean_idx = np.flatnonzero(~tex)
    for _ in range(int(rng.integers(num_thin[0], num_thin[1] + 1))):
        # Centre on a clean pixel when there is one: the bars test fine localisation with the
        # class from the top level, not the texture (which the objects already cover).
        flat = int(rng.choice(clean_idx)) if clean_idx.size else int(rng.integers(h * w))
        centre = (yy.flat[flat], xx.flat[flat])
        mask = _bar_mask(rng, yy, xx, centre, extent)
        k = int(rng.integers(num_classes))
        inst += 1
        image[mask] = _class_colour(rng, k, num_classes)
        labels[mask] = k
        instances[mask] = inst
        thin |= mask

    image = image + rng.normal(0.0, noise, size=image.shape)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    edges = mask_to_edges(labels, num_classes, radius=radius, instance_map=instances)
    return AblationScene(image, labels, instances, edges, tex, thin, f)


class SyntheticAblation(Synthetic):
    """Procedural K-class scenes for the Table 1 ablation (see the module docstring).

    Args:
        num_classes: K (1..64).
        size: H = W, or (H, W), of every image (>= 8).
        length: number of items.
        seed: base seed; item i is a pure function of (seed, split, i).
        split: "train", "val" or "test" (independent streams).
        transform: a joint transform (``dynfuse.data.transforms``), applied before normalising.
        radius: edge radius passed to ``mask_to_edges`` (2, as in the paper).
        num_shapes: (min, max) objects per scene; num_thin: (min, max) thin bars per scene.
        texture: False renders the control family without the textured region.
        p_clean, p_textured: probabilities of a scene with no texture / texture everywhere.
        fraction: (min, max) of the textured fraction of the remaining (mixed) scenes.
        cell: (min, max) side of the texture cells in pixels.
        noise: standard deviation of the Gaussian pixel noise (image in [0, 1]).

    Items are dicts as described in :class:`~dynfuse.data.base.EdgeDataset`; :meth:`scene` gives the
    raw :class:`AblationScene` with the texture and thin-bar masks.
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
        num_shapes: Sequence[int] = (2, 4),
        num_thin: Sequence[int] = (1, 3),
        texture: bool = True,
        p_clean: float = 0.2,
        p_textured: float = 0.15,
        fraction: Sequence[float] = (0.3, 0.7),
        cell: Sequence[float] = (3.0, 6.0),
        noise: float = 0.03,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(
            num_classes,
            size,
            length,
            seed,
            split,
            transform,
            radius=radius,
            num_shapes=num_shapes,
            clutter=(0, 0),
            noise=noise,
            mean=mean,
            std=std,
        )
        if len(num_thin) != 2 or num_thin[0] < 0 or num_thin[0] > num_thin[1]:
            raise ValueError(f"num_thin: expected (min, max) with 0 <= min <= max, got {num_thin}")
        for name, p in (("p_clean", p_clean), ("p_textured", p_textured)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {p}")
        if p_clean + p_textured > 1.0:
            raise ValueError(f"p_clean + p_textured: expected <= 1, got {p_clean + p_textured}")
        if len(fraction) != 2 or not 0.0 <= fraction[0] <= fraction[1] <= 1.0:
            raise ValueError(f"fraction: expected (min, max) with 0 <= min <= max <= 1, got {fraction}")
        if len(cell) != 2 or not 1.0 <= cell[0] <= cell[1]:
            raise ValueError(f"cell: expected (min, max) with 1 <= min <= max pixels, got {cell}")
        self.num_thin = (int(num_thin[0]), int(num_thin[1]))
        self.texture = bool(texture)
        self.p_clean = float(p_clean)
        self.p_textured = float(p_textured)
        self.fraction = (float(fraction[0]), float(fraction[1]))
        self.cell = (float(cell[0]), float(cell[1]))

    def scene(self, index: int) -> AblationScene:  # type: ignore[override]
        """The raw scene of item ``index`` (label, instance, texture and thin-bar masks included)."""
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index, _STREAM_TAG])
        return render_ablation_scene(
            rng,
            self.num_classes,
            self.size,
            num_shapes=self.num_shapes,
            num_thin=self.num_thin,
            texture=self.texture,
            p_clean=self.p_clean,
            p_textured=self.p_textured,
            fraction=self.fraction,
            cell=self.cell,
            noise=self.noise,
            radius=self.radius,
        )

    def load(self, index: int) -> dict[str, Any]:
        item = super().load(index)
        item["name"] = f"synthetic_ablation/{self.split}/{self._check_index(index):06d}"
        return item

    def __repr__(self) -> str:
        return (
            f"SyntheticAblation(num_classes={self.num_classes}, size={self.size}, length={self.length}, "
            f"seed={self.seed}, split={self.split!r}, texture={self.texture})"
        )
