"""Triton kernels of the fused location-adaptive branch (see :mod:`dynfuse.ops.fused_learner`).

Layering (as in Liger-Kernel and :mod:`dynfuse.ops.triton_kernels`): this ``@triton.jit`` kernel and
its helpers -> the launchers and the autograd schedule in :mod:`dynfuse.ops.fused_learner_triton`
-> :func:`dynfuse.ops.fused_learner.fused_learner_fuse` (``backend="triton"``).

One kernel, four passes (``PASS``), one program per output row (b, Y) that loops over tiles of
``BLOCK`` pixels of its row. Per tile the learner's chain runs on a (BLOCK, CP) register tile, pixels
by channels, with every channel mixing as ``tl.dot`` on the tensor cores:

    a1 = sum over the 2x2 taps of dot(z tap (BLOCK, CP), folded deconv weight (CP, CP)) + b1
         (or, mode "resize", the bilinear / cropped read of the low-resolution a1)
    y_l = xhat_l * gamma_l + beta_l,   xhat_l = (a_l - mean_l) * invstd_l,   h_l = relu(y_l)
    a2 = dot(h1, W2^T) + b2,   a3 = dot(h2, W3^T) + b3,   w = y_3

Passes:
    PASS_STATS   (LAYER l)  the chain up to a_{l+1}; writes the row's per-channel mean and M2 (sum
                            of squared deviations from the row mean) over its W pixels: the host
                            combines the rows (Chan's formula, float64) into the batch statistics.
    PASS_OUTPUT             the whole chain and the fusion; writes fuse[b, :, Y, :].
    PASS_SUMS    (LAYER l)  the chain forward, the fusion's backward and the corrected BatchNorm
                            backward down to layer l; writes the row's sums of dy_l and dy_l * xhat_l.
    PASS_GRAD               the whole backward with every correction known: writes d side5 and
                            d sides, the row's sums of dy_l and dy_l * xhat_l of all three layers
                            (d beta, d gamma), and, into the chunk scratch, the tiles the weight
                            gradients need (da1, h1, da2, h2, da3 per pixel).

Why weight gradients leave the kernel: dW = sum over all pixels of an outer product (C x C per
matrix, 4 s^2 matrices for the folded transposed convolution). Per-program partials would be C^2
values per row; atomics would be C^2 per tile. The host instead multiplies the scratch tiles of a
chunk of rows with one GEMM each (``da3^T h2``...) and runs the transposed convolution's backward on
``da1`` with the convolution library: scratch is chunk-sized, never (B, C, H, W).

Channel layout: channel c = k*(S+1) + j of the learner lives at column k*SP + j of the tile (SP =
next power of two >= S+1, KP = next power of two >= K, CP = KP*SP), so a tile reshaped to (BLOCK,
KP, SP) holds each class's S+1 weights on the last axis, where the fusion and the softmax reduce.
The host pads every parameter into this layout with zeros; the padding channels stay exactly 0
(zero weights, zero gamma/beta/mean), so they never touch a real channel.

Pixel tiles (mode "deconv", transposed convolution of kernel 2s, stride s, padding p): output pixel
(Y, X) has phase (phi, psi) = ((Y+p) % s, (X+p) % s) and reads z[t0 - a, u0 - b] (t0 = (Y+p) // s,
u0 = (X+p) // s, a, b in {0, 1}) through tap W[:, :, phi + a*s, psi + b*s]. A tile holds pixels of one
phase psi (X = u*s + psi - p for BLOCK consecutive u), so each tap is one (CP, CP) matrix for the
whole tile. Pixels outside [0, W) are masked out of every reduction and store.

Precision: every element-wise step and every accumulation is float32 (float64 for float64 inputs:
the oracle runs). ``DOT_LOW`` casts the dot operands to bfloat16 (the tensor cores' fast path;
accumulation stays float32), which the launcher sets for bfloat16 and float16 inputs; otherwise the
dots run at the data type's full precision (``input_precision="ieee"``, no TF32). Under the CPU
interpreter the bf16 dot itself is wrong (Triton 3.8 returns garbage), so there the operands are
rounded to bf16 and multiplied in float32: the same products, except that the interpreter's
float32 -> bf16 cast truncates where the GPU rounds to nearest.
"""

