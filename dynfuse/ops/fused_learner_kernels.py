"""Triton kernels of the fused location-adaptive branch (see :mod:`dynfuse.ops.fused_learner`).

Layering (as in Liger-Kernel and :mod:`dynfuse.ops.triton_kernels`): this ``@triton.jit`` kernel and
its helpers -> the launchers and passes in :mod:`dynfuse.ops.fused_learner_triton` -> the schedule
and :func:`dynfuse.ops.fused_learner.fused_learner_fuse` (``backend="triton"``).

One kernel, four passes (``PASS``), one program per output row (b, Y) that loops over tiles of
``BLOCK`` pixels of its row. Per tile the learner's chain runs on a register tile, pixels by
channels, held as two parts (see "Channel layout"), with every channel mixing as ``tl.dot`` on the
tensor cores:

    a1 = sum over the 2x2 taps of dot(z tap (BLOCK, LD), folded deconv weight (LD, LD)) + b1
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

Channel layout (:class:`dynfuse.ops.fused_learner_triton.ChannelLayout`): channel c = k*(S+1) + j
of the learner lives at column k*SP + j (SP = next power of two >= S+1). ``tl.dot`` needs
power-of-two widths, so the tile is two parts: A, classes 0 .. KA-1 (CPA = KA*SP columns), and B,
classes KA .. KA+KB-1 (CPB = KB*SP), LD = CPA + CPB columns in all; K = 19 is 16 + 3 (padded to 4),
80 columns where one part would need 128. Every channel mixing is four block dots (:func:`_mix`);
without a second part (``HAS_B`` False) part B is zeros that no dot reads. Each part reshaped to
(BLOCK, classes, SP) holds each class's S+1 weights on the last axis, where the fusion and the
softmax reduce. The host pads every parameter into this layout with zeros; the padding channels
stay exactly 0 (zero weights, zero gamma/beta/mean), so they never touch a real channel.

Pixel tiles (mode "deconv", transposed convolution of kernel 2s, stride s, padding p): output pixel
(Y, X) has phase (phi, psi) = ((Y+p) % s, (X+p) % s) and reads z[t0 - a, u0 - b] (t0 = (Y+p) // s,
u0 = (X+p) // s, a, b in {0, 1}) through tap W[:, :, phi + a*s, psi + b*s]. A tile holds pixels of one
phase psi (X = u*s + psi - p for BLOCK consecutive u), so each tap is one (LD, LD) matrix for the
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
    """(BLOCK, M) @ (M, N) with float32 (or the inputs' float64) accumulation; DOT_LOW: 0 full
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
def _vec(ptr, layer, ch, LD: tl.constexpr):
    """Layer ``layer``'s per-channel vector at channels ``ch`` as a (1, len(ch)) row (vectors are
    stored as (3, LD))."""
    return tl.load(ptr + layer * LD + ch)[None, :]


@triton.jit
def _block(ptr, rows, cols, LD: tl.constexpr, TRANSPOSED: tl.constexpr):
    """The (len(rows), len(cols)) block of a row-major (LD, LD) matrix M, or of M^T when TRANSPOSED."""
    if TRANSPOSED:
        return tl.load(ptr + cols[None, :] * LD + rows[:, None])
    else:
        return tl.load(ptr + rows[:, None] * LD + cols[None, :])


@triton.jit
def _mix(xa, xb, ptr, ca, cb, LD: tl.constexpr, HAS_B: tl.constexpr, TRANSPOSED: tl.constexpr,
         DOT_LOW: tl.constexpr):  # fmt: skip
    """(xa | xb) @ M for the two parts of a tile (channels ca, cb): four block dots, one without a
    second part (its tile then stays zero)."""
    ya = _dot(xa, _block(ptr, ca, ca, LD, TRANSPOSED), DOT_LOW).to(xa.dtype)
    if HAS_B:
        ya += _dot(xb, _block(ptr, cb, ca, LD, TRANSPOSED), DOT_LOW).to(xa.dtype)
        yb = _dot(xa, _block(ptr, ca, cb, LD, TRANSPOSED), DOT_LOW).to(xa.dtype)
        yb += _dot(xb, _block(ptr, cb, cb, LD, TRANSPOSED), DOT_LOW).to(xa.dtype)
    else:
        yb = tl.zeros(xb.shape, xb.dtype)
    return ya, yb


@triton.jit
def _bn(a, layer, ch, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, LD: tl.constexpr):
    """BatchNorm of one part: (xhat, y)."""
    xh = (a - _vec(mean_ptr, layer, ch, LD)) * _vec(invstd_ptr, layer, ch, LD)
    return xh, xh * _vec(gamma_ptr, layer, ch, LD) + _vec(beta_ptr, layer, ch, LD)


@triton.jit
def _bn_back(dy, xh, vm, layer, ch, gamma_ptr, invstd_ptr, m1_ptr, m2_ptr, LD: tl.constexpr):
    """BatchNorm's backward of one part with the global corrections: da, zero outside the image."""
    coef = _vec(gamma_ptr, layer, ch, LD) * _vec(invstd_ptr, layer, ch, LD)
    da = (dy - _vec(m1_ptr, layer, ch, LD) - xh * _vec(m2_ptr, layer, ch, LD)) * coef
    return tl.where(vm, da, 0.0)


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
def _resize_part(z_img, y0, y1, ly, x0, x1, lx, m, ch, w_low, LD: tl.constexpr):
    """Mode "resize": the bilinear (or cropped) read of one part's channels ``ch``."""
    c = ch[None, :]
    v00 = tl.load(z_img + (y0 * w_low + x0)[:, None] * LD + c, mask=m, other=0.0)
    v01 = tl.load(z_img + (y0 * w_low + x1)[:, None] * LD + c, mask=m, other=0.0)
    v10 = tl.load(z_img + (y1 * w_low + x0)[:, None] * LD + c, mask=m, other=0.0)
    v11 = tl.load(z_img + (y1 * w_low + x1)[:, None] * LD + c, mask=m, other=0.0)
    left = v00 * (1 - ly) + v10 * ly
    right = v01 * (1 - ly) + v11 * ly
    return left * (1 - lx) + right * lx


@triton.jit
def _a1_tile(
    z_ptr,  # (B, h_low, w_low, LD) low-resolution map, channels last, padded layout
    tap_ptr,  # "deconv": (s, s, 2, 2, LD, LD) folded taps [phi, psi, a, b, c_in, c_out]
    bias1_ptr,  # "deconv": (LD,) conv1's bias
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
    ca,
    cb,
    LD: tl.constexpr,
    HAS_B: tl.constexpr,
    DECONV: tl.constexpr,
    DOT_LOW: tl.constexpr,
):
    """a1 of one tile as its two parts, (BLOCK, CPA) and (BLOCK, CPB) in the compute dtype."""
    z_img = z_ptr + b.to(tl.int64) * h_low * w_low * LD
    if DECONV:
        t0 = (Y + p) // s
        acc_a = tl.zeros((x.shape[0], ca.shape[0]), dtype=z_ptr.dtype.element_ty)
        acc_b = tl.zeros((x.shape[0], cb.shape[0]), dtype=z_ptr.dtype.element_ty)
        for a in tl.static_range(2):
            # The row index as a block (not a scalar): Triton 3.9's interpreter rejects a mask made
            # from a scalar condition and a block one.
            zr = t0 - a + u * 0
            row_ok = (zr >= 0) & (zr < h_low)
            for bb in tl.static_range(2):
                zc = u - bb
                ok = (valid & (zc >= 0) & (zc < w_low) & row_ok)[:, None]
                pix = (zr * w_low + zc)[:, None] * LD
                za = tl.load(z_img + pix + ca[None, :], mask=ok, other=0.0)
                zb = tl.load(z_img + pix + cb[None, :], mask=ok, other=0.0)
                tap = tap_ptr + (((phi * s + psi) * 2 + a) * 2 + bb) * LD * LD
                ta, tb = _mix(za, zb, tap, ca, cb, LD, HAS_B, False, DOT_LOW)
                acc_a += ta
                acc_b += tb
        return acc_a + tl.load(bias1_ptr + ca)[None, :], acc_b + tl.load(bias1_ptr + cb)[None, :]
    else:
        y0 = tl.load(rows_ptr + 2 * Y)
        y1 = tl.load(rows_ptr + 2 * Y + 1)
        ly = tl.load(row_lam_ptr + Y)
        x0 = tl.load(cols_ptr + 2 * x, mask=valid, other=0)
        x1 = tl.load(cols_ptr + 2 * x + 1, mask=valid, other=0)
        lx = tl.load(col_lam_ptr + x, mask=valid, other=0.0)[:, None]
        m = valid[:, None]
        part_a = _resize_part(z_img, y0, y1, ly, x0, x1, lx, m, ca, w_low, LD)
        part_b = _resize_part(z_img, y0, y1, ly, x0, x1, lx, m, cb, w_low, LD)
        return part_a, part_b


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
    K0,
    KX: tl.constexpr,
    SP: tl.constexpr,
    ct: tl.constexpr,
):
    """The concatenation x[b, k, j] = (side5[b, k], sides[b, j-1]) of classes K0 .. K0+KX-1 of one
    tile as (BLOCK, KX, SP), in the compute dtype ``ct``."""
    k = K0 + tl.arange(0, KX)[None, :, None]
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
    """The fusion's weights (BLOCK, KX, SP): w3 itself, or its softmax over the S+1 real entries."""
    if SOFTMAX:
        j = tl.arange(0, SP)[None, None, :]
        masked = tl.where(j <= S, w3, float("-inf"))
        e = tl.exp(masked - tl.max(masked, axis=2)[:, :, None])
        return e / tl.sum(e, axis=2)[:, :, None]
    else:
        return w3


