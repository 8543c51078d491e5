"""SEAL-style ODS / OIS / AP from counts, against plain loops."""

import numpy as np
import pytest

from dynfuse.eval.metrics import (
    average_precision,
    f_measure,
    interpolated_max_f,
    max_precision_ap,
    pr_curve,
    score_class,
)


def _maxf_loop(t, r, p):
    best = (t[0], r[0], p[0], f_measure(p[0], r[0]))
    for i in range(1, len(t)):
        for d in np.linspace(0, 1, 100):
            tt = t[i] * d + t[i - 1] * (1 - d)
            rr = r[i] * d + r[i - 1] * (1 - d)
            pp = p[i] * d + p[i - 1] * (1 - d)
            f = f_measure(pp, rr)
            if f > best[3]:
                best = (tt, rr, pp, f)
    return best


def _random_counts(rng, n, t):
    sum_r = rng.integers(0, 50, size=(n, 1)).repeat(t, axis=1)
    sum_p = np.sort(rng.integers(0, 80, size=(n, t)), axis=1)[:, ::-1]
    cnt = np.minimum(rng.integers(0, 60, size=(n, t)), np.minimum(sum_r, sum_p))
    return np.stack([cnt, sum_r, cnt, sum_p], axis=-1)


def test_interpolated_max_f_matches_loop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = np.linspace(0.1, 0.9, 9)
        r, p = np.sort(rng.random(9))[::-1], np.sort(rng.random(9))
        assert np.allclose(interpolated_max_f(t, r, p), _maxf_loop(t, r, p))


def test_score_class_against_plain_definitions():
    rng = np.random.default_rng(1)
    thr = np.linspace(0.01, 0.99, 99)
    c = _random_counts(rng, 6, 99)
    s = score_class(c, thr)
    tot = c.sum(0)
    r = tot[:, 0] / np.maximum(tot[:, 1], 1)
    p = tot[:, 2] / np.where(tot[:, 3] == 0, 1, tot[:, 3])
    assert np.allclose(pr_curve(c)[0], r) and np.allclose(pr_curve(c)[1], p)
    assert s.ods == pytest.approx(_maxf_loop(thr, r, p)[3])
    assert s.ods >= f_measure(p, r).max() - 1e-12
    # OIS: per image the first best threshold.
    acc = np.zeros(4)
    for img in c:
        ri = img[:, 0] / np.maximum(img[:, 1], 1)
        pi = img[:, 2] / np.maximum(img[:, 3], 1)
        acc += img[int(np.argmax(f_measure(pi, ri)))]
    ro, po = acc[0] / max(acc[1], 1), acc[2] / max(acc[3], 1)
    assert s.ois == pytest.approx(f_measure(po, ro))
    ap_mp = (
        sum(
            max([pp for rr, pp in zip(r, p, strict=True) if rr >= t - 1e-12], default=0.0)
            for t in np.arange(101) / 100
        )
        / 101
    )
    assert s.ap_max_precision == pytest.approx(ap_mp)
    assert s.auc == s.ap


def test_perfect_and_empty():
    thr = np.linspace(0.01, 0.99, 99)
    perfect = np.tile(np.array([10, 10, 10, 10]), (2, 99, 1))
    s = score_class(perfect, thr)
    assert s.ods == pytest.approx(1.0) and s.ois == pytest.approx(1.0)
    # A one-point curve (the same map at every threshold) has AP 0 in the authors' code
    # (`numel(Ru) > 1` fails); the max-precision AP is 1.
    assert s.ap == 0.0 and s.ap_max_precision == pytest.approx(1.0)
    empty = np.zeros((2, 99, 4), dtype=np.int64)
    s = score_class(empty, thr)
    assert s.ods == 0.0 and s.ois == 0.0 and s.ap == 0.0 and s.ap_max_precision == 0.0
    with pytest.raises(ValueError, match="thresholds"):
        score_class(perfect, thr[:5])
    with pytest.raises(ValueError, match="shape"):
        score_class(perfect[0], thr)


def _one_image(rows):
    """(1, T, 4) counts from per-threshold (cnt_r, sum_r, cnt_p, sum_p) rows."""
    return np.array([rows], dtype=np.int64)


# The authors' AP (collect_eval_bdry.m): [Ru, indR] = unique(R); Pu = P(indR);
# interp1(Ru, Pu, 0:0.01:1), NaN -> 0, sum x 0.01. Values below worked out by hand.


def test_authors_ap_by_hand_triangle():
    # thresholds .25 / .5 / .75: R = 1, .5, 0 and P = .5, 1, 0 (no predictions at .75 -> P = 0).
    c = _one_image([[2, 2, 2, 4], [1, 2, 1, 1], [0, 2, 0, 0]])
    s = score_class(c, np.array([0.25, 0.5, 0.75]))
    # P(r) = 2r on [0, .5] and 1.5 - r on [.5, 1]: sum over r = k/100 is 25.5 + 37.25.
    assert s.ap == pytest.approx(0.6275, abs=1e-12)
    # pyEdgeEval's AP: best P at R >= t is 1 for t <= .5 (51 points), .5 above (50 points).
    assert s.ap_max_precision == pytest.approx(76 / 101, abs=1e-12)


def test_authors_ap_takes_the_first_threshold_of_a_repeated_recall():
    # R = 1, .5, .5, 0 with P = .5, .25, 1, 0: unique() keeps the first (lowest-threshold) .25.
    c = _one_image([[2, 2, 2, 4], [1, 2, 1, 4], [1, 2, 1, 1], [0, 2, 0, 0]])
    s = score_class(c, np.array([0.2, 0.4, 0.6, 0.8]))
    # P(r) = r / 2 on [0, 1]: sum over k of k / 200 = 25.25 (with P = 1 it would be .6275).
    assert s.ap == pytest.approx(0.2525, abs=1e-12)


def test_authors_ap_outside_the_recall_range_is_zero():
    # R = .6, .2 with P = .5, .75: only r = .20 ... .60 (41 points) lie on the curve.
    r, p = np.array([0.6, 0.2]), np.array([0.5, 0.75])
    # 41 * .75 - .625 * sum_{j=0..40} j / 100 = 30.75 - 5.125
    assert average_precision(r, p) == pytest.approx(0.25625, abs=1e-12)
    # Fewer than two distinct recalls: 0 (MATLAB's `numel(Ru) > 1` branch).
    assert average_precision(np.array([0.5, 0.5]), np.array([1.0, 1.0])) == 0.0
    # Max recall exactly 29/50 = 0.58: MATLAB's 0:0.01:1 builds its upper half as 1 - k*0.01,
    # so its 59th point is 1 - 0.42 = 0.5800000000000001, beyond the curve (NaN -> 0): 58 points
    # of P = 1. (numpy's linspace holds 58 * 0.01 = 0.58 there and would give 0.59.)
    assert 1 - 42 * 0.01 > 29 / 50 == 58 * 0.01
    r, p = np.array([29 / 50, 0.0]), np.array([1.0, 1.0])
    assert average_precision(r, p) == pytest.approx(0.58, abs=1e-12)


def test_max_precision_ap_by_hand():
    assert max_precision_ap(np.array([0.5, 0.0]), np.array([0.8, 0.0])) == pytest.approx(51 * 0.8 / 101)
