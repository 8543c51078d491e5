"""Per image and class: matched / total counts at every threshold.

For each threshold ``t`` the prediction is binarised (``prob >= t``), optionally thinned and
cut by the ``kill_internal`` mask, then matched to the ground truth (see :mod:`.match`). The
result holds, per threshold, ``(cnt_r, sum_r, cnt_p, sum_p)``: matched ground-truth pixels, all
ground-truth pixels, matched predicted pixels, all predicted pixels -- SEAL's ``_ev1.txt`` rows.

Work shared across thresholds (they are visited from high to low): candidate pairs within the
tolerance are computed once per pixel, when a map first holds it; each threshold filters that
edge list to its own map and starts from the previous threshold's matching (still valid for the
pixels that stay on), so only a few augmenting paths remain to be found. Thresholds that give the
same map reuse the previous counts, and without thinning (nested maps) every threshold below the
one that matches all ground truth matches all of it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

from .match import augment, candidate_pairs, greedy_extend, match_radius
from .thin import thin as thin_map

__all__ = ["resolve_thresholds", "image_class_counts"]


def resolve_thresholds(thresholds: int | Sequence[float] | np.ndarray) -> np.ndarray:
    """Thresholds as an increasing float64 array.

    Args:
        thresholds: an int ``n`` gives SEAL's ``linspace(1/(n+1), 1 - 1/(n+1), n)`` (99 ->
            0.01, 0.02, ..., 0.99); a sequence is used as given (must be strictly increasing).
    """
    if isinstance(thresholds, (bool, np.bool_)):
        raise TypeError(f"thresholds must be an int or a sequence of floats, got {thresholds!r}")
    if isinstance(thresholds, (int, np.integer)):
        n = int(thresholds)
        if n < 1:
            raise ValueError(f"thresholds must be >= 1 when given as a count, got {n}")
        return np.linspace(1.0 / (n + 1), 1.0 - 1.0 / (n + 1), n)
    arr = np.asarray(thresholds, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("thresholds must not be empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"thresholds must be finite, got {arr}")
    if arr.size > 1 and not np.all(np.diff(arr) > 0):
        raise ValueError(f"thresholds must be strictly increasing, got {arr}")
    return arr


def _active_sets(
    prob: np.ndarray, thresholds: np.ndarray, thin: bool, keep: np.ndarray | None
) -> list[np.ndarray]:
    """Sorted flat indices of the predicted edge pixels at each threshold."""
    sets: list[np.ndarray] = []
    prev_count = -1
    prev: np.ndarray | None = None
    for t in thresholds:
        binary = prob >= t
        count = int(np.count_nonzero(binary))
        # Maps at increasing thresholds are nested, so an equal count means an equal map.
        if count == prev_count and prev is not None:
            sets.append(prev)
            continue
        prev_count = count
        if thin and count:
            binary = thin_map(binary)
        if keep is not None:
            binary &= keep
        prev = np.flatnonzero(binary)
        sets.append(prev)
    return sets


def image_class_counts(
    prob: np.ndarray,
    gt: np.ndarray,
    thresholds: int | Sequence[float] | np.ndarray = 99,
    *,
    max_dist: float = 0.02,
    thin: bool = True,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Counts of one class of one image at every threshold.

    Args:
        prob: (H, W) float prediction in [0, 1] (or bool: then every threshold in (0, 1]
            gives the same map).
        gt: (H, W) bool ground-truth edges.
        thresholds: see :func:`resolve_thresholds`.
        max_dist: tolerance as a fraction of the image diagonal.
        thin: thin each binarised prediction (``bwmorph(..., 'thin', Inf)``) before matching.
        keep: optional (H, W) bool; predicted pixels outside it are removed after thinning
            (the ``kill_internal`` mask).

    Returns:
        (T, 4) int64 array of ``(cnt_r, sum_r, cnt_p, sum_p)`` per threshold.
    """
    p = np.asarray(prob)
    g = np.asarray(gt)
    if p.ndim != 2:
        raise ValueError(f"prob must be 2-D (H, W), got shape {p.shape}")
    if g.shape != p.shape:
        raise ValueError(f"gt must have the prediction's shape {p.shape}, got {g.shape}")
    if keep is not None and np.shape(keep) != p.shape:
        raise ValueError(f"keep must have the prediction's shape {p.shape}, got {np.shape(keep)}")
    thr = resolve_thresholds(thresholds)
    if p.dtype == bool:
        p = p.astype(np.float32)
    g = g.astype(bool, copy=False)
    keep_b = None if keep is None else np.asarray(keep, dtype=bool)
    radius = match_radius(p.shape, max_dist)

    out = np.zeros((thr.size, 4), dtype=np.int64)
    n_gt = int(np.count_nonzero(g))
    out[:, 1] = n_gt
    if n_gt == 0:
        # Nothing to match: only the predicted pixels count (false positives).
        out[:, 3] = [s.size for s in _active_sets(p, thr, thin, keep_b)]
        return out
    _MatchState(p, g, radius, thin, keep_b).run(thr, out)
    return out