@triton.jit
def _fusion_part(
    w, g_ptr, side5_ptr, sides_ptr, out_ptr, d_side5_ptr, b, Y, x, valid, K, S, H, W,
    s5_sb, s5_sk, s5_sy, s5_sx, sd_sb, sd_ss, sd_sy, sd_sx, g_sb, g_sk, g_sy, g_sx,
    K0, BLOCK: tl.constexpr, KX: tl.constexpr, SP: tl.constexpr, SOFTMAX: tl.constexpr,
    PASS: tl.constexpr, ct: tl.constexpr,
):  # fmt: skip
    """The fusion of one part's classes K0 .. K0+KX-1 from its weights w (BLOCK, KX*SP).

    PASS_OUTPUT stores fuse and returns zeros; the backward passes return dy = d w (BLOCK, KX*SP),
    zero outside the image, and the part's share of d sides (BLOCK, SP) (column j >= 1 is sides[j-1]);
    PASS_GRAD also stores d side5."""
    w3 = tl.reshape(w, (BLOCK, KX, SP))
    xs = _side_tile(
        side5_ptr, sides_ptr, b, Y, x, valid, K, S,
        s5_sb, s5_sk, s5_sy, s5_sx, sd_sb, sd_ss, sd_sy, sd_sx, K0, KX, SP, ct,
    )  # fmt: skip
    act = _activate(w3, S, SOFTMAX, SP)
    vm = valid[:, None]
    kk = K0 + tl.arange(0, KX)[None, :]
    out_off = ((b.to(tl.int64) * K + kk) * H + Y) * W + x[:, None]
    out_mask = vm & (kk < K)
    if PASS == PASS_OUTPUT:
        fuse = tl.sum(act * xs, axis=2)
        tl.store(out_ptr + out_off, fuse.to(out_ptr.dtype.element_ty), mask=out_mask)
        return tl.zeros((BLOCK, KX * SP), ct), tl.zeros((BLOCK, SP), ct)
    else:
        g_off = b.to(tl.int64) * g_sb + kk * g_sk + Y * g_sy + x[:, None] * g_sx
        gk = tl.load(g_ptr + g_off, mask=out_mask, other=0.0).to(ct)
        d_act = gk[:, :, None] * xs
        if SOFTMAX:
            d_w3 = act * (d_act - tl.sum(act * d_act, axis=2)[:, :, None])
        else:
            d_w3 = d_act
        ga = gk[:, :, None] * act
        if PASS == PASS_GRAD:
            jj = tl.arange(0, SP)[None, None, :]
            d5 = tl.sum(tl.where(jj == 0, ga, 0.0), axis=2)
            tl.store(d_side5_ptr + out_off, d5.to(d_side5_ptr.dtype.element_ty), mask=out_mask)
        dy = tl.where(vm, tl.reshape(d_w3, (BLOCK, KX * SP)), 0.0)
        return dy, tl.sum(ga, axis=1)


