"""Triton kernels of the fused DFF fusion op (forward, and one backward producing every gradient).

Layering (as in Liger-Kernel): these ``@triton.jit`` kernels -> the launchers in
:mod:`dynfuse.ops.triton_backend` (strides, grid, block config) -> the custom ops and their autograd
formula in the same module -> :func:`dynfuse.ops.dynamic_fuse`.

Tiling: one program per (pixel block, image b). A program keeps the S shared side maps of its pixels
in registers as a (JP, BLOCK) tile whose row 0 is free (JP = next power of two >= S+1), then loops
over the K classes: per class it loads side5[b, k] into row 0, loads the S+1 weights, applies the
optional softmax over the rows, and reduces the rows. Nothing of size K*(S+1) is ever stored: the
backward recomputes the concatenation and the softmax from the inputs.

Addressing: every tensor is described by a base pointer and element strides over (b, k|s[, j], p),
where p = h*W + w is the flattened pixel index; the host makes sure each tensor's (H, W) axes flatten
to one stride (see ``triton_backend._pixel_stride``). Strides may be 0 (broadcast weights, the
expanded gradient of ``.sum()``). Image and class offsets are added to scalar base pointers (64-bit
pointer arithmetic); pixel offsets are int32 unless ``WIDE`` says they may pass 2**31 - 1.

Weights come in two shapes inside the kernels: per-pixel weights (``W_PIX``) are a (JP, BLOCK) tile,
broadcast weights (location-invariant or fixed) a (JP, 1) column that broadcasts against the pixel
tile, so the forward, the backward and the softmax are written once for both.

Triton reads ``TRITON_INTERPRET`` when this module is imported (``@triton.jit`` then builds
interpreted functions that run on CPU tensors); the mode is fixed for the process, see
:mod:`dynfuse.ops.triton_mode`.
"""

import triton
import triton.language as tl

# ------------------------------------------------------------------------------------------------
# Shared prologue and per-class steps
# ------------------------------------------------------------------------------------------------


@triton.jit
def _pixel_tile(HW, BLOCK: tl.constexpr, JP: tl.constexpr, WIDE: tl.constexpr):
    """This program's pixel indices ``pix`` (BLOCK,), their mask ``pmask`` (pixels < HW) and the
    tile's row indices ``row`` as a (JP, 1) column; int64 indices when ``WIDE``."""
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pmask = pix < HW
    row = tl.arange(0, JP)[:, None]
    if WIDE:
        pix = pix.to(tl.int64)
        row = row.to(tl.int64)
    return pix, pmask, row


@triton.jit
def _side_offsets(row, pix, s_stride, p_stride):
    """(JP, BLOCK) offsets of a tile whose row r >= 1 holds shared map r - 1 (row 0 is side5's)."""
    return (row - 1) * s_stride + (pix * p_stride)[None, :]


@triton.jit
def _side_mask(row, pmask, S):
    """Rows 1..S (the shared maps) of the pixels inside the image."""
    return (row >= 1) & (row <= S) & pmask[None, :]


@triton.jit
def _load_shared(sides_ptr, sd_s, sd_p, row, pix, pmask, S):
    """The S shared maps of this program's pixels as rows 1..S of a float32 (JP, BLOCK) tile (other
    rows 0); ``sides_ptr`` already points at image b."""
    offs = _side_offsets(row, pix, sd_s, sd_p)
    return tl.load(sides_ptr + offs, mask=_side_mask(row, pmask, S), other=0.0).to(tl.float32)


@triton.jit
def _weight_tile(row, pix, pmask, w_j, w_p, S, W_PIX: tl.constexpr):
    """Offsets and mask of one class's S+1 weights: (JP, BLOCK) per pixel, (JP, 1) when broadcast."""
    if W_PIX:
        offs = row * w_j + (pix * w_p)[None, :]
        mask = (row <= S) & pmask[None, :]
    else:
        offs = row * w_j
        mask = row <= S
    return offs, mask


@triton.jit
def _class_inputs(side5_ptr, s5_offs, pmask, xs, row):
    """x[b, k] as a float32 (JP, BLOCK) tile: side5[b, k] in row 0, the shared maps below it."""
    x5 = tl.load(side5_ptr + s5_offs, mask=pmask, other=0.0).to(tl.float32)
    return tl.where(row == 0, x5[None, :], xs)


