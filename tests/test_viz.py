"""Edge-map colouring, fusion-weight panels and PR plots."""

import numpy as np
import pytest
from PIL import Image

from dynfuse.viz import (
    CITYSCAPES_PALETTE,
    SBD_PALETTE,
    colorize_edges,
    fusion_weight_panels,
    palette_for,
    plot_pr_curves,
    save_edge_map,
    save_fusion_weights,
)


def test_palettes():
    assert CITYSCAPES_PALETTE.shape == (19, 3) and SBD_PALETTE.shape == (20, 3)
    assert SBD_PALETTE[0].tolist() == [128, 0, 0] and SBD_PALETTE[14].tolist() == [192, 128, 128]
    assert palette_for(19) is CITYSCAPES_PALETTE and palette_for(5).shape == (5, 3)
    assert len({tuple(c) for c in palette_for(7)}) == 7


def test_colorize_edges(tmp_path):
    e = np.zeros((19, 4, 5), dtype=bool)
    e[0, 1, 1] = True
    e[13, 2, 2] = True
    e[0, 3, 3] = e[13, 3, 3] = True
    img = colorize_edges(e)
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [255, 255, 255]
    assert img[1, 1].tolist() == CITYSCAPES_PALETTE[0].tolist()
    assert img[2, 2].tolist() == CITYSCAPES_PALETTE[13].tolist()
    mix = (CITYSCAPES_PALETTE[0].astype(float) + CITYSCAPES_PALETTE[13]) / 2
    assert np.abs(img[3, 3] - mix).max() <= 1
    soft = colorize_edges(e * 0.5)
    assert (soft[1, 1] > img[1, 1]).any()
    save_edge_map(tmp_path / "e.png", e)
    assert Image.open(tmp_path / "e.png").size == (5, 4)
    with pytest.raises(ValueError, match="palette"):
        colorize_edges(e, palette=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="K, H, W"):
        colorize_edges(e[0])


def test_fusion_weight_panels(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 4, 6, 7)).astype(np.float32)
    img = fusion_weight_panels(w, class_index=1, gap=2)
    assert img.shape == (6, 4 * 7 + 3 * 2, 3)
    assert (img[:, 7:9] == 255).all()  # gap
    # The largest weight shows the top of the colour ramp, the smallest its bottom.
    j, y, x = np.unravel_index(int(np.argmax(w[1])), w[1].shape)
    assert img[y, j * 9 + x].tolist() == [253, 231, 37]
    j, y, x = np.unravel_index(int(np.argmin(w[1])), w[1].shape)
    assert img[y, j * 9 + x].tolist() == [68, 1, 84]
    save_fusion_weights(tmp_path / "w.png", w[0])
    assert Image.open(tmp_path / "w.png").size == (4 * 7 + 3 * 4, 6)
    torch = pytest.importorskip("torch")
    assert fusion_weight_panels(torch.from_numpy(w), 0).shape == img.shape[:1] + (4 * 7 + 12, 3)
    with pytest.raises(ValueError, match="class_index"):
        fusion_weight_panels(w)
    with pytest.raises(ValueError, match="weights"):
        fusion_weight_panels(w[0, 0])


def test_plot_pr_curves(tmp_path):
    pytest.importorskip("matplotlib")
    from dynfuse.eval import evaluate_edges
    from dynfuse.eval.synthetic import synthetic_sample

    p, g, _ = synthetic_sample((48, 64), 2, seed=7, num_cells=8)
    res = evaluate_edges([p], [g], thresholds=9)
    assert g.any() and 0 < res.mf_ods < 1
    plot_pr_curves(tmp_path / "pr.png", res)
    assert Image.open(tmp_path / "pr.png").size[0] > 100
    plot_pr_curves(tmp_path / "pr2.png", res.to_dict(), classes=[1])
    # The legend's AP is the authors' AP, not pyEdgeEval's max-precision one.
    from dynfuse.viz import pr_curve_label

    e = res.to_dict()["classes"][0]
    assert res.ap[0] != res.ap_max_precision[0]
    assert pr_curve_label(e) == f"{e['name']} ODS={100 * res.ods[0]:.1f} AP={100 * res.ap[0]:.1f}"


def test_prediction_colouring_lives_here_and_shares_the_blend_rule():
    """predict's overlay colouring is dynfuse.viz's (one rule for every edge picture)."""
    import dynfuse.predict as predict
    from dynfuse.viz import class_palette, colour_edges, overlay_edges

    assert predict.colour_edges is colour_edges and predict.overlay_edges is overlay_edges
    assert predict.class_palette is class_palette
    rng = np.random.default_rng(2)
    probs = rng.random((19, 6, 5)).astype(np.float32)
    colour, strength = colour_edges(probs)
    # colorize_edges over a black background is the same picture in 8 bits
    img = colorize_edges(probs, background=(0, 0, 0))
    ref = np.clip(strength[..., None] * colour * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(img.astype(int) - ref).max() <= 1
    # float64 reference of the weighted mean colour
    p64 = probs.astype(np.float64)
    want = np.einsum("khw,kc->hwc", p64, CITYSCAPES_PALETTE / 255.0) / p64.sum(0)[..., None]
    np.testing.assert_allclose(colour, want, atol=1e-6)
    over = overlay_edges(np.zeros((6, 5, 3), np.uint8), probs, alpha=1.0)
    np.testing.assert_allclose(over / 255.0, strength[..., None] * want, atol=1 / 255 + 1e-6)
