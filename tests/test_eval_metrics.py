"""SEAL-style ODS / OIS / AP from counts, against plain loops."""

import numpy as np
import pytest

from dynfuse.eval.metrics import f_measure, interpolated_max_f, pr_curve, score_class


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
    ap = sum(max([pp for rr, pp in zip(r, p, strict=True) if rr >= t - 1e-12], default=0.0)
             for t in np.arange(101) / 100) / 101
    assert s.ap == pytest.approx(ap)


def test_perfect_and_empty():
    thr = np.linspace(0.01, 0.99, 99)
    perfect = np.tile(np.array([10, 10, 10, 10]), (2, 99, 1))
    s = score_class(perfect, thr)
    assert s.ods == pytest.approx(1.0) and s.ois == pytest.approx(1.0) and s.ap == pytest.approx(1.0)
    empty = np.zeros((2, 99, 4), dtype=np.int64)
    s = score_class(empty, thr)
    assert s.ods == 0.0 and s.ois == 0.0 and s.ap == 0.0
    with pytest.raises(ValueError, match="thresholds"):
        score_class(perfect, thr[:5])
    with pytest.raises(ValueError, match="shape"):
        score_class(perfect[0], thr)
