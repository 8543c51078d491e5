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
    save_fusion_weights(tmp_path / "w.png", w[0], labelled=False)
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


# ---------------------------------------------------------------- labelled fusion-weight figures
def _texts(fig):
    """Every visible string of a figure: titles, axis labels, tick labels, texts, legends."""
    out = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        out.append(fig._suptitle.get_text())
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        out += [t.get_text() for t in ax.texts]
        leg = ax.get_legend()
        if leg is not None:
            out += [t.get_text() for t in leg.get_texts()]
    return [t for t in out if t]


def _colorbar_axes(fig):
    """The axes of the figure's colour bars (through the public ``mappable.colorbar``)."""
    found = []
    for ax in fig.axes:
        for im in ax.images:
            if im.colorbar is not None and im.colorbar.ax not in found:
                found.append(im.colorbar.ax)
    return found


def test_plot_fusion_weights_adaptive_is_labelled_on_shared_scales():
    pytest.importorskip("matplotlib")
    from dynfuse.viz import plot_fusion_weights

    rng = np.random.default_rng(3)
    w = rng.normal(size=(19, 4, 6, 8)).astype(np.float32)
    w[:, 0] += 3.0  # Side5 far above the others: its variation would vanish on the shared scale
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    edges = rng.random((19, 6, 8)).astype(np.float32)
    fig = plot_fusion_weights(w, 13, image=image, edges=edges)
    texts = _texts(fig)
    for name in ("Side5 (car)", "Side1", "Side2", "Side3"):
        assert any(t.startswith(name) for t in texts), (name, texts)
    assert "image" in texts and "'car' edge probability" in texts
    assert any("'car'" in t for t in texts if t.startswith("Location-adaptive"))
    bars = _colorbar_axes(fig)
    assert sorted(ax.get_ylabel() for ax in bars) == ["fusion weight", "weight - panel mean"]
    maps = [ax.images[0] for ax in fig.axes if ax.images and ax.images[0].get_array().ndim == 2]
    absolute = [im for im in maps if im.get_cmap().name == "viridis"]
    deviation = [im for im in maps if im.get_cmap().name == "RdBu_r"]
    assert len(absolute) == len(deviation) == 4
    w64 = w[13].astype(np.float64)
    # one colour scale over the four inputs, and each panel's data is the input's map
    for im in absolute:
        assert im.get_clim() == (pytest.approx(w64.min()), pytest.approx(w64.max()))
    for j, im in enumerate(absolute):
        np.testing.assert_allclose(im.get_array(), w64[j], atol=1e-6)
    # the deviation row: map minus its own mean, one symmetric scale centred on 0
    dev = w64 - w64.mean(axis=(1, 2), keepdims=True)
    spread = np.abs(dev).max()
    for j, im in enumerate(deviation):
        np.testing.assert_allclose(im.get_array(), dev[j], atol=1e-5)
        assert im.get_clim() == (pytest.approx(-spread, rel=1e-5), pytest.approx(spread, rel=1e-5))
    # titles carry each input's mean and spread
    assert any(f"mean {w64[1].mean():.3g}" in t for t in texts)


def test_plot_fusion_weights_names_and_forms():
    pytest.importorskip("matplotlib")
    torch = pytest.importorskip("torch")
    from dynfuse.viz import class_name, fusion_input_names, plot_fusion_weights

    assert fusion_input_names(4) == ["Side5", "Side1", "Side2", "Side3"]
    assert fusion_input_names(6) == ["Side6", "Side1", "Side2", "Side3", "Side4", "Side5"]  # distinct
    assert class_name(19, 13) == "car" and class_name(20, 0) == "aeroplane"
    assert class_name(4, 2) == "class 2" and class_name(None, 1) == "class 1"
    rng = np.random.default_rng(4)
    w = torch.from_numpy(rng.normal(size=(4, 5, 6, 6)).astype(np.float32))  # S = 4
    texts = _texts(plot_fusion_weights(w, 2))
    assert any(t.startswith("Side5 (class 2)") for t in texts) and any(t.startswith("Side4") for t in texts)
    # softmax over the S+1 inputs: the weights shown sum to 1 at every location
    fig = plot_fusion_weights(w, 2, activation="softmax")
    shown = [
        ax.images[0].get_array() for ax in fig.axes if ax.images and ax.images[0].get_cmap().name == "viridis"
    ]
    np.testing.assert_allclose(np.sum(shown, axis=0), 1.0, atol=1e-6)
    assert "fusion weight (after softmax)" in _texts(fig)
    # one class given as (S+1, H, W), with a label
    texts = _texts(plot_fusion_weights(w[0], class_label="person"))
    assert any(t.startswith("Side5 (person)") for t in texts)


