"""What happens to a prediction and its ground truth before they are counted.

- :func:`to_probability`: integer maps -> [0, 1] (scale 1, 255 or 65535; ``None`` = by dtype).
- :func:`resize_to`: prediction to the ground-truth size (``"bicubic"`` is MATLAB ``imresize``'s
  default, which the authors' ``evaluate_imgs.m`` applies, reimplemented in numpy by
  :func:`matlab_imresize`: a = -0.5 cubic kernel, widened when shrinking (antialiasing), weights
  normalised over the whole kernel and the border mirrored; ``"bilinear"`` is PIL's;
  ``"nearest"`` is what ``pyedgeeval`` does).
- :func:`crop_margin`: SBD-style margin crop (SEAL drops 5 pixels on every side for SBD).
- :func:`edge_nms`: non-maximum suppression of a soft edge map along its orientation (the
  Dollar toolbox ``edgesNms`` recipe with ``r=1, s=5, m=1.01`` as SEAL/pyedgeeval use).
- :func:`kill_internal_mask`: for non-instance-sensitive ground truth, predicted pixels inside
  the class's region and farther than the tolerance from any ground-truth edge are dropped.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "to_probability",
    "resize_to",
    "matlab_imresize",
    "imresize_weights",
    "crop_margin",
    "edge_nms",
    "kill_internal_mask",
    "RESIZE_METHODS",
]

RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "none")


def to_probability(pred: np.ndarray, scale: float | None = None, uint16_scale: float = 65535.0) -> np.ndarray:
    """Prediction as float32 in [0, 1].

    Args:
        pred: (..., H, W) bool, integer or float array.
        scale: divide by this (1, 255, 65535, ...); ``None`` picks it from the dtype: bool and
            float -> 1, uint8 -> 255, uint16 -> ``uint16_scale``.
        uint16_scale: divisor of 16-bit maps when ``scale`` is None: 65535 maps the full range
            onto [0, 1]; the authors' ``evaluate_imgs.m`` reads ``double(imread(...)) ./ 65536``.

    Raises:
        ValueError: NaN or infinite values (named with their count), or values outside [0, 1].
    """
    arr = np.asarray(pred)
    if np.issubdtype(arr.dtype, np.floating) and arr.size and not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise ValueError(f"pred holds {n_nan} NaN and {n_inf} infinite values")
    if scale is None:
        if arr.dtype == bool or np.issubdtype(arr.dtype, np.floating):
            scale = 1.0
        elif arr.dtype == np.uint8:
            scale = 255.0
        elif arr.dtype == np.uint16:
            scale = float(uint16_scale)
        else:
            raise TypeError(f"pred: cannot infer the scale of dtype {arr.dtype}; pass scale (1, 255, 65535)")
    if not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    out = arr.astype(np.float32) / np.float32(scale)
    if out.size and (float(out.min()) < 0.0 or float(out.max()) > 1.0 + 1e-6):
        raise ValueError(
            f"pred / scale must lie in [0, 1], got [{float(out.min())}, {float(out.max())}] "
            f"with scale={scale}"
        )
    return out


def resize_to(pred: np.ndarray, shape: tuple[int, int], method: str = "bicubic") -> np.ndarray:
    """Resize a (H, W) float map to ``shape`` (no-op when the size already matches).

    ``"bicubic"`` is :func:`matlab_imresize` (values may over/undershoot [0, 1] slightly near
    steps, as in MATLAB; thresholds inside (0, 1) see no difference); ``"bilinear"`` and
    ``"nearest"`` are PIL's, clipped to [0, 1]. Returns float32.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method must be one of {RESIZE_METHODS}, got {method!r}")
    arr = np.asarray(pred, dtype=np.float32)
    if arr.shape == tuple(shape):
        return arr
    if method == "none":
        raise ValueError(
            f"prediction shape {arr.shape} differs from ground truth {tuple(shape)} and resize='none'"
        )
    if method == "bicubic":
        return matlab_imresize(arr, shape).astype(np.float32)
    from PIL import Image

    resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}[method]
    img = Image.fromarray(arr, mode="F").resize((shape[1], shape[0]), resample=resample)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB ``imresize``'s ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