@triton.jit
def _stats_update(n_acc, mean_acc, m2_acc, a, vm, n_t):
    """Chan's parallel combination of a tile's (count n_t, mean, M2) into the row's (one part)."""
    a_v = tl.where(vm, a, 0.0)
    mean_t = tl.sum(a_v, axis=0) / tl.maximum(n_t, 1.0)
    dev = tl.where(vm, a - mean_t[None, :], 0.0)
    m2_t = tl.sum(dev * dev, axis=0)
    n_new = n_acc + n_t
    delta = mean_t - mean_acc
    mean_acc = mean_acc + delta * (n_t / tl.maximum(n_new, 1.0))
    m2_acc = m2_acc + m2_t + delta * delta * (n_acc * n_t / tl.maximum(n_new, 1.0))
    return mean_acc, m2_acc


@triton.jit
def _sums(acc, rows, first, dy, xh):
    """acc (8, CPX) with sum(dy) added to row ``first`` and sum(dy * xhat) to row first + 1."""
    acc += tl.where(rows == first, tl.sum(dy, axis=0)[None, :], 0.0)
    acc += tl.where(rows == first + 1, tl.sum(dy * xh, axis=0)[None, :], 0.0)
    return acc


@triton.jit
def _store_rows(ptr, row_id, acc, rows, n_rows: tl.constexpr, ch, LD: tl.constexpr):
    """Rows 0 .. n_rows-1 of acc (8, len(ch)) into the (n_rows, LD) partial of row ``row_id``."""
    tl.store(ptr + (row_id * n_rows + rows) * LD + ch[None, :], acc, mask=rows < n_rows)


