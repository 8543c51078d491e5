"""The fused location-adaptive branch on the Triton kernel: launchers and the passes.

Same op, same passes and same inputs as the plain-PyTorch twin (:mod:`dynfuse.ops.fused_learner`,
whose docstring has the byte/FLOP model and why the pass count is minimal); here each pass is one
launch of :func:`dynfuse.ops.fused_learner_kernels.learner_pass_kernel` over all output rows
(:class:`TritonLearnerPasses`, which the twin's autograd function runs), so the
learner's chain never leaves registers and its channel mixing runs as ``tl.dot``. What stays on the
host: the padding of the parameters into the kernel's channel layout, the float64 combination of the
per-row statistics and sums (deterministic: no atomics), and the weight gradients, which are
reductions over all pixels: one GEMM per matrix over a chunk of rows of the kernel's scratch tiles,
and the transposed convolution's backward on the chunk's ``da1`` (the twin's code for it).

Peak extra memory: the outputs, the (B*H, 6, LD) per-row partials and one chunk's scratch (five
(B, rows, W, LD) tiles; LD = the tile's padded channel count, :class:`ChannelLayout`), never a
(B, C, H, W) tensor.

Status: verified against the twin under ``TRITON_INTERPRET=1`` (tests marked ``interpreter``); it
has not yet been compiled and timed on a GPU, so ``backend="auto"`` still picks the twin.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .fused_learner import (
    NUM_LAYERS,
    LearnerPasses,
    UpsampleGeometry,
    _bilinear_rows,
    _layer_input,
    _leaf,
    _Params,
    _rows_span,
)

#: Pixels per tile (rows of the (BLOCK, LD) register tile); tl.dot needs at least 16.
BLOCK = 32
NUM_WARPS = 4


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class ChannelLayout:
    """Where learner channel c = k*(S+1) + j lives in the kernel's tiles.

    The tile is two parts of power-of-two widths (``tl.dot`` needs them): part A holds classes
    0 .. KA-1 at columns k*SP + j, part B classes KA .. K-1 at columns KA*SP + (k-KA)*SP + j (SP = the
    next power of two >= S+1). Splitting K = 19 into 16 + 3 (padded to 4) gives 80 columns where one
    power-of-two part needs 128, 2.6x fewer multiply-adds per dot. Without a second part (K a power
    of two, or no narrower split) part B is 16 columns of zeros that no dot reads. Each part is at
    least 16 columns wide. Every padding column holds exactly 0.
    """

    num_classes: int
    num_inputs: int  # S + 1
    ka: int
    kb: int
    sp: int
    has_b: bool
    index: torch.Tensor  # (C,) int64 column of each real channel

    @property
    def ld(self) -> int:
        """Columns of a tile, both parts (the leading dimension of the padded matrices)."""
        return (self.ka + self.kb) * self.sp

    @staticmethod
    def of(
        num_classes: int, num_inputs: int, device: torch.device, split: bool | None = None
    ) -> ChannelLayout:
        """The layout for K classes and S+1 inputs; ``split`` None: two parts when that is narrower,
        True: two parts when K allows it, False: one part."""
        sp = _pow2_at_least(num_inputs)
        min_classes = max(1, -(-16 // sp))  # a part is at least 16 columns wide
        single = max(_pow2_at_least(num_classes), min_classes)
        ka = 1 << (num_classes.bit_length() - 1)  # the largest power of two <= K
        kb = max(_pow2_at_least(num_classes - ka), min_classes)
        can_split = ka < num_classes and ka >= min_classes
        if not (can_split and (split or (split is None and ka + kb < single))):
            ka, kb = single, min_classes
        k = torch.arange(num_classes, device=device)[:, None]
        j = torch.arange(num_inputs, device=device)[None, :]
        index = (k * sp + j).reshape(-1)  # classes >= KA follow part A's KA*SP columns: the same formula
        has_b = ka < num_classes
        return ChannelLayout(num_classes, num_inputs, ka, kb, sp, has_b, index)

    def vector(self, v: torch.Tensor) -> torch.Tensor:
        """(C,) -> (LD,) with zeros in the padding columns."""
        out = v.new_zeros(self.ld)
        out[self.index] = v
        return out

    def matrix(self, m: torch.Tensor) -> torch.Tensor:
        """(C_out, C_in) -> (LD, LD), contiguous."""
        out = m.new_zeros(self.ld, self.ld)
        out[self.index[:, None], self.index[None, :]] = m
        return out

    def real(self, t: torch.Tensor) -> torch.Tensor:
        """The real channels of a (..., LD) tensor, (..., C)."""
        return t[..., self.index]


def _low_channels_last(low: torch.Tensor, layout: ChannelLayout, ct: torch.dtype) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w, LD) contiguous in ``ct``."""
    b, _, h, w = low.shape
    out = low.new_zeros((b, h, w, layout.ld), dtype=ct)
    out[..., layout.index] = low.detach().permute(0, 2, 3, 1).to(ct)
    return out