import triton
import triton.language as tl

PASS_STATS = 0
PASS_OUTPUT = 1
PASS_SUMS = 2
PASS_GRAD = 3


@triton.jit
def _dot(x, w, DOT_LOW: tl.constexpr):
    """(BLOCK, CP) @ (CP, CP) with float32 (or the inputs' float64) accumulation; DOT_LOW: 0 full
    precision, 1 bf16 operands (tensor cores), 2 bf16-rounded operands multiplied in float32 (the
    interpreter's stand-in for 1: its bf16 dot returns garbage in Triton 3.8)."""
    if DOT_LOW == 1:
        return tl.dot(x.to(tl.bfloat16), w.to(tl.bfloat16), out_dtype=tl.float32)
    elif DOT_LOW == 2:
        xr = x.to(tl.bfloat16).to(tl.float32)
        wr = w.to(tl.bfloat16).to(tl.float32)
        return tl.dot(xr, wr, input_precision="ieee")
    else:
        return tl.dot(x, w, input_precision="ieee")


@triton.jit
def _vec(ptr, layer, chan, CP: tl.constexpr):
    """Layer ``layer``'s per-channel vector as a (1, CP) row (vectors stored as (3, CP))."""
    return tl.load(ptr + layer * CP + chan)[None, :]


@triton.jit
def _matrix(ptr, chan, CP: tl.constexpr, TRANSPOSED: tl.constexpr):
    """A (CP, CP) matrix stored row-major; its transpose when TRANSPOSED."""
    if TRANSPOSED:
        return tl.load(ptr + chan[None, :] * CP + chan[:, None])
    else:
        return tl.load(ptr + chan[:, None] * CP + chan[None, :])


@triton.jit
def _tile_pixels(Y, g, W, w_low, s, p, BLOCK: tl.constexpr, DECONV: tl.constexpr):
    """Tile g of row Y: the output columns X (BLOCK,), their validity, the low-resolution column u
    that tap b = 0 reads (mode "deconv") and the phases (phi, psi) (scalars)."""
    lane = tl.arange(0, BLOCK)
    if DECONV:
        n_u = tl.cdiv(w_low + 1, BLOCK)
        psi = g // n_u
        u = (g % n_u) * BLOCK + lane
        x = u * s + psi - p
        valid = (x >= 0) & (x < W) & (u <= w_low)
        phi = (Y + p) % s
    else:
        psi = 0
        phi = 0
        x = g * BLOCK + lane
        u = x
        valid = x < W
    return x, valid, u, phi, psi


