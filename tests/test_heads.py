"""DFF and CASENet heads on a hand-made backbone and on timm, at odd sizes, forward and backward."""

from __future__ import annotations

import pytest
import torch
from fusion_oracle import oracle_fuse
from torch import nn

from dynfuse import CASENetHead, DFFHead, DFFOutput
from dynfuse.heads import NoSide5W, parse_feature_info


class TinyBackbone(nn.Module):
    """Four levels at strides 1, 2, 4, 8 (like the authors' dilated ResNet), ceil-mode sizes."""

    channels = (8, 12, 16, 24)
    strides = (1, 2, 4, 8)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.l2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.l3 = nn.Conv2d(12, 16, 3, stride=2, padding=1)
        self.l5 = nn.Conv2d(16, 24, 3, stride=2, padding=1)

    def forward(self, x):
        c1 = torch.relu(self.stem(x))
        c2 = torch.relu(self.l2(c1))
        c3 = torch.relu(self.l3(c2))
        return [c1, c2, c3, torch.relu(self.l5(c3))]


TABLE1 = {  # the rows of the paper's Table 1
    "casenet": dict(learner="fixed", normalize=False),
    "+normalizer": dict(learner="fixed", normalize=True),
    "+invariant": dict(learner="invariant", normalize=True),
    "+adaptive+softmax": dict(learner="adaptive", normalize=True, activation="softmax"),
    "+adaptive": dict(learner="adaptive", normalize=True),
    "adaptive-no-normalizer": dict(learner="adaptive", normalize=False),
}


@pytest.mark.parametrize("row", list(TABLE1))
@pytest.mark.parametrize("size", [(33, 29), (8, 8), (17, 1)])
def test_table1_rows_any_size_forward_backward(row, size):
    backbone = TinyBackbone()
    head = DFFHead(TinyBackbone.channels, 5, strides=TinyBackbone.strides, backend="torch", **TABLE1[row])
    x = torch.randn(2, 3, *size, requires_grad=True)
    out = head(backbone(x), output_size=size)
    assert isinstance(out, DFFOutput)
    assert out.side5.shape == out.fuse.shape == (2, 5, *size)
    want_w = {"adaptive": (2, 5, 4, *size), "invariant": (2, 5, 4), "fixed": (5, 4)}[TABLE1[row]["learner"]]
    assert out.weights.shape == want_w
    (out.side5.mean() + out.fuse.mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in head.named_parameters():
        assert p.grad is not None, name


def test_head_fuse_equals_op_on_its_parts():
    backbone, head = TinyBackbone(), DFFHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides).eval()
    feats = backbone(torch.randn(1, 3, 21, 19))
    out = head(feats, (21, 19))
    sides = torch.cat([blk(f, (21, 19)) for blk, f in zip(head.sides, feats[:3], strict=True)], 1)
    weights = head.learner(head.side5_w(feats[3], (21, 19)))
    torch.testing.assert_close(out.weights, weights)
    torch.testing.assert_close(out.side5, head.side5(feats[3], (21, 19)))
    torch.testing.assert_close(
        out.fuse.double(), oracle_fuse(out.side5, sides, weights), rtol=1e-5, atol=1e-5
    )


def test_casenet_head_has_no_side_norm_and_fixed_weights():
    head = CASENetHead(TinyBackbone.channels, 4, strides=TinyBackbone.strides)
    assert all(isinstance(b.norm, nn.Identity) for b in [*head.sides, head.side5])
    # No Side5-w block: the fixed learner reads no features (its slot holds a parameter-free stand-in).
    assert isinstance(head.side5_w, NoSide5W) and not list(head.side5_w.parameters())
    out = head(TinyBackbone()(torch.randn(2, 3, 16, 16)))
    assert out.weights.shape == (4, 4) and out.fuse.shape == (2, 4, 16, 16)


def test_default_output_size_is_lowest_level_times_stride():
    out = DFFHead(TinyBackbone.channels, 2, strides=TinyBackbone.strides)(
        TinyBackbone()(torch.randn(2, 3, 20, 12))
    )
    assert out.fuse.shape == (2, 2, 20, 12)


