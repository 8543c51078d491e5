"""The fused location-adaptive branch (``DFFHead(fused_learner=True)``) against the unfused modules:
forward, every gradient and the running statistics in float64, odd output sizes (the transposed
convolution's crop), eval mode with B=1, bf16, softmax, and the authors' checkpoint parity."""

from __future__ import annotations

import pytest
import torch
from fused_learner_helpers import (
    CHANNELS,
    K,
    assert_grads_close,
    assert_same_buffers,
    check_bfloat16_against_float64,
    check_training_against_unfused,
    features,
    heads,
    run,
)
from torch import nn

from dynfuse import DFFHead, create_model
from dynfuse.layers import FusedLocationAdaptiveFusion
from dynfuse.ops.fused_learner import BatchNormState, UpsampleGeometry, fused_learner_fuse

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [
    # (upsample, activation, output size, strides)
    ("deconv", None, (16, 12), (1, 2, 4, 4)),
    ("deconv", "softmax", (15, 11), (1, 2, 4, 4)),  # odd size: the transposed convolution is cropped
    ("deconv", None, (13, 10), (1, 2, 3, 3)),  # odd stride: kernel 6, padding 1, output 3h+1
    ("bilinear", None, (15, 11), (1, 2, 4, 4)),
    ("bilinear", "softmax", (16, 12), (1, 1, 1, 1)),  # top level at stride 1: no upsampling
]


@pytest.mark.parametrize(("upsample", "activation", "size", "strides"), CASES)
def test_training_matches_unfused_float64(upsample, activation, size, strides):
    ref, fused = heads(strides=strides, upsample=upsample, activation=activation, chunk_elements=1)
    out, out_ref = check_training_against_unfused(ref, fused, size, strides)  # one row per chunk
    torch.testing.assert_close(out.side5, out_ref.side5, rtol=0, atol=0)
    assert out.weights is None  # not materialised unless asked


def test_running_statistics_momentum_none_and_custom():
    ref, fused = heads(chunk_elements=200)
    for head in (ref, fused):
        head.learner.conv1[1].momentum = None  # cumulative average
        head.learner.conv3[1].momentum = 0.37
    size = (16, 12)
    for seed in (1, 2):  # two steps: the cumulative factor changes
        feats = features(2, size, (1, 2, 4, 4), seed=seed)
        ref(feats, output_size=size)
        fused(feats, output_size=size)
    assert_same_buffers(fused, ref)