@triton.jit
def _a1_tile(
    z_ptr,  # (B, h_low, w_low, CP) low-resolution map, channels last, padded layout
    tap_ptr,  # "deconv": (s, s, 2, 2, CP, CP) folded taps [phi, psi, a, b, c_in, c_out]
    bias1_ptr,  # "deconv": (CP,) conv1's bias
    rows_ptr,  # "resize": int32 (H, 2) source rows of each output row, and ...
    row_lam_ptr,  # ... (H,) weight of the second one
    cols_ptr,  # "resize": int32 (W, 2) source columns, and ...
    col_lam_ptr,  # ... (W,) weight of the second one
    b,
    Y,
    x,
    u,
    valid,
    phi,
    psi,
    h_low,
    w_low,
    s,
    p,
    chan,
    CP: tl.constexpr,
    DECONV: tl.constexpr,
    DOT_LOW: tl.constexpr,
):
    """a1 of one tile, (BLOCK, CP) in the compute dtype."""
    z_img = z_ptr + b.to(tl.int64) * h_low * w_low * CP
    if DECONV:
        t0 = (Y + p) // s
        acc = tl.zeros((x.shape[0], CP), dtype=z_ptr.dtype.element_ty)
        for a in tl.static_range(2):
            # The row index as a block (not a scalar): Triton 3.9's interpreter rejects a mask made
            # from a scalar condition and a block one.
            zr = t0 - a + u * 0
            row_ok = (zr >= 0) & (zr < h_low)
            for bb in tl.static_range(2):
                zc = u - bb
                ok = valid & (zc >= 0) & (zc < w_low) & row_ok
                zt = tl.load(
                    z_img + (zr * w_low + zc)[:, None] * CP + chan[None, :], mask=ok[:, None], other=0.0
                )
                tap = tap_ptr + (((phi * s + psi) * 2 + a) * 2 + bb) * CP * CP
                acc += _dot(zt, _matrix(tap, chan, CP, False), DOT_LOW).to(acc.dtype)
        return acc + tl.load(bias1_ptr + chan)[None, :]
    else:
        y0 = tl.load(rows_ptr + 2 * Y)
        y1 = tl.load(rows_ptr + 2 * Y + 1)
        ly = tl.load(row_lam_ptr + Y)
        x0 = tl.load(cols_ptr + 2 * x, mask=valid, other=0)
        x1 = tl.load(cols_ptr + 2 * x + 1, mask=valid, other=0)
        lx = tl.load(col_lam_ptr + x, mask=valid, other=0.0)[:, None]
        m = valid[:, None]
        c = chan[None, :]
        v00 = tl.load(z_img + (y0 * w_low + x0)[:, None] * CP + c, mask=m, other=0.0)
        v01 = tl.load(z_img + (y0 * w_low + x1)[:, None] * CP + c, mask=m, other=0.0)
        v10 = tl.load(z_img + (y1 * w_low + x0)[:, None] * CP + c, mask=m, other=0.0)
        v11 = tl.load(z_img + (y1 * w_low + x1)[:, None] * CP + c, mask=m, other=0.0)
        left = v00 * (1 - ly) + v10 * ly
        right = v01 * (1 - ly) + v11 * ly
        return left * (1 - lx) + right * lx


@triton.jit
def _side_tile(
    side5_ptr,
    sides_ptr,
    b,
    Y,
    x,
    valid,
    K,
    S,
    s5_sb,
    s5_sk,
    s5_sy,
    s5_sx,
    sd_sb,
    sd_ss,
    sd_sy,
    sd_sx,
    KP: tl.constexpr,
    SP: tl.constexpr,
    ct: tl.constexpr,
):
    """The concatenation x[b, k, j] = (side5[b, k], sides[b, j-1]) of one tile as (BLOCK, KP, SP),
    in the compute dtype ``ct``."""
    k = tl.arange(0, KP)[None, :, None]
    j = tl.arange(0, SP)[None, None, :]
    xp = x[:, None, None]
    ok = valid[:, None, None] & (k < K)
    base5 = side5_ptr + b.to(tl.int64) * s5_sb + Y * s5_sy
    v5 = tl.load(base5 + k * s5_sk + xp * s5_sx + j * 0, mask=ok & (j == 0), other=0.0)
    based = sides_ptr + b.to(tl.int64) * sd_sb + Y * sd_sy
    vs = tl.load(based + (j - 1) * sd_ss + xp * sd_sx + k * 0, mask=ok & (j >= 1) & (j <= S), other=0.0)
    return v5.to(ct) + vs.to(ct)


@triton.jit
def _activate(w3, S, SOFTMAX: tl.constexpr, SP: tl.constexpr):
    """The fusion's weights (BLOCK, KP, SP): w3 itself, or its softmax over the S+1 real entries."""
    if SOFTMAX:
        j = tl.arange(0, SP)[None, None, :]
        masked = tl.where(j <= S, w3, float("-inf"))
        e = tl.exp(masked - tl.max(masked, axis=2)[:, :, None])
        return e / tl.sum(e, axis=2)[:, :, None]
    else:
        return w3