@triton.jit
def _activated_weights(w_ptr, w_offs, w_mask, row, S, SOFTMAX: tl.constexpr):
    """a(w) of one class in float32: the raw weights, or their softmax over the S+1 valid rows.

    The softmax masks by row only (not by pixel), so the lanes of pixels outside the image stay
    finite (uniform weights over zeros) and never put a NaN into a reduction.
    """
    w = tl.load(w_ptr + w_offs, mask=w_mask, other=0.0).to(tl.float32)
    if SOFTMAX:
        w = tl.where(row <= S, w, float("-inf"))
        e = tl.exp(w - tl.max(w, axis=0, keep_dims=True))
        w = e / tl.sum(e, axis=0, keep_dims=True)
    return w


@triton.jit
def _softmax_backward(a, da):
    """d w = a * (d a - sum_i a_i d a_i) over the rows: the softmax's Jacobian-vector product."""
    return a * (da - tl.sum(a * da, axis=0, keep_dims=True))


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------


@triton.jit
def fusion_forward_kernel(
    side5_ptr,  # (B, K, H, W) class responses, any float dtype
    sides_ptr,  # (B, S, H, W) shared maps, side5's dtype
    w_ptr,  # weights (B, K, S+1, H, W) | (B, K, S+1) | (K, S+1), side5's dtype
    out_ptr,  # (B, K, H, W) output, side5's dtype; written for every valid pixel
    K,  # number of classes (runtime loop bound)
    S,  # number of shared maps; the tile's rows 0..S are valid
    HW,  # pixels per image, H * W
    s5_b,  # side5 strides (elements): image,
    s5_k,  # class,
    s5_p,  # flattened pixel
    sd_b,  # sides strides: image,
    sd_s,  # shared map,
    sd_p,  # flattened pixel
    w_b,  # weight strides: image (0 for fixed weights),
    w_k,  # class,
    w_j,  # input j of the S+1,
    w_p,  # flattened pixel (0 for broadcast weights)
    o_b,  # output strides: image,
    o_k,  # class,
    o_p,  # flattened pixel
    SOFTMAX: tl.constexpr,  # softmax over the S+1 weights of each class and pixel
    W_PIX: tl.constexpr,  # per-pixel (location-adaptive) weights; else broadcast over pixels
    JP: tl.constexpr,  # tile rows: next power of two >= S+1
    BLOCK: tl.constexpr,  # pixels per program
    WIDE: tl.constexpr,  # int64 pixel offsets (some offset may pass 2**31 - 1)
):
    """out[b, k, p] = sum_j a(w)[b, k, j, p] * x[b, k, j, p], float32 accumulation."""
    b = tl.program_id(1).to(tl.int64)
    pix, pmask, row = _pixel_tile(HW, BLOCK, JP, WIDE)
    xs = _load_shared(sides_ptr + b * sd_b, sd_s, sd_p, row, pix, pmask, S)
    w_offs, w_mask = _weight_tile(row, pix, pmask, w_j, w_p, S, W_PIX)
    o5 = pix * s5_p
    oo = pix * o_p

    # Per-class base pointers are scalars advanced by the class stride (64-bit pointer arithmetic,
    # so K * stride may pass 2**31); the per-pixel offsets above are computed once.
    p5 = side5_ptr + b * s5_b
    pw = w_ptr + b * w_b
    po = out_ptr + b * o_b
    for _k in range(0, K):
        x = _class_inputs(p5, o5, pmask, xs, row)
        a = _activated_weights(pw, w_offs, w_mask, row, S, SOFTMAX)
        fused = tl.sum(a * x, axis=0)
        tl.store(po + oo, fused.to(out_ptr.dtype.element_ty), mask=pmask)
        p5 += s5_k
        pw += w_k
        po += o_k


