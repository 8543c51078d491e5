"""mask_to_edges against a literal per-pixel implementation of DESIGN.md's edge rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynfuse.data.edges import disc_offsets, mask_to_edges


def brute_force_edges(labels, num_classes, radius, ignored=None, instances=None):
    """Per pixel, per class, per disc offset: the rule exactly as DESIGN.md section 5 words it."""
    h, w = labels.shape
    ignored = np.zeros((h, w), dtype=bool) if ignored is None else ignored
    reach = max(int(np.ceil(radius)), 1)
    disc = [
        (dy, dx)
        for dy in range(-reach, reach + 1)
        for dx in range(-reach, reach + 1)
        if dy * dy + dx * dx <= radius * radius
    ]

    def ident(y, x):
        return (int(labels[y, x]), None if instances is None else int(instances[y, x]))

    def seg(k, y, x):
        # "instance id where p is of class k, and 0 elsewhere" with "elsewhere" kept distinct
        if labels[y, x] != k:
            return ("not k",)
        return ("k", None if instances is None else int(instances[y, x]))

    out = np.zeros((num_classes, h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            neigh = [(y + dy, x + dx) for dy, dx in disc if 0 <= y + dy < h and 0 <= x + dx < w]
            candidate = any(
                ident(qy, qx) != ident(y, x) and not ignored[y, x] and not ignored[qy, qx] for qy, qx in neigh
            )
            if not candidate:
                continue
            for k in range(num_classes):
                out[k, y, x] = any(seg(k, qy, qx) != seg(k, y, x) for qy, qx in neigh)
    return out


def test_disc_offsets():
    assert len(disc_offsets(1)) == 4
    assert len(disc_offsets(1.5)) == 8
    assert len(disc_offsets(2)) == 12
    assert len(disc_offsets(3)) == 28
    assert disc_offsets(0.5) == []
    assert all(dy * dy + dx * dx <= 6.25 for dy, dx in disc_offsets(2.5))
    with pytest.raises(ValueError, match="radius"):
        disc_offsets(-1)


@pytest.mark.parametrize("seed", range(6))
def test_random_maps_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(5, 17)), int(rng.integers(5, 17))
    k = int(rng.integers(1, 5))
    radius = float(rng.choice([1, 1.5, 2, 2.5, 3]))
    # Blocky maps (structure) with some pixel noise (hard cases); labels outside 0..K-1 too.
    block = rng.integers(-1, k + 2, size=(h // 3 + 1, w // 3 + 1))
    labels = np.kron(block, np.ones((3, 3), dtype=np.int64))[:h, :w]
    noisy = rng.random((h, w)) < 0.1
    labels[noisy] = rng.integers(-1, k + 2, size=int(noisy.sum()))
    labels[labels == k + 1] = 255
    instances = rng.integers(0, 3, size=(h, w)) if seed % 2 == 0 else None
    ignore_values = [k] if seed % 3 == 0 else []
    ignored = np.isin(labels, ignore_values)
    want = brute_force_edges(labels, k, radius, ignored, instances)
    got = mask_to_edges(labels, k, radius=radius, ignore=ignore_values, instance_map=instances)
    assert got.dtype == np.bool_ and got.shape == (k, h, w)
    np.testing.assert_array_equal(got, want)
    # The same ignore given as a mask.
    got_mask = mask_to_edges(labels, k, radius=radius, ignore=ignored, instance_map=instances)
    np.testing.assert_array_equal(got_mask, want)


def test_more_than_64_classes_match_brute_force():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 70, size=(9, 11))
    want = brute_force_edges(labels, 70, 1.5)
    np.testing.assert_array_equal(mask_to_edges(labels, 70, radius=1.5), want)


def test_two_halves_radius_1_and_2():
    labels = np.zeros((4, 8), dtype=np.int64)
    labels[:, 4:] = 1
    e1 = mask_to_edges(labels, 2, radius=1)
    expect = np.zeros((4, 8), dtype=bool)
    expect[:, 3:5] = True
    # Both sides of the boundary, and each side carries both classes.
    np.testing.assert_array_equal(e1[0], expect)
    np.testing.assert_array_equal(e1[1], expect)
    e2 = mask_to_edges(labels, 2, radius=2)
    expect2 = np.zeros((4, 8), dtype=bool)
    expect2[:, 2:6] = True
    np.testing.assert_array_equal(e2[0], expect2)
    np.testing.assert_array_equal(e2[1], expect2)
    # A third class that is absent has no edges; the image border is no edge.
    e3 = mask_to_edges(labels, 3, radius=2)
    assert not e3[2].any()
    assert not mask_to_edges(np.zeros((5, 5), dtype=int), 1).any()


def test_single_pixel_plus_shape():
    labels = np.zeros((5, 5), dtype=np.int64)
    labels[2, 2] = 1
    plus = np.zeros((5, 5), dtype=bool)
    plus[2, 1:4] = True
    plus[1:4, 2] = True
    e = mask_to_edges(labels, 2, radius=1)
    np.testing.assert_array_equal(e[0], plus)
    np.testing.assert_array_equal(e[1], plus)


def test_background_is_no_class():
    labels = np.full((3, 6), 255, dtype=np.int64)
    labels[:, :3] = 0
    e = mask_to_edges(labels, 1, radius=1)
    expect = np.zeros((3, 6), dtype=bool)
    expect[:, 2:4] = True  # the class-0 side and the background side of the boundary
    np.testing.assert_array_equal(e[0], expect)


def test_ignored_region_makes_no_edges():
    # class 0 | ignored (label 9) | class 1 | background
    labels = np.array([[0, 0, 0, 9, 9, 9, 1, 1, 1, -1, -1, -1]] * 3)
    e = mask_to_edges(labels, 2, radius=1, ignore=[9])
    assert not e[0].any()  # class 0 only touches the ignored region
    expect = np.zeros((3, 12), dtype=bool)
    expect[:, 8:10] = True  # class 1 against background, both sides
    np.testing.assert_array_equal(e[1], expect)
    # Without the ignore, class 0 and 1 get edges against label 9.
    e_all = mask_to_edges(labels, 2, radius=1)
    assert e_all[0][:, 2].all() and e_all[1][:, 5:7].all()


def test_candidate_from_elsewhere_allows_edge_against_ignored_pixel():
    # p (class 0) sits between an ignored pixel and class 1: it is a candidate (thanks to class 1),
    # so it is an edge of class 0 even though its class-0 neighbour test also sees the ignored one.
    labels = np.array([[9, 0, 1]])
    e = mask_to_edges(labels, 2, radius=1, ignore=[9])
    np.testing.assert_array_equal(e[0], [[False, True, True]])
    np.testing.assert_array_equal(e[1], [[False, True, True]])


def test_instances_separate_touching_objects():
    labels = np.zeros((4, 8), dtype=np.int64)
    instances = np.zeros((4, 8), dtype=np.int64)
    instances[:, 4:] = 7
    assert not mask_to_edges(labels, 1, radius=1).any()
    e = mask_to_edges(labels, 1, radius=1, instance_map=instances)
    expect = np.zeros((4, 8), dtype=bool)
    expect[:, 3:5] = True
    np.testing.assert_array_equal(e[0], expect)
    # Instance id 0 is a real instance, distinct from "not this class".
    labels[:, 6:] = 1
    e2 = mask_to_edges(labels, 2, radius=1, instance_map=np.zeros_like(labels))
    assert e2[0][:, 5].all() and e2[1][:, 6].all()


def test_accepts_torch_and_bool_and_float_maps():
    labels = np.zeros((6, 6), dtype=np.int64)
    labels[2:4, 2:4] = 1
    ref = mask_to_edges(labels, 2)
    np.testing.assert_array_equal(mask_to_edges(torch.from_numpy(labels), 2), ref)
    np.testing.assert_array_equal(mask_to_edges(labels.astype(np.uint8), 2), ref)
    np.testing.assert_array_equal(mask_to_edges(labels.astype(np.float32), 2), ref)
    np.testing.assert_array_equal(mask_to_edges(labels.astype(bool), 2), ref)


def test_bad_inputs():
    labels = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="label_map"):
        mask_to_edges(np.zeros((2, 4, 4)), 2)
    with pytest.raises(TypeError, match="label_map"):
        mask_to_edges(np.full((4, 4), 0.5), 2)
    with pytest.raises(ValueError, match="num_classes"):
        mask_to_edges(labels, 0)
    with pytest.raises(TypeError, match="num_classes"):
        mask_to_edges(labels, 2.0)
    with pytest.raises(ValueError, match="instance_map"):
        mask_to_edges(labels, 2, instance_map=np.zeros((3, 4), dtype=int))
    with pytest.raises(ValueError, match="ignore"):
        mask_to_edges(labels, 2, ignore=np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="radius"):
        mask_to_edges(labels, 2, radius=float("nan"))
    with pytest.raises(TypeError, match="ignore"):
        mask_to_edges(labels, 2, ignore="3")
    with pytest.raises(TypeError, match="ignore"):
        mask_to_edges(labels, 2, ignore=[0.5])
    # A single value works as well as a collection.
    labels[1, 1] = 1
    single = mask_to_edges(labels, 2, ignore=1)
    np.testing.assert_array_equal(single, mask_to_edges(labels, 2, ignore=[1]))
    assert not single.any()


def test_large_map_is_vectorised():
    # A Cityscapes-sized map must take seconds, not minutes (no timing assertion: just run it).
    rng = np.random.default_rng(0)
    block = rng.integers(-1, 19, size=(64, 128))
    labels = np.kron(block, np.ones((16, 16), dtype=np.int64))
    instances = np.kron(rng.integers(0, 3, size=(64, 128)), np.ones((16, 16), dtype=np.int64))
    e = mask_to_edges(labels, 19, radius=2, ignore=labels == -1, instance_map=instances)
    assert e.shape == (19, 1024, 2048)
    # Spot-check a window against the brute force (the window's own border differs, so crop).
    win = (slice(100, 130), slice(200, 236))
    sub = brute_force_edges(labels[win], 19, 2, labels[win] == -1, instances[win])
    np.testing.assert_array_equal(e[:, 103:127, 203:233], sub[:, 3:27, 3:33])
