"""Maximum-cardinality matching within a tolerance, against brute force."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from dynfuse.eval.match import candidate_pairs, match_edges, match_radius


def _brute_force_size(pred, gt, max_dist):
    r = match_radius(pred.shape, max_dist)
    p, g = np.argwhere(pred), np.argwhere(gt)
    if len(p) == 0 or len(g) == 0:
        return 0
    ok = ((p[:, None, :] - g[None, :, :]) ** 2).sum(-1) <= r * r
    ri, ci = linear_sum_assignment(-ok.astype(float))
    return int(ok[ri, ci].sum())


def test_matches_brute_force_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(150):
        h, w = rng.integers(2, 15, size=2)
        pred = rng.random((h, w)) < rng.uniform(0.05, 0.6)
        gt = rng.random((h, w)) < rng.uniform(0.05, 0.6)
        md = float(rng.uniform(0.03, 0.3))
        pm, gm = match_edges(pred, gt, md)
        assert pm.sum() == gm.sum() == _brute_force_size(pred, gt, md)
        assert not (pm & ~pred).any() and not (gm & ~gt).any()


def test_exact_overlap_first_is_not_enough():
    # p' - g=p - g' on a line with tolerance 1 pixel: the maximum (2) pairs p'-g and p-g',
    # a greedy "coincident pixels first" matching would get only 1.
    pred = np.zeros((1, 5), dtype=bool)
    gt = np.zeros((1, 5), dtype=bool)
    pred[0, [1, 2]] = True
    gt[0, [2, 3]] = True
    md = 1.0 / np.hypot(1, 5)
    pm, gm = match_edges(pred, gt, md)
    assert pm.sum() == gm.sum() == 2


def test_coincident_pixels_count_and_tolerance_is_inclusive():
    a = np.zeros((10, 10), dtype=bool)
    a[5, 5] = True
    pm, gm = match_edges(a, a, 1e-6)
    assert pm[5, 5] and gm[5, 5]
    b = np.zeros_like(a)
    b[5, 8] = True  # distance 3
    md = 3.0 / np.hypot(10, 10)
    assert match_edges(a, b, md)[0].sum() == 1
    assert match_edges(a, b, md * 0.999)[0].sum() == 0
    ia, ib, d2 = candidate_pairs(np.array([[0, 0]]), np.array([[0, 0], [0, 2]]), 1.0)
    assert ia.tolist() == [0] and ib.tolist() == [0] and d2.tolist() == [0]


def test_deterministic_and_validated():
    rng = np.random.default_rng(1)
    pred = rng.random((40, 60)) < 0.2
    gt = rng.random((40, 60)) < 0.2
    first = match_edges(pred, gt, 0.05)
    for _ in range(3):
        again = match_edges(pred, gt, 0.05)
        assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    with pytest.raises(ValueError, match="same shape"):
        match_edges(pred, gt[:-1], 0.05)
    with pytest.raises(ValueError, match="max_dist"):
        match_edges(pred, gt, 0.0)
    with pytest.raises(ValueError, match="2-D"):
        match_edges(pred[None], gt[None], 0.05)
    empty = np.zeros_like(pred)
    assert match_edges(empty, gt, 0.05)[1].sum() == 0