@triton.jit
def fusion_backward_kernel(
    g_ptr,  # (B, K, H, W) incoming gradient (any strides, e.g. a stride-0 expand)
    side5_ptr,  # (B, K, H, W) class responses
    sides_ptr,  # (B, S, H, W) shared maps
    w_ptr,  # weights (B, K, S+1, H, W) | (B, K, S+1) | (K, S+1)
    d5_ptr,  # (B, K, H, W) out: d side5
    ds_ptr,  # (B, S, H, W) out: d sides
    dw_ptr,  # (B, K, S+1, H, W) out: d weights (per-pixel weights only; unused otherwise)
    part_ptr,  # (B, num_blocks, K, JP) float32 out: per-program d weight sums (broadcast weights)
    K,  # number of classes (runtime loop bound)
    S,  # number of shared maps
    HW,  # pixels per image, H * W
    g_b,  # gradient strides: image,
    g_k,  # class,
    g_p,  # flattened pixel
    s5_b,  # side5 strides: image,
    s5_k,  # class,
    s5_p,  # flattened pixel
    sd_b,  # sides strides: image,
    sd_s,  # shared map,
    sd_p,  # flattened pixel
    w_b,  # weight strides: image (0 for fixed weights),
    w_k,  # class,
    w_j,  # input j of the S+1,
    w_p,  # flattened pixel (0 for broadcast weights)
    d5_b,  # d side5 strides: image,
    d5_k,  # class,
    d5_p,  # flattened pixel
    ds_b,  # d sides strides: image,
    ds_s,  # shared map,
    ds_p,  # flattened pixel
    dw_b,  # d weights strides (per-pixel weights; 0 otherwise): image,
    dw_k,  # class,
    dw_j,  # input j,
    dw_p,  # flattened pixel
    SOFTMAX: tl.constexpr,  # softmax over the S+1 weights of each class and pixel
    W_PIX: tl.constexpr,  # per-pixel (location-adaptive) weights; else broadcast over pixels
    JP: tl.constexpr,  # tile rows: next power of two >= S+1
    BLOCK: tl.constexpr,  # pixels per program
    WIDE: tl.constexpr,  # int64 pixel offsets (some offset may pass 2**31 - 1)
):
    """All three gradients in one pass over the classes.

    d side5[b,k] = g a_0;  d sides[b,s] = sum_k g a_{s+1} (accumulated in registers over k);
    d a_j = g x_j, and through the softmax d w_j = a_j (d a_j - sum_i a_i d a_i).
    Per-pixel weights (W_PIX) get d w stored per pixel. Broadcast weights get, per class, this
    program's sum over its pixels written to ``part``; the host sums those partials in a fixed
    order, so the result is bit-identical run to run (no atomics).
    """
    pid = tl.program_id(0)
    nblk = tl.num_programs(0)
    b = tl.program_id(1).to(tl.int64)
    pix, pmask, row = _pixel_tile(HW, BLOCK, JP, WIDE)
    xs = _load_shared(sides_ptr + b * sd_b, sd_s, sd_p, row, pix, pmask, S)
    w_offs, w_mask = _weight_tile(row, pix, pmask, w_j, w_p, S, W_PIX)
    dw_offs = row * dw_j + (pix * dw_p)[None, :]
    acc = tl.zeros((JP, BLOCK), dtype=tl.float32)  # d sides, summed over the classes

    pg = g_ptr + b * g_b
    p5 = side5_ptr + b * s5_b
    pw = w_ptr + b * w_b
    pd5 = d5_ptr + b * d5_b
    pdw = dw_ptr + b * dw_b
    ppart = part_ptr + (b * nblk + pid) * K * JP
    og = pix * g_p
    o5 = pix * s5_p
    od5 = pix * d5_p
    for k in range(0, K):
        # Masked pixels read g = 0, so they add nothing to the sums below.
        g = tl.load(pg + og, mask=pmask, other=0.0).to(tl.float32)
        x = _class_inputs(p5, o5, pmask, xs, row)
        a = _activated_weights(pw, w_offs, w_mask, row, S, SOFTMAX)

        ga = g[None, :] * a
        d5 = tl.sum(tl.where(row == 0, ga, 0.0), axis=0)
        tl.store(pd5 + od5, d5.to(d5_ptr.dtype.element_ty), mask=pmask)
        acc += ga
        da = g[None, :] * x
        if W_PIX:
            if SOFTMAX:
                da = _softmax_backward(a, da)
            tl.store(pdw + dw_offs, da.to(dw_ptr.dtype.element_ty), mask=w_mask)
        else:
            # The softmax Jacobian is linear in d a, so it applies to the pixel sum directly.
            dsum = tl.sum(da, axis=1, keep_dims=True)
            if SOFTMAX:
                dsum = _softmax_backward(a, dsum)
            tl.store(ppart + k * JP + row, dsum)
        pg += g_k
        p5 += s5_k
        pw += w_k
        pd5 += d5_k
        pdw += dw_k

    ds_offs = _side_offsets(row, pix, ds_s, ds_p)
    tl.store(
        ds_ptr + b * ds_b + ds_offs,
        acc.to(ds_ptr.dtype.element_ty),
        mask=_side_mask(row, pmask, S),
    )
