"""Thinning equals MATLAB bwmorph(., 'thin', Inf): known shapes and a plain reference."""

import numpy as np
import pytest

from dynfuse.eval.thin import thin, thin_lookup_tables


def _reference_thin(mask: np.ndarray) -> np.ndarray:
    """Pixel-by-pixel two-subiteration thinning straight from the documented conditions."""
    img = np.pad(mask.astype(bool), 1)
    d1, d2 = thin_lookup_tables()
    nbrs = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))

    def code(y, x):
        return sum(int(img[y + dy, x + dx]) << k for k, (dy, dx) in enumerate(nbrs))

    while True:
        changed = False
        for table in (d1, d2):
            dele = [
                (y, x)
                for y in range(1, img.shape[0] - 1)
                for x in range(1, img.shape[1] - 1)
                if img[y, x] and table[code(y, x)]
            ]
            for y, x in dele:
                img[y, x] = False
            changed |= bool(dele)
        if not changed:
            return img[1:-1, 1:-1]


def test_lookup_tables_follow_the_documented_conditions():
    d1, d2 = thin_lookup_tables()
    # An isolated pixel (code 0) and a line end with one neighbour are never deleted (G2 fails).
    assert not d1[0] and not d2[0]
    assert not d1[1] and not d2[1]
    # West-side boundary pixel of a thick region: neighbours E, NE, N, S, SE on (x1,x2,x3,x7,x8).
    c = 1 | 2 | 4 | 64 | 128
    assert not d1[c]  # G3 keeps it in the first subiteration (x1 on, x8 on, x2 on)
    assert d2[c]  # the second subiteration removes it


def test_known_shapes():
    # A filled rectangle thins to its horizontal medial line, a 1-pixel line stays, a dot stays.
    rect = np.zeros((7, 11), dtype=bool)
    rect[2:5, 1:10] = True
    out = thin(rect)
    assert out.sum() >= 5 and out[3, 2:9].all() and not out[2].any() and not out[4].any()
    line = np.zeros((5, 9), dtype=bool)
    line[2, 1:8] = True
    assert np.array_equal(thin(line), line)
    diag = np.eye(6, dtype=bool)
    assert np.array_equal(thin(diag), diag)
    dot = np.zeros((3, 3), dtype=bool)
    dot[1, 1] = True
    assert np.array_equal(thin(dot), dot)
    # A filled square (odd side) thins to its centre pixel region, staying connected.
    sq = np.zeros((9, 9), dtype=bool)
    sq[2:7, 2:7] = True
    t = thin(sq)
    assert 1 <= t.sum() <= 3 and t[4, 4]
    # The skimage/MATLAB documented example: 5x3 block with a tail.
    square = np.zeros((7, 7), dtype=np.uint8)
    square[1:-1, 2:-2] = 1
    square[0, 1] = 1
    expected = np.zeros((7, 7), dtype=bool)
    expected[0, 1] = expected[1, 2] = expected[2, 3] = expected[3, 3] = expected[4, 3] = True
    assert np.array_equal(thin(square), expected)


@pytest.mark.parametrize("seed", range(6))
def test_matches_plain_reference_on_random_images(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 23, size=2)
    mask = rng.random((h, w)) < rng.uniform(0.3, 0.9)
    assert np.array_equal(thin(mask), _reference_thin(mask))


def test_dense_and_sparse_paths_agree_with_reference():
    rng = np.random.default_rng(7)
    from scipy import ndimage as ndi

    x = ndi.gaussian_filter(rng.random((40, 50)), 2)
    mask = x > np.quantile(x, 0.3)  # dense: exercises the whole-image pass
    assert np.array_equal(thin(mask), _reference_thin(mask))


def test_idempotent_max_iter_and_bad_input():
    rng = np.random.default_rng(3)
    m = rng.random((30, 30)) < 0.6
    t = thin(m)
    assert np.array_equal(thin(t), t)
    assert not (t & ~m).any()
    assert np.array_equal(thin(m, max_iter=0), m)
    one = thin(m, max_iter=1)
    assert (one.sum() >= t.sum()) and not (one & ~m).any()
    with pytest.raises(ValueError, match="2-D"):
        thin(np.zeros((2, 2, 2)))
    assert thin(np.zeros((0, 4))).shape == (0, 4)
