"""Triton kernels of the fused DFF fusion op (forward, and one backward producing every gradient).

Tiling: one program per (pixel block, image b). A program keeps the S shared side maps of its pixels
in registers as a (JP, BLOCK) tile whose row 0 is free (JP = next power of two >= S+1), then loops
over the K classes: per class it loads side5[b, k] into row 0, loads the S+1 weights, applies the
optional softmax over the rows, and reduces the rows. Nothing of size K*(S+1) is ever stored: the
backward recomputes the concatenation and the softmax from the inputs.

Addressing: every tensor is described by a base pointer and element strides over (b, k|s[, j], p),
where p = h*W + w is the flattened pixel index; the host makes sure each tensor's (H, W) axes flatten
to one stride (see ``triton_backend._pixel_stride``). Strides may be 0 (broadcast weights, the
expanded gradient of ``.sum()``). Image and class offsets are int64; pixel offsets are int32 unless
``WIDE`` says they may pass 2**31 - 1.

The kernels are plain functions here and are compiled by :func:`get_kernels`, which wraps them with
``triton.jit`` when first asked in a process (and again if ``TRITON_INTERPRET`` changes, so CPU
interpreter tests and GPU tests can share one process).
"""

import contextlib
import os
from collections.abc import Iterator

import triton
import triton.language as tl


