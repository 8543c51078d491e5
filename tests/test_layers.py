"""The DFF layers: shapes at any size, equivalence with their plain definitions, errors, repr."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dynfuse import (
    DynamicFusion,
    FixedFusion,
    FixedWeights,
    LocationAdaptiveLearner,
    LocationInvariantLearner,
    SharedConcat,
    SideNormBlock,
)
from dynfuse.ops import dynamic_fuse, shared_concat

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=25, deadline=None)
@given(
    scale=st.sampled_from([1, 2, 4, 8]),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    out_h=st.integers(1, 70),
    out_w=st.integers(1, 70),
    norm=st.booleans(),
    upsample=st.sampled_from(["deconv", "bilinear"]),
)
def test_side_norm_block_gives_exactly_the_requested_size(scale, h, w, out_h, out_w, norm, upsample):
    block = SideNormBlock(3, 2, scale, norm=norm, upsample=upsample).eval()
    y = block(torch.randn(2, 3, h, w), (out_h, out_w))
    assert y.shape == (2, 2, out_h, out_w)
    assert torch.isfinite(y).all()


def test_side_norm_block_matches_authors_layers():
    # conv -> BN -> ConvTranspose2d(k=2s, stride=s, pad=s/2), cropped to the target: the authors' side5.
    block = SideNormBlock(6, 3, 8).eval()
    with torch.no_grad():
        block.norm.running_mean.uniform_(-1, 1)
        block.norm.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 6, 5, 4)
    want = block.upsample(block.norm(block.conv(x)))[..., :37, :30]
    assert want.shape[-2:] == (37, 30)  # a 5x4 map at stride 8 deconvolves to 40x32, cropped
    torch.testing.assert_close(block(x, (37, 30)), want)
    assert block.upsample.kernel_size == (16, 16) and block.upsample.stride == (8, 8)
    assert block.upsample.padding == (4, 4) and block.upsample.bias is None
    assert block(x).shape[-2:] == (40, 32)


def test_side_norm_block_default_size_and_resize_when_smaller():
    block = SideNormBlock(4, 1, 2, upsample="bilinear").eval()
    x = torch.randn(1, 4, 3, 5)
    assert block(x).shape == (1, 1, 6, 10)
    y = block(x, (7, 11))  # larger than 2x: resized, not cropped
    want = F.interpolate(block.norm(block.conv(x)), size=(7, 11), mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, want)


def test_side_norm_block_norm_off_and_custom_norm_layer():
    assert isinstance(SideNormBlock(4, 1, 2, norm=False).norm, nn.Identity)
    block = SideNormBlock(4, 1, 2, norm_layer=lambda c: nn.GroupNorm(1, c))
    assert isinstance(block.norm, nn.GroupNorm)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(scale=0), ValueError, ["scale"]),
        (dict(scale=1.5), ValueError, ["scale"]),
        (dict(upsample="nearest"), ValueError, ["upsample", "'nearest'"]),
    ],
)
def test_side_norm_block_bad_arguments(kwargs, exc, words):
    args = dict(in_channels=4, out_channels=1, scale=2) | kwargs
    with pytest.raises(exc) as info:
        SideNormBlock(**args)
    assert all(w in str(info.value) for w in words)


def test_side_norm_block_bad_input():
    block = SideNormBlock(4, 1, 2)
    with pytest.raises(ValueError, match="4 channels, got 3"):
        block(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        block(torch.randn(4, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        block(torch.ones(1, 4, 4, 4, dtype=torch.long))


def test_shared_concat_module_order_and_errors():
    side5, sides = torch.randn(2, 3, 4, 5), torch.randn(2, 2, 4, 5)
    cat = SharedConcat()(side5, sides)
    torch.testing.assert_close(cat, shared_concat(side5, sides))
    torch.testing.assert_close(cat[:, 6], side5[:, 2])
    torch.testing.assert_close(cat[:, 8], sides[:, 1])
    with pytest.raises(ValueError, match="must match side5"):
        SharedConcat()(side5, sides[:, :, :3])
    with pytest.raises(ValueError, match="4-D"):
        SharedConcat()(side5[0], sides)


def test_location_adaptive_learner_layout():
    learner = LocationAdaptiveLearner(12, 3, 4).eval()
    x = torch.randn(2, 12, 5, 7)
    w = learner(x)
    assert w.shape == (2, 3, 4, 5, 7)
    flat = learner.conv3(learner.conv2(learner.conv1(x)))
    torch.testing.assert_close(w[:, 2, 1], flat[:, 2 * 4 + 1])  # channel k*(S+1)+j is weight j of class k
    names = {n for n, _ in learner.named_parameters()}
    assert {"conv1.0.weight", "conv1.0.bias", "conv1.1.weight", "conv3.1.bias"} <= names
    assert isinstance(learner.conv1[2], nn.ReLU) and len(learner.conv3) == 2


def test_location_invariant_learner():
    learner = LocationInvariantLearner(8, 3, 4).eval()
    x = torch.randn(2, 8, 5, 6)
    w = learner(x)
    assert w.shape == (2, 3, 4)
    v = x.mean((2, 3))
    torch.testing.assert_close(w, learner.fc3(learner.fc2(learner.fc1(v))).view(2, 3, 4))
    # Location-invariant: the weights depend on the pooled features only.
    torch.testing.assert_close(learner(x.flip(-1)), w, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="8 channels"):
        learner(torch.randn(2, 7, 5, 6))


def test_fixed_fusion_equals_grouped_conv_over_shared_concat():
    k, s = 4, 3
    fusion = FixedFusion(k, s + 1)
    side5, sides = torch.randn(2, k, 5, 6), torch.randn(2, s, 5, 6)
    want = F.conv2d(shared_concat(side5, sides), fusion.weight, fusion.bias, groups=k)
    torch.testing.assert_close(fusion(side5, sides), want, rtol=1e-5, atol=1e-5)
    assert fusion.fusion_weights.shape == (k, s + 1)
    assert FixedFusion(k, s + 1, bias=False).bias is None


def test_dynamic_fusion_module():
    side5, sides, w = torch.randn(1, 2, 3, 3), torch.randn(1, 3, 3, 3), torch.randn(1, 2, 4, 3, 3)
    mod = DynamicFusion(activation="softmax", backend="torch")
    torch.testing.assert_close(mod(side5, sides, w), dynamic_fuse(side5, sides, w, activation="softmax"))
    with pytest.raises(ValueError, match="activation"):
        DynamicFusion(activation="relu")
    with pytest.raises(ValueError, match="backend"):
        DynamicFusion(backend="numpy")


@pytest.mark.parametrize(
    "module, words",
    [
        (SideNormBlock(4, 1, 2), ["in_channels=4", "scale=2", "norm=True", "upsample='deconv'"]),
        (SharedConcat(), ["side5_k"]),
        (LocationAdaptiveLearner(8, 2), ["num_classes=2", "num_inputs=4"]),
        (LocationInvariantLearner(8, 2), ["in_channels=8", "num_classes=2"]),
        (DynamicFusion(), ["activation=None", "backend='auto'", "bias=False"]),
        (FixedWeights(3), ["num_classes=3", "num_inputs=4"]),
        (FixedFusion(3), ["num_classes=3", "bias=True"]),
    ],
)
def test_repr(module, words):
    text = repr(module)
    assert all(w in text for w in words), text


def test_fixed_weights_is_a_learner_returning_its_parameter():
    learner = FixedWeights(3, 4)
    w = learner(torch.randn(2, 8, 5, 6))
    assert w.shape == (3, 4) and w.data_ptr() == learner.weight.data_ptr()  # a view, no copy
    assert learner.weight.shape == (3, 4, 1, 1)  # the grouped conv's shape, as the authors save it
    torch.testing.assert_close(learner(None), w)
    w.sum().backward()
    assert torch.equal(learner.weight.grad, torch.ones(3, 4, 1, 1))


def test_fixed_weights_and_biased_fusion_equal_fixed_fusion():
    # The heads' fixed fusion (FixedWeights + DynamicFusion(bias=True)) is CASENet's grouped conv.
    k, s = 3, 3
    learner, fusion = FixedWeights(k, s + 1), DynamicFusion(num_classes=k, bias=True, backend="torch")
    side5, sides = torch.randn(2, k, 5, 6), torch.randn(2, s, 5, 6)
    want = F.conv2d(
        shared_concat(side5, sides).double(), learner.weight.double(), fusion.bias.double(), groups=k
    )
    torch.testing.assert_close(fusion(side5, sides, learner(None)).double(), want, rtol=1e-5, atol=1e-5)
    bound = 1 / (s + 1) ** 0.5  # the grouped conv's default initialisation
    assert fusion.bias.abs().max() <= bound and learner.weight.abs().max() <= bound
    assert DynamicFusion().bias is None
    with pytest.raises(ValueError, match="num_classes"):
        DynamicFusion(bias=True)


def test_side_norm_block_names_a_dtype_mismatch():
    block = SideNormBlock(4, 2, 2)
    for dtype in (torch.float64, torch.bfloat16):
        with pytest.raises(TypeError, match=rf"dtype {dtype} but the block's parameters are torch.float32"):
            block(torch.randn(1, 4, 3, 3, dtype=dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts the inputs: allowed
        assert block(torch.randn(1, 4, 3, 3, dtype=torch.bfloat16)).shape == (1, 2, 6, 6)


def test_checkpointing_helpers_live_in_layers_and_keep_old_paths():
    from dynfuse.backbones import run_checkpointed as from_backbones
    from dynfuse.backbones.resnet import run_checkpointed as from_resnet
    from dynfuse.layers import CheckpointedAdaptiveLearner, run_checkpointed
    from dynfuse.models import CheckpointedAdaptiveLearner as from_models
    from dynfuse.models.edge import CheckpointedAdaptiveLearner as from_edge

    assert from_backbones is from_resnet is run_checkpointed
    assert from_models is from_edge is CheckpointedAdaptiveLearner
    # BN statistics are updated once although the block runs twice (forward + recomputation).
    block = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    plain.load_state_dict(block.state_dict())
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    run_checkpointed(block, block, x).sum().backward()
    plain(x).sum()
    torch.testing.assert_close(block[1].running_mean, plain[1].running_mean)
    assert int(block[1].num_batches_tracked) == 1
