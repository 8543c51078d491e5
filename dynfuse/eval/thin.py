"""Morphological thinning equal to MATLAB ``bwmorph(bw, 'thin', Inf)``.

MATLAB documents its ``'thin'`` operation as the two-subiteration parallel algorithm of
Lam, Lee and Suen (1992, "Thinning methodologies - a comprehensive survey", p. 879). With the
eight neighbours ``x1 .. x8`` of a pixel ``p`` numbered counter-clockwise from the east
(``x1`` = E, ``x2`` = NE, ``x3`` = N, ..., ``x8`` = SE) and ``x9 = x1``:

- G1: ``X_H(p) == 1`` with ``X_H = sum_{i=1..4} [x_{2i-1} == 0 and (x_{2i} or x_{2i+1})]``;
- G2: ``2 <= min(n1, n2) <= 3`` with ``n1 = sum_k (x_{2k-1} or x_{2k})``,
  ``n2 = sum_k (x_{2k} or x_{2k+1})``;
- G3: ``(x2 or x3 or not x8) and x1`` is false; G3': ``(x6 or x7 or not x4) and x5`` is false.

The first subiteration deletes, in parallel, every foreground pixel meeting G1, G2 and G3; the
second every pixel meeting G1, G2 and G3'. Iterations repeat until one full iteration changes
nothing. Pixels outside the image count as background (as ``bwlookup`` does).

Speed: a pixel's decision depends only on its 3x3 neighbourhood, so after the first pass a pixel
is re-examined by a subiteration only when one of its neighbours was deleted since that
subiteration last looked at it. Work is therefore proportional to the contour that is still
moving, not to the image area times the number of iterations.
"""

from __future__ import annotations

import numpy as np

__all__ = ["thin", "thin_lookup_tables"]


def _neighbour_bits(code: np.ndarray) -> list[np.ndarray]:
    """Bits ``x1..x8`` (as booleans) of the 8-neighbour codes in ``code`` (bit k-1 is x_k)."""
    return [((code >> k) & 1).astype(bool) for k in range(8)]


def thin_lookup_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two subiterations.

    Returns:
        ``(delete1, delete2)``: boolean arrays of shape (256,), indexed by the 8-neighbour code
        ``sum_k x_k << (k - 1)``; True where a foreground centre pixel is deleted.
    """
    code = np.arange(256)
    bits = _neighbour_bits(code)
    x = dict(enumerate([*bits, bits[0]], start=1))  # 1-based, x[9] = x[1]
    x_h = np.zeros(256, dtype=np.int64)
    n1 = np.zeros(256, dtype=np.int64)
    n2 = np.zeros(256, dtype=np.int64)
    for i in range(1, 5):
        x_h += ~x[2 * i - 1] & (x[2 * i] | x[2 * i + 1])
        n1 += x[2 * i - 1] | x[2 * i]
        n2 += x[2 * i] | x[2 * i + 1]
    g1 = x_h == 1
    m = np.minimum(n1, n2)
    g2 = (m >= 2) & (m <= 3)
    g3 = ~((x[2] | x[3] | ~x[8]) & x[1])
    g3p = ~((x[6] | x[7] | ~x[4]) & x[5])
    return g1 & g2 & g3, g1 & g2 & g3p


_DELETE1, _DELETE2 = thin_lookup_tables()


def _dense_codes(img2d: np.ndarray) -> np.ndarray:
    """8-neighbour codes of every pixel of a zero-bordered (H+2, W+2) uint8 image (border: 0)."""
    code = np.zeros_like(img2d)
    inner = code[1:-1, 1:-1]
    # (dy, dx) of x1..x8, counter-clockwise from the east.
    for k, (dy, dx) in enumerate(((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))):
        inner |= img2d[1 + dy : img2d.shape[0] - 1 + dy, 1 + dx : img2d.shape[1] - 1 + dx] << k
    return code


def thin(mask: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Thin a binary image to 8-connected lines, as MATLAB ``bwmorph(mask, 'thin', Inf)``.

    Args:
        mask: (H, W) array; nonzero is foreground (bool or any numeric dtype).
        max_iter: stop after this many full iterations (MATLAB's ``n``); None runs to the
            fixed point (MATLAB's ``Inf``).

    Returns:
        (H, W) bool array.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {arr.shape}")
    if max_iter is not None and max_iter < 0:
        raise ValueError(f"max_iter must be >= 0 or None, got {max_iter}")
    h, w = arr.shape
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    wp = w + 2
    # Padded flat image: one background pixel around the border removes all bounds checks.
    img = np.zeros((h + 2) * wp, dtype=np.uint8)
    img.reshape(h + 2, wp)[1:-1, 1:-1] = arr != 0
    offsets = np.array([1, -wp + 1, -wp, -wp - 1, -1, wp - 1, wp, wp + 1], dtype=np.int64)

    # Pixels each subiteration still has to examine. Initially every foreground pixel with a
    # background 4-neighbour: G1 needs one, and interior pixels get flagged when a neighbour goes.
    im2 = img.reshape(h + 2, wp)
    inner = im2[1:-1, 1:-1].astype(bool)
    pend2 = np.zeros(im2.shape, dtype=bool)
    pend2[1:-1, 1:-1] = inner & ~(
        im2[:-2, 1:-1].astype(bool)
        & im2[2:, 1:-1].astype(bool)
        & im2[1:-1, :-2].astype(bool)
        & im2[1:-1, 2:].astype(bool)
    )
    if not pend2.any():
        return inner
    pending = [pend2.ravel(), pend2.ravel().copy()]
    tables = (_DELETE1, _DELETE2)

    # Above this many candidates a whole-image pass with shifted slices beats gathering.
    dense_limit = max(4096, img.size // 16)
    iteration = 0
    while max_iter is None or iteration < max_iter:
        changed = False
        for sub in (0, 1):
            cand = np.flatnonzero(pending[sub])
            if cand.size == 0:
                continue
            pending[sub][cand] = False
            if cand.size > dense_limit:
                code = _dense_codes(img.reshape(h + 2, wp)).ravel()
                flag = tables[sub][code]
                flag &= img.astype(bool)
                dele = cand[flag[cand]]
            else:
                cand = cand[img[cand] != 0]
                nb = img[cand[:, None] + offsets[None, :]]
                # Bit k-1 of the code is x_k: packing the 8 neighbours little-endian is the code.
                code = np.packbits(nb, axis=1, bitorder="little")[:, 0]
                dele = cand[tables[sub][code]]
            if dele.size == 0:
                continue
            changed = True
            img[dele] = 0  # parallel: every decision above read the image before this line
            touched = (dele[:, None] + offsets[None, :]).ravel()
            touched = touched[img[touched] != 0]
            pending[0][touched] = True
            pending[1][touched] = True
        iteration += 1
        if not changed and not pending[0].any() and not pending[1].any():
            break
    return img.reshape(h + 2, wp)[1:-1, 1:-1].astype(bool)