def fusion_forward_kernel(
    side5_ptr,
    sides_ptr,
    w_ptr,
    out_ptr,
    K,
    S,
    HW,
    s5_b,
    s5_k,
    s5_p,
    sd_b,
    sd_s,
    sd_p,
    w_b,
    w_k,
    w_j,
    w_p,
    o_b,
    o_k,
    o_p,
    SOFTMAX: tl.constexpr,
    W_PIX: tl.constexpr,
    JP: tl.constexpr,
    BLOCK: tl.constexpr,
    WIDE: tl.constexpr,
):
    """out[b, k, p] = sum_j a(w)[b, k, j, p] * x[b, k, j, p], float32 accumulation."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pix = pid * BLOCK + tl.arange(0, BLOCK)
    pmask = pix < HW
    j = tl.arange(0, JP)
    jcol = j[:, None]
    if WIDE:
        pix = pix.to(tl.int64)
        jcol = jcol.to(tl.int64)
    row0 = jcol == 0
    jvalid = j <= S
    side_rows = (jcol >= 1) & (jcol <= S)

    # The S shared maps, loaded once: rows 1..S of the (JP, BLOCK) tile; row 0 takes side5[b, k].
    xs = tl.load(
        (sides_ptr + b * sd_b) + (jcol - 1) * sd_s + (pix * sd_p)[None, :],
        mask=side_rows & pmask[None, :],
        other=0.0,
    ).to(tl.float32)

    # Per-class base pointers are scalars advanced by the class stride (64-bit pointer arithmetic,
    # so K * stride may pass 2**31); the per-pixel offsets are computed once.
    p5 = side5_ptr + b * s5_b
    pw = w_ptr + b * w_b
    po = out_ptr + b * o_b
    o5 = pix * s5_p
    oo = pix * o_p
    ow = jcol * w_j + (pix * w_p)[None, :]
    for _k in range(0, K):
        x5 = tl.load(p5 + o5, mask=pmask, other=0.0).to(tl.float32)
        x = tl.where(row0, x5[None, :], xs)
        if W_PIX:
            w = tl.load(
                pw + ow,
                mask=jvalid[:, None] & pmask[None, :],
                other=0.0,
            ).to(tl.float32)
            if SOFTMAX:
                w = tl.where(jvalid[:, None], w, float("-inf"))
                e = tl.exp(w - tl.max(w, axis=0)[None, :])
                a = e / tl.sum(e, axis=0)[None, :]
            else:
                a = w
            fused = tl.sum(a * x, axis=0)
        else:
            # Broadcast weights: S+1 scalars per class, activated once per class and program.
            wv = tl.load(pw + j * w_j, mask=jvalid, other=0.0).to(tl.float32)
            if SOFTMAX:
                wv = tl.where(jvalid, wv, float("-inf"))
                ev = tl.exp(wv - tl.max(wv, axis=0))
                av = ev / tl.sum(ev, axis=0)
            else:
                av = wv
            fused = tl.sum(av[:, None] * x, axis=0)
        tl.store(po + oo, fused.to(out_ptr.dtype.element_ty), mask=pmask)
        p5 += s5_k
        pw += w_k
        po += o_k


def fusion_backward_kernel(
    g_ptr,
    side5_ptr,
    sides_ptr,
    w_ptr,
    d5_ptr,
    ds_ptr,
    dw_ptr,
    part_ptr,
    K,
    S,
    HW,
    g_b,
    g_k,
    g_p,
    s5_b,
    s5_k,
    s5_p,
    sd_b,
    sd_s,
    sd_p,
    w_b,
    w_k,
    w_j,
    w_p,
    d5_b,
    d5_k,
    d5_p,
    ds_b,
    ds_s,
    ds_p,
    dw_b,
    dw_k,
    dw_j,
    dw_p,
    SOFTMAX: tl.constexpr,
    W_PIX: tl.constexpr,
    JP: tl.constexpr,
    BLOCK: tl.constexpr,
    WIDE: tl.constexpr,
):
    """All three gradients in one pass over the classes.

    d side5[b,k] = g a_0;  d sides[b,s] = sum_k g a_{s+1} (accumulated in registers over k);
    d a_j = g x_j, and through the softmax d w_j = a_j (d a_j - sum_i a_i d a_i).
    Per-pixel weights (W_PIX) get d w stored per pixel. Broadcast weights get, per class, this
    program's sum over its pixels written to ``part`` (shape (B, num_blocks, K, JP), float32); the
    host sums those partials in a fixed order, so the result is bit-identical run to run.
    """
    pid = tl.program_id(0)
    nblk = tl.num_programs(0)
    b = tl.program_id(1).to(tl.int64)
    pix = pid * BLOCK + tl.arange(0, BLOCK)
    pmask = pix < HW
    j = tl.arange(0, JP)
    jcol = j[:, None]
    if WIDE:
        pix = pix.to(tl.int64)
        jcol = jcol.to(tl.int64)
    row0 = jcol == 0
    jvalid = j <= S
    side_rows = (jcol >= 1) & (jcol <= S)

    xs = tl.load(
        (sides_ptr + b * sd_b) + (jcol - 1) * sd_s + (pix * sd_p)[None, :],
        mask=side_rows & pmask[None, :],
        other=0.0,
    ).to(tl.float32)
    acc = tl.zeros((JP, BLOCK), dtype=tl.float32)

    pg = g_ptr + b * g_b
    p5 = side5_ptr + b * s5_b
    pw = w_ptr + b * w_b
    pd5 = d5_ptr + b * d5_b
    pdw = dw_ptr + b * dw_b
    ppart = part_ptr + (b * nblk + pid) * K * JP
    og = pix * g_p
    o5 = pix * s5_p
    od5 = pix * d5_p
    ow = jcol * w_j + (pix * w_p)[None, :]
    odw = jcol * dw_j + (pix * dw_p)[None, :]
    for k in range(0, K):
        # Masked pixels read g = 0, so they add nothing to the partial sums below.
        g = tl.load(pg + og, mask=pmask, other=0.0).to(tl.float32)
        x5 = tl.load(p5 + o5, mask=pmask, other=0.0).to(tl.float32)
        x = tl.where(row0, x5[None, :], xs)
        if W_PIX:
            w = tl.load(
                pw + ow,
                mask=jvalid[:, None] & pmask[None, :],
                other=0.0,
            ).to(tl.float32)
            if SOFTMAX:
                w = tl.where(jvalid[:, None], w, float("-inf"))
                e = tl.exp(w - tl.max(w, axis=0)[None, :])
                a = e / tl.sum(e, axis=0)[None, :]
            else:
                a = w
        else:
            wv = tl.load(pw + j * w_j, mask=jvalid, other=0.0).to(tl.float32)
            if SOFTMAX:
                wv = tl.where(jvalid, wv, float("-inf"))
                ev = tl.exp(wv - tl.max(wv, axis=0))
                av = ev / tl.sum(ev, axis=0)
            else:
                av = wv
            a = av[:, None] + tl.zeros((JP, BLOCK), dtype=tl.float32)

        ga = g[None, :] * a
        a0g = tl.sum(tl.where(row0, ga, 0.0), axis=0)
        tl.store(pd5 + od5, a0g.to(d5_ptr.dtype.element_ty), mask=pmask)
        acc += ga
        da = g[None, :] * x
        if W_PIX:
            if SOFTMAX:
                da = a * (da - tl.sum(a * da, axis=0)[None, :])
            tl.store(
                pdw + odw,
                da.to(dw_ptr.dtype.element_ty),
                mask=jvalid[:, None] & pmask[None, :],
            )
        else:
            # The softmax Jacobian is linear in d a, so it applies to the pixel sum directly.
            dsum = tl.sum(da, axis=1)
            if SOFTMAX:
                dsum = av * (dsum - tl.sum(av * dsum, axis=0))
            tl.store(ppart + k * JP + j, dsum)
        pg += g_k
        p5 += s5_k
        pw += w_k
        pd5 += d5_k
        pdw += dw_k

    tl.store(
        (ds_ptr + b * ds_b) + (jcol - 1) * ds_s + (pix * ds_p)[None, :],
        acc.to(ds_ptr.dtype.element_ty),
        mask=side_rows & pmask[None, :],
    )


_CACHE: dict[bool, tuple[object, object]] = {}


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def get_kernels() -> tuple[object, object]:
    """(forward, backward) compiled for the current mode: ``triton.jit`` reads ``TRITON_INTERPRET``
    when it wraps a function, so each mode gets its own wrapped pair, built once."""
    mode = interpreting()
    if mode not in _CACHE:
        _CACHE[mode] = (triton.jit(fusion_forward_kernel), triton.jit(fusion_backward_kernel))
    return _CACHE[mode]


@contextlib.contextmanager
def interpreter_stdlib() -> Iterator[None]:
    """Let interpreted kernels call ``tl.sum``, ``tl.max``, ``tl.zeros`` when Triton was imported
    without ``TRITON_INTERPRET=1``.

    Triton wraps its own standard-library functions when ``triton.language`` is imported, so in a
    process that imported Triton in compiled mode and later set ``TRITON_INTERPRET=1`` (the test
    suite does this per test) they are compiled-mode functions that the interpreter cannot call.
    For the duration of an interpreted launch this swaps in interpreted wrappers of the same Python
    functions, and restores the originals afterwards. Outside the interpreter it does nothing.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    swapped = {name: fn for name, fn in vars(tl).items() if isinstance(fn, JITFunction)}
    for name, fn in swapped.items():
        setattr(tl, name, InterpretedFunction(fn.fn))
    try:
        yield
    finally:
        for name, fn in swapped.items():
            setattr(tl, name, fn)