def test_plot_fusion_weights_invariant_and_fixed_matrix():
    pytest.importorskip("matplotlib")
    from dynfuse.viz import plot_fusion_weights

    rng = np.random.default_rng(5)
    w = rng.normal(size=(20, 4)).astype(np.float32)  # SBD classes, invariant or fixed
    fig = plot_fusion_weights(w, 14, image=np.zeros((8, 8, 3), np.uint8))
    texts = _texts(fig)
    for name in ("Side5", "Side1", "Side2", "Side3", "aeroplane", "person", "tvmonitor", "image"):
        assert name in texts
    assert f"{w[14, 2]:.2f}" in texts  # the values are written in
    assert any("outlined: 'person'" in t for t in texts)
    [bar] = _colorbar_axes(fig)
    assert bar.get_ylabel() == "fusion weight"
    matrix = [ax for ax in fig.axes if ax.images and ax is not bar and ax.get_xticklabels()]
    np.testing.assert_allclose(matrix[-1].images[0].get_array(), w)
    assert [p for p in matrix[-1].patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert "class 0" in _texts(plot_fusion_weights(w[:3]))  # K matching no dataset


def test_plot_fusion_weights_bad_input_is_named():
    pytest.importorskip("matplotlib")
    from dynfuse.viz import plot_fusion_weights

    w = np.zeros((3, 4, 5, 6), np.float32)
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 3\)"):
        plot_fusion_weights(w)
    with pytest.raises(ValueError, match="drop the batch dimension"):
        plot_fusion_weights(w[None], 0)
    with pytest.raises(ValueError, match="pass image="):
        plot_fusion_weights(w, 0, edges=np.zeros((5, 6)))
    with pytest.raises(ValueError, match="do not match"):
        plot_fusion_weights(w, 0, image=np.zeros((5, 6, 3), np.uint8), edges=np.zeros((4, 6)))
    with pytest.raises(ValueError, match="NaN"):
        plot_fusion_weights(np.full((4, 5, 6), np.nan, np.float32))
    with pytest.raises(ValueError, match="un-normalise"):
        plot_fusion_weights(w, 0, image=np.full((5, 6, 3), -1.0))
    with pytest.raises(ValueError, match="activation"):
        plot_fusion_weights(w, 0, activation="sigmoid")


def test_save_fusion_weights_writes_the_labelled_figure(tmp_path):
    pytest.importorskip("matplotlib")
    w = np.random.default_rng(6).normal(size=(19, 4, 6, 8)).astype(np.float32)
    img = save_fusion_weights(tmp_path / "w.png", w, 13, image=np.zeros((6, 8, 3), np.uint8), dpi=50)
    with Image.open(tmp_path / "w.png") as im:
        assert im.mode == "RGB" and im.size == (img.shape[1], img.shape[0])
        np.testing.assert_array_equal(np.asarray(im), img)
    assert img.shape[1] > 4 * 8 * 2 and (img < 128).any()  # a figure, not the bare strip
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temporary left


# ---------------------------------------------------------------- training curves
def _write_metrics(path, records, tail=""):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


def _run(**extra):
    recs = [
        {
            "kind": "val",
            "epoch": 0,
            "iteration": 0,
            "loss": 1.6,
            "mf_ods": 0.1,
            "mf_ois": 0.12,
            "mean_ap": 0.03,
        },
        {"kind": "train", "epoch": 1, "iteration": 2, "loss": 1.5, "lr": 0.1, "images_per_s": 40.0},
        {"kind": "train", "epoch": 1, "iteration": 4, "loss": 1.1, "lr": 0.1, "images_per_s": 42.0},
        {"kind": "epoch", "epoch": 1, "iteration": 4, "loss": 1.3, "images_per_s": 30.0, "seconds": 1.0},
        {"kind": "val", "epoch": 1, "iteration": 4, "loss": 1.0, "mf_ods": 0.3, "mean_ap": 0.2},
        {"kind": "train", "epoch": 2, "iteration": 6, "loss": "nan", "images_per_s": 41.0},
        {"kind": "train", "epoch": 2, "iteration": 8, "loss": 0.8},
        {"kind": "epoch", "epoch": 2, "iteration": 8, "loss": 0.9},  # no images_per_s: tolerated
        {
            "kind": "val",
            "epoch": 2,
            "iteration": 8,
            "loss": 0.7,
            "mf_ods": 0.5,
            "ap": 0.4,
            "scoring_error": None,
        },
        {"kind": "note", "text": "other kinds are ignored"},
    ]
    return recs


