"""The authors' protocols, 16-bit scale, MATLAB imresize, bad predictions (NaN, other sizes)."""

import warnings

import numpy as np
import pytest

from dynfuse.eval import (
    DEFAULT_PROTOCOL,
    PROTOCOL_ALIASES,
    PROTOCOLS,
    EvalWarning,
    evaluate_edges,
    evaluate_image,
    matlab_imresize,
)
from dynfuse.eval.preprocess import _cubic, imresize_weights, resize_to, to_probability


def test_protocols_are_the_authors_settings():
    # DFF lib/matlab/eval/demoBatchEval.m: evaluation(list, gt, ..., margin, 99, thinpb, 0.02)
    expect = {
        "dff-cityscapes-thin": (0.02, 0, True),
        "dff-cityscapes-raw": (0.02, 0, False),
        "dff-sbd-thin": (0.02, 5, True),
        "dff-sbd-raw": (0.02, 5, False),
        "dff-evaluation-default": (0.0075, 0, True),  # function/evaluation.m's defaults
        "seal-cityscapes-thin": (0.0035, 0, True),  # SEAL demoBatchEval.m
        "seal-cityscapes-raw": (0.0035, 0, False),
        "seal-sbd": (0.02, 5, True),
    }
    for name, (md, margin, thin) in expect.items():
        s = PROTOCOLS[name]
        assert (s.max_dist, s.margin, s.thin, s.thin_gt) == (md, margin, thin, thin), name
        assert s.thresholds == 99 and s.uint16_scale == 65536.0 and s.resize == "bicubic", name
        assert not s.nms and not s.kill_internal and s.gt_scale == 1.0, name
    for name in expect:
        if name.startswith("dff-") and name != "dff-evaluation-default":
            assert PROTOCOLS[name].instance_sensitive is True
    assert PROTOCOL_ALIASES == {
        "sbd": "seal-sbd",
        "cityscapes-thin": "seal-cityscapes-thin",
        "cityscapes-raw": "seal-cityscapes-raw",
    }
    for old, new in PROTOCOL_ALIASES.items():
        assert PROTOCOLS[old] == PROTOCOLS[new]
    assert DEFAULT_PROTOCOL == "dff-cityscapes-thin"


def test_uint16_divisor_is_part_of_the_protocol():
    # 64880 / 65536 = 0.98999 < 0.99 <= 64880 / 65535: only the top threshold tells them apart.
    gt = np.zeros((1, 20, 20), bool)
    gt[0, 10, 2:18] = True
    pred = np.where(gt, np.uint16(64880), np.uint16(0))
    authors = evaluate_image(pred, gt, PROTOCOLS["dff-cityscapes-raw"])
    ours = evaluate_image(pred, gt, PROTOCOLS["dff-cityscapes-raw"].replace(uint16_scale=65535.0))
    assert authors[0, -1, 3] == 0 and ours[0, -1, 3] == 16
    assert np.array_equal(authors[0, :-1], ours[0, :-1])
    assert to_probability(np.array([32768], np.uint16), uint16_scale=65536.0)[0] == 0.5
    # 8-bit maps are divided by 255 under every protocol; an explicit pred_scale wins.
    assert to_probability(np.array([255], np.uint8), uint16_scale=65536.0)[0] == 1.0
    assert to_probability(np.array([100], np.uint16), 100.0, uint16_scale=65536.0)[0] == 1.0


def test_matlab_imresize_by_hand():
    # imresize([0 1], [1 4]): scale 2, u = x/2 + 1/4. For x = 1, u = 0.75: taps at -1..2 (1-based)
    # with weights cubic(1.75), cubic(0.75), cubic(0.25), cubic(1.25) = -3/128, 29/128, 111/128,
    # -9/128; taps -1 and 0 mirror to 2 and 1: -3/128 * 1 + (29 + 111)/128 * 0 - 9/128 * 1.
    out = matlab_imresize(np.array([[0.0, 1.0]]), (1, 4))
    assert np.allclose(out, [[-12 / 128, 26 / 128, 102 / 128, 140 / 128]], atol=1e-15)
    assert _cubic(np.array([0.25, 0.75, 1.25, 1.75])).tolist() == [111 / 128, 29 / 128, -9 / 128, -3 / 128]
    # Shrinking 4 -> 2: kernel 0.5 * cubic(0.5 d) over width 8; output 1 sits at u = 1.5.
    idx, w = imresize_weights(4, 2)
    taps = np.arange(-3, 7)  # floor(1.5 - 4) .. + 9
    raw = 0.5 * _cubic(0.5 * (1.5 - taps))
    assert np.allclose(w[0], raw / raw.sum())
    # 1-based taps -3..6 mirror to 4 3 2 1 | 1 2 3 4 | 4 3 (printed 0-based)
    assert idx[0].tolist() == [3, 2, 1, 0, 0, 1, 2, 3, 3, 2]