def _taps(weight: torch.Tensor, s: int, layout: ChannelLayout) -> torch.Tensor:
    """The folded (C_in, C_out, 2s, 2s) transposed-convolution weight as (s, s, 2, 2, LD, LD) matrices
    [phi, psi, a, b, c_in, c_out] = weight[c_in, c_out, phi + a*s, psi + b*s]."""
    c = weight.shape[0]
    taps = weight.reshape(c, c, 2, s, 2, s).permute(3, 5, 2, 4, 0, 1)  # phi, psi, a, b, cin, cout
    out = weight.new_zeros((s, s, 2, 2, layout.ld, layout.ld))
    out[..., layout.index[:, None], layout.index[None, :]] = taps
    return out.contiguous()


def _resize_maps(
    low_hw: tuple[int, int], out_hw: tuple[int, int], ct: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Per output row / column: the two source indices (int32, (n, 2)) and the second one's weight,
    as the twin reads them (a crop when ``low`` covers the output: both indices the same, weight 0)."""
    out: list[torch.Tensor] = []
    crop = low_hw[0] >= out_hw[0] and low_hw[1] >= out_hw[1]
    for n_low, n_out in zip(low_hw, out_hw, strict=True):
        if crop:
            idx = torch.arange(n_out)
            pair, lam = torch.stack([idx, idx], 1), torch.zeros(n_out, dtype=torch.float64)
        else:
            _, _, i0, i1, lam = _bilinear_rows(n_low, 0, n_out, n_out)
            pair = torch.stack([i0, i1], 1)  # _bilinear_rows's i0 is 0 over the whole axis
        out += [pair.to(device=device, dtype=torch.int32).contiguous(), lam.to(device=device, dtype=ct)]
    return tuple(out)


@dataclass
class _KernelInputs:
    """Everything a launch reads, in the kernel's layout."""

    layout: ChannelLayout
    geo: UpsampleGeometry
    z: torch.Tensor  # (B, h, w, LD)
    taps: torch.Tensor
    bias1: torch.Tensor
    maps: tuple[torch.Tensor, ...]
    w2: torch.Tensor
    b2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor
    gamma: torch.Tensor  # (3, LD)
    beta: torch.Tensor
    mean: torch.Tensor
    invstd: torch.Tensor
    m1: torch.Tensor
    m2: torch.Tensor
    dot_low: int  # the kernel's DOT_LOW: 0 full precision, 1 bf16 operands, 2 their interpreter stand-in


def _dot_mode(dtype: torch.dtype) -> int:
    """bf16 dot operands for half-precision inputs (emulated under the interpreter), else full."""
    if dtype not in (torch.bfloat16, torch.float16):
        return 0
    from .triton_mode import INTERPRET

    return 2 if INTERPRET else 1


def _kernel_inputs(
    p: _Params, geo: UpsampleGeometry, k: int, s_plus_1: int, dot_low: int, split: bool | None
) -> _KernelInputs:
    ct, dev = p.low.dtype, p.low.device
    layout = ChannelLayout.of(k, s_plus_1, dev, split)
    dummy = torch.zeros(1, dtype=ct, device=dev)
    dummy_i = torch.zeros(2, dtype=torch.int32, device=dev)
    raw_w, raw_b = p.raw_up
    if geo.mode == "deconv":
        if raw_w is None or raw_b is None:
            raise ValueError("mode 'deconv' needs the folded transposed-convolution weight and bias")
        taps, bias1 = _taps(raw_w, geo.stride, layout), layout.vector(raw_b)
        maps: tuple[torch.Tensor, ...] = (dummy_i, dummy, dummy_i, dummy)
    else:
        taps, bias1 = dummy, dummy
        maps = _resize_maps((p.low.shape[-2], p.low.shape[-1]), geo.out_size, ct, dev)

    def stack(vs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([layout.vector(v) for v in vs]).contiguous()

    zeros = torch.zeros(NUM_LAYERS, layout.ld, dtype=ct, device=dev)
    return _KernelInputs(
        layout,
        geo,
        _low_channels_last(p.low, layout, ct),
        taps,
        bias1,
        maps,
        layout.matrix(p.weights[0]),
        layout.vector(p.biases[0]),
        layout.matrix(p.weights[1]),
        layout.vector(p.biases[1]),
        stack(p.gammas),
        stack(p.betas),
        zeros.clone(),
        zeros.clone(),
        zeros.clone(),
        zeros.clone(),
        dot_low,
    )


def _launch_pass(
    ki: _KernelInputs,
    kind: int,
    layer: int,
    side5: torch.Tensor,
    sides: torch.Tensor,
    activation: str | None,
    *,
    row0: int = 0,
    rows: int | None = None,
    grad: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    d_side5: torch.Tensor | None = None,
    d_sides: torch.Tensor | None = None,
    part: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
) -> None:
    """One launch of the kernel over output rows [row0, row0 + rows) of every image."""
    from . import fused_learner_kernels as fk
    from .triton_backend import _launch

    b, k, h_out, w_out = side5.shape
    n_rows = h_out - row0 if rows is None else rows
    geo = ki.geo
    deconv = geo.mode == "deconv"
    if deconv:
        s, pad = geo.stride, geo.padding
        n_tiles = s * -(-(ki.z.shape[2] + 1) // BLOCK)
    else:
        s, pad = 1, 0
        n_tiles = -(-w_out // BLOCK)
    g = grad if grad is not None else side5
    dummy = ki.z.new_zeros(1)
    _launch(
        fk.learner_pass_kernel,
        (n_rows, b),
        z_ptr=ki.z,
        tap_ptr=ki.taps,
        bias1_ptr=ki.bias1,
        rows_ptr=ki.maps[0],
        row_lam_ptr=ki.maps[1],
        cols_ptr=ki.maps[2],
        col_lam_ptr=ki.maps[3],
        w2_ptr=ki.w2,
        b2_ptr=ki.b2,
        w3_ptr=ki.w3,
        b3_ptr=ki.b3,
        gamma_ptr=ki.gamma,
        beta_ptr=ki.beta,
        mean_ptr=ki.mean,
        invstd_ptr=ki.invstd,
        m1_ptr=ki.m1,
        m2_ptr=ki.m2,
        side5_ptr=side5,
        sides_ptr=sides,
        grad_ptr=g,
        s5_sb=side5.stride(0),
        s5_sk=side5.stride(1),
        s5_sy=side5.stride(2),
        s5_sx=side5.stride(3),
        sd_sb=sides.stride(0),
        sd_ss=sides.stride(1),
        sd_sy=sides.stride(2),
        sd_sx=sides.stride(3),
        g_sb=g.stride(0),
        g_sk=g.stride(1),
        g_sy=g.stride(2),
        g_sx=g.stride(3),
        out_ptr=dummy if out is None else out,
        d_side5_ptr=dummy if d_side5 is None else d_side5,
        d_sides_ptr=dummy if d_sides is None else d_sides,
        part_ptr=dummy if part is None else part,
        scratch_ptr=dummy if scratch is None else scratch,
        H=h_out,
        W=w_out,
        h_low=ki.z.shape[1],
        w_low=ki.z.shape[2],
        s=s,
        p=pad,
        K=k,
        S=sides.shape[1],
        row0=row0,
        n_tiles=n_tiles,
        PASS=kind,
        LAYER=layer,
        DECONV=deconv,
        SOFTMAX=activation == "softmax",
        DOT_LOW=ki.dot_low,
        BLOCK=BLOCK,
        KA=ki.layout.ka,
        KB=ki.layout.kb,
        SP=ki.layout.sp,
        HAS_B=ki.layout.has_b,
        num_warps=NUM_WARPS,
    )


class TritonLearnerPasses(LearnerPasses):
    """The schedule's passes as launches of the kernel (see the module docstring).

    ``split`` picks the tile layout (:meth:`ChannelLayout.of`): None (two parts when narrower), True
    or False. It is a tuning knob for benchmarks and tests, set on the class.
    """

    split: bool | None = None

    @cached_property
    def ki(self) -> _KernelInputs:
        """The parameters in the kernel's layout (built once, on the first pass)."""
        k, s_plus_1 = self.side5.shape[1], self.sides.shape[1] + 1
        return _kernel_inputs(self.p, self.geo, k, s_plus_1, _dot_mode(self.side5.dtype), self.split)

    def set_statistics(self, layer: int, mean: torch.Tensor, invstd: torch.Tensor) -> None:
        super().set_statistics(layer, mean, invstd)
        self.ki.mean[layer] = self.ki.layout.vector(mean)
        self.ki.invstd[layer] = self.ki.layout.vector(invstd)

    def _launch(self, kind: int, layer: int, **kwargs) -> None:
        _launch_pass(self.ki, kind, layer, self.side5, self.sides, self.activation, **kwargs)

    def batch_statistics(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        from .fused_learner_kernels import PASS_STATS

        b, _, h_out, w_out = self.side5.shape
        part = self.ki.z.new_empty((b * h_out, 2, self.ki.layout.ld))
        self._launch(PASS_STATS, layer, part=part)
        # Chan's combination of the rows' (W pixels, mean, M2), in float64.
        row_mean, row_m2 = self.ki.layout.real(part.double()).unbind(1)
        mean = row_mean.mean(0)
        m2 = row_m2.sum(0) + w_out * ((row_mean - mean) ** 2).sum(0)
        return mean, m2 / float(b * h_out * w_out)

    def output(self) -> torch.Tensor:
        from .fused_learner_kernels import PASS_OUTPUT

        out = torch.empty(self.side5.shape, dtype=self.side5.dtype, device=self.side5.device)
        self._launch(PASS_OUTPUT, 0, out=out)
        return out

    def _set_corrections(self, corr: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for layer, (m1, m2) in enumerate(corr):
            self.ki.m1[layer] = self.ki.layout.vector(m1)
            self.ki.m2[layer] = self.ki.layout.vector(m2)

    def gradient_sums(
        self, layer: int, grad: torch.Tensor, corr: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from .fused_learner_kernels import PASS_SUMS

        self._set_corrections(corr)
        b, _, h_out, _ = self.side5.shape
        part = self.ki.z.new_empty((b * h_out, 2, self.ki.layout.ld))
        self._launch(PASS_SUMS, layer, grad=grad, part=part)
        s1, s2 = self.ki.layout.real(part.double().sum(0))
        return s1, s2

    def gradients(
        self,
        grad: torch.Tensor,
        corr: list[tuple[torch.Tensor, torch.Tensor]],
        needs: tuple[bool, ...],
    ) -> tuple[list[torch.Tensor | None], torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        from .fused_learner_kernels import PASS_GRAD

        self._set_corrections(corr)
        p, geo, ki = self.p, self.geo, self.ki
        b, _, _, w_out = self.side5.shape
        cp, ct, dev = ki.layout.ld, self.ct, self.side5.device
        d_side5 = torch.empty(self.side5.shape, dtype=self.side5.dtype, device=dev)
        d_sides = torch.empty(self.sides.shape, dtype=self.sides.dtype, device=dev)
        d_low = torch.zeros_like(p.low)
        sums = torch.zeros(6, cp, dtype=torch.float64, device=dev)
        d_w2 = torch.zeros(cp, cp, dtype=ct, device=dev)
        d_w3 = torch.zeros_like(d_w2)
        d_b2 = torch.zeros(cp, dtype=ct, device=dev)
        d_b3 = torch.zeros_like(d_b2)
        up_leaf = [None if t is None else _leaf(t) for t in (p.up_weight, p.up_bias)]
        p_leaf = _Params(
            p.low, up_leaf[0], up_leaf[1], p.weights, p.biases, p.gammas, p.betas, p.means, p.invstds
        )
        d_up: list[torch.Tensor | None] = [None, None]
        for r0, r1 in self.chunks:
            n = r1 - r0
            scratch = ki.z.new_empty((5, b, n, w_out, cp))
            part = ki.z.new_empty((b * n, 6, cp))
            self._launch(
                PASS_GRAD, 0, row0=r0, rows=n, grad=grad, d_side5=d_side5, d_sides=d_sides, part=part,
                scratch=scratch,
            )  # fmt: skip
            sums += part.double().sum(0)
            da1, h1, da2, h2, da3 = (t.reshape(-1, cp) for t in scratch.unbind(0))
            d_w3 += da3.T @ h2  # (C_out, C_in): sum over the chunk's pixels of da3 h2^T
            d_b3 += da3.sum(0)
            d_w2 += da2.T @ h1
            d_b2 += da2.sum(0)
            # The upsampling's backward on this chunk's da1: the twin's transposed convolution.
            i0, i1 = _rows_span(p.low, geo, r0, r1)
            low_rows = p.low[:, :, i0:i1].detach().requires_grad_()
            grad_a1 = ki.layout.real(da1).reshape(b, n, w_out, -1).permute(0, 3, 1, 2)
            with torch.enable_grad():
                a1, _, _ = _layer_input(p_leaf, geo, r0, r1, low=low_rows)
            wrt = [low_rows] + [t for t in up_leaf if t is not None]
            grads = torch.autograd.grad(a1, wrt, grad_a1)
            d_low[:, :, i0:i1] += grads[0]
            for i, gi in enumerate(grads[1:]):
                prev = d_up[i]
                d_up[i] = gi if prev is None else prev + gi
        # sums rows: sum(dy_l), sum(dy_l * xhat_l) for l = 0, 1, 2 = d beta_l, d gamma_l.
        bn = ki.layout.real(sums).to(ct)
        idx = ki.layout.index
        acc: list[torch.Tensor | None] = [
            d_up[0],
            d_up[1],
            d_w2[idx[:, None], idx[None, :]],
            ki.layout.real(d_b2),
            d_w3[idx[:, None], idx[None, :]],
            ki.layout.real(d_b3),
            bn[1],
            bn[0],
            bn[3],
            bn[2],
            bn[5],
            bn[4],
        ]
        return (
            acc,
            d_low if needs[0] else None,
            d_side5 if needs[-2] else None,
            d_sides if needs[-1] else None,
        )
