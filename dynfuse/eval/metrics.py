"""Dataset-level scores from per-image counts, as the authors' ``collect_eval_bdry.m`` computes them.

Counts per image and threshold are ``(cnt_r, sum_r, cnt_p, sum_p)``;
``R = cnt_r / sum_r`` and ``P = cnt_p / sum_p`` (0 when the denominator is 0),
``F = 2PR / (P + R)`` (0 when both are 0).

- ODS (MF-ODS per class): counts summed over images, then the best F over thresholds with
  linear interpolation between neighbouring thresholds (MATLAB ``linspace(0, 1)``: 100 steps).
- OIS: per image the first threshold with the largest (non-interpolated) F; the counts at those
  thresholds summed over images give R, P and F.
- AP (the number the DFF authors' MATLAB reports, ``collect_eval_bdry.m`` by SEAL's author): precision
  linearly interpolated (``interp1``) over the distinct recall values of the dataset PR curve at
  recall ``0:0.01:1``, points outside the curve's recall range (NaN) set to 0, summed x 0.01;
  0 when the curve has fewer than two distinct recalls. It is BSDS's ``Area_PR``, which is why
  the old name ``auc`` is kept as an alias. (pyEdgeEval reports it as ``AUC``, summed over
  recall ``0:0.01:0.99`` only, so it leaves out the point at recall 1.)
- AP (max-precision), ``ap_max_precision``: ``sum_{t in 0:0.01:1} max(P[R >= t]) / 101`` (0 where
  no threshold reaches t): what pyEdgeEval reports as its ``AP``; not the authors' number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "ClassScores",
    "f_measure",
    "pr_curve",
    "score_class",
    "interpolated_max_f",
    "average_precision",
    "max_precision_ap",
]


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return a / (b + (b == 0))


def f_measure(p: npt.ArrayLike, r: npt.ArrayLike) -> np.ndarray:
    """Harmonic mean of precision and recall (arrays or scalars, float64), 0 where both are 0."""
    p = np.asarray(p, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    s = p + r
    return 2.0 * p * r / (s + (s == 0))


def pr_curve(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(R, P, F)`` per threshold from (..., T, 4) counts (summed over any leading axes)."""
    c = np.asarray(counts, dtype=np.int64).reshape(-1, *np.shape(counts)[-2:]).sum(axis=0)
    r = _safe_div(c[:, 0], c[:, 1])
    p = _safe_div(c[:, 2], c[:, 3])
    return r, p, f_measure(p, r)


def interpolated_max_f(
    thresholds: np.ndarray, r: np.ndarray, p: np.ndarray
) -> tuple[float, float, float, float]:
    """SEAL/BSDS ``maxF``: best ``(t, r, p, f)`` on the piecewise-linear PR curve."""
    t = np.asarray(thresholds, dtype=np.float64)
    best = (float(t[0]), float(r[0]), float(p[0]), float(f_measure(p[0], r[0])))
    if t.size < 2:
        return best
    d = np.linspace(0.0, 1.0, 100)[None, :]
    tt = t[1:, None] * d + t[:-1, None] * (1 - d)
    rr = r[1:, None] * d + r[:-1, None] * (1 - d)
    pp = p[1:, None] * d + p[:-1, None] * (1 - d)
    ff = f_measure(pp, rr)
    # MATLAB keeps the first strictly larger value in loop order (threshold, then d).
    k = int(np.argmax(ff.ravel()))
    if ff.ravel()[k] > best[3]:
        i, j = divmod(k, ff.shape[1])
        best = (float(tt[i, j]), float(rr[i, j]), float(pp[i, j]), float(ff[i, j]))
    return best


