"""SyntheticAblation: determinism, shapes, and the properties the Table 1 ablation relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynfuse.data.edges import mask_to_edges
from dynfuse.data.synthetic_ablation import AblationScene, SyntheticAblation, render_ablation_scene


def _grad(image: np.ndarray) -> np.ndarray:
    """(H, W) max absolute colour difference to the right / lower neighbour (0 on the last row/col)."""
    g = np.zeros(image.shape[:2])
    g[:, :-1] = np.abs(np.diff(image, axis=1)).max(-1)
    g[:-1, :] = np.maximum(g[:-1, :], np.abs(np.diff(image, axis=0)).max(-1))
    return g


@pytest.fixture(scope="module")
def scenes() -> list[AblationScene]:
    ds = SyntheticAblation(num_classes=4, size=64, length=40, seed=3)
    return [ds.scene(i) for i in range(len(ds))]


def test_items_shapes_and_dtypes():
    ds = SyntheticAblation(num_classes=5, size=(48, 40), length=3, split="val")
    item = ds[1]
    assert item["image"].shape == (3, 48, 40) and item["image"].dtype == torch.float32
    assert item["edges"].shape == (5, 48, 40) and item["edges"].dtype == torch.float32
    assert item["valid"].shape == (48, 40) and bool(item["valid"].all())
    assert item["name"] == "synthetic_ablation/val/000001"
    s = ds.scene(1)
    assert s.image.shape == (48, 40, 3) and s.image.dtype == np.float32
    assert 0.0 <= s.image.min() and s.image.max() <= 1.0
    assert s.texture.shape == s.thin.shape == s.labels.shape == (48, 40)
    assert s.texture.dtype == s.thin.dtype == bool
    assert "SyntheticAblation" in repr(ds)


def test_deterministic_and_streams_independent():
    a = SyntheticAblation(size=40, length=4, seed=7)
    b = SyntheticAblation(size=40, length=4, seed=7)
    for i in range(4):
        sa, sb = a.scene(i), b.scene(i)
        for x, y in zip(sa, sb, strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.scene(0).image, a.scene(1).image)
    assert not np.array_equal(a.scene(0).image, SyntheticAblation(size=40, seed=8).scene(0).image)
    test = SyntheticAblation(size=40, length=4, seed=7, split="test")
    assert not np.array_equal(a.scene(0).image, test.scene(0).image)


def test_render_is_a_function_of_the_generator():
    one = render_ablation_scene(np.random.default_rng(5), 3, (32, 32))
    two = render_ablation_scene(np.random.default_rng(5), 3, (32, 32))
    np.testing.assert_array_equal(one.image, two.image)
    np.testing.assert_array_equal(one.edges, two.edges)


def test_edges_are_exact_labels_of_the_painted_maps(scenes):
    for s in scenes[:10]:
        expected = mask_to_edges(s.labels, 4, radius=2.0, instance_map=s.instances)
        np.testing.assert_array_equal(s.edges, expected)


def test_texture_fraction_varies_per_scene(scenes):
    # per-image weights have something to adapt to: fully clean, fully textured and mixed scenes
    fractions = np.array([s.fraction for s in scenes])
    assert (fractions == 0.0).any() and (fractions == 1.0).any()
    mixed = fractions[(fractions > 0) & (fractions < 1)]
    assert mixed.size >= len(scenes) // 3
    for s in scenes:
        assert abs(s.texture.mean() - s.fraction) < 0.05


def test_texture_has_image_edges_but_no_class_edges(scenes):
    # low-level sides see strong edges in the texture, none of them is a positive
    checked = 0
    for s in scenes:
        edge = s.edges.any(0)
        pure = s.texture & (s.labels < 0)
        assert not (edge & pure & ~_near(s.labels >= 0, 3)).any()
        if pure.sum() > 200:
            g = _grad(s.image)
            clean = ~s.texture & (s.labels < 0) & ~_near(s.labels >= 0, 2) & ~_near(s.texture, 2)
            strong_tex = (g[pure] > 0.25).mean()
            strong_clean = (g[clean] > 0.25).mean() if clean.any() else 0.0
            assert strong_tex > 0.2, strong_tex  # many cell borders
            assert strong_clean < 0.01, strong_clean  # flat background (noise only)
            checked += 1
    assert checked >= 5


def _near(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def test_thin_bars_are_thin_labelled_and_have_edges(scenes):
    found = 0
    for s in scenes:
        if not s.thin.any():
            continue
        bars = s.thin & (s.labels >= 0)
        assert bars.any()
        # a bar is at most 3 px across: eroding it by a 3x3 square (radius 1 each way twice) empties it
        eroded = bars.copy()
        for _ in range(2):
            eroded = (
                eroded
                & np.roll(eroded, 1, 0)
                & np.roll(eroded, -1, 0)
                & np.roll(eroded, 1, 1)
                & np.roll(eroded, -1, 1)
            )
        # crossings of two bars can be thicker; allow a few pixels there
        assert eroded.sum() <= 4
        assert s.edges.any(0)[bars].mean() > 0.9  # every bar pixel lies within radius 2 of its border
        # bars sit in the clean region whenever there is one
        if s.fraction < 1.0:
            assert (~s.texture[s.thin]).mean() > 0.3
        found += 1
    assert found >= len(scenes) // 2


def test_texture_off_gives_the_control_family():
    ds = SyntheticAblation(size=40, length=6, texture=False)
    for i in range(6):
        s = ds.scene(i)
        assert s.fraction == 0.0 and not s.texture.any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_thin": (3, 1)}, "num_thin"),
        ({"p_clean": 1.5}, "p_clean"),
        ({"p_clean": 0.6, "p_textured": 0.6}, "p_clean \\+ p_textured"),
        ({"fraction": (0.8, 0.2)}, "fraction"),
        ({"cell": (0.5, 2.0)}, "cell"),
        ({"size": 4}, "size"),
        ({"num_classes": 0}, "num_classes"),
        ({"split": "dev"}, "split"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticAblation(**kwargs)
