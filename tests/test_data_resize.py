"""MATLAB imresize(x, s, 'nearest') index mapping, pinned on cases worked out by hand.

By hand from imresize.m's contributions(): output x (1-based) reads input coordinate
u = x / s + 0.5 * (1 - 1 / s); the box kernel picks j = floor(u + 0.5), clamped to n.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dynfuse.data.resize import matlab_nearest_indices, matlab_resize_nearest, matlab_resized_length


@pytest.mark.parametrize(
    ("n", "s", "want"),
    [
        # u = 1.1667, 2.5, 3.8333, 5.1667 -> j = 1, 3, 4, 5 (u = 2.5 is exactly half-way: j = 3)
        (5, 0.75, [0, 2, 3, 4]),
        # u = 1.5, 3.5 -> j = 2, 4: the odd (0-based) rows, as Cityscapes' half-resolution GT
        (4, 0.5, [1, 3]),
        # ceil(4.5) = 5 outputs; u = 0.833, 1.5, 2.167, 2.833, 3.5 -> j = 1, 2, 2, 3, 4 -> clamp 3
        (3, 1.5, [0, 1, 1, 2, 2]),
        # u = 0.9, 1.7, 2.5 -> j = 1, 2, 3 -> clamp 2
        (2, 1.25, [0, 1, 1]),
        # u = 0.75, 1.25, 1.75, 2.25 -> j = 1, 1, 2, 2
        (2, 2.0, [0, 0, 1, 1]),
        (3, 0.75, [0, 2, 2]),
        (7, 1.0, list(range(7))),
    ],
)
def test_matlab_nearest_indices_hand_cases(n, s, want):
    got = matlab_nearest_indices(n, s)
    assert got.dtype == np.int64
    assert got.tolist() == want
    assert matlab_resized_length(n, s) == len(want)


@pytest.mark.parametrize(("n", "s", "out"), [(5, 0.75, 4), (3, 1.5, 5)])
def test_pil_nearest_samples_differently(n, s, out):
    """The deviation this module removes: PIL maps by n / out, MATLAB by the scale as given."""
    row = np.arange(n, dtype=np.int32)[None].repeat(2, axis=0)
    pil = np.asarray(Image.fromarray(row, mode="I").resize((out, 2), Image.NEAREST))[0]
    assert pil.tolist() != matlab_nearest_indices(n, s).tolist()


def test_matlab_resize_nearest_2d_and_channels():
    a = np.arange(15, dtype=np.uint16).reshape(5, 3)
    got = matlab_resize_nearest(a, 0.75)
    assert got.shape == (4, 3) and got.dtype == np.uint16
    np.testing.assert_array_equal(got, a[[0, 2, 3, 4]][:, [0, 2, 2]])
    rgb = np.stack([a, a + 100, a + 200], axis=-1)
    np.testing.assert_array_equal(matlab_resize_nearest(rgb, 0.75)[..., 1], got + 100)
    # Cityscapes full -> half: exactly every second pixel, starting at the second.
    big = np.arange(1024 * 2048, dtype=np.int64).reshape(1024, 2048)
    np.testing.assert_array_equal(matlab_resize_nearest(big, 0.5), big[1::2, 1::2])


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf")])
def test_bad_scale_is_named(bad):
    with pytest.raises(ValueError, match="scale"):
        matlab_nearest_indices(4, bad)
    with pytest.raises(TypeError, match="scale"):
        matlab_nearest_indices(4, "0.5")
    with pytest.raises(ValueError, match="shape"):
        matlab_resize_nearest(np.zeros(3), 0.5)