def imresize_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of MATLAB's bicubic ``imresize`` along one axis of length ``n_in`` -> ``n_out``.

    Output pixel ``x`` (1-based) sits at input coordinate ``u = x / s + (1 - 1 / s) / 2``
    (``s = n_out / n_in``). When shrinking (``s < 1``) the kernel is stretched to ``s * cubic(s * d)``
    over a width of ``4 / s`` (antialiasing). Each output's weights are divided by their sum
    over the whole kernel, then taps outside the image are mirrored onto it (``..., 2, 1, 1, 2,
    ..., n, n, n-1, ...``), so a border pixel takes the weight of its mirrored neighbours instead
    of the kernel being cut and renormalised (PIL's way).

    Returns:
        ``(index, weight)``: (n_out, P) int64 0-based input indices and float64 weights.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be >= 1, got {n_in} -> {n_out}")
    s = n_out / n_in
    width = 4.0 if s >= 1 else 4.0 / s
    x = np.arange(1, n_out + 1, dtype=np.float64)
    u = x / s + 0.5 * (1.0 - 1.0 / s)
    left = np.floor(u - width / 2.0)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    d = u[:, None] - idx
    w = s * _cubic(s * d) if s < 1 else _cubic(d)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    idx = mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    return idx, w


def matlab_imresize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """MATLAB ``imresize(img, shape)`` (bicubic, antialiasing on) of a (H, W) float map.

    Separable: the axis with the smaller scale factor is resized first (MATLAB's order; rows
    first on a tie). Computed in float64, not clipped. Returns (shape[0], shape[1]) float64.
    """
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"img must be (H, W), got {a.shape}")
    h, w = a.shape
    oh, ow = int(shape[0]), int(shape[1])
    order = (0, 1) if oh / h <= ow / w else (1, 0)
    for axis in order:
        n_in, n_out = a.shape[axis], (oh, ow)[axis]
        if n_in == n_out:
            continue  # scale 1: the cubic kernel at integer offsets is the identity
        idx, wt = imresize_weights(n_in, n_out)
        if axis == 0:
            a = np.einsum("op,opw->ow", wt, a[idx])
        else:
            a = np.einsum("op,hop->ho", wt, a[:, idx])
    return a


def crop_margin(x: np.ndarray, margin: int) -> np.ndarray:
    """Drop ``margin`` pixels on every side of the last two axes."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if margin == 0:
        return x
    if x.shape[-2] <= 2 * margin or x.shape[-1] <= 2 * margin:
        raise ValueError(f"margin {margin} leaves nothing of an image of shape {x.shape[-2:]}")
    return x[..., margin:-margin, margin:-margin]


def _conv_tri(img: np.ndarray, r: float) -> np.ndarray:
    """Triangle-filter smoothing (Dollar's ``convTri``) with symmetric padding."""
    if r <= 0:
        return img
    if r <= 1:
        p = 12.0 / r / (r + 2) - 2
        f = np.array([1.0, p, 1.0]) / (2 + p)
    else:
        ri = int(r)
        f = np.array(list(range(1, ri + 2)) + list(range(ri, 0, -1)), dtype=np.float64)
        f /= (ri + 1) ** 2
    out = ndi.convolve1d(img, f, axis=0, mode="reflect")
    return ndi.convolve1d(out, f, axis=1, mode="reflect")


def _bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    h, w = img.shape
    y = np.clip(y, 0, h - 1.001)
    x = np.clip(x, 0, w - 1.001)
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    dy, dx = y - y0, x - x0
    return (
        img[y0, x0] * (1 - dy) * (1 - dx)
        + img[y0 + 1, x0] * dy * (1 - dx)
        + img[y0, x0 + 1] * (1 - dy) * dx
        + img[y0 + 1, x0 + 1] * dy * dx
    )


def edge_nms(prob: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01) -> np.ndarray:
    """Thin a soft (H, W) edge map by suppressing non-maxima across the edge orientation.

    Orientation from the second derivatives of the map smoothed with ``convTri(., 4)``; a pixel
    is zeroed when ``m * e`` is below the bilinear value at distance 1..r on either side along
    the normal; pixels within ``s`` of the border are attenuated linearly. Returns float32.
    """
    e = _conv_tri(np.asarray(prob, dtype=np.float64), 1)
    oy, ox = np.gradient(_conv_tri(e, 4))
    oxy, oxx = np.gradient(ox)
    oyy, _ = np.gradient(oy)
    oxx = np.where(oxx == 0, 1e-5, oxx)
    ori = np.mod(np.arctan(oyy * np.sign(-oxy) / oxx), np.pi)
    h, w = e.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cos, sin = np.cos(ori), np.sin(ori)
    out = e.copy()
    em = e * m
    for d in range(-r, r + 1):
        if d == 0:
            continue
        nb = _bilinear(e, yy + d * sin, xx + d * cos)
        out[em < nb] = 0.0
    s = min(s, w // 2, h // 2)
    for i in range(s):
        f = i / s
        out[:, i] *= f
        out[:, w - 1 - i] *= f
        out[i, :] *= f
        out[h - 1 - i, :] *= f
    return out.astype(np.float32)


def kill_internal_mask(gt: np.ndarray, seg: np.ndarray, max_dist: float) -> np.ndarray:
    """(H, W) bool: False where a predicted pixel is killed.

    Args:
        gt: (H, W) bool edges of the class.
        seg: (H, W) bool region of the class.
        max_dist: tolerance as a fraction of the diagonal; pixels inside ``seg`` whose distance
            to the nearest ground-truth edge exceeds it are killed.
    """
    g = np.asarray(gt, dtype=bool)
    sg = np.asarray(seg, dtype=bool)
    if g.shape != sg.shape:
        raise ValueError(f"seg must have the ground truth's shape {g.shape}, got {sg.shape}")
    buffer = max_dist * math.hypot(*g.shape)
    if g.any():
        dist = ndi.distance_transform_edt(~g)
    else:
        dist = np.full(g.shape, np.inf)
    return ~((dist > buffer) & sg)