def _imresize_loop(a, shape):
    """Plain transliteration: per output pixel, the stretched cubic over a wide window of input
    positions, normalised, outside positions mirrored; rows, then columns (equal scales here
    or the row scale smaller)."""
    out = a.astype(np.float64)
    for axis, n_out in ((0, shape[0]), (1, shape[1])):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        s = n_out / n_in
        res = np.zeros((n_out, out.shape[1]) if axis == 0 else (out.shape[0], n_out))
        for x in range(1, n_out + 1):
            u = x / s + 0.5 * (1 - 1 / s)
            js = np.arange(int(np.floor(u)) - 20, int(np.floor(u)) + 21)
            d = u - js
            w = s * _cubic(s * d) if s < 1 else _cubic(d)
            w = w / w.sum()
            acc = 0.0
            for j, wj in zip(js, w, strict=True):
                m = j
                while m < 1 or m > n_in:  # mirror: ..., 2, 1 | 1, 2, ..., n | n, n-1, ...
                    m = 1 - m if m < 1 else 2 * n_in + 1 - m
                acc = acc + wj * (out[m - 1] if axis == 0 else out[:, m - 1])
            if axis == 0:
                res[x - 1] = acc
            else:
                res[:, x - 1] = acc
        out = res
    return out


@pytest.mark.parametrize(
    "src,dst", [((6, 9), (3, 9)), ((5, 7), (10, 14)), ((8, 8), (3, 5)), ((4, 6), (8, 7))]
)
def test_matlab_imresize_equals_plain_loop(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    a = rng.random(src)
    assert np.allclose(matlab_imresize(a, dst), _imresize_loop(a, dst), atol=1e-12)
    assert np.allclose(matlab_imresize(np.full(src, 0.3), dst), 0.3)  # weights sum to 1


def test_bicubic_differs_from_pil_only_near_the_border():
    from PIL import Image

    rng = np.random.default_rng(0)
    a = rng.random((64, 128)).astype(np.float32)
    ours = resize_to(a, (32, 64), "bicubic")
    pil = np.asarray(Image.fromarray(a, mode="F").resize((64, 32), Image.BICUBIC))
    diff = np.abs(ours - pil)
    assert diff[3:-3, 3:-3].max() < 1e-5  # same kernel inside
    assert diff.max() > 1e-3  # PIL cuts and renormalises the kernel at the border


def test_nan_and_inf_predictions_raise_naming_image_and_class():
    gt = np.zeros((3, 16, 16), bool)
    gt[:, 8, 2:14] = True
    good = gt.astype(np.float32)
    bad = good.copy()
    bad[1, 0, :4] = np.nan
    bad[2, 5, 5] = np.inf
    msg = r"image 1: .*NaN or infinite.*class 2 \(4 values\), class 3 \(1 values\)"
    with pytest.raises(ValueError, match=msg):
        evaluate_edges([good, bad], [gt, gt], thresholds=5)
    with pytest.raises(ValueError, match="image x.png"):
        evaluate_image(bad, gt, PROTOCOLS["dff-cityscapes-thin"], name="x.png")


def test_resized_predictions_are_announced_once():
    gt = np.zeros((2, 20, 30), bool)
    gt[:, 10, 3:27] = True
    small = gt[:, ::2, ::2].astype(np.float32)
    with pytest.warns(EvalWarning, match=r"bicubic \(MATLAB imresize.*: 2 image\(s\) 10x15 -> 20x30") as rec:
        res = evaluate_edges([small, small], [gt, gt], thresholds=5)
    assert len([r for r in rec if issubclass(r.category, EvalWarning)]) == 1
    assert res.warnings and "10x15 -> 20x30" in res.to_dict()["warnings"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_edges([gt.astype(np.float32)], [gt], thresholds=5)  # same size: no warning


def test_thin_gt_leaves_already_thinned_gt_unchanged():
    """The --eval-gt GT is thinned already: the thin protocols score it as it is."""
    from dynfuse.eval.synthetic import synthetic_sample
    from dynfuse.eval.thin import thin

    prob, gt, _ = synthetic_sample((48, 64), 2, seed=7, num_cells=8)
    thinned = np.stack([thin(g) for g in gt])
    s = PROTOCOLS["dff-sbd-thin"].replace(thresholds=5)
    assert np.array_equal(
        evaluate_image(prob, thinned, s), evaluate_image(prob, thinned, s.replace(thin_gt=False))
    )
    assert not np.array_equal(evaluate_image(prob, gt, s), evaluate_image(prob, gt, s.replace(thin_gt=False)))