@triton.jit
def learner_pass_kernel(
    # low-resolution input and upsampling (see _a1_tile)
    z_ptr,
    tap_ptr,
    bias1_ptr,
    rows_ptr,
    row_lam_ptr,
    cols_ptr,
    col_lam_ptr,
    # learner: W2, W3 as (CP, CP) [c_out, c_in]; b2, b3 (CP,) each
    w2_ptr,
    b2_ptr,
    w3_ptr,
    b3_ptr,
    # BatchNorm, each (3, CP): gamma, beta, mean, invstd; the backward corrections mean(dy),
    # mean(dy * xhat) (zeros in eval mode and for layers whose sums are not known yet)
    gamma_ptr,
    beta_ptr,
    mean_ptr,
    invstd_ptr,
    m1_ptr,
    m2_ptr,
    # fusion inputs (any strides) and the output gradient (PASS_SUMS, PASS_GRAD)
    side5_ptr,
    sides_ptr,
    grad_ptr,
    s5_sb,
    s5_sk,
    s5_sy,
    s5_sx,
    sd_sb,
    sd_ss,
    sd_sy,
    sd_sx,
    g_sb,
    g_sk,
    g_sy,
    g_sx,
    # outputs: fuse (B, K, H, W) contiguous (PASS_OUTPUT); d side5 (B, K, H, W) and d sides
    # (B, S, H, W) contiguous (PASS_GRAD); per-row partials (rows, NPART, CP); scratch (PASS_GRAD):
    # five (B, rows, W, CP) tiles da1, h1, da2, h2, da3 of this launch's rows
    out_ptr,
    d_side5_ptr,
    d_sides_ptr,
    part_ptr,
    scratch_ptr,
    # sizes
    H,
    W,
    h_low,
    w_low,
    s,
    p,
    K,
    S,
    row0,  # first output row of this launch (its rows are row0 .. row0 + grid[0] - 1)
    n_tiles,  # tiles per row
    PASS: tl.constexpr,
    LAYER: tl.constexpr,
    DECONV: tl.constexpr,
    SOFTMAX: tl.constexpr,
    DOT_LOW: tl.constexpr,
    BLOCK: tl.constexpr,
    KP: tl.constexpr,
    SP: tl.constexpr,
):
    CP: tl.constexpr = KP * SP
    r_local = tl.program_id(0)
    b = tl.program_id(1)
    n_rows = tl.num_programs(0)
    Y = row0 + r_local
    chan = tl.arange(0, CP)
    row_id = (b * n_rows + r_local).to(tl.int64)
    ct = z_ptr.dtype.element_ty

    # Running per-row results: statistics (count, mean, M2) or the six sums of the backward.
    n_acc = tl.sum(tl.zeros((BLOCK,), dtype=ct), axis=0)
    mean_acc = tl.zeros((CP,), dtype=tl.float32).to(ct)
    m2_acc = tl.zeros((CP,), dtype=tl.float32).to(ct)
    sum_a = tl.zeros((CP,), dtype=tl.float32).to(ct)
    sum_b = tl.zeros((CP,), dtype=tl.float32).to(ct)
    sum_c = tl.zeros((CP,), dtype=tl.float32).to(ct)
    sum_d = tl.zeros((CP,), dtype=tl.float32).to(ct)
    sum_e = tl.zeros((CP,), dtype=tl.float32).to(ct)
    sum_f = tl.zeros((CP,), dtype=tl.float32).to(ct)

    for g in range(0, n_tiles):
        x, valid, u, phi, psi = _tile_pixels(Y, g, W, w_low, s, p, BLOCK, DECONV)
        vm = valid[:, None]
        a1 = _a1_tile(
            z_ptr, tap_ptr, bias1_ptr, rows_ptr, row_lam_ptr, cols_ptr, col_lam_ptr,
            b, Y, x, u, valid, phi, psi, h_low, w_low, s, p, chan, CP, DECONV, DOT_LOW,
        )  # fmt: skip
        # ---- forward chain, as far as this pass needs it ---------------------------------------
        if PASS == PASS_STATS and LAYER == 0:
            a_stat = a1
        else:
            xh0 = (a1 - _vec(mean_ptr, 0, chan, CP)) * _vec(invstd_ptr, 0, chan, CP)
            y0 = xh0 * _vec(gamma_ptr, 0, chan, CP) + _vec(beta_ptr, 0, chan, CP)
            h1 = tl.maximum(y0, 0.0)
            a2 = _dot(h1, _matrix(w2_ptr, chan, CP, True), DOT_LOW).to(ct) + tl.load(b2_ptr + chan)[None, :]
            if PASS == PASS_STATS and LAYER == 1:
                a_stat = a2
            else:
                xh1 = (a2 - _vec(mean_ptr, 1, chan, CP)) * _vec(invstd_ptr, 1, chan, CP)
                y1 = xh1 * _vec(gamma_ptr, 1, chan, CP) + _vec(beta_ptr, 1, chan, CP)
                h2 = tl.maximum(y1, 0.0)
                a3 = (
                    _dot(h2, _matrix(w3_ptr, chan, CP, True), DOT_LOW).to(ct)
                    + tl.load(b3_ptr + chan)[None, :]
                )
                a_stat = a3
        # ---- per-pass work ---------------------------------------------------------------------
        if PASS == PASS_STATS:
            # Chan's parallel combination of this tile's (count, mean, M2) into the row's.
            n_t = tl.sum(valid.to(ct), axis=0)
            a_v = tl.where(vm, a_stat, 0.0)
            mean_t = tl.sum(a_v, axis=0) / tl.maximum(n_t, 1.0)
            dev = tl.where(vm, a_stat - mean_t[None, :], 0.0)
            m2_t = tl.sum(dev * dev, axis=0)
            n_new = n_acc + n_t
            delta = mean_t - mean_acc
            mean_acc = mean_acc + delta * (n_t / tl.maximum(n_new, 1.0))
            m2_acc = m2_acc + m2_t + delta * delta * (n_acc * n_t / tl.maximum(n_new, 1.0))
            n_acc = n_new
        else:
            xh2 = (a3 - _vec(mean_ptr, 2, chan, CP)) * _vec(invstd_ptr, 2, chan, CP)
            w = xh2 * _vec(gamma_ptr, 2, chan, CP) + _vec(beta_ptr, 2, chan, CP)
            w3 = tl.reshape(w, (BLOCK, KP, SP))
            xs = _side_tile(
                side5_ptr, sides_ptr, b, Y, x, valid, K, S,
                s5_sb, s5_sk, s5_sy, s5_sx, sd_sb, sd_ss, sd_sy, sd_sx, KP, SP, ct,
            )  # fmt: skip
            act = _activate(w3, S, SOFTMAX, SP)
            kk = tl.arange(0, KP)[None, :]
            out_off = ((b.to(tl.int64) * K + kk) * H + Y) * W + x[:, None]
            out_mask = vm & (kk < K)
            if PASS == PASS_OUTPUT:
                fuse = tl.sum(act * xs, axis=2)
                tl.store(out_ptr + out_off, fuse.to(out_ptr.dtype.element_ty), mask=out_mask)
            else:
                # ---- backward: the fusion, then each BatchNorm with its corrections --------------
                g_off = b.to(tl.int64) * g_sb + kk * g_sk + Y * g_sy + x[:, None] * g_sx
                gk = tl.load(grad_ptr + g_off, mask=out_mask, other=0.0).to(ct)
                d_act = gk[:, :, None] * xs
                if SOFTMAX:
                    d_w3 = act * (d_act - tl.sum(act * d_act, axis=2)[:, :, None])
                else:
                    d_w3 = d_act
                dy2 = tl.where(vm, tl.reshape(d_w3, (BLOCK, CP)), 0.0)
                if PASS == PASS_GRAD:
                    jj = tl.arange(0, SP)[None, None, :]
                    ga = gk[:, :, None] * act
                    d5 = tl.sum(tl.where(jj == 0, ga, 0.0), axis=2)
                    tl.store(d_side5_ptr + out_off, d5.to(d_side5_ptr.dtype.element_ty), mask=out_mask)
                    ds = tl.sum(ga, axis=1)  # (BLOCK, SP): column j >= 1 is sides[j - 1]
                    j2 = tl.arange(0, SP)[None, :]
                    ds_off = ((b.to(tl.int64) * S + (j2 - 1)) * H + Y) * W + x[:, None]
                    ds_mask = vm & (j2 >= 1) & (j2 <= S)
                    tl.store(d_sides_ptr + ds_off, ds.to(d_sides_ptr.dtype.element_ty), mask=ds_mask)
                if PASS == PASS_SUMS and LAYER == 2:
                    sum_a += tl.sum(dy2, axis=0)
                    sum_b += tl.sum(dy2 * xh2, axis=0)
                else:
                    coef2 = _vec(gamma_ptr, 2, chan, CP) * _vec(invstd_ptr, 2, chan, CP)
                    da3 = (dy2 - _vec(m1_ptr, 2, chan, CP) - xh2 * _vec(m2_ptr, 2, chan, CP)) * coef2
                    da3 = tl.where(vm, da3, 0.0)
                    dh2 = _dot(da3, _matrix(w3_ptr, chan, CP, False), DOT_LOW).to(ct)
                    dy1 = tl.where(y1 > 0, dh2, 0.0)
                    if PASS == PASS_SUMS and LAYER == 1:
                        sum_a += tl.sum(dy1, axis=0)
                        sum_b += tl.sum(dy1 * xh1, axis=0)
                    else:
                        coef1 = _vec(gamma_ptr, 1, chan, CP) * _vec(invstd_ptr, 1, chan, CP)
                        da2 = (dy1 - _vec(m1_ptr, 1, chan, CP) - xh1 * _vec(m2_ptr, 1, chan, CP)) * coef1
                        da2 = tl.where(vm, da2, 0.0)
                        dh1 = _dot(da2, _matrix(w2_ptr, chan, CP, False), DOT_LOW).to(ct)
                        dy0 = tl.where(y0 > 0, dh1, 0.0)
                        if PASS == PASS_SUMS:
                            sum_a += tl.sum(dy0, axis=0)
                            sum_b += tl.sum(dy0 * xh0, axis=0)
                        else:
                            coef0 = _vec(gamma_ptr, 0, chan, CP) * _vec(invstd_ptr, 0, chan, CP)
                            da1 = (dy0 - _vec(m1_ptr, 0, chan, CP) - xh0 * _vec(m2_ptr, 0, chan, CP)) * coef0
                            # d beta_l, d gamma_l of all three layers.
                            sum_a += tl.sum(dy0, axis=0)
                            sum_b += tl.sum(dy0 * xh0, axis=0)
                            sum_c += tl.sum(dy1, axis=0)
                            sum_d += tl.sum(dy1 * xh1, axis=0)
                            sum_e += tl.sum(dy2, axis=0)
                            sum_f += tl.sum(dy2 * xh2, axis=0)
                            # The tiles the weight gradients need, for the host's GEMMs.
                            plane = tl.num_programs(1).to(tl.int64) * n_rows * W * CP
                            sc_off = (row_id * W + x[:, None]) * CP + chan[None, :]
                            st = scratch_ptr.dtype.element_ty
                            tl.store(scratch_ptr + sc_off, da1.to(st), mask=vm)
                            tl.store(scratch_ptr + plane + sc_off, h1.to(st), mask=vm)
                            tl.store(scratch_ptr + 2 * plane + sc_off, da2.to(st), mask=vm)
                            tl.store(scratch_ptr + 3 * plane + sc_off, h2.to(st), mask=vm)
                            tl.store(scratch_ptr + 4 * plane + sc_off, da3.to(st), mask=vm)

    # ---- per-row partial results ---------------------------------------------------------------
    if PASS == PASS_STATS:
        tl.store(part_ptr + row_id * 2 * CP + chan, mean_acc)
        tl.store(part_ptr + row_id * 2 * CP + CP + chan, m2_acc)
    elif PASS == PASS_SUMS:
        tl.store(part_ptr + row_id * 2 * CP + chan, sum_a)
        tl.store(part_ptr + row_id * 2 * CP + CP + chan, sum_b)
    elif PASS == PASS_GRAD:
        base = part_ptr + row_id * 6 * CP + chan
        tl.store(base, sum_a)
        tl.store(base + CP, sum_b)
        tl.store(base + 2 * CP, sum_c)
        tl.store(base + 3 * CP, sum_d)
        tl.store(base + 4 * CP, sum_e)
        tl.store(base + 5 * CP, sum_f)
