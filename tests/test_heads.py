"""DFF and CASENet heads on a hand-made backbone and on timm, at odd sizes, forward and backward."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from fusion_oracle import oracle_fuse
from torch import nn

from dynfuse import CASENetHead, DFFHead, DFFOutput, DynamicFusion, HeadOptions
from dynfuse.backbones import load_state_dict_checked
from dynfuse.heads import HEAD_STATE_VERSION, NoSide5W, parse_feature_info, upgrade_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")


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


# --- HeadOptions: one value describes a head -------------------------------------------------


def test_head_options_frozen_validated_and_one_source_for_builders():
    opts = HeadOptions(learner="invariant", activation="softmax")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.learner = "fixed"
    assert opts.replace(learner="adaptive") == HeadOptions(activation="softmax")
    assert HeadOptions(**opts.to_dict()) == opts and hash(opts) == hash(HeadOptions(**opts.to_dict()))
    # Passing the value or its fields builds the same head.
    a = DFFHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides, options=opts)
    b = DFFHead(
        TinyBackbone.channels, 3, strides=TinyBackbone.strides, learner="invariant", activation="softmax"
    )
    assert a.options == b.options == opts and repr(a) == repr(b)
    # Keyword fields override the value; "backend" is the old name of fusion_backend.
    c = DFFHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides, options=opts, backend="torch")
    assert c.options == opts.replace(fusion_backend="torch") and c.fusion.backend == "torch"


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(learner="mlp"), ["learner must be one of", "'mlp'"]),
        (dict(normalize="no"), ["normalize must be True or False", "'no'"]),
        (dict(activation="tanh"), ["activation"]),
        (dict(upsample="nearest"), ["upsample", "'nearest'"]),
        (dict(learner_resolution="half"), ["learner_resolution"]),
        (dict(learner="fixed", learner_resolution="top"), ["'fixed' learner has no Side5-w"]),
        (dict(fusion_backend="cuda"), ["fusion_backend must be one of", "'cuda'"]),
    ],
)
def test_head_options_errors(changes, words):
    with pytest.raises(ValueError) as info:
        HeadOptions(**changes)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_head_options_unknown_names():
    with pytest.raises(ValueError, match=r"unknown head option\(s\) \['learnr'\]; HeadOptions has"):
        HeadOptions().replace(learnr="fixed")
    with pytest.raises(ValueError, match="unknown head option"):
        DFFHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides, learnr="fixed")
    with pytest.raises(ValueError, match="not both"):
        DFFHead(
            TinyBackbone.channels, 3, strides=TinyBackbone.strides, backend="torch", fusion_backend="torch"
        )
    with pytest.raises(TypeError, match="options must be a HeadOptions"):
        DFFHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides, options={"learner": "fixed"})
    with pytest.raises(ValueError, match="apply to DFF only"):
        CASENetHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides, learner="adaptive")


@pytest.mark.parametrize("learner", ["adaptive", "invariant", "fixed"])
def test_every_head_has_the_same_parts(learner):
    head = DFFHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides, learner=learner)
    assert [name for name, _ in head.named_children()] == ["sides", "side5", "side5_w", "learner", "fusion"]
    assert isinstance(head.fusion, DynamicFusion)
    assert (head.fusion.bias is not None) == (learner == "fixed")  # CASENet's grouped conv has a bias


def test_fixed_head_fuse_equals_op_plus_bias():
    backbone = TinyBackbone()
    head = DFFHead(TinyBackbone.channels, 3, strides=TinyBackbone.strides, learner="fixed").eval()
    feats = backbone(torch.randn(2, 3, 21, 19))
    out = head(feats, (21, 19))
    sides = torch.cat([blk(f, (21, 19)) for blk, f in zip(head.sides, feats[:3], strict=True)], 1)
    assert out.weights.shape == (3, 4) and out.weights.data_ptr() == head.learner.weight.data_ptr()
    want = oracle_fuse(out.side5, sides, out.weights) + head.fusion.bias.double()[:, None, None]
    torch.testing.assert_close(out.fuse.double(), want, rtol=1e-5, atol=1e-5)


# --- geometry and dtype of the inputs (issue 9, items 10-12) ---------------------------------


@pytest.mark.parametrize(
    "size", [(-5, 16), (3,), (0, 0), (16, 0), (16.0, 16), (True, 16), "16", 16, torch.tensor([16, 16])]
)
def test_output_size_must_be_two_positive_ints(size):
    head = DFFHead(TinyBackbone.channels, 2, strides=TinyBackbone.strides)
    feats = TinyBackbone()(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"output_size must be \(H, W\), two positive ints"):
        head(feats, output_size=size)


def test_output_size_accepts_torch_size_and_numpy_ints():
    np = pytest.importorskip("numpy")
    head = DFFHead(TinyBackbone.channels, 2, strides=TinyBackbone.strides)
    feats = TinyBackbone()(torch.randn(1, 3, 16, 12))
    for size in (torch.Size([16, 12]), (np.int64(16), np.int32(12)), [16, 12]):
        assert head(feats, output_size=size).fuse.shape == (1, 2, 16, 12)


def test_level_that_does_not_fit_its_stride_is_named():
    head = DFFHead(TinyBackbone.channels, 2, strides=TinyBackbone.strides)
    feats = TinyBackbone()(torch.randn(1, 3, 16, 16))
    feats[3] = torch.randn(1, 24, 5, 5)  # a 16x16 output at stride 8 needs 2x2
    with pytest.raises(
        ValueError,
        match=r"feature map 3 \(top\) is 5x5 but has stride 8: an output of "
        r"16x16 needs 2x2",
    ):
        head(feats, (16, 16))
    feats = TinyBackbone()(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"feature map 0 is 16x16 but has stride 1: an output of 32x16"):
        head(feats, (32, 16))  # an output size that is not the image's


@pytest.mark.parametrize("rows, ok", [(8, True), (9, True), (10, False), (7, False)])
def test_odd_sizes_may_round_either_way(rows, ok):
    # A 17-row output at stride 2: backbones that pad give ceil(17/2) = 9 rows, unpadded ones 8.
    head = DFFHead([4, 4], 2, strides=[1, 2])
    feats = [torch.randn(1, 4, 17, 6), torch.randn(1, 4, rows, 3)]
    if ok:
        assert head(feats, (17, 6)).fuse.shape == (1, 2, 17, 6)
    else:
        with pytest.raises(
            ValueError,
            match=r"feature map 1 \(top\) is \d+x3 but has stride 2: an output "
            r"of 17x6 needs 8\|9x3",
        ):
            head(feats, (17, 6))


def test_timm_features_with_wrong_declared_strides_raise():
    timm = pytest.importorskip("timm")
    backbone = timm.create_model(
        "resnet18", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4)
    ).eval()
    # resnet18's levels are at strides 4, 8, 16, 32; declaring the dilated ResNet's 1, 2, 4, 8 used to
    # resize every map silently.
    head = DFFHead(backbone.feature_info.channels(), 2, strides=(1, 2, 4, 8))
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 32, 32))
    with pytest.raises(
        ValueError,
        match=r"feature map 0 is 8x8 but has stride 1: an output of 32x32 "
        r"needs 32x32",
    ):
        head(feats, (32, 32))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(num_classes=2.5), ["num_classes must be a positive int", "2.5"]),
        (dict(num_classes=True), ["num_classes must be a positive int"]),
        (dict(in_channels=[8, 12.5, 16, 24]), ["in_channels must be positive ints"]),
        (dict(strides=[1, 2, 0, 8]), ["strides must be positive ints"]),
        (dict(strides=8), ["strides must be a sequence"]),
    ],
)
def test_head_sizes_must_be_ints(kwargs, words):
    args = dict(in_channels=TinyBackbone.channels, num_classes=3, strides=TinyBackbone.strides) | kwargs
    with pytest.raises(ValueError) as info:
        DFFHead(**args)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_feature_dtype_mismatch_is_named(dtype):
    head = DFFHead(TinyBackbone.channels, 2, strides=TinyBackbone.strides)
    feats = [f.to(dtype) for f in TinyBackbone()(torch.randn(1, 3, 16, 16))]
    with pytest.raises(
        TypeError,
        match=rf"feature map 0 has dtype {dtype} but the head's parameters "
        r"are torch.float32",
    ):
        head(feats)
    head.to(dtype)  # a head of the features' dtype takes them
    assert head(feats).fuse.dtype == dtype


def test_half_features_under_autocast_keep_working():
    head = DFFHead(TinyBackbone.channels, 2, strides=TinyBackbone.strides, backend="torch")
    feats = [f.bfloat16() for f in TinyBackbone()(torch.randn(2, 3, 16, 12))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(feats)
    assert out.fuse.shape == (2, 2, 16, 12) and torch.isfinite(out.fuse.float()).all()


def test_feature_batch_mismatch_is_named():
    head = DFFHead(TinyBackbone.channels, 2, strides=TinyBackbone.strides)
    feats = TinyBackbone()(torch.randn(2, 3, 16, 16))
    feats[2] = feats[2][:1]
    with pytest.raises(ValueError, match="feature map 2 has batch 1, feature map 0 has 2"):
        head(feats)


# --- state-dict format: version 1 (before FixedWeights) still loads --------------------------

V1 = Path(__file__).parent / "data" / "head_state_v1.pt"  # written by data/make_head_state_v1.py


@pytest.mark.parametrize("kind", ["casenet", "normalizer"])
def test_version1_head_state_loads_with_the_same_outputs(kind):
    record = torch.load(V1, weights_only=True)
    state = record["state"][kind]
    assert "learner.bias" in state and "fusion.bias" not in state  # really the old format
    channels, strides = (4, 4, 4, 8), (1, 2, 4, 8)
    make = {
        "casenet": lambda: CASENetHead(channels, 2, strides=strides, backend="reference"),
        "normalizer": lambda: DFFHead(channels, 2, strides=strides, learner="fixed", backend="reference"),
    }[kind]
    # 1) torch's own loader: the head migrates version-1 keys itself (metadata says version 1).
    head = make().eval()
    head.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(head(record["features"], (16, 16)).fuse, record["fuse"][kind])
    # 2) loaders that compare key sets first call upgrade_state_dict (metadata lost on purpose).
    upgraded = upgrade_state_dict(dict(state))
    assert set(upgraded) == set(make().state_dict())
    head = make().eval()
    load_state_dict_checked(head, upgraded)
    with torch.no_grad():
        torch.testing.assert_close(head(record["features"], (16, 16)).fuse, record["fuse"][kind])
    # 3) the same inside a model's state dict (keys under "head.").
    model_keys = upgrade_state_dict({f"head.{k}": v for k, v in state.items()})
    assert "head.fusion.bias" in model_keys and "head.learner.bias" not in model_keys


def test_current_state_is_version2_and_passes_upgrade_unchanged():
    head = CASENetHead(TinyBackbone.channels, 2, strides=TinyBackbone.strides)
    state = head.state_dict()
    assert state._metadata[""]["version"] == HEAD_STATE_VERSION == 2
    assert list(upgrade_state_dict(state)) == list(state)
    other = CASENetHead(TinyBackbone.channels, 2, strides=TinyBackbone.strides)
    other.load_state_dict(state)
    assert torch.equal(other.fusion.bias, head.fusion.bias)


def test_checked_loader_migrates_version1_keys_itself():
    """dynfuse-predict and --resume go through load_state_checked: a version-1 fixed-head model
    state (no metadata, learner.bias) must load there without a manual upgrade call."""
    record = torch.load(V1, weights_only=True)
    state = {f"head.{k}": v for k, v in record["state"]["casenet"].items()}

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = CASENetHead((4, 4, 4, 8), 2, strides=(1, 2, 4, 8), backend="reference")

    holder = Holder().eval()
    load_state_dict_checked(holder, state)
    with torch.no_grad():
        fuse = holder.head(record["features"], (16, 16)).fuse
    torch.testing.assert_close(fuse, record["fuse"]["casenet"])
