"""Per-threshold counts, options and the in-memory evaluate_edges."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from dynfuse.eval import (
    PROTOCOLS,
    EvalSettings,
    EvalWarning,
    evaluate_edges,
    image_class_counts,
    match_edges,
)
from dynfuse.eval.counts import resolve_thresholds
from dynfuse.eval.preprocess import crop_margin, edge_nms, kill_internal_mask, resize_to, to_probability
from dynfuse.eval.synthetic import synthetic_sample
from dynfuse.eval.thin import thin


def _plain_counts(prob, gt, thr, md, do_thin, keep=None):
    rows = []
    for t in thr:
        b = prob >= t
        if do_thin:
            b = thin(b)
        if keep is not None:
            b = b & keep
        pm, gm = match_edges(b, gt, md)
        rows.append([gm.sum(), gt.sum(), pm.sum(), b.sum()])
    return np.array(rows)


@pytest.mark.parametrize("do_thin", [True, False])
@pytest.mark.parametrize("use_keep", [False, True])
def test_counts_equal_per_threshold_matching(do_thin, use_keep):
    rng = np.random.default_rng(int(do_thin) * 2 + int(use_keep))
    for _ in range(6):
        h, w = rng.integers(8, 37, size=2)
        prob = ndi.gaussian_filter(rng.random((h, w)) ** 3, 1)
        prob /= prob.max()
        gt = rng.random((h, w)) < 0.15
        keep = rng.random((h, w)) < 0.8 if use_keep else None
        md = float(rng.uniform(0.03, 0.2))
        thr = resolve_thresholds(13)
        got = image_class_counts(prob, gt, thr, max_dist=md, thin=do_thin, keep=keep)
        assert np.array_equal(got, _plain_counts(prob, gt, thr, md, do_thin, keep))


def test_thresholds_and_empty_gt():
    assert np.allclose(resolve_thresholds(99), np.arange(1, 100) / 100)
    with pytest.raises(ValueError, match="increasing"):
        resolve_thresholds([0.5, 0.2])
    with pytest.raises(ValueError):
        resolve_thresholds(0)
    prob = np.linspace(0, 1, 50).reshape(5, 10)
    c = image_class_counts(prob, np.zeros((5, 10), bool), [0.2, 0.6], thin=False)
    assert c[:, 1].tolist() == [0, 0]
    assert c[:, 3].tolist() == [int((prob >= 0.2).sum()), int((prob >= 0.6).sum())]


def test_evaluate_edges_perfect_prediction_and_determinism():
    preds, gts = [], []
    for s in range(2):
        _, gt, _ = synthetic_sample((48, 64), 3, seed=s, num_cells=6)
        preds.append(gt.astype(np.float32))
        gts.append(gt)
    res = evaluate_edges(preds, gts, thin=False)
    assert res.mf_ods == pytest.approx(1.0) and np.allclose(res.ap_max_precision, 1.0)
    assert np.array_equal(res.ap, np.zeros(3))  # one-point PR curve: the authors' AP is 0
    assert res.auc is res.ap and res.mean_ap == 0.0
    assert res.settings["thin"] is False and res.settings["max_dist"] == 0.02
    assert res.thresholds.shape == (99,)
    d = res.to_dict()
    assert set(d) >= {"mf_ods", "settings", "classes"} and len(d["classes"]) == 3
    assert "pr" in d["classes"][0] and len(d["classes"][0]["pr"]["recall"]) == 99
    res.to_json()


def test_evaluate_edges_realistic_workers_agree():
    preds, gts = [], []
    for s in range(3):
        p, g, _ = synthetic_sample((40, 56), 2, seed=10 + s, num_cells=6)
        preds.append(p)
        gts.append(g)
    a = evaluate_edges(preds, gts, max_dist=0.02, thresholds=19)
    b = evaluate_edges(preds, gts, max_dist=0.02, thresholds=19)
    assert np.array_equal(a.counts, b.counts) and 0 < a.mf_ods < 1
    c = evaluate_edges(preds, gts, max_dist=0.02, thresholds=19, workers=2)
    assert np.array_equal(a.counts, c.counts)
    # uint16 predictions are scaled by 65535 automatically.
    q = [np.round(p * 65535).astype(np.uint16) for p in preds]
    d = evaluate_edges(q, gts, max_dist=0.02, thresholds=19)
    assert abs(d.mf_ods - a.mf_ods) < 0.02


def test_options_margin_resize_kill_internal_nms():
    rng = np.random.default_rng(5)
    prob, gt, labels = synthetic_sample((40, 60), 2, seed=3, num_cells=6)
    s = EvalSettings(thresholds=9, margin=5, thin_gt=True, nms=True, kill_internal=True)
    res = evaluate_edges([prob], [gt], settings=s, segs=[labels])
    assert res.settings["margin"] == 5 and res.counts.shape == (1, 2, 9, 4)
    # sum_r counts the GT thinned on the full image (as the authors make it), then cropped;
    # on this image the other order (crop, then thin) keeps a different number of pixels.
    assert res.counts[0, 0, 0, 1] == thin(gt[0])[5:-5, 5:-5].sum()
    assert thin(gt[0])[5:-5, 5:-5].sum() != thin(gt[0][5:-5, 5:-5]).sum()
    with pytest.raises(ValueError, match="seg"):
        evaluate_edges([prob], [gt], settings=s)
    # Resizing: a half-size prediction is brought to the GT size.
    small = prob[:, ::2, ::2]
    with pytest.warns(EvalWarning, match="20x30 -> 40x60"):
        evaluate_edges([small], [gt], thresholds=5)
    with pytest.raises(ValueError, match="resize"):
        evaluate_edges([small], [gt], thresholds=5, resize="none")
    assert resize_to(np.ones((4, 4)), (8, 6), "bilinear").shape == (8, 6)
    assert to_probability(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        to_probability(np.array([0.0, 2.0]))
    with pytest.raises(TypeError, match="scale"):
        to_probability(np.array([1], np.int32))
    assert crop_margin(np.zeros((3, 10, 12)), 2).shape == (3, 6, 8)
    keep = kill_internal_mask(gt[0], labels == 0, 0.02)
    assert keep[gt[0]].all()
    nms = edge_nms(prob[0])
    assert nms.shape == prob[0].shape and nms.max() <= prob[0].max() + 1e-6
    assert (nms > 0).sum() < (prob[0] > 0).sum()
    # gt_scale: nearest-resampled GT, same as PIL NEAREST (pyedgeeval's scale).
    from PIL import Image

    half = evaluate_edges([prob[:, ::2, ::2]], [gt], thresholds=5, gt_scale=0.5)
    g_pil = np.asarray(Image.fromarray(gt[0].astype(np.uint8) * 255).resize((30, 20), Image.NEAREST))
    assert half.counts[0, 0, 0, 1] == (g_pil > 0).sum()
    from dynfuse.eval.api import _nearest_scale

    for h, w, sc in ((37, 54, 0.73), (101, 7, 0.5), (64, 129, 0.31)):
        x = rng.integers(0, 255, size=(h, w)).astype(np.uint8)
        size = (max(int(w * sc + 0.5), 1), max(int(h * sc + 0.5), 1))
        assert np.array_equal(
            _nearest_scale(x[None], sc)[0], np.asarray(Image.fromarray(x).resize(size, Image.NEAREST))
        )
    with pytest.raises(ValueError, match="gt_scale"):
        EvalSettings(gt_scale=2.0)
    assert PROTOCOLS["sbd"].margin == 5 and PROTOCOLS["cityscapes-raw"].thin is False
    with pytest.raises(ValueError, match="classes"):
        evaluate_edges([prob], [gt[:1]])
    with pytest.raises(ValueError, match="max_dist"):
        EvalSettings(max_dist=0)
    with pytest.raises(ValueError, match="images"):
        evaluate_edges([prob], [])