def _lines(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_plot_metrics_reads_the_records_and_tolerates_missing_keys(tmp_path):
    pytest.importorskip("matplotlib")
    from dynfuse.viz import load_metrics, plot_metrics

    _write_metrics(tmp_path / "metrics.jsonl", _run())
    m = load_metrics(tmp_path)
    assert [len(m[k]) for k in ("train", "epoch", "val")] == [4, 2, 3]
    fig = plot_metrics(tmp_path, tmp_path / "curves.png")
    loss, score, speed = fig.axes
    lines = _lines(loss)
    # train records sit at iteration / iterations-per-epoch (4, from the epoch summaries)
    assert lines["train (between log points)"][0] == [0.5, 1.0, 1.5, 2.0]
    assert np.isnan(lines["train (between log points)"][1][2])  # "nan" as written, not dropped
    assert lines["train (epoch mean)"] == ([1.0, 2.0], [1.3, 0.9])
    assert lines["validation"] == ([0.0, 1.0, 2.0], [1.6, 1.0, 0.7])
    scores = _lines(score)
    assert set(scores) == {"MF-ODS", "MF-OIS", "AP", "mean_ap"}  # each AP key under its own name
    assert scores["MF-ODS"][1] == pytest.approx([10.0, 30.0, 50.0])
    assert scores["MF-OIS"] == ([0.0], [pytest.approx(12.0)])  # recorded once only
    assert scores["AP"] == ([2.0], [pytest.approx(40.0)])
    assert scores["mean_ap"][0] == [0.0, 1.0]
    assert _lines(speed)["per epoch (start-up included)"] == ([1.0], [30.0])
    assert score.get_ylabel() == "validation score (%)" and speed.get_ylabel() == "images / s"
    assert Image.open(tmp_path / "curves.png").size[0] > 500


def test_plot_metrics_without_scores_or_summaries(tmp_path):
    pytest.importorskip("matplotlib")
    from dynfuse.viz import plot_metrics

    recs = [{"kind": "train", "epoch": 1, "iteration": i, "loss": 1.0 / i} for i in (1, 2, 3)]
    _write_metrics(tmp_path / "metrics.jsonl", recs)
    loss, score, speed = plot_metrics(tmp_path / "metrics.jsonl").axes
    # no epoch summaries: spread evenly inside the epoch
    assert _lines(loss)["train (between log points)"][0] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [t.get_text() for t in score.texts] == ["no validation scores recorded"]
    assert [t.get_text() for t in speed.texts] == ["no throughput recorded"]


def test_load_metrics_drops_what_a_killed_attempt_wrote_past_the_resume_point(tmp_path):
    from dynfuse.viz import load_metrics

    recs = _run()[:5]  # epoch 1 finished and checkpointed
    killed = [
        {"kind": "train", "epoch": 2, "iteration": 6, "loss": 9.0},
        {"kind": "train", "epoch": 2, "iteration": 8, "loss": 9.0},
        {"kind": "epoch", "epoch": 2, "iteration": 8, "loss": 9.0},
    ]  # died before its checkpoint
    resumed = [
        {"kind": "train", "epoch": 2, "iteration": 6, "loss": 0.8},
        {"kind": "train", "epoch": 2, "iteration": 8, "loss": 0.7},
        {"kind": "epoch", "epoch": 2, "iteration": 8, "loss": 0.75},
    ]
    _write_metrics(tmp_path / "metrics.jsonl", recs + killed + resumed)
    m = load_metrics(tmp_path)
    assert [r["loss"] for r in m["train"]] == [1.5, 1.1, 0.8, 0.7]
    assert [r["loss"] for r in m["epoch"]] == [1.3, 0.75]
    assert [r["epoch"] for r in m["val"]] == [0, 1]


def test_load_metrics_bad_files_are_named(tmp_path):
    from dynfuse.viz import MetricsFileError, load_metrics

    with pytest.raises(MetricsFileError, match="no metrics file .*metrics.jsonl"):
        load_metrics(tmp_path)
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"kind": "train", "epoch": 1, "iteration": 1, "loss": 1}\n{"kind": "tr\n'
        '{"kind": "epoch", "epoch": 1, "iteration": 1}\n',
        encoding="utf-8",
    )
    with pytest.raises(MetricsFileError, match=r"metrics.jsonl, line 2: not a JSON record"):
        load_metrics(path)
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(MetricsFileError, match="line 1: expected a JSON object with a 'kind'"):
        load_metrics(path)
    path.write_text('{"kind": "note"}\n\n', encoding="utf-8")
    with pytest.raises(MetricsFileError, match="holds no training records"):
        load_metrics(path)
    # a run killed while writing its last line: that line is skipped with a warning
    _write_metrics(path, _run()[:2], tail='{"kind": "train", "ep')
    with pytest.warns(UserWarning, match="unfinished last line 3"):
        assert len(load_metrics(path)["train"]) == 1


