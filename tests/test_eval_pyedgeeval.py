"""Optional oracle: the peer `pyedgeeval` (skipped when it is not installed)."""

import importlib.util
import sys
import types

import numpy as np
import pytest

pytest.importorskip("pyEdgeEval")

from dynfuse.eval import EvalSettings, aggregate, image_class_counts  # noqa: E402
from dynfuse.eval.synthetic import synthetic_sample  # noqa: E402
from dynfuse.eval.thin import thin  # noqa: E402


@pytest.fixture(scope="module")
def pe():
    # pyedgeeval imports OpenCV at module level for its NMS only, which is not used here: a stub
    # stands in while it is imported, and is removed again so other tests see no fake cv2.
    stub = None
    if importlib.util.find_spec("cv2") is None:
        stub = sys.modules.setdefault("cv2", types.ModuleType("cv2"))
    added_in1d = not hasattr(np, "in1d")
    if added_in1d:  # removed in numpy 2.4; pyedgeeval's bwmorph_thin calls it
        setattr(np, "in1d", np.isin)  # noqa: B010
    try:
        from pyEdgeEval._lib import correspond_pixels
        from pyEdgeEval.common.multi_label.calculate_metrics import calculate_metrics
        from pyEdgeEval.common.multi_label.evaluate_boundaries import (
            evaluate_boundaries_threshold,
        )
        from pyEdgeEval.preprocess.thin import bwmorph_thin
    finally:
        if stub is not None and sys.modules.get("cv2") is stub:
            del sys.modules["cv2"]
    yield types.SimpleNamespace(
        cp=correspond_pixels,
        counts=evaluate_boundaries_threshold,
        bwmorph_thin=bwmorph_thin,
        metrics=calculate_metrics,
    )
    if added_in1d:
        delattr(np, "in1d")


def test_thin_equals_pyedgeeval_matlab_port(pe):
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = rng.integers(1, 40, size=2)
        m = rng.random((h, w)) < rng.uniform(0.2, 0.9)
        assert np.array_equal(thin(m), pe.bwmorph_thin(m.astype(np.uint8)))


def test_matching_never_below_peer_and_close(pe):
    rng = np.random.default_rng(1)
    from dynfuse.eval.match import match_edges

    for _ in range(40):
        h, w = rng.integers(4, 30, size=2)
        p = rng.random((h, w)) < 0.3
        g = rng.random((h, w)) < 0.3
        md = float(rng.uniform(0.02, 0.2))
        m1, _, _, _ = pe.cp(p.astype(float), g.astype(float), max_dist=md)
        ours = match_edges(p, g, md)[0].sum()
        assert ours >= (m1 > 0).sum() >= ours - max(2, ours // 50)


def test_scores_agree_within_0_01(pe):
    thr = np.linspace(0.01, 0.99, 25)
    prob, gt, _ = synthetic_sample((48, 96), 2, seed=7, num_cells=8)
    ours = np.zeros((1, 2, thr.size, 4), dtype=np.int64)
    peer = np.zeros_like(ours)
    for k in range(2):
        ours[0, k] = image_class_counts(prob[k], gt[k], thr, max_dist=0.02, thin=False)
        cr, sr, cp, sp = pe.counts(
            thresholds=thr,
            pred=prob[k].astype(np.float64),
            gt=gt[k].astype(np.uint8),
            max_dist=0.02,
            apply_thinning=False,
        )
        peer[0, k] = np.stack([cr, sr, cp, sp], axis=1)
    s = EvalSettings(max_dist=0.02, thresholds=tuple(thr), thin=False)
    a, b = aggregate(ours, s), aggregate(peer, s)
    assert np.abs(a.ods - b.ods).max() < 0.01
    assert np.abs(a.ois - b.ois).max() < 0.01


def _peer_metrics(pe, counts, thr):
    """pyedgeeval's dataset metrics of (N, T, 4) counts (its own formulas, no matching)."""
    import contextlib
    import io

    samples = [
        {"name": str(i), "counts": tuple(c[:, j].astype(np.float64) for j in range(4))}
        for i, c in enumerate(counts)
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bar
        _, _, overall = pe.metrics(lambda s: s["counts"], [float(t) for t in thr], samples, nproc=1)
    return overall


def test_where_pyedgeeval_metrics_follow_and_depart_from_the_authors(pe):
    """On identical counts: pyedgeeval's ODS / OIS are the authors'; its `AUC` is the authors' AP
    but over recall 0:0.01:0.99 (it leaves out recall 1); its `AP` is the max-precision formula
    (our `ap_max_precision`) without the t = 1 term."""
    thr = np.linspace(0.01, 0.99, 25)
    rng = np.random.default_rng(3)
    for reach_one in (False, True):
        prob, gt, _ = synthetic_sample((48, 96), 2, seed=7, num_cells=8)
        if reach_one:
            prob = np.maximum(prob, 0.02 * gt)  # every GT pixel predicted at the lowest threshold
        c = image_class_counts(prob[0], gt[0], thr, max_dist=0.02, thin=False)[None]
        if not reach_one:
            c[:, :, 0] = np.minimum(c[:, :, 0], c[:, :, 1] - 1 - rng.integers(0, 2))  # recall < 1
            c[:, :, 2] = c[:, :, 0]
        ours = aggregate(c[:, None], EvalSettings(thresholds=tuple(thr), thin=False))
        peer = _peer_metrics(pe, c, thr)
        # maxF: MATLAB's linspace(0, 1) has 100 steps, pyedgeeval 101 (25 thresholds: coarse segments).
        assert peer["ODS_f1"] == pytest.approx(ours.ods[0], abs=1e-4)
        assert peer["OIS_f1"] == pytest.approx(ours.ois[0], abs=1e-12)
        r, p = ours.recall[0], ours.precision[0]
        at_one = r >= 1.0 - 1e-12
        top = p[at_one].max() if at_one.any() else 0.0
        first = p[np.nonzero(at_one)[0][0]] if at_one.any() else 0.0  # unique(): first threshold
        assert (top > 0) == reach_one
        # authors' AP = peer AUC + 0.01 * P(recall 1)
        assert ours.ap[0] == pytest.approx(peer["AUC"] + 0.01 * first, abs=1e-9)
        assert ours.ap_max_precision[0] == pytest.approx(peer["AP"] + top / 101, abs=1e-9)
        assert abs(ours.ap[0] - ours.ap_max_precision[0]) > 1e-3  # two different metrics