@triton.jit
def _store_tile(ptr, pix, ch, t, vm):
    tl.store(ptr + pix + ch[None, :], t.to(ptr.dtype.element_ty), mask=vm)


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
    # learner: W2, W3 as (LD, LD) [c_out, c_in]; b2, b3 (LD,) each
    w2_ptr,
    b2_ptr,
    w3_ptr,
    b3_ptr,
    # BatchNorm, each (3, LD): gamma, beta, mean, invstd; the backward corrections mean(dy),
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
    # (B, S, H, W) contiguous (PASS_GRAD); per-row partials (rows, 2 or 6, LD); scratch (PASS_GRAD):
    # five (B, rows, W, LD) tiles da1, h1, da2, h2, da3 of this launch's rows
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
    KA: tl.constexpr,  # classes in part A: columns 0 .. KA*SP - 1
    KB: tl.constexpr,  # classes in part B: columns KA*SP .. (KA+KB)*SP - 1 (all zero if not HAS_B)
    SP: tl.constexpr,
    HAS_B: tl.constexpr,
):
    CPA: tl.constexpr = KA * SP
    CPB: tl.constexpr = KB * SP
    LD: tl.constexpr = CPA + CPB
    r_local = tl.program_id(0)
    b = tl.program_id(1)
    n_rows = tl.num_programs(0)
    Y = row0 + r_local
    ca = tl.arange(0, CPA)
    cb = CPA + tl.arange(0, CPB)
    row_id = (b * n_rows + r_local).to(tl.int64)
    ct = z_ptr.dtype.element_ty
    rows8 = tl.arange(0, 8)[:, None]

    # Per-row results of each part: (mean, M2) of the statistics pass, or the sums of the backward
    # passes in the rows of an (8, CPX) block (2l: sum dy_l, 2l + 1: sum dy_l * xhat_l).
    n_acc = tl.sum(tl.zeros((BLOCK,), dtype=ct), axis=0)
    mean_a = tl.zeros((CPA,), dtype=ct)
    m2_a = tl.zeros((CPA,), dtype=ct)
    mean_b = tl.zeros((CPB,), dtype=ct)
    m2_b = tl.zeros((CPB,), dtype=ct)
    acc_a = tl.zeros((8, CPA), dtype=ct)
    acc_b = tl.zeros((8, CPB), dtype=ct)

    for g in range(0, n_tiles):
        x, valid, u, phi, psi = _tile_pixels(Y, g, W, w_low, s, p, BLOCK, DECONV)
        vm = valid[:, None]
        a1a, a1b = _a1_tile(
            z_ptr, tap_ptr, bias1_ptr, rows_ptr, row_lam_ptr, cols_ptr, col_lam_ptr,
            b, Y, x, u, valid, phi, psi, h_low, w_low, s, p, ca, cb, LD, HAS_B, DECONV, DOT_LOW,
        )  # fmt: skip
        # ---- forward chain, as far as this pass needs it ---------------------------------------
        if PASS == PASS_STATS and LAYER == 0:
            sta, stb = a1a, a1b
        else:
            xh0a, y0a = _bn(a1a, 0, ca, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, LD)
            xh0b, y0b = _bn(a1b, 0, cb, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, LD)
            h1a = tl.maximum(y0a, 0.0)
            h1b = tl.maximum(y0b, 0.0)
            a2a, a2b = _mix(h1a, h1b, w2_ptr, ca, cb, LD, HAS_B, True, DOT_LOW)
            a2a += tl.load(b2_ptr + ca)[None, :]
            a2b += tl.load(b2_ptr + cb)[None, :]
            if PASS == PASS_STATS and LAYER == 1:
                sta, stb = a2a, a2b
            else:
                xh1a, y1a = _bn(a2a, 1, ca, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, LD)
                xh1b, y1b = _bn(a2b, 1, cb, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, LD)
                h2a = tl.maximum(y1a, 0.0)
                h2b = tl.maximum(y1b, 0.0)
                a3a, a3b = _mix(h2a, h2b, w3_ptr, ca, cb, LD, HAS_B, True, DOT_LOW)
                a3a += tl.load(b3_ptr + ca)[None, :]
                a3b += tl.load(b3_ptr + cb)[None, :]
                sta, stb = a3a, a3b
        # ---- per-pass work ---------------------------------------------------------------------
        if PASS == PASS_STATS:
            n_t = tl.sum(valid.to(ct), axis=0)
            mean_a, m2_a = _stats_update(n_acc, mean_a, m2_a, sta, vm, n_t)
            mean_b, m2_b = _stats_update(n_acc, mean_b, m2_b, stb, vm, n_t)
            n_acc = n_acc + n_t
        else:
            xh2a, wa = _bn(a3a, 2, ca, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, LD)
            xh2b, wb = _bn(a3b, 2, cb, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, LD)
            dy2a, dsa = _fusion_part(
                wa, grad_ptr, side5_ptr, sides_ptr, out_ptr, d_side5_ptr, b, Y, x, valid, K, S, H, W,
                s5_sb, s5_sk, s5_sy, s5_sx, sd_sb, sd_ss, sd_sy, sd_sx, g_sb, g_sk, g_sy, g_sx,
                0, BLOCK, KA, SP, SOFTMAX, PASS, ct,
            )  # fmt: skip
            dy2b, dsb = _fusion_part(
                wb, grad_ptr, side5_ptr, sides_ptr, out_ptr, d_side5_ptr, b, Y, x, valid, K, S, H, W,
                s5_sb, s5_sk, s5_sy, s5_sx, sd_sb, sd_ss, sd_sy, sd_sx, g_sb, g_sk, g_sy, g_sx,
                KA, BLOCK, KB, SP, SOFTMAX, PASS, ct,
            )  # fmt: skip
            if PASS == PASS_GRAD:
                ds = dsa + dsb
                j2 = tl.arange(0, SP)[None, :]
                ds_off = ((b.to(tl.int64) * S + (j2 - 1)) * H + Y) * W + x[:, None]
                ds_mask = vm & (j2 >= 1) & (j2 <= S)
                tl.store(d_sides_ptr + ds_off, ds.to(d_sides_ptr.dtype.element_ty), mask=ds_mask)
            if PASS == PASS_SUMS and LAYER == 2:
                acc_a = _sums(acc_a, rows8, 0, dy2a, xh2a)
                acc_b = _sums(acc_b, rows8, 0, dy2b, xh2b)
            elif PASS != PASS_OUTPUT:
                # ---- backward through each BatchNorm (with its corrections) and layer ------------
                da3a = _bn_back(dy2a, xh2a, vm, 2, ca, gamma_ptr, invstd_ptr, m1_ptr, m2_ptr, LD)
                da3b = _bn_back(dy2b, xh2b, vm, 2, cb, gamma_ptr, invstd_ptr, m1_ptr, m2_ptr, LD)
                dh2a, dh2b = _mix(da3a, da3b, w3_ptr, ca, cb, LD, HAS_B, False, DOT_LOW)
                dy1a = tl.where(y1a > 0, dh2a, 0.0)
                dy1b = tl.where(y1b > 0, dh2b, 0.0)
                if PASS == PASS_SUMS and LAYER == 1:
                    acc_a = _sums(acc_a, rows8, 0, dy1a, xh1a)
                    acc_b = _sums(acc_b, rows8, 0, dy1b, xh1b)
                else:
                    da2a = _bn_back(dy1a, xh1a, vm, 1, ca, gamma_ptr, invstd_ptr, m1_ptr, m2_ptr, LD)
                    da2b = _bn_back(dy1b, xh1b, vm, 1, cb, gamma_ptr, invstd_ptr, m1_ptr, m2_ptr, LD)
                    dh1a, dh1b = _mix(da2a, da2b, w2_ptr, ca, cb, LD, HAS_B, False, DOT_LOW)
                    dy0a = tl.where(y0a > 0, dh1a, 0.0)
                    dy0b = tl.where(y0b > 0, dh1b, 0.0)
                    if PASS == PASS_SUMS:
                        acc_a = _sums(acc_a, rows8, 0, dy0a, xh0a)
                        acc_b = _sums(acc_b, rows8, 0, dy0b, xh0b)
                    else:
                        # d beta_l, d gamma_l of all three layers.
                        acc_a = _sums(acc_a, rows8, 0, dy0a, xh0a)
                        acc_a = _sums(acc_a, rows8, 2, dy1a, xh1a)
                        acc_a = _sums(acc_a, rows8, 4, dy2a, xh2a)
                        acc_b = _sums(acc_b, rows8, 0, dy0b, xh0b)
                        acc_b = _sums(acc_b, rows8, 2, dy1b, xh1b)
                        acc_b = _sums(acc_b, rows8, 4, dy2b, xh2b)
                        # The tiles the weight gradients need, for the host's GEMMs.
                        da1a = _bn_back(dy0a, xh0a, vm, 0, ca, gamma_ptr, invstd_ptr, m1_ptr, m2_ptr, LD)
                        da1b = _bn_back(dy0b, xh0b, vm, 0, cb, gamma_ptr, invstd_ptr, m1_ptr, m2_ptr, LD)
                        plane = tl.num_programs(1).to(tl.int64) * n_rows * W * LD
                        pix = (row_id * W + x[:, None]) * LD
                        _store_tile(scratch_ptr + pix, 0, ca, da1a, vm)
                        _store_tile(scratch_ptr + pix, 0, cb, da1b, vm)
                        _store_tile(scratch_ptr + plane + pix, 0, ca, h1a, vm)
                        _store_tile(scratch_ptr + plane + pix, 0, cb, h1b, vm)
                        _store_tile(scratch_ptr + 2 * plane + pix, 0, ca, da2a, vm)
                        _store_tile(scratch_ptr + 2 * plane + pix, 0, cb, da2b, vm)
                        _store_tile(scratch_ptr + 3 * plane + pix, 0, ca, h2a, vm)
                        _store_tile(scratch_ptr + 3 * plane + pix, 0, cb, h2b, vm)
                        _store_tile(scratch_ptr + 4 * plane + pix, 0, ca, da3a, vm)
                        _store_tile(scratch_ptr + 4 * plane + pix, 0, cb, da3b, vm)

    # ---- per-row partial results ---------------------------------------------------------------
    if PASS == PASS_STATS:
        tl.store(part_ptr + row_id * 2 * LD + ca, mean_a)
        tl.store(part_ptr + row_id * 2 * LD + LD + ca, m2_a)
        tl.store(part_ptr + row_id * 2 * LD + cb, mean_b)
        tl.store(part_ptr + row_id * 2 * LD + LD + cb, m2_b)
    elif PASS == PASS_SUMS:
        _store_rows(part_ptr, row_id, acc_a, rows8, 2, ca, LD)
        _store_rows(part_ptr, row_id, acc_b, rows8, 2, cb, LD)
    elif PASS == PASS_GRAD:
        _store_rows(part_ptr, row_id, acc_a, rows8, 6, ca, LD)
        _store_rows(part_ptr, row_id, acc_b, rows8, 6, cb, LD)