def test_learner_at_top_resolution():
    head = DFFHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides, learner_resolution="top")
    assert head.side5_w.upsample is None
    out = head(TinyBackbone()(torch.randn(2, 3, 25, 30)), (25, 30))
    assert out.weights.shape == (2, 3, 4, 25, 30)
    out.fuse.sum().backward()


def test_from_feature_info_plain_pairs_and_dicts():
    pairs = list(zip(TinyBackbone.channels, TinyBackbone.strides, strict=True))
    dicts = [dict(num_chs=c, reduction=s, module=f"l{i}") for i, (c, s) in enumerate(pairs)]
    for info in (pairs, dicts):
        head = DFFHead.from_feature_info(info, 3)
        assert head.in_channels == TinyBackbone.channels and head.strides == TinyBackbone.strides
    # indices select levels from a longer list; forward then takes the full list of maps.
    head = DFFHead.from_feature_info(pairs, 3, indices=[0, 1, 3])
    out = head(TinyBackbone()(torch.randn(1, 3, 16, 16)), (16, 16))
    assert head.in_channels == (8, 12, 24) and out.fuse.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="out of range"):
        DFFHead.from_feature_info(pairs, 3, indices=[0, 9])
    with pytest.raises(ValueError, match="num_chs"):
        parse_feature_info([dict(channels=3)])
    with pytest.raises(TypeError, match="feature_info"):
        parse_feature_info(5)


def test_timm_features_only_backbone():
    timm = pytest.importorskip("timm")
    backbone = timm.create_model("resnet10t", pretrained=False, features_only=True, out_indices=(0, 1, 2, 4))
    head = DFFHead.from_feature_info(backbone.feature_info, 4, backend="torch")
    assert head.strides == (2, 4, 8, 32)
    x = torch.randn(2, 3, 45, 37, requires_grad=True)
    out = head(backbone(x), output_size=x.shape[-2:])
    assert out.fuse.shape == (2, 4, 45, 37) and out.weights.shape == (2, 4, 4, 45, 37)
    out.fuse.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("learner", ["adaptive", "fixed"])
def test_compile_fullgraph_torch_backend(learner):
    # aot_eager gives the same one-graph guarantee as inductor (fullgraph=True fails on any graph
    # break) at a tenth of the compile time; inductor itself is covered by a slow model test.
    backbone = TinyBackbone()
    head = DFFHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides, backend="torch", learner=learner)
    feats = backbone(torch.randn(2, 3, 19, 23))
    eager = head(feats, (19, 23))
    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")(feats, (19, 23))
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(in_channels=[8]), ValueError, ["at least 2 levels"]),
        (dict(strides=[1, 2]), ValueError, ["one stride per level"]),
        (dict(learner="mlp"), ValueError, ["learner", "'mlp'"]),
        (dict(learner_resolution="half"), ValueError, ["learner_resolution"]),
        (dict(activation="tanh"), ValueError, ["activation"]),
        (dict(backend="cuda"), ValueError, ["backend"]),
        (dict(num_classes=0), ValueError, ["num_classes"]),
    ],
)
def test_head_bad_arguments(kwargs, exc, words):
    args = dict(in_channels=TinyBackbone.channels, num_classes=3, strides=TinyBackbone.strides) | kwargs
    with pytest.raises(exc) as info:
        DFFHead(**args)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_head_bad_features():
    head = DFFHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides)
    feats = TinyBackbone()(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="expected 4 feature maps"):
        head(feats[:3])
    with pytest.raises(TypeError, match="list of 4 feature maps"):
        head(feats[0])
    with pytest.raises(ValueError, match="24 channels, got 16"):
        head([feats[0], feats[1], feats[2], feats[2]])


def test_head_repr():
    text = repr(DFFHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides, learner="invariant"))
    assert "learner='invariant'" in text and "LocationInvariantLearner" in text and "SideNormBlock" in text
