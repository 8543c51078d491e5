"""The fused location-adaptive branch on its Triton kernel (``backend="triton"``), under the CPU
interpreter, against the unfused modules: forward, every gradient and the running statistics in
float64 (deconvolution and bilinear upsampling, odd sizes and strides, softmax, several gradient
chunks), eval mode with B=1, a zero-stride output gradient, and bf16 (the tensor cores' bf16 dot
operands) within stated tolerances.

Interpreter tier: ``TRITON_INTERPRET=1 pytest -m interpreter`` (``make test`` runs it). The kernel is
slow there (each case takes seconds), so the sizes are small. GPU tier (``-m gpu``, CUDA): the compiled
kernel at the paper's channel count (K=19, S=3: 76 channels in 128-wide tiles) against the twin."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fused_learner_helpers import (
    assert_same_buffers,
    check_bfloat16_against_float64,
    check_training_against_unfused,
    features,
    heads,
    randomise_norms,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynfuse import DFFHead
from dynfuse.ops import triton_mode

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not triton_mode.TRITON_INSTALLED, reason="needs triton"),
]
interpreter = pytest.mark.interpreter
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _triton_heads(**kwargs):
    ref, fused = heads(**kwargs)
    fused.fused_learner.backend = "triton"
    return ref, fused


CASES = [
    # (upsample, activation, output size, strides, chunk_elements)
    ("deconv", None, (12, 9), (1, 2, 4, 4), None),
    # odd size (the transposed convolution is cropped), softmax, one gradient chunk per 4 rows
    ("deconv", "softmax", (11, 7), (1, 2, 4, 4), 1),
    ("deconv", None, (10, 7), (1, 2, 3, 3), None),  # odd stride: kernel 6, padding 1
    ("bilinear", None, (11, 7), (1, 2, 4, 4), 50),  # bilinear rows, several gradient chunks
    ("bilinear", "softmax", (8, 6), (1, 1, 1, 1), None),  # top level at stride 1: a crop
]


@interpreter
@pytest.mark.parametrize(("upsample", "activation", "size", "strides", "chunk"), CASES)
def test_kernel_training_matches_unfused_float64(upsample, activation, size, strides, chunk):
    assert triton_mode.INTERPRET, "run the interpreter tier as: TRITON_INTERPRET=1 pytest -m interpreter"
    ref, fused = _triton_heads(
        strides=strides, upsample=upsample, activation=activation, chunk_elements=chunk
    )
    check_training_against_unfused(ref, fused, size, strides)


@interpreter
def test_kernel_eval_batch_one_and_zero_stride_gradient():
    ref, fused = _triton_heads(chunk_elements=40)
    ref.eval(), fused.eval()
    size = (11, 7)
    feats = features(1, size, (1, 2, 4, 4))
    out_ref, out = ref(feats, output_size=size), fused(feats, output_size=size)
    torch.testing.assert_close(out.fuse, out_ref.fuse, rtol=1e-12, atol=1e-12)
    params = [p for _, p in ref.named_parameters()]
    # fuse.sum(): the kernel reads the output gradient through its (zero) strides.
    g_ref = torch.autograd.grad(out_ref.fuse.sum(), feats + params)
    g = torch.autograd.grad(out.fuse.sum(), feats + list(fused.parameters()))
    scale = max(float(t.abs().max()) for t in g_ref)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * scale)
    assert_same_buffers(fused, ref)  # eval mode leaves them alone


@interpreter
def test_kernel_bfloat16_within_stated_tolerance():
    """bf16 inputs: the kernel's dots take bf16 operands (float32 accumulation; emulated under the
    interpreter), everything else is float32. Against the float64 result of the same bf16-rounded
    parameters and inputs, with the twin's stated tolerances: fuse within 2e-2 of its largest value,
    each gradient within 0.1 of its largest value, gradients that are zero up to rounding within 1e-2
    of the largest gradient (measured here: 0.008, 0.061 and 0.0006).

    Why head-level bf16 tolerances are loose and the state is seeded: bf16 rounding (0.4%) moves
    pre-activations that lie that close to zero across their ReLU, and on these 154-pixel images one
    such pixel moves a weight gradient by a visible share of its size (with the seed-3 state the
    Side5-w weight's gradient moves by 0.3 of its scale, in the unfused float64 modules as much as
    in the fused branch, from a 1e-3 relative change of their input)."""
    ref, fused = _triton_heads(chunk_elements=100)
    check_bfloat16_against_float64(ref, fused, (11, 7))


def _paper_width_heads(device, dtype, upsample="deconv", activation=None):
    """The twin and the kernel at K=19, S=3 (the tiles' real width), one random state."""

    torch.manual_seed(0)
    twin = DFFHead((16, 32, 32, 64), 19, strides=(1, 2, 4, 8), fused_learner=True, upsample=upsample,
                   activation=activation)  # fmt: skip
    randomise_norms(twin, torch.Generator().manual_seed(0))
    twin.fused_learner.backend = "torch"
    kernel = DFFHead((16, 32, 32, 64), 19, strides=(1, 2, 4, 8), fused_learner=True, upsample=upsample,
                     activation=activation)  # fmt: skip
    kernel.load_state_dict(twin.state_dict())
    kernel.fused_learner.backend = "triton"
    return twin.to(device=device, dtype=dtype), kernel.to(device=device, dtype=dtype)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize(
    ("upsample", "activation"), [("deconv", None), ("deconv", "softmax"), ("bilinear", None)]
)
def test_compiled_kernel_matches_twin_at_paper_width(dtype, tol, upsample, activation):
    """float32: full-precision dots (no TF32), so only the summation order differs (1e-4 of each
    tensor's scale); bf16: bf16 dot operands against the twin's float32 (3e-2)."""
    twin, kernel = _paper_width_heads("cuda", dtype, upsample, activation)
    size = (93, 70)  # odd: the transposed convolution is cropped
    gen = torch.Generator().manual_seed(1)
    feats = [
        torch.randn(2, c, -(-size[0] // s), -(-size[1] // s), generator=gen)
        .to("cuda", dtype)
        .requires_grad_()
        for c, s in zip((16, 32, 32, 64), (1, 2, 4, 8), strict=True)
    ]
    grad = torch.randn(2, 19, *size, generator=gen).to("cuda", dtype)
    results = []
    for head in (twin, kernel):
        out = head(feats, output_size=size)
        grads = torch.autograd.grad(out.fuse, feats + list(head.parameters()), grad)
        results.append((out.fuse, grads))
    (f_twin, g_twin), (f_kernel, g_kernel) = results
    scale = float(f_twin.float().abs().max())
    torch.testing.assert_close(f_kernel.float(), f_twin.float(), rtol=0, atol=tol * scale)
    for got, want in zip(g_kernel, g_twin, strict=True):
        s = max(float(want.float().abs().max()), 1e-12)
        torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=tol * s)
    for (name, a), b in zip(twin.named_buffers(), kernel.buffers(), strict=True):
        torch.testing.assert_close(b.float(), a.float(), rtol=tol, atol=tol, msg=name)


# ---- the host side of the kernel, against plain PyTorch (main tier: no kernel runs) -------------


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 70), s_plus_1=st.integers(1, 9), split=st.sampled_from([None, True, False]))
def test_channel_layout(k, s_plus_1, split):
    """Each real channel has its own column; part A holds classes 0 .. KA-1 and part B the rest;
    both parts are powers of two of at least 16 columns; the automatic choice splits only when that
    is narrower than one part, and never when K is a power of two."""
    from dynfuse.ops.fused_learner_triton import ChannelLayout

    layout = ChannelLayout.of(k, s_plus_1, torch.device("cpu"), split)
    sp, ka, kb = layout.sp, layout.ka, layout.kb
    cpa, cpb = ka * sp, kb * sp
    assert sp >= s_plus_1 and sp & (sp - 1) == 0
    for width in (cpa, cpb):
        assert width >= 16 and width & (width - 1) == 0
    assert layout.ld == cpa + cpb
    index = layout.index.tolist()
    assert len(set(index)) == len(index) == k * s_plus_1 and max(index) < layout.ld
    cls = torch.arange(k).repeat_interleave(s_plus_1)
    in_a = layout.index < cpa
    assert bool((in_a == (cls < ka)).all())
    assert layout.has_b == (ka < k)
    single = max(1 << max(0, k - 1).bit_length(), -(-16 // sp)) * sp
    if split is False or k & (k - 1) == 0:
        assert not layout.has_b
    if split is None:
        assert layout.ld <= single + (0 if layout.has_b else cpb)
        assert not layout.has_b or layout.ld < single


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 5),
    s_plus_1=st.integers(2, 5),
    stride=st.integers(1, 4),
    pad_frac=st.floats(0, 0.99),
    h_low=st.integers(1, 4),
    w_low=st.integers(1, 4),
    crop=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    split=st.sampled_from([None, True, False]),
)
def test_tap_layout_and_tiles_reproduce_the_transposed_convolution(
    k, s_plus_1, stride, pad_frac, h_low, w_low, crop, split
):
    """The kernel's a1 (its tile enumeration, phases, 2x2 taps from :func:`_taps` in the padded
    channel layout) written out in torch equals conv_transpose2d (kernel 2s, stride s, padding p)
    cropped top-left, in float64; every output column is in exactly one tile of its row."""
    from dynfuse.ops.fused_learner import deconv_output_size
    from dynfuse.ops.fused_learner_triton import ChannelLayout, _low_channels_last, _taps

    p = int(pad_frac * stride)
    c = k * s_plus_1
    cover = (deconv_output_size(h_low, stride, p), deconv_output_size(w_low, stride, p))
    out_h, out_w = max(1, cover[0] - crop[0]), max(1, cover[1] - crop[1])
    gen = torch.Generator().manual_seed(k * 100 + stride)
    z = torch.randn(2, c, h_low, w_low, generator=gen, dtype=torch.float64)
    weight = torch.randn(c, c, 2 * stride, 2 * stride, generator=gen, dtype=torch.float64)
    bias = torch.randn(c, generator=gen, dtype=torch.float64)
    want = F.conv_transpose2d(z, weight, bias, stride=stride, padding=p)[..., :out_h, :out_w]

    layout = ChannelLayout.of(k, s_plus_1, torch.device("cpu"), split)
    taps, zc, b1 = (
        _taps(weight, stride, layout),
        _low_channels_last(z, layout, torch.float64),
        layout.vector(bias),
    )
    got = torch.zeros(2, out_h, out_w, layout.ld, dtype=torch.float64)
    for y in range(out_h):
        t0, phi = divmod(y + p, stride)
        seen = []
        for psi in range(stride):  # the kernel's tiles of row y: one phase psi, consecutive u
            for u in range(w_low + 1):
                x = u * stride + psi - p
                if not 0 <= x < out_w:
                    continue
                seen.append(x)
                acc = b1.clone().expand(2, -1).clone()
                for a in range(2):
                    for b in range(2):
                        if 0 <= t0 - a < h_low and 0 <= u - b < w_low:
                            acc += zc[:, t0 - a, u - b] @ taps[phi, psi, a, b]
                got[:, y, x] = acc
        assert sorted(seen) == list(range(out_w))
    torch.testing.assert_close(layout.real(got).permute(0, 3, 1, 2), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("low", "out"), [((3, 4), (7, 9)), ((5, 5), (5, 3)), ((4, 6), (13, 6)), ((6, 7), (4, 5))]
)
def test_resize_maps_reproduce_bilinear_and_crop(low, out):
    """The kernel's per-row / per-column source pairs and weights (:func:`_resize_maps`), applied as
    the kernel does, equal F.interpolate (bilinear, align_corners=False), or the top-left crop when
    the low-resolution map covers the output."""
    from dynfuse.ops.fused_learner_triton import _resize_maps

    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, *low, generator=gen, dtype=torch.float64)
    rows, row_lam, cols, col_lam = _resize_maps(low, out, torch.float64, torch.device("cpu"))
    y0, y1 = rows[:, 0].long(), rows[:, 1].long()
    x0, x1 = cols[:, 0].long(), cols[:, 1].long()
    ly, lx = row_lam[:, None], col_lam[None, :]
    left = z[:, :, y0][:, :, :, x0] * (1 - ly) + z[:, :, y1][:, :, :, x0] * ly
    right = z[:, :, y0][:, :, :, x1] * (1 - ly) + z[:, :, y1][:, :, :, x1] * ly
    got = left * (1 - lx) + right * lx
    if low[0] >= out[0] and low[1] >= out[1]:
        want = z[..., : out[0], : out[1]]
    else:
        want = F.interpolate(z, size=out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_backend_is_validated():
    from dynfuse import HeadOptions
    from dynfuse.layers import FusedLocationAdaptiveFusion

    with pytest.raises(ValueError, match="backend must be one of"):
        FusedLocationAdaptiveFusion(backend="cuda")
    head = DFFHead(
        (4, 5, 6, 8),
        2,
        strides=(1, 2, 4, 4),
        options=HeadOptions(fused_learner=True, fusion_backend="triton"),
    )
    assert head.fused_learner.backend == "triton"
    head = DFFHead(
        (4, 5, 6, 8),
        2,
        strides=(1, 2, 4, 4),
        options=HeadOptions(fused_learner=True, fusion_backend="reference"),
    )
    assert head.fused_learner.backend == "torch"
    _, fused = heads()
    fused.fused_learner.backend = "bogus"
    feats = features(2, (8, 8), (1, 2, 4, 4))
    with pytest.raises(ValueError, match="backend must be one of"):
        fused(feats, output_size=(8, 8))


@pytest.mark.skipif(triton_mode.INTERPRET or torch.cuda.is_available(), reason="the CPU refusal")
def test_triton_backend_on_cpu_names_the_way_out():
    _, fused = heads()
    fused.fused_learner.backend = "triton"
    feats = features(2, (8, 8), (1, 2, 4, 4))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused(feats, output_size=(8, 8))


def _op_inputs(draw_seed, b, k, s, mode, stride, pad, h_low, w_low, out_size):
    """Random float64 inputs of :func:`fused_learner_fuse` (requiring grad) for one geometry."""
    from dynfuse.ops.fused_learner import BatchNormState

    gen = torch.Generator().manual_seed(draw_seed)
    c = k * (s + 1)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_()

    low = rnd(b, c, h_low, w_low)
    up_w = rnd(c, c, 2 * stride, 2 * stride, scale=0.3) if mode == "deconv" else None
    up_b = rnd(c, scale=0.3) if mode == "deconv" else None
    convs = (rnd(c, c, scale=0.4), rnd(c, c, scale=0.4))
    biases = (rnd(c, scale=0.2), rnd(c, scale=0.2))
    norms = tuple(
        BatchNormState(
            rnd(c, scale=0.3).detach().add_(1.0).requires_grad_(),
            rnd(c, scale=0.5),
            0.2 * torch.randn(c, generator=gen, dtype=torch.float64),
            0.5 + torch.rand(c, generator=gen, dtype=torch.float64),
        )
        for _ in range(3)
    )
    side5 = rnd(b, k, *out_size)
    sides = rnd(b, s, *out_size)
    grad = torch.randn(b, k, *out_size, generator=gen, dtype=torch.float64)
    return low, up_w, up_b, convs, biases, norms, side5, sides, grad


@interpreter
@settings(max_examples=4, deadline=None, derandomize=True)
@given(
    k=st.integers(1, 6),  # K = 5, 6 with S >= 2 can take two tile parts
    s=st.integers(1, 3),  # S+1 = 2, 3, 4: padded weight columns when S = 2
    mode=st.sampled_from(["deconv", "resize"]),
    stride=st.integers(1, 3),
    b=st.integers(1, 2),
    h_low=st.integers(2, 4),
    w_low=st.integers(2, 4),
    shrink=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    activation=st.sampled_from([None, "softmax"]),
    batch_stats=st.booleans(),
    split=st.sampled_from([None, True]),
)
# Always run: a padded weight column (S+1 = 3) under the softmax with an even and an odd stride, and
# two tile parts (K = 5 = 4 + 1, K = 6 = 4 + 2) in both upsampling modes.
@example(k=3, s=2, mode="deconv", stride=2, b=2, h_low=3, w_low=2, shrink=(1, 0), activation="softmax",
         batch_stats=True, split=None)  # fmt: skip
@example(k=2, s=2, mode="resize", stride=3, b=1, h_low=2, w_low=3, shrink=(2, 1), activation="softmax",
         batch_stats=False, split=None)  # fmt: skip
@example(k=1, s=2, mode="deconv", stride=3, b=2, h_low=2, w_low=2, shrink=(1, 2), activation=None,
         batch_stats=True, split=None)  # fmt: skip
@example(k=5, s=3, mode="deconv", stride=2, b=2, h_low=3, w_low=3, shrink=(1, 0), activation="softmax",
         batch_stats=True, split=True)  # fmt: skip
@example(k=6, s=2, mode="resize", stride=2, b=2, h_low=2, w_low=3, shrink=(1, 1), activation=None,
         batch_stats=True, split=True)  # fmt: skip
def test_kernel_matches_twin_op_level(
    k, s, mode, stride, b, h_low, w_low, shrink, activation, batch_stats, split
):
    """The op on the kernel against the op on the plain-PyTorch passes, float64, for random class and
    input counts (every padding of the tile layout, one part or two), strides, paddings, sizes, batch
    and eval statistics: the output, the batch statistics and every input's gradient to 1e-11."""
    from dynfuse.ops.fused_learner import UpsampleGeometry, deconv_output_size, fused_learner_fuse
    from dynfuse.ops.fused_learner_triton import ChannelLayout, TritonLearnerPasses

    if split:
        assert ChannelLayout.of(k, s + 1, torch.device("cpu"), split).has_b == (k in (5, 6) and s >= 2)

    if mode == "deconv":
        pad = stride // 2
        full = (deconv_output_size(h_low, stride, pad), deconv_output_size(w_low, stride, pad))
        geo_args = dict(stride=stride, padding=pad)
    else:
        pad, full = 0, (h_low * stride, w_low * stride)  # bilinear upsampling (a crop at stride 1)
        geo_args = {}
    out_size = (max(2, full[0] - shrink[0]), max(2, full[1] - shrink[1]))
    geometry = UpsampleGeometry(mode, out_size, **geo_args)
    inputs = _op_inputs(7 * k + s, b, k, s, mode, stride, pad, h_low, w_low, out_size)
    low, up_w, up_b, convs, biases, norms, side5, sides, grad = inputs
    leaves = [t for t in (low, up_w, up_b, *convs, *biases) if t is not None]
    leaves += [t for n in norms for t in (n.weight, n.bias)] + [side5, sides]
    results = []
    saved_split = TritonLearnerPasses.split
    TritonLearnerPasses.split = split
    try:
        for backend in ("torch", "triton"):
            out = fused_learner_fuse(
                low, up_w, up_b, convs, biases, norms, side5, sides, geometry,
                batch_stats=batch_stats, activation=activation, chunk_elements=40, backend=backend,
            )  # fmt: skip
            grads = torch.autograd.grad(out.fuse, leaves, grad)
            results.append((out, grads))
    finally:
        TritonLearnerPasses.split = saved_split
    (want, want_g), (got, got_g) = results
    torch.testing.assert_close(got.fuse, want.fuse, rtol=1e-11, atol=1e-11)
    if batch_stats:
        for name in ("batch_mean", "batch_var", "batch_var_unbiased"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-11, atol=1e-11)
    # At the scale of the largest gradient: biases in front of a training-mode BatchNorm have a zero
    # gradient up to rounding.
    scale = max(float(g.abs().max()) for g in want_g)
    for i, (g_got, g_want) in enumerate(zip(got_g, want_g, strict=True)):
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-10 * scale, msg=f"input {i}")
