"""Synthetic, realistic-looking edge predictions and ground truth for tests and benchmarks.

A random Voronoi label map gives the ground-truth edges of each class by the dataset rule
(pixel p is an edge of class k when a pixel within a Euclidean disc of radius 2 differs in
"is class k"). A prediction imitates a trained network's sigmoid output: a soft ridge along the
true class boundaries (Gaussian in the distance, per-segment confidence), weaker ridges on
displaced false boundaries, and a smooth low-level haze so that low thresholds are dense.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

__all__ = ["random_label_map", "edges_from_labels", "synthetic_prediction", "synthetic_sample"]


def _disc(radius: float) -> np.ndarray:
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy * yy + xx * xx <= radius * radius


def random_label_map(
    shape: tuple[int, int], num_classes: int, num_cells: int, rng: np.random.Generator
) -> np.ndarray:
    """(H, W) int64 map of class ids in [0, num_classes) over random Voronoi cells."""
    h, w = shape
    seeds = rng.uniform((0, 0), (h, w), size=(num_cells, 2))
    cell_class = rng.integers(0, num_classes, size=num_cells)
    yy, xx = np.mgrid[0:h, 0:w]
    _, cell = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], axis=1))
    return cell_class[cell].reshape(h, w)


def edges_from_labels(labels: np.ndarray, num_classes: int, radius: float = 2.0) -> np.ndarray:
    """(K, H, W) bool edges: p is an edge of k when some q within ``radius`` differs in class-k."""
    disc = _disc(radius)
    out = np.zeros((num_classes, *labels.shape), dtype=bool)
    for k in range(num_classes):
        seg = labels == k
        if seg.any():
            out[k] = ndi.binary_dilation(seg, disc) & ~ndi.binary_erosion(seg, disc, border_value=1)
    return out


def synthetic_prediction(
    labels: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    *,
    sigma: float = 2.5,
    haze: float = 0.03,
) -> np.ndarray:
    """(K, H, W) float32 probabilities in [0, 1] that look like a trained edge network's output."""
    h, w = labels.shape
    # Displaced, partly wrong boundaries: a shifted copy of the label map with some relabelling.
    shift = rng.integers(-4, 5, size=2)
    wrong = np.roll(labels, tuple(shift), axis=(0, 1))
    out = np.empty((num_classes, h, w), dtype=np.float32)
    for k in range(num_classes):
        true_b = _thin_boundary(labels == k)
        false_b = _thin_boundary(wrong == k) & ~true_b
        d_true = ndi.distance_transform_edt(~true_b) if true_b.any() else np.full((h, w), 1e9)
        d_false = ndi.distance_transform_edt(~false_b) if false_b.any() else np.full((h, w), 1e9)
        conf = ndi.gaussian_filter(rng.uniform(0.4, 1.0, size=(h, w)), 12)
        conf = 0.45 + (conf - conf.min()) / max(float(np.ptp(conf)), 1e-6) * 0.55
        ridge = conf * np.exp(-(d_true**2) / (2 * sigma**2))
        ridge = np.maximum(ridge, 0.35 * conf * np.exp(-(d_false**2) / (2 * (sigma + 1) ** 2)))
        noise = ndi.gaussian_filter(rng.random((h, w)), 4)
        noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)
        p = ridge + haze * noise**2 + 0.004 * rng.random((h, w))
        out[k] = np.clip(p, 0.0, 1.0)
    return out


def _thin_boundary(seg: np.ndarray) -> np.ndarray:
    """1-pixel inner boundary of a binary region (4-neighbourhood)."""
    if not seg.any():
        return np.zeros_like(seg)
    return seg & ~ndi.binary_erosion(seg, border_value=1)


def synthetic_sample(
    shape: tuple[int, int],
    num_classes: int,
    seed: int,
    *,
    num_cells: int = 40,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: ``(prob (K,H,W) float32, gt (K,H,W) bool, labels (H,W) int64)``."""
    rng = np.random.default_rng(seed)
    labels = random_label_map(shape, num_classes, num_cells, rng)
    gt = edges_from_labels(labels, num_classes)
    prob = synthetic_prediction(labels, num_classes, rng)
    return prob, gt, labels