@pytest.mark.parametrize("upsample", ["deconv", "bilinear"])
def test_eval_batch_one_with_weights(upsample):
    ref, fused = heads(upsample=upsample, chunk_elements=50)
    ref.eval(), fused.eval()
    fused.fused_learner.return_weights = True
    size = (15, 11)
    feats = features(1, size, (1, 2, 4, 4))
    grad = torch.randn(1, K, *size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out_ref, g_ref = run(ref, feats, size, grad)
    out, g = run(fused, feats, size, grad)
    torch.testing.assert_close(out.fuse, out_ref.fuse, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.weights, out_ref.weights, rtol=1e-12, atol=1e-12)
    assert_grads_close(g, g_ref, 1e-10)
    assert_same_buffers(fused, ref)  # eval mode leaves them alone


def test_training_weights_on_request_use_batch_statistics():
    ref, fused = heads()
    fused.fused_learner.return_weights = True
    size = (16, 12)
    feats = features(2, size, (1, 2, 4, 4))
    out_ref, out = ref(feats, output_size=size), fused(feats, output_size=size)
    torch.testing.assert_close(out.weights, out_ref.weights, rtol=1e-12, atol=1e-12)
    assert not out.weights.requires_grad  # for visualisation, not for a loss


def test_bfloat16_within_stated_tolerance():
    """bf16 parameters and inputs, float32 accumulation inside. Against the float64 result of the same
    (bf16-rounded) parameters and inputs: fuse within 2e-2 of its largest value (bf16 keeps 8 mantissa
    bits and the output is rounded to bf16), each gradient within 0.1 of its largest value (the
    unfused bf16 modules reach 0.07 here: BatchNorm backward sums cancel), and gradients that are zero
    up to rounding (biases before a training-mode BatchNorm) within 1e-2 of the largest gradient."""
    ref, fused = heads(chunk_elements=100)
    check_bfloat16_against_float64(ref, fused, (15, 11))


def test_autocast_bfloat16_matches_unfused():
    """Under CPU autocast (bf16) the fused branch keeps float32 inside and agrees with the unfused
    head within bf16 rounding of their inputs (2e-2 of the output's scale)."""
    ref, fused = heads(dtype=torch.float32, chunk_elements=100)
    size = (16, 12)
    feats = features(2, size, (1, 2, 4, 4), dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ref, out = ref(feats, output_size=size), fused(feats, output_size=size)
    assert out.fuse.dtype == out_ref.fuse.dtype
    scale = float(out_ref.fuse.detach().abs().max())
    torch.testing.assert_close(out.fuse.float(), out_ref.fuse.float(), rtol=0, atol=2e-2 * scale)


def test_fallback_when_deconvolution_is_smaller_than_output():
    ref, fused = heads()
    # Levels rounded down (19 / 4 -> 4 rows): the stride-4 transposed convolution covers 16x12 of
    # the 19x13 output, so the side blocks resize bilinearly there and only cropping is fused.
    bigger = (19, 13)
    gen = torch.Generator().manual_seed(1)
    feats = [
        torch.randn(2, c, bigger[0] // s, bigger[1] // s, generator=gen, dtype=torch.float64)
        for c, s in zip(CHANNELS, (1, 2, 4, 4), strict=True)
    ]
    out_ref, out = ref(feats, output_size=bigger), fused(feats, output_size=bigger)
    torch.testing.assert_close(out.fuse, out_ref.fuse, rtol=1e-12, atol=1e-12)


def test_create_model_switch_and_errors():
    model = create_model("dff", backbone="tiny", num_classes=3, fused_learner=True)
    assert isinstance(model.head.fused_learner, FusedLocationAdaptiveFusion)
    assert "fused_learner=True" in repr(model.head)
    with pytest.raises(ValueError, match="does not apply to the fused learner"):
        create_model("dff", backbone="tiny", num_classes=3, fused_learner=True, checkpoint_learner=True)
    with pytest.raises(ValueError, match="fused_learner"):
        create_model("casenet", backbone="tiny", num_classes=3, fused_learner=True)
    with pytest.raises(ValueError, match="learner='adaptive'"):
        DFFHead(CHANNELS, K, strides=(1, 2, 4, 4), learner="invariant", fused_learner=True)
    with pytest.raises(ValueError, match="learner_resolution='full'"):
        DFFHead(CHANNELS, K, strides=(1, 2, 4, 4), learner_resolution="top", fused_learner=True)
    head = DFFHead(
        CHANNELS, K, strides=(1, 2, 4, 4), fused_learner=True, norm_layer=lambda c: nn.GroupNorm(1, c)
    )
    with pytest.raises(TypeError, match="needs nn.BatchNorm2d in the learner, conv1 has GroupNorm"):
        head(features(2, (16, 12), (1, 2, 4, 4), dtype=torch.float32), output_size=(16, 12))
    with pytest.raises(ValueError, match="chunk_elements"):
        FusedLocationAdaptiveFusion(chunk_elements=0)
    with pytest.raises(ValueError, match="does not apply to the fused learner"):
        model.set_checkpointing(learner=True)
    _, mixed = heads(dtype=torch.float32)
    mixed.learner.conv2[1].eval()
    with pytest.raises(ValueError, match="all in training mode or all"):
        mixed(features(2, (16, 12), (1, 2, 4, 4), dtype=torch.float32), output_size=(16, 12))


def test_op_rejects_bad_shapes_and_geometry():
    c = K * 4
    bn = BatchNormState(None, None, torch.zeros(c), torch.ones(c))

    def call(low_shape=(2, c, 4, 4), out_size=(8, 8), norm=bn, batch_stats=True, backend="auto"):
        return fused_learner_fuse(
            torch.randn(*low_shape),
            torch.randn(c, c, 4, 4),
            torch.zeros(c),
            (torch.randn(c, c), torch.randn(c, c)),
            (torch.zeros(c), torch.zeros(c)),
            (norm,) * 3,
            torch.randn(2, K, 8, 8),
            torch.randn(2, 3, 8, 8),
            UpsampleGeometry("deconv", out_size, 2, 1),
            batch_stats=batch_stats,
            backend=backend,
        )

    call()  # the valid call the others vary
    with pytest.raises(ValueError, match="low must be"):
        call(low_shape=(2, c + 1, 4, 4))
    with pytest.raises(ValueError, match="smaller than the output size"):
        call(low_shape=(2, c, 3, 4))
    with pytest.raises(ValueError, match="out_size"):
        call(out_size=(9, 8))
    with pytest.raises(ValueError, match="running statistics"):
        call(norm=BatchNormState(None, None, None, None), batch_stats=False)
    with pytest.raises(ValueError, match="backend must be one of"):
        call(backend="cuda")


def test_tiny_model_training_step_float32():
    """The whole model (tiny backbone) in float32: outputs and gradients equal to float precision."""
    torch.manual_seed(0)
    ref = create_model("dff", backbone="tiny", num_classes=3)
    fused = create_model("dff", backbone="tiny", num_classes=3, fused_learner=True)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 30, 34, generator=torch.Generator().manual_seed(4))
    outs, grads = [], []
    for model in (ref, fused):
        out = model(x)
        loss = out.fuse.square().mean() + out.side5.mean()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
        outs.append(out.fuse)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5 * float(outs[0].detach().abs().max()))
    scale = max(float(g.abs().max()) for g in grads[0])
    for (name, _), a, b in zip(ref.named_parameters(), grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale, msg=name)
    _assert_same_buffers_close(fused, ref)


def _assert_same_buffers_close(a: nn.Module, b: nn.Module):
    bufs = dict(b.named_buffers())
    for name, buf in a.named_buffers():
        torch.testing.assert_close(buf, bufs[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_authors_checkpoint_parity_with_switch_on(backend):
    """The authors' forward (their module layout, from their checkpoint keys) against ours with the
    fused branch, on the plain-PyTorch passes and (interpreter tier) on the Triton kernel."""
    from test_models_official import authors_dff_forward, authors_keys, random_checkpoint

    from dynfuse.models import load_official_dff

    k = 3
    sd = random_checkpoint(authors_keys("dff", k), seed=1)
    model = load_official_dff(sd, k, fused_learner=True).eval()
    model.head.fused_learner.return_weights = True
    model.head.fused_learner.backend = backend
    x = torch.randn(2, 3, 24, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref_side5, ref_fuse, ref_w = authors_dff_forward(x, sd, k)
        out = model(x)
    assert ref_fuse.abs().max() > 1e-3
    for got, want in ((out.side5, ref_side5), (out.weights, ref_w), (out.fuse, ref_fuse)):
        scale = want.abs().max().clamp_min(1e-3)
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-5 * float(scale))
