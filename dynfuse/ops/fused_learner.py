"""The fused location-adaptive branch: DFF's exact fusion weights without full-resolution activations.

What it computes (the head's Side5-w upsampling, the location-adaptive learner and the fusion, from
the Side5-w block's low-resolution output on):

    a1 = W1 up(z) + b1        up: the authors' transposed convolution (kernel 2s, stride s, padding
                              s//2) cropped top-left to (H, W), or the head's bilinear resize
    h1 = relu(BN1(a1)),  a2 = W2 h1 + b2,  h2 = relu(BN2(a2)),  a3 = W3 h2 + b3,  w = BN3(a3)
    fuse[b, k] = sum_j act(w)[b, k, j] * x[b, k, j],   x = (side5[:, k], sides[:, 0], ..., sides[:, S-1])

with BatchNorm in training mode (biased batch statistics over B, H, W; the running statistics are
updated by the caller from the returned batch statistics) or in eval mode (running statistics).
Nothing of size (B, C, H, W) with C = K*(S+1) is ever stored: the op keeps the low-resolution input,
the parameters and per-channel statistics, and recomputes chunks of output rows when it needs them.

Two exact algebraic rewrites keep the recomputation cheap:
- W1 is folded into the transposed convolution (``Wf[i, o] = sum_c Wd[i, c] W1[o, c]`` per tap), so a
  chunk of ``a1`` is one transposed convolution of the few low-resolution rows it reads, computed
  as a 2x2 convolution with s*s*C outputs plus a pixel shuffle (:func:`phase_kernel`), so no partial
  rows are computed at chunk ends; the upsampled map ``up(z)`` itself never exists. For the bilinear
  resize (and a top level at stride 1), W1 commutes with the resize (its weights sum to 1), so the
  caller passes ``a1`` at low resolution.
- BatchNorm's backward ``da = gamma*invstd*(dy - mean(dy) - xhat*mean(dy*xhat))`` only needs the two
  per-channel sums ``sum(dy)`` (= d beta) and ``sum(dy*xhat)`` (= d gamma) of the layer's output
  gradient; with them, a chunk's gradient is exact.

Passes (each pass streams all output rows in chunks and reads only z, the parameters and, where said,
side5/sides/grad; N = B*H*W pixels, C = K*(S+1), F = C^2 multiply-adds per pixel for a 1x1 layer, the
folded transposed convolution costs 4F: every output pixel reads a 2x2 neighbourhood of taps):

  forward, training     stats1 (a1: 4F), stats2 (a2: 5F), stats3 (a3: 6F), output (6F + fusion)
  forward, eval         output (6F + fusion)
  backward, training    sums3 (dy3: 6F + fusion backward), sums2 (7F), sums1 (8F),
                        gradients (18F: 6F forward, 4F for conv2/conv3, 8F transposed conv)
  backward, eval        gradients (18F)

FLOPs: training forward+backward = 60F per pixel (unfused modules: 7F forward + 14F backward = 21F),
so about 2.9x the multiply-adds. Bytes through memory (not counting chunk-sized scratch that stays in
cache on a GPU tile or in a small CPU buffer): forward reads z (C*N/s^2 values) four times and
side5/sides once and writes fuse: (K + S + K) values per pixel plus 4*C/s^2; backward reads grad,
side5, sides and z and writes d side5, d sides, d z: (K + K + S + K + S) per pixel plus 8*C/s^2. The
unfused modules write and re-read about eight (B, C, H, W) tensors (8 C = 608 values per pixel at
K=19, S=3 in forward alone). Peak extra memory is the outputs plus one chunk's scratch.

Why this pass count is minimal without storing full-resolution activations: every value of
``h_l`` depends on layer l's batch statistics, i.e. on ``a_l`` at every pixel of the batch, so ``a_l``
must be produced for all pixels once before any pixel can move past layer l: three statistics passes
and one output pass. In backward, ``dy_l`` at any pixel needs layer l+1's two gradient sums over all
pixels, so the same argument gives one pass per BatchNorm plus the final gradient pass. Each pass
must recompute its chain from z (the only stored input), which is what costs the extra FLOPs; the
bytes stay those of the fusion op itself. Eval mode has no batch statistics: one pass each way.
(Not done: layer 1's statistics are linear in z and could come from the 3x3 shifted Gram matrices of
z at low resolution, removing the stats1 pass, 4F of 60F, at the price of E[x^2] - E[x]^2 numerics.)

This file holds the schedule itself (:class:`_FusedLearner`: which pass runs when, with what
statistics and corrections) and its plain-PyTorch passes (:class:`LearnerPasses`, the CPU path and
the oracle): chunks of output rows, autograd inside a chunk for the local derivatives, and an exact
BatchNorm correction (:class:`_BatchNormWithSums`) that injects the global sums. The same passes on a
Triton kernel are :class:`dynfuse.ops.fused_learner_triton.TritonLearnerPasses`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from .fuse import dynamic_fuse
from .validation import check_activation, compute_dtype

Upsample = Literal["deconv", "resize"]
NUM_LAYERS = 3
DEFAULT_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class UpsampleGeometry:
    """How the low-resolution map becomes (H, W) rows.

    mode "deconv": ``conv_transpose2d(low, weight, bias, stride, padding)`` cropped top-left to (H, W)
    (requires the transposed convolution's output to cover (H, W)). mode "resize": ``low`` is already
    ``a1``; crop top-left when it covers (H, W), else bilinear resize (align_corners=False), as
    :func:`dynfuse.layers.fit_to_size`.
    """

    mode: Upsample
    out_size: tuple[int, int]
    stride: int = 1
    padding: int = 0


def deconv_output_size(low: int, stride: int, padding: int) -> int:
    """Output length of the authors' transposed convolution (kernel 2*stride) on ``low`` inputs."""
    return (low - 1) * stride - 2 * padding + 2 * stride


def _bilinear_rows(
    h: int, r0: int, r1: int, out_h: int
) -> tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows and weights of output rows [r0, r1) of a bilinear resize (align_corners=False).

    Returns (i0, i1, idx0, idx1, lam1): rows i0..i1-1 of ``low`` are read; idx0/idx1 index them (relative
    to i0) and lam1 is the weight of idx1, as ATen computes them (source = scale*(y+0.5)-0.5 clamped
    at 0, scale = in/out).
    """
    scale = h / out_h
    y = torch.arange(r0, r1, dtype=torch.float64)
    src = (scale * (y + 0.5) - 0.5).clamp_min(0.0)
    y0 = src.floor().long().clamp_max(h - 1)
    y1 = torch.where(y0 < h - 1, y0 + 1, y0)
    lam1 = (src - y0.to(torch.float64)).clamp(0.0, 1.0)
    i0, i1 = int(y0.min()), int(y1.max()) + 1
    return i0, i1, y0 - i0, y1 - i0, lam1


def _rows_span(low: torch.Tensor, geo: UpsampleGeometry, r0: int, r1: int) -> tuple[int, int]:
    """Low-resolution rows [i0, i1) that output rows [r0, r1) read."""
    h = low.shape[-2]
    if geo.mode == "deconv":
        s, p = geo.stride, geo.padding
        i0 = max(0, -(-(r0 + p - 2 * s + 1) // s))
        i1 = min(h, (r1 - 1 + p) // s + 1)
        return i0, i1
    if h >= geo.out_size[0] and low.shape[-1] >= geo.out_size[1]:
        return r0, r1
    i0, i1, *_ = _bilinear_rows(h, r0, r1, geo.out_size[0])
    return i0, i1


def phase_kernel(weight: torch.Tensor, s: int) -> torch.Tensor:
    """The (Cin, Cout, 2s, 2s) transposed-convolution weight as a (Cout*s*s, Cin, 2, 2) convolution
    kernel: ``conv_transpose2d(z, W, stride=s)`` = ``pixel_shuffle(conv2d(pad1(z), kernel), s)``.

    Unpadded output (Y, X) = (t*s + phi, u*s + psi) reads z[t-a, u-b] through W[:, :, phi + a*s,
    psi + b*s] for a, b in {0, 1}; the kernel holds that tap at channel (o, phi, psi) and position
    (1-a, 1-b) of a cross-correlation over z padded by one zero row/column.
    """
    cin, cout = weight.shape[:2]
    k = weight.reshape(cin, cout, 2, s, 2, s).flip(2, 4)  # [c, o, 1-a, phi, 1-b, psi]
    return k.permute(1, 3, 5, 0, 2, 4).reshape(cout * s * s, cin, 2, 2)


def _deconv_rows(
    low_rows: torch.Tensor,
    i0: int,
    h_low: int,
    kernel: torch.Tensor,
    bias: torch.Tensor | None,
    s: int,
    p: int,
    r0: int,
    r1: int,
    out_w: int,
) -> torch.Tensor:
    """Rows [r0, r1) (columns [0, out_w)) of the transposed convolution (kernel 2s, stride s, padding
    p) as one 2x2 convolution of the low rows they read + pixel shuffle (see :func:`phase_kernel`):
    4 C^2 multiply-adds per output pixel, plus the unused phases of the first and last low row when
    r0 + p or r1 + p is not a multiple of s (chunks are aligned so that only the image's ends have
    them). ``low_rows`` holds z's rows from i0 on; rows outside [0, h_low) are zeros.
    """
    t_lo, t_hi = (r0 + p) // s, (r1 + p - 1) // s
    lo, hi = t_lo - 1, t_hi + 1  # z rows [lo, hi); row -1 and row h_low are the zero padding
    src = low_rows[:, :, max(lo, 0) - i0 : min(hi, h_low) - i0]
    if lo < 0 or hi > h_low:
        src = F.pad(src, (0, 0, max(0, -lo), max(0, hi - h_low)))
    y = F.pixel_shuffle(F.conv2d(src, kernel, bias, padding=(0, 1)), s)
    start = r0 + p - t_lo * s
    return y[:, :, start : start + (r1 - r0), p : p + out_w]


def _phase_bias(bias: torch.Tensor, s: int) -> torch.Tensor:
    """The (C,) transposed-convolution bias as the (C*s*s,) bias of :func:`phase_kernel`'s convolution."""
    return bias.repeat_interleave(s * s)


def _upsample_params(
    up_weight: torch.Tensor | None, up_bias: torch.Tensor | None, geo: UpsampleGeometry
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The transposed convolution's (kernel, bias) in the form :func:`_deconv_rows` takes."""
    if geo.mode != "deconv" or up_weight is None:
        return up_weight, up_bias
    s = geo.stride
    bias = None if up_bias is None else _phase_bias(up_bias, s)
    return phase_kernel(up_weight, s), bias


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` detached, in the compute dtype."""
    return t.detach().to(dtype)


def _cast_optional(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else _cast(t, dtype)


def _a1_rows(
    low_rows: torch.Tensor,
    i0: int,
    geo: UpsampleGeometry,
    r0: int,
    r1: int,
    h_low: int,
    up_weight: torch.Tensor | None,
    up_bias: torch.Tensor | None,
) -> torch.Tensor:
    """a1 at output rows [r0, r1), full width W, from the low rows [i0, i0 + len) it reads."""
    out_h, out_w = geo.out_size
    if geo.mode == "deconv":
        assert up_weight is not None
        return _deconv_rows(low_rows, i0, h_low, up_weight, up_bias, geo.stride, geo.padding, r0, r1, out_w)
    if h_low >= out_h and low_rows.shape[-1] >= out_w:
        return low_rows[..., :out_w]
    # Bilinear: rows by hand (ATen's weights), columns by F.interpolate with an identity row scale.
    _, _, idx0, idx1, lam1 = _bilinear_rows(h_low, r0, r1, out_h)
    lam1 = lam1.to(low_rows.dtype).view(1, 1, -1, 1)
    top = low_rows.index_select(2, idx0.to(low_rows.device))
    bottom = low_rows.index_select(2, idx1.to(low_rows.device))
    rows = top * (1 - lam1) + bottom * lam1
    return F.interpolate(rows, size=(r1 - r0, out_w), mode="bilinear", align_corners=False)


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight[:, :, None, None], bias)


class _BatchNormWithSums(torch.autograd.Function):
    """y = gamma * (a - mean) * invstd + beta whose backward is BatchNorm's exact training-mode
    gradient, given the layer's global gradient means m1 = mean(dy), m2 = mean(dy * xhat).

    With m1 = m2 = 0 it is eval-mode BatchNorm (constant statistics). d gamma / d beta come back as
    this chunk's share (sum over its pixels); the caller sums the chunks.
    """

    @staticmethod
    def forward(ctx, a, mean, invstd, gamma, beta, m1, m2):
        xhat = (a - mean[:, None, None]) * invstd[:, None, None]
        ctx.save_for_backward(xhat, invstd, gamma, m1, m2)
        return xhat * gamma[:, None, None] + beta[:, None, None]

    @staticmethod
    def backward(ctx, dy):
        xhat, invstd, gamma, m1, m2 = ctx.saved_tensors
        d_gamma = (dy * xhat).sum(dim=(0, 2, 3))
        d_beta = dy.sum(dim=(0, 2, 3))
        c = lambda t: t[:, None, None]  # noqa: E731
        da = (dy - c(m1) - xhat * c(m2)) * c(gamma * invstd)
        return da, None, None, d_gamma, d_beta, None, None


@dataclass
class _Params:
    """The op's tensors in the compute dtype (detached), and the per-layer statistics."""

    low: torch.Tensor
    up_weight: torch.Tensor | None
    up_bias: torch.Tensor | None
    weights: list[torch.Tensor]  # conv2, conv3 (C_out, C_in)
    # up_weight / up_bias hold the transposed convolution as :func:`_upsample_params` gives it.
    biases: list[torch.Tensor]
    gammas: list[torch.Tensor]
    betas: list[torch.Tensor]
    means: list[torch.Tensor | None]
    invstds: list[torch.Tensor | None]
    raw_up: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # as given, for gradients

    def stats(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, invstd) of BatchNorm layer ``layer``; they exist once the forward has computed them."""
        mean, invstd = self.means[layer], self.invstds[layer]
        if mean is None or invstd is None:
            raise RuntimeError(
                f"internal error: BatchNorm layer {layer}'s statistics are used before they are computed"
            )
        return mean, invstd


def _params_from_tensors(
    ct: torch.dtype,
    geo: UpsampleGeometry,
    tensors: tuple[torch.Tensor | None, ...],
    means: list[torch.Tensor | None],
    invstds: list[torch.Tensor | None],
) -> _Params:
    """The op's tensor inputs (low, up_weight, up_bias, w2, b2, w3, b3, g1, be1, g2, be2, g3, be3,
    side5, sides) as :class:`_Params` in the compute dtype ``ct``."""
    low, up_weight, up_bias, *rest = tensors[:13]
    if low is None or any(t is None for t in rest):
        raise RuntimeError("internal error: the fused learner's parameters must be tensors")
    w2, b2, w3, b3, g1, be1, g2, be2, g3, be3 = (_cast(t, ct) for t in rest if t is not None)
    raw_up = (_cast_optional(up_weight, ct), _cast_optional(up_bias, ct))
    kernel, kbias = _upsample_params(*raw_up, geo)
    return _Params(
        _cast(low, ct),
        kernel,
        kbias,
        [w2, w3],
        [b2, b3],
        [g1, g2, g3],
        [be1, be2, be3],
        means,
        invstds,
        raw_up,
    )


def _chunks(geo: UpsampleGeometry, rows: int) -> list[tuple[int, int]]:
    """Row ranges covering [0, H). For the transposed convolution, a multiple of s rows each, with
    boundaries where (r + p) is a multiple of s, so that each low row's s output rows fall in one chunk."""
    h = geo.out_size[0]
    if geo.mode != "deconv":
        return [(r0, min(h, r0 + rows)) for r0 in range(0, h, rows)]
    s = geo.stride
    step = max(s, rows // s * s)
    bounds = [0] + [r for r in range(step - geo.padding, h, step) if r > 0] + [h]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _layer_input(
    p: _Params,
    geo: UpsampleGeometry,
    r0: int,
    r1: int,
    low: torch.Tensor | None = None,
    up_weight: torch.Tensor | None = None,
    up_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int, int]:
    """a1 for rows [r0, r1) plus the low rows [i0, i1) read (from ``low`` if given: a grad leaf)."""
    i0, i1 = _rows_span(p.low, geo, r0, r1)
    src = p.low[:, :, i0:i1] if low is None else low
    a1 = _a1_rows(
        src,
        i0,
        geo,
        r0,
        r1,
        p.low.shape[-2],
        p.up_weight if up_weight is None else up_weight,
        p.up_bias if up_bias is None else up_bias,
    )
    return a1, i0, i1


def _bn_plain(a: torch.Tensor, p: _Params, layer: int) -> torch.Tensor:
    mean, invstd = p.stats(layer)
    scale = p.gammas[layer] * invstd
    shift = p.betas[layer] - mean * scale
    return torch.addcmul(shift[:, None, None], a, scale[:, None, None])


def _forward_to(p: _Params, a1: torch.Tensor, stop: int) -> torch.Tensor:
    """No-grad chain from a1 to a_stop (stop = 1, 2, 3) using layers < stop's statistics."""
    a = a1
    for layer in range(1, stop):
        h = torch.relu_(_bn_plain(a, p, layer - 1))
        a = _conv1x1(h, p.weights[layer - 1], p.biases[layer - 1])
    return a


def _fuse_chunk(
    w: torch.Tensor, side5: torch.Tensor, sides: torch.Tensor, activation: str | None
) -> torch.Tensor:
    b, c, r, wd = w.shape
    k = side5.shape[1]
    return dynamic_fuse(side5, sides, w.reshape(b, k, c // k, r, wd), activation=activation, backend="torch")


def _combine(
    stats: tuple[float, torch.Tensor, torch.Tensor] | None, a: torch.Tensor
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Chan's parallel update of (count, mean, M2) per channel with one chunk, in float64."""
    var, mean = torch.var_mean(a, dim=(0, 2, 3), correction=0)
    n = float(a.numel() // a.shape[1])
    mean, m2 = mean.double(), var.double() * n
    if stats is None:
        return n, mean, m2
    n0, mean0, m20 = stats
    total = n0 + n
    delta = mean - mean0
    return total, mean0 + delta * (n / total), m20 + m2 + delta * delta * (n0 * n / total)


#: Position of the first tensor among the autograd function's inputs (passes, geometry, activation,
#: batch_stats, eps, rows and the running statistics come first).
_FIRST_TENSOR = 7


class LearnerPasses:
    """The schedule's passes in plain PyTorch: chunks of output rows, autograd inside a chunk.

    :class:`_FusedLearner` runs the schedule (statistics layer by layer, output; gradient sums top
    down, gradients) through an object of this class or of a subclass that runs the same passes
    another way (:class:`dynfuse.ops.fused_learner_triton.TritonLearnerPasses`). Corrections ``corr``
    are per layer (mean(dy), mean(dy * xhat)), (C,) each in the compute dtype.
    """

    def __init__(
        self,
        p: _Params,
        geo: UpsampleGeometry,
        rows: int,
        side5: torch.Tensor,
        sides: torch.Tensor,
        activation: str | None,
    ) -> None:
        self.p, self.geo, self.side5, self.sides, self.activation = p, geo, side5, sides, activation
        self.chunks = _chunks(geo, rows)
        self.ct = p.low.dtype

    def set_statistics(self, layer: int, mean: torch.Tensor, invstd: torch.Tensor) -> None:
        """BatchNorm layer ``layer`` normalises with (mean, invstd), (C,) in the compute dtype."""
        self.p.means[layer], self.p.invstds[layer] = mean, invstd

    def batch_statistics(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s batch mean and biased variance, (C,) float64 (the layers below it have
        their statistics)."""
        acc: tuple[float, torch.Tensor, torch.Tensor] | None = None
        for r0, r1 in self.chunks:
            a1, _, _ = _layer_input(self.p, self.geo, r0, r1)
            acc = _combine(acc, _forward_to(self.p, a1, layer + 1))
        if acc is None:  # out_size has at least one row (checked by fused_learner_fuse)
            raise RuntimeError("internal error: no output rows to take batch statistics over")
        n, mean, m2 = acc
        return mean, m2 / n

    def output(self) -> torch.Tensor:
        """fuse (B, K, H, W) in side5's dtype."""
        p, ct = self.p, self.ct
        out = torch.empty_like(self.side5)
        for r0, r1 in self.chunks:
            a1, _, _ = _layer_input(p, self.geo, r0, r1)
            w = _bn_plain(_forward_to(p, a1, NUM_LAYERS), p, NUM_LAYERS - 1)
            x5, xs = self.side5[:, :, r0:r1].to(ct), self.sides[:, :, r0:r1].to(ct)
            out[:, :, r0:r1] = _fuse_chunk(w, x5, xs, self.activation)
        return out

    def gradient_sums(
        self, layer: int, grad: torch.Tensor, corr: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sum(dy) and sum(dy * xhat) of layer ``layer``'s BatchNorm output over all pixels, (C,)
        float64 (the layers above it have their corrections in ``corr``)."""
        p, ct = self.p, self.ct
        s1 = torch.zeros_like(p.gammas[layer], dtype=torch.float64)
        s2 = torch.zeros_like(s1)
        for r0, r1 in self.chunks:
            with torch.no_grad():
                a1, _, _ = _layer_input(p, self.geo, r0, r1)
                a = _forward_to(p, a1, layer + 1)
                mean, invstd = p.stats(layer)
                xhat = (a - mean[:, None, None]) * invstd[:, None, None]
                y = xhat * p.gammas[layer][:, None, None] + p.betas[layer][:, None, None]
            y.requires_grad_()
            with torch.enable_grad():
                w = _tail(p, y, layer, corr)
                x5, xs = self.side5[:, :, r0:r1].to(ct), self.sides[:, :, r0:r1].to(ct)
                out = _fuse_chunk(w, x5, xs, self.activation)
            (dy,) = torch.autograd.grad(out, y, grad[:, :, r0:r1].to(ct))
            s1 += dy.sum(dim=(0, 2, 3), dtype=torch.float64)
            s2 += (dy * xhat).sum(dim=(0, 2, 3), dtype=torch.float64)
        return s1, s2

    def gradients(
        self,
        grad: torch.Tensor,
        corr: list[tuple[torch.Tensor, torch.Tensor]],
        needs: tuple[bool, ...],
    ) -> tuple[list[torch.Tensor | None], torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Every gradient in one pass with the corrected BatchNorms (all sums known): the parameter
        gradients as :func:`_finish_gradients` takes them, d low, d side5 and d sides (None where
        ``needs``, one flag per tensor input, says they are not needed)."""
        p, geo, ct = self.p, self.geo, self.ct
        up_weight, up_bias = (None if t is None else _leaf(t) for t in (p.up_weight, p.up_bias))
        (w2, w3), (b2, b3) = (_leaf(t) for t in p.weights), (_leaf(t) for t in p.biases)
        (g1, g2, g3), (be1, be2, be3) = (_leaf(t) for t in p.gammas), (_leaf(t) for t in p.betas)
        # The order of the op's parameter inputs (the tensors after low, before side5).
        leaves: list[torch.Tensor | None] = [up_weight, up_bias, w2, b2, w3, b3, g1, be1, g2, be2, g3, be3]
        p_leaf = _Params(
            p.low, up_weight, up_bias, [w2, w3], [b2, b3], [g1, g2, g3], [be1, be2, be3], p.means, p.invstds
        )
        acc: list[torch.Tensor | None] = [None] * len(leaves)
        d_low = torch.zeros_like(p.low) if needs[0] else None
        d_side5 = torch.empty_like(self.side5) if needs[-2] else None
        d_sides = torch.empty_like(self.sides) if needs[-1] else None
        for r0, r1 in self.chunks:
            i0, i1 = _rows_span(p.low, geo, r0, r1)
            low_rows = p.low[:, :, i0:i1].detach().requires_grad_()
            x5 = self.side5[:, :, r0:r1].detach().to(ct).requires_grad_()
            xs = self.sides[:, :, r0:r1].detach().to(ct).requires_grad_()
            with torch.enable_grad():
                a1, _, _ = _layer_input(p_leaf, geo, r0, r1, low=low_rows)
                y = _BatchNormWithSums.apply(a1, *p.stats(0), g1, be1, *corr[0])
                w = _tail(p_leaf, y, 0, corr)
                out = _fuse_chunk(w, x5, xs, self.activation)
            inputs = [low_rows, x5, xs] + [t for t in leaves if t is not None]
            grads = torch.autograd.grad(out, inputs, grad[:, :, r0:r1].to(ct), allow_unused=True)
            if d_low is not None:
                d_low[:, :, i0:i1] += grads[0]
            if d_side5 is not None:
                d_side5[:, :, r0:r1] = grads[1]
            if d_sides is not None:
                d_sides[:, :, r0:r1] = grads[2]
            it = iter(grads[3:])
            for i, t in enumerate(leaves):
                if t is None:
                    continue
                gi = next(it)
                if gi is not None:
                    prev = acc[i]
                    acc[i] = gi if prev is None else prev + gi
        return acc, d_low, d_side5, d_sides


def _running_statistics(
    running: tuple[torch.Tensor | None, ...], layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s (running_mean, running_var) in float64."""
    running_mean, running_var = running[2 * layer], running[2 * layer + 1]
    if running_mean is None or running_var is None:  # checked by fused_learner_fuse
        raise ValueError("eval-mode BatchNorm needs running statistics (track_running_stats=True)")
    return running_mean.double(), running_var.double()


class _FusedLearner(torch.autograd.Function):
    """The schedule: forward = statistics layer by layer (training) + the output pass; backward =
    gradient sums top down (training) + the gradient pass; each pass run by ``passes``."""

    @staticmethod
    def forward(
        ctx,
        passes: type[LearnerPasses],
        geo: UpsampleGeometry,
        activation: str | None,
        batch_stats: bool,
        eps: float,
        rows: int,
        running: tuple[torch.Tensor | None, ...],
        *tensors: torch.Tensor | None,
    ):
        # tensors: low, up_weight, up_bias, w2, b2, w3, b3, g1, be1, g2, be2, g3, be3, side5, sides
        side5, sides = tensors[-2], tensors[-1]
        if side5 is None or sides is None:
            raise RuntimeError("internal error: side5 and sides are required")
        ct = compute_dtype(side5.dtype)
        p = _params_from_tensors(ct, geo, tensors, [None] * NUM_LAYERS, [None] * NUM_LAYERS)
        engine = passes(p, geo, rows, side5, sides, activation)
        batch_mean, batch_var = [], []
        for layer in range(NUM_LAYERS):
            if batch_stats:
                mean, var = engine.batch_statistics(layer)
                batch_mean.append(mean)
                batch_var.append(var)
            else:
                mean, var = _running_statistics(running, layer)
            engine.set_statistics(layer, mean.to(ct), torch.rsqrt(var + eps).to(ct))
        out = engine.output()
        ctx.save_for_backward(*tensors)
        ctx.stats = (p.means, p.invstds)
        ctx.passes, ctx.geo, ctx.activation, ctx.batch_stats, ctx.rows = (
            passes,
            geo,
            activation,
            batch_stats,
            rows,
        )
        if batch_stats:
            n_pix = float(side5.shape[0] * geo.out_size[0] * geo.out_size[1])
            unbiased = n_pix / max(n_pix - 1.0, 1.0)
            means = torch.stack(batch_mean).to(side5.dtype)
            vars_ = torch.stack(batch_var)
            stats = (means, vars_.to(side5.dtype), (vars_ * unbiased).to(side5.dtype))
        else:
            empty = side5.new_empty((0,))
            stats = (empty, empty, empty)
        ctx.mark_non_differentiable(*stats)
        return (out, *stats)

    @staticmethod
    def backward(ctx, grad, *_stat_grads):  # the batch statistics are non-differentiable
        saved = ctx.saved_tensors
        low, side5, sides = saved[0], saved[-2], saved[-1]
        geo: UpsampleGeometry = ctx.geo
        ct = compute_dtype(side5.dtype)
        means, invstds = ctx.stats
        p = _params_from_tensors(ct, geo, saved, list(means), list(invstds))
        engine = ctx.passes(p, geo, ctx.rows, side5, sides, ctx.activation)
        for layer in range(NUM_LAYERS):
            engine.set_statistics(layer, *p.stats(layer))
        n_pix = float(side5.shape[0] * geo.out_size[0] * geo.out_size[1])
        zeros = torch.zeros_like(p.gammas[0])
        corr: list[tuple[torch.Tensor, torch.Tensor]] = [(zeros, zeros)] * NUM_LAYERS
        if ctx.batch_stats:
            # Top-down: the gradient means of layer l need the exact gradient below layer l+1.
            for layer in reversed(range(NUM_LAYERS)):
                s1, s2 = engine.gradient_sums(layer, grad, corr)
                corr[layer] = ((s1 / n_pix).to(ct), (s2 / n_pix).to(ct))
        needs = ctx.needs_input_grad[_FIRST_TENSOR:]
        acc, d_low, d_side5, d_sides = engine.gradients(grad, corr, needs)
        return (None,) * _FIRST_TENSOR + _finish_gradients(ctx, p, acc, d_low, d_side5, d_sides, low)


def _tail(
    p: _Params,
    y: torch.Tensor,
    layer: int,
    corr: list[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Graph from layer ``layer``'s BatchNorm output y to the weights w (layers above, corrected)."""
    for nxt in range(layer + 1, NUM_LAYERS):
        a = _conv1x1(torch.relu(y), p.weights[nxt - 1], p.biases[nxt - 1])
        y = _BatchNormWithSums.apply(a, *p.stats(nxt), p.gammas[nxt], p.betas[nxt], *corr[nxt])
    return y


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``t`` that autograd differentiates with respect to."""
    return t.detach().requires_grad_()


def _finish_gradients(
    ctx,
    p: _Params,
    acc: list[torch.Tensor | None],
    d_low: torch.Tensor | None,
    d_side5: torch.Tensor | None,
    d_sides: torch.Tensor | None,
    low: torch.Tensor,
) -> tuple:
    """The op's tensor-input gradients in its input order from the accumulated parameter gradients
    ``acc`` (up weight, up bias, w2, b2, w3, b3, g1, be1, g2, be2, g3, be3; the transposed
    convolution's in :func:`phase_kernel` form), each in its input's dtype, None where not needed."""
    geo: UpsampleGeometry = ctx.geo
    needs = ctx.needs_input_grad[_FIRST_TENSOR:]
    raw_weight, raw_bias = p.raw_up
    d_kernel, d_kbias = acc[0], acc[1]
    if (
        geo.mode == "deconv"
        and raw_weight is not None
        and raw_bias is not None
        and d_kernel is not None
        and d_kbias is not None
    ):
        # Back from the phase-kernel form to the (Cin, Cout, 2s, 2s) weight and the (C,) bias.
        raw_w, raw_b = _leaf(raw_weight), _leaf(raw_bias)
        with torch.enable_grad():
            kernel, kbias = phase_kernel(raw_w, geo.stride), _phase_bias(raw_b, geo.stride)
        acc[0], acc[1] = torch.autograd.grad((kernel, kbias), (raw_w, raw_b), (d_kernel, d_kbias))
    originals = ctx.saved_tensors[1:13]
    out_grads: list[torch.Tensor | None] = [None if d_low is None else d_low.to(low.dtype)]
    for i, (orig, need) in enumerate(zip(originals, needs[1:13], strict=True)):
        if orig is None or not need:
            out_grads.append(None)
        else:
            total = acc[i]
            if total is None:
                total = torch.zeros_like(orig, dtype=p.low.dtype)
            out_grads.append(total.to(orig.dtype))
    out_grads.append(d_side5)
    out_grads.append(d_sides)
    return tuple(out_grads)


class FusedLearnerOutput(NamedTuple):
    """fuse (B, K, H, W) in side5's dtype; with batch statistics also their per-layer means, biased
    variances (what normalised) and unbiased variances (what BatchNorm2d puts in running_var), each
    (3, C) in side5's dtype; None in eval mode."""

    fuse: torch.Tensor
    batch_mean: torch.Tensor | None
    batch_var: torch.Tensor | None
    batch_var_unbiased: torch.Tensor | None


@dataclass
class BatchNormState:
    """One BatchNorm layer's tensors: affine parameters (None: gamma 1, beta 0), running statistics
    (used in eval mode) and eps."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    eps: float = 1e-5


def fused_learner_fuse(
    low: torch.Tensor,
    up_weight: torch.Tensor | None,
    up_bias: torch.Tensor | None,
    conv_weights: tuple[torch.Tensor, torch.Tensor],
    conv_biases: tuple[torch.Tensor, torch.Tensor],
    norms: tuple[BatchNormState, BatchNormState, BatchNormState],
    side5: torch.Tensor,
    sides: torch.Tensor,
    geometry: UpsampleGeometry,
    *,
    batch_stats: bool,
    activation: str | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    backend: str = "auto",
) -> FusedLearnerOutput:
    """Fused location-adaptive learner + fusion from the low-resolution Side5-w map.

    Args:
        low: mode "deconv": z (B, C, h, w), the Side5-w block's conv+BN output; mode "resize":
            a1 (B, C, h, w) = conv1(z) at low resolution.
        up_weight: "deconv": the folded (C, C, 2s, 2s) transposed-convolution weight
            ``einsum("icyx,oc->ioyx", deconv.weight, conv1.weight)``; None for "resize".
        up_bias: "deconv": conv1's bias (C,); None for "resize".
        conv_weights, conv_biases: conv2 and conv3 as (C, C) matrices and (C,) vectors.
        norms: the three BatchNorm layers.
        side5: (B, K, H, W); sides: (B, S, H, W), C = K*(S+1).
        geometry: see :class:`UpsampleGeometry`; ``out_size`` = (H, W).
        batch_stats: BatchNorm with batch statistics (training) or the running ones (eval).
        activation: None or "softmax" over the S+1 weights.
        chunk_elements: scratch budget: rows per chunk = max(1, chunk_elements // (B*C*W)).
        backend: "torch" (this module's chunked schedule), "triton" (the same schedule on the Triton
            kernel of :mod:`dynfuse.ops.fused_learner_triton`: CUDA tensors, or any tensors under
            ``TRITON_INTERPRET=1``) or "auto", which is "torch" for now: the kernel is verified
            against this module under the Triton interpreter but not yet compiled and timed on a GPU.

    Returns:
        :class:`FusedLearnerOutput`. The caller updates running statistics from the batch means and
        unbiased variances, as :class:`torch.nn.BatchNorm2d` does.
    """
    check_activation(activation)
    b, k, h_out, w_out = side5.shape
    if tuple(geometry.out_size) != (h_out, w_out):
        raise ValueError(
            f"geometry.out_size {geometry.out_size} does not match side5's size {(h_out, w_out)}"
        )
    if sides.shape[0] != b or sides.shape[2:] != side5.shape[2:]:
        raise ValueError(f"sides {tuple(sides.shape)} must be (B={b}, S, {h_out}, {w_out}) like side5")
    c = k * (sides.shape[1] + 1)
    if low.dim() != 4 or low.shape[0] != b or low.shape[1] != c:
        raise ValueError(
            f"low must be (B={b}, C={c}, h, w) for K={k}, S={sides.shape[1]}; got {tuple(low.shape)}"
        )
    if geometry.mode == "deconv":
        if up_weight is None or up_bias is None:
            raise ValueError("mode 'deconv' needs the folded transposed-convolution weight and conv1's bias")
        s, pad = geometry.stride, geometry.padding
        cover = (deconv_output_size(low.shape[-2], s, pad), deconv_output_size(low.shape[-1], s, pad))
        if cover[0] < h_out or cover[1] < w_out:
            raise ValueError(
                f"the transposed convolution gives {cover} from {tuple(low.shape[-2:])}, smaller than the "
                f"output size {(h_out, w_out)}; the fused learner only crops (use the unfused modules)"
            )
    elif geometry.mode != "resize":
        raise ValueError(f"geometry.mode must be 'deconv' or 'resize', got {geometry.mode!r}")
    if not batch_stats and any(n.running_mean is None or n.running_var is None for n in norms):
        raise ValueError("eval-mode BatchNorm needs running statistics (track_running_stats=True)")
    if batch_stats and b * h_out * w_out <= 1:
        raise ValueError(
            f"BatchNorm in training mode needs more than one value per channel (B*H*W = {b * h_out * w_out})"
        )
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    passes = _learner_passes(backend, side5.device)
    rows = max(1, chunk_elements // max(1, b * c * w_out))
    ones = side5.new_ones(c)
    zeros_ = side5.new_zeros(c)
    gb: list[torch.Tensor] = []
    for n in norms:
        gb += [n.weight if n.weight is not None else ones, n.bias if n.bias is not None else zeros_]
    running = tuple(t for n in norms for t in (n.running_mean, n.running_var))
    eps = norms[0].eps
    if any(not math.isclose(n.eps, eps) for n in norms):
        raise ValueError("the three BatchNorm layers must share one eps")
    # The op computes in float32 (float64 for float64 inputs) whatever autocast says: its chunked
    # convolutions must not drop to the autocast dtype half way through the chain.
    with torch.autocast(side5.device.type, enabled=False):
        out, means, biased, unbiased = _FusedLearner.apply(
            passes,
            geometry,
            activation,
            batch_stats,
            float(eps),
            rows,
            running,
            low,
            up_weight,
            up_bias,
            conv_weights[0],
            conv_biases[0],
            conv_weights[1],
            conv_biases[1],
            *gb,
            side5,
            sides,
        )
    if not batch_stats:
        return FusedLearnerOutput(out, None, None, None)
    return FusedLearnerOutput(out, means, biased, unbiased)


#: Backends of :func:`fused_learner_fuse`.
LEARNER_BACKENDS = ("auto", "torch", "triton")


def _learner_passes(backend: str, device: torch.device) -> type[LearnerPasses]:
    """The passes that run ``backend`` (validated) on ``device``."""
    if backend not in LEARNER_BACKENDS:
        raise ValueError(f"backend must be one of {LEARNER_BACKENDS}, got {backend!r}")
    if backend != "triton":
        return LearnerPasses
    from .triton_mode import check_triton_usable

    check_triton_usable(device)
    from .fused_learner_triton import TritonLearnerPasses

    return TritonLearnerPasses


def materialize_weights(
    low: torch.Tensor,
    up_weight: torch.Tensor | None,
    up_bias: torch.Tensor | None,
    conv_weights: tuple[torch.Tensor, torch.Tensor],
    conv_biases: tuple[torch.Tensor, torch.Tensor],
    norms: tuple[BatchNormState, BatchNormState, BatchNormState],
    geometry: UpsampleGeometry,
    means: torch.Tensor,
    variances: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """The learner's weights (B, K, C/K, H, W) (before any activation), without autograd, row chunk by
    row chunk, given the BatchNorm statistics used (biased variances for batch statistics)."""
    ct = compute_dtype(low.dtype)
    ones = torch.ones(low.shape[1], dtype=ct, device=low.device)
    kernel, kbias = _upsample_params(_cast_optional(up_weight, ct), _cast_optional(up_bias, ct), geometry)
    p = _Params(
        _cast(low, ct),
        kernel,
        kbias,
        [_cast(conv_weights[0], ct), _cast(conv_weights[1], ct)],
        [_cast(conv_biases[0], ct), _cast(conv_biases[1], ct)],
        [_cast(n.weight, ct) if n.weight is not None else ones for n in norms],
        [_cast(n.bias, ct) if n.bias is not None else ones * 0 for n in norms],
        [_cast(m, ct) for m in means],
        [torch.rsqrt(_cast(v, ct) + n.eps) for v, n in zip(variances, norms, strict=True)],
    )
    b, c = low.shape[:2]
    h_out, w_out = geometry.out_size
    out = torch.empty((b, c, h_out, w_out), dtype=low.dtype, device=low.device)
    rows = max(1, DEFAULT_CHUNK_ELEMENTS // max(1, b * c * w_out))
    with torch.no_grad(), torch.autocast(low.device.type, enabled=False):
        for r0, r1 in _chunks(geometry, rows):
            a1, _, _ = _layer_input(p, geometry, r0, r1)
            out[:, :, r0:r1] = _bn_plain(_forward_to(p, a1, NUM_LAYERS), p, NUM_LAYERS - 1)
    return out.view(b, num_classes, c // num_classes, h_out, w_out)