class _MatchState:
    """Thresholds from high to low, carrying the matching from one threshold to the next.

    The pool (every pixel any map so far has held) only grows, so candidate pairs are computed
    once per pixel, when it first appears. A threshold's map keeps the previous matching's pairs
    whose predicted pixel is still on, extends it greedily and completes it with one max-flow
    on the residual graph. Without thinning the maps are nested, so once all ground truth is
    matched every lower threshold matches all of it too.
    """

    def __init__(self, prob, gt, radius, thin, keep):
        self.prob, self.radius, self.thin, self.keep = prob, radius, thin, keep
        self.w = prob.shape[1]
        self.g_yx = np.argwhere(gt)
        self.tree_g = cKDTree(self.g_yx)
        self.mate_g = np.full(len(self.g_yx), -1, dtype=np.int64)
        self.pool = np.zeros(0, dtype=np.int64)  # sorted flat pixel indices
        self.pos = np.full(prob.size, -1, dtype=np.int64)  # flat index -> pool slot
        self.slot_pix: list[np.ndarray] = []
        self.n_slots = 0
        self.ep: list[np.ndarray] = []  # edges by pool slot
        self.eg: list[np.ndarray] = []
        self.ed: list[np.ndarray] = []
        self.mate_p = np.zeros(0, dtype=np.int64)

    def _add_pixels(self, pix: np.ndarray) -> None:
        new = pix[self.pos[pix] < 0]
        if new.size == 0:
            return
        slots = np.arange(self.n_slots, self.n_slots + new.size)
        self.pos[new] = slots
        self.n_slots += new.size
        self.mate_p = np.concatenate((self.mate_p, np.full(new.size, -1, dtype=np.int64)))
        yx = np.stack((new // self.w, new % self.w), axis=1)
        ia, ib, d2 = candidate_pairs(yx, self.g_yx, self.radius, self.tree_g)
        if ia.size:
            self.ep.append(slots[ia])
            self.eg.append(ib)
            self.ed.append(d2)

    def _edges(self):
        if len(self.ep) > 1:
            self.ep = [np.concatenate(self.ep)]
            self.eg = [np.concatenate(self.eg)]
            self.ed = [np.concatenate(self.ed)]
        if not self.ep:
            e = np.zeros(0, dtype=np.int64)
            return e, e, e
        return self.ep[0], self.eg[0], self.ed[0]

    def run(self, thr: np.ndarray, out: np.ndarray) -> None:
        n_gt = len(self.g_yx)
        prev_count = -1
        prev_matched = 0
        saturated = False
        for i in range(thr.size - 1, -1, -1):
            binary = self.prob >= thr[i]
            count = int(np.count_nonzero(binary))
            if count == prev_count:
                # Nested maps: equal count means an equal map, hence equal counts.
                out[i, 0] = out[i, 2] = prev_matched
                out[i, 3] = out[i + 1, 3]
                continue
            prev_count = count
            if self.thin and count:
                binary = thin_map(binary)
            if self.keep is not None:
                binary &= self.keep
            pix = np.flatnonzero(binary)
            out[i, 3] = pix.size
            if saturated:
                out[i, 0] = out[i, 2] = n_gt
                prev_matched = n_gt
                continue
            self._add_pixels(pix)
            ep, eg, ed = self._edges()
            active = np.zeros(self.n_slots, dtype=bool)
            active[self.pos[pix]] = True
            # Drop pairs whose predicted pixel is off at this threshold.
            lost = (self.mate_p >= 0) & ~active
            self.mate_g[self.mate_p[lost]] = -1
            self.mate_p[lost] = -1
            if self.thin or self.keep is not None:
                sel = active[ep]
                ep, eg, ed = ep[sel], eg[sel], ed[sel]
            greedy_extend(ep, eg, ed, self.mate_p, self.mate_g)
            augment(ep, eg, self.mate_p, self.mate_g)
            matched = int(np.count_nonzero(self.mate_g >= 0))
            out[i, 0] = out[i, 2] = matched
            prev_matched = matched
            if matched == n_gt and not self.thin and self.keep is None:
                saturated = True