def test_plot_cli_metrics_verb(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from pathlib import Path

    from dynfuse.cli import plot_main

    tomllib = pytest.importorskip("tomllib")

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dynfuse-plot"] == "dynfuse.cli:plot_main"
    _write_metrics(tmp_path / "metrics.jsonl", _run())
    assert plot_main(["metrics", str(tmp_path)]) == 0
    assert (tmp_path / "curves.png").is_file() and "curves.png" in capsys.readouterr().out
    assert plot_main(["metrics", str(tmp_path / "metrics.jsonl"), "-o", str(tmp_path / "c.png")]) == 0
    assert Image.open(tmp_path / "c.png").size == Image.open(tmp_path / "curves.png").size
    assert plot_main(["metrics", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynfuse-plot: error: no metrics file") and "\n" not in err


# ---------------------------------------------------------------- contact sheets
def test_contact_sheet_row_shrinks_with_block_maxima():
    from dynfuse.viz import contact_sheet_row

    image = np.full((37, 50, 3), 100, np.uint8)
    probs = np.zeros((3, 37, 50), np.float32)
    probs[1, 20, 31] = 1.0  # one-pixel edge
    gt = np.zeros((3, 37, 50), bool)
    gt[2, 36, 49] = True  # in the padded last block
    tiles = contact_sheet_row(image, probs, gt, with_gt=True, max_height=16)
    assert [t.shape for t in tiles] == [(13, 17, 3)] * 3  # factor ceil(37 / 16) = 3
    pal = palette_for(3)
    assert tiles[2][20 // 3, 31 // 3].tolist() == pal[1].tolist()  # survives the shrinking
    assert (tiles[2] == 255).all(axis=2).sum() == 13 * 17 - 1
    assert tiles[1][12, 16].tolist() == pal[2].tolist()
    assert tiles[0][0, 0].tolist() == [100, 100, 100]
    assert contact_sheet_row(image, probs, None, with_gt=True)[1] is None
    assert len(contact_sheet_row(image, probs)) == 2
    assert contact_sheet_row(image, probs)[0].shape == (37, 50, 3)  # small images stay as they are
    with pytest.raises(ValueError, match="probs must be"):
        contact_sheet_row(image, probs[:, :5])
    with pytest.raises(ValueError, match="ground truth of shape"):
        contact_sheet_row(image, probs, gt[:2])


def test_contact_sheet_layout():
    from dynfuse.viz import contact_sheet

    red = np.zeros((10, 20, 3), np.uint8)
    red[..., 0] = 255
    rows = [("a", [red, None, red]), ("b", [red[:6, :8], red[:6, :8], red[:6, :8]])]
    sheet = contact_sheet(rows, ("image", "ground truth", "prediction"), gap=6, font_size=14)
    line = 20
    assert sheet.shape == (line + (10 + line + 6) + (6 + line + 6) + 6, 20 * 3 + 6 * 4, 3)
    y0 = line + line  # header line, row name line
    assert (sheet[y0 : y0 + 10, 6:26] == [255, 0, 0]).all()  # row a, column 0
    assert (sheet[y0 + 9, 32 + 10] == [200, 200, 200]).all()  # the missing tile is grey
    assert (sheet[:line] < 128).any()  # column titles are drawn
    with pytest.raises(ValueError, match="2 tiles for 3 columns"):
        contact_sheet([("a", [red, red])], ("image", "ground truth", "prediction"))
    with pytest.raises(ValueError, match="at least one row"):
        contact_sheet([])
    with pytest.raises(ValueError, match="no tile"):
        contact_sheet([("a", [None, None])])


def test_pictures_snippet_in_the_docs_runs(tmp_path, monkeypatch):
    """The Python snippet of docs/evaluation.md's "Pictures" section runs as written."""
    pytest.importorskip("matplotlib")
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text(encoding="utf-8")
    section = text[text.index("## Pictures") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/evaluation.md (Pictures)", "exec"), {})
    for name in ("edges.png", "weights.png", "pr.png"):
        assert Image.open(tmp_path / name).size[0] > 50