def _matlab_recall_grid() -> np.ndarray:
    """MATLAB's ``0:0.01:1`` bit for bit: ``colon`` builds the first half as ``a + k*d``, the
    second half backwards as ``b - k*d`` and puts ``(a+b)/2`` in the middle. (numpy's
    ``linspace`` differs in the last bit at 11 of the 101 points, which matters when a recall
    value of the curve lands exactly on one of them: inside the curve or NaN -> 0.)"""
    k = np.arange(101)
    return np.where(k < 50, k * 0.01, np.where(k > 50, 1.0 - (100 - k) * 0.01, 0.5))


_RECALL_GRID = _matlab_recall_grid()


def average_precision(r: np.ndarray, p: np.ndarray) -> float:
    """The authors' AP (``collect_eval_bdry.m``) of a dataset PR curve.

    Args:
        r, p: (T,) recall and precision per threshold (float64).

    Returns:
        ``sum(interp1(Ru, Pu, 0:0.01:1), NaN -> 0) * 0.01`` where ``Ru`` are the distinct recall
        values in increasing order and ``Pu`` the precision at the *first* threshold holding
        each (MATLAB's ``[Ru, indR] = unique(R)``); 0 when there are fewer than two.
    """
    ru, iu = np.unique(np.asarray(r, dtype=np.float64), return_index=True)
    if ru.size < 2:
        return 0.0
    pu = np.asarray(p, dtype=np.float64)[iu]
    pint = np.interp(_RECALL_GRID, ru, pu, left=np.nan, right=np.nan)
    return float(np.nansum(pint) * 0.01)


def max_precision_ap(r: np.ndarray, p: np.ndarray) -> float:
    """pyEdgeEval's ``AP``: mean over ``t in 0:0.01:1`` of the best precision at recall >= t
    (0 where no threshold reaches t). Not the number the DFF authors' MATLAB reports."""
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    total = 0.0
    for t in np.linspace(0.0, 1.0, 101):
        sel = r >= t - 1e-12
        total += float(p[sel].max()) if sel.any() else 0.0
    return total / 101.0


@dataclass(frozen=True)
class ClassScores:
    """Scores of one class over a dataset (fractions in [0, 1]).

    ``ap`` is the authors' AP (``collect_eval_bdry.m``); ``auc`` is the same number under its
    BSDS name (kept for compatibility); ``ap_max_precision`` is pyEdgeEval's ``AP``.
    """

    ods: float
    ods_threshold: float
    ods_recall: float
    ods_precision: float
    ois: float
    ois_recall: float
    ois_precision: float
    ap: float
    ap_max_precision: float

    @property
    def auc(self) -> float:
        """Alias of :attr:`ap` (BSDS's ``Area_PR`` is the same formula)."""
        return self.ap


def score_class(counts: np.ndarray, thresholds: np.ndarray) -> ClassScores:
    """Scores of one class from its (N_images, T, 4) counts."""
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim != 3 or c.shape[2] != 4:
        raise ValueError(f"counts must have shape (N, T, 4), got {c.shape}")
    if c.shape[1] != len(thresholds):
        raise ValueError(f"counts have {c.shape[1]} thresholds, thresholds has {len(thresholds)}")
    r, p, _ = pr_curve(c)
    t_best, r_best, p_best, f_best = interpolated_max_f(thresholds, r, p)

    # OIS: per image, first index of the largest F.
    ri = _safe_div(c[:, :, 0], c[:, :, 1])
    pi = _safe_div(c[:, :, 2], c[:, :, 3])
    idx = np.argmax(f_measure(pi, ri), axis=1)
    best = c[np.arange(c.shape[0]), idx].sum(axis=0)
    r_ois = float(_safe_div(best[0], best[1]))
    p_ois = float(_safe_div(best[2], best[3]))

    return ClassScores(
        ods=f_best,
        ods_threshold=t_best,
        ods_recall=r_best,
        ods_precision=p_best,
        ois=float(f_measure(p_ois, r_ois)),
        ois_recall=r_ois,
        ois_precision=p_ois,
        ap=average_precision(r, p),
        ap_max_precision=max_precision_ap(r, p),
    )
