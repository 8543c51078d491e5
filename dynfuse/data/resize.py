"""MATLAB's ``imresize(x, s, 'nearest')`` in numpy, for label maps.

The authors rescale their label maps in MATLAB (SBD's offline multi-scale training labels,
Cityscapes' half-resolution evaluation GT). ``imresize`` with a scale ``s`` (not an output size):

- makes ``ceil(s * n)`` output pixels per dimension of ``n`` input pixels;
- maps output pixel ``x`` (1-based) to the input coordinate ``u = x / s + 0.5 * (1 - 1 / s)``, using
  the scale *as given* (not ``out / n``);
- takes, with the box kernel ``-0.5 <= u - j < 0.5`` (no antialiasing for ``'nearest'``), the input
  pixel ``j = floor(u + 0.5)`` among ``floor(u - 0.5) + (0, 1, 2)``, and clamps ``j`` to ``n``.

PIL's nearest resize to the same size maps output ``i`` (0-based) to ``floor((i + 0.5) * n / out)``
instead. The two agree whenever ``s * n`` is an integer (e.g. Cityscapes at 0.5) and differ by one
row or column in places otherwise (SBD at 0.75, 1.25, 1.5 for most image sizes): with n = 5, s =
0.75 MATLAB picks rows (0, 2, 3, 4), PIL (0, 1, 3, 4).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["matlab_nearest_indices", "matlab_resize_nearest", "matlab_resized_length"]


def _check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale: expected a number, got {type(scale).__name__}")
    s = float(scale)
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"scale: expected a finite number > 0, got {scale!r}")
    return s


def matlab_resized_length(length: int, scale: float) -> int:
    """``ceil(scale * length)`` (at least 1), the size ``imresize(x, scale)`` gives a dimension."""
    return max(1, math.ceil(_check_scale(scale) * int(length)))


def matlab_nearest_indices(length: int, scale: float) -> np.ndarray:
    """Source index (0-based) of each output pixel of ``imresize(x, scale, 'nearest')``.

    Args:
        length: n >= 1, the input size along one dimension.
        scale: s > 0.

    Returns:
        (ceil(s * n),) int64 array of indices into the input, each in [0, n).
    """
    s = _check_scale(scale)
    n = int(length)
    if n < 1:
        raise ValueError(f"length: expected >= 1, got {length!r}")
    x = np.arange(1, matlab_resized_length(n, s) + 1, dtype=np.float64)
    # The same float64 operations, in the same order, as MATLAB's contributions(): the choice
    # between two pixels is decided exactly at half-way points such as u = 2.5.
    u = x / s + 0.5 * (1 - 1 / s)
    left = np.floor(u - 0.5)
    candidates = left[:, None] + np.arange(3, dtype=np.float64)[None, :]
    d = u[:, None] - candidates
    hit = (d >= -0.5) & (d < 0.5)
    # Exactly one candidate is hit (the interval is half-open and one pixel wide).
    j = candidates[np.arange(x.size), hit.argmax(axis=1)]
    j = np.clip(j, 1, n)  # MATLAB clamps (older releases mirror: the same pixel here)
    return j.astype(np.int64) - 1


def matlab_resize_nearest(arr: Any, scale: float) -> np.ndarray:
    """``imresize(arr, scale, 'nearest')`` for a (H, W) or (H, W, C) array (any dtype).

    Returns:
        (ceil(s * H), ceil(s * W)[, C]) array of ``arr``'s dtype; every value is an input value.
    """
    a = np.asarray(arr)
    if a.ndim not in (2, 3):
        raise ValueError(f"arr: expected a (H, W) or (H, W, C) array, got shape {a.shape}")
    h, w = a.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"arr: expected a non-empty array, got shape {a.shape}")
    rows = matlab_nearest_indices(h, scale)
    cols = matlab_nearest_indices(w, scale)
    return a[rows[:, None], cols[None, :]]
