"""Dilated ResNet backbones, checked loading of torchvision weights, and the adapters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dynfuse.backbones import (
    CheckpointMismatchError,
    DilatedResNet,
    FeatureInfo,
    FeatureListBackbone,
    TimmBackbone,
    dilated_resnet50,
    dilated_resnet101,
    dilated_resnet_tiny,
    load_torchvision_weights,
    read_state_dict,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def torchvision_resnet_keys(layers: tuple[int, int, int, int]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ResNet (Bottleneck) state dict, written out independently."""
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{name}"] = (c,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    cin = 64
    for stage, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=True), start=1):
        for j in range(n):
            p = f"layer{stage}.{j}"
            keys[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            bn(f"{p}.bn1", planes)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if j == 0:
                keys[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            cin = planes * 4
    keys["fc.weight"] = (1000, 2048)
    keys["fc.bias"] = (1000,)
    return keys


def random_state(keys: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * 0.05
    return out


def test_torchvision_key_generator_matches_torchvision():
    tv = pytest.importorskip("torchvision")
    sd = tv.models.resnet50(weights=None).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == torchvision_resnet_keys((3, 4, 6, 3))


@pytest.mark.parametrize(
    "builder,layers", [(dilated_resnet50, (3, 4, 6, 3)), (dilated_resnet101, (3, 4, 23, 3))]
)
def test_parameter_names_are_torchvision(builder, layers):
    ours = {k: tuple(v.shape) for k, v in builder().state_dict().items()}
    theirs = torchvision_resnet_keys(layers)
    theirs.pop("fc.weight")
    theirs.pop("fc.bias")
    assert ours == theirs


def test_torchvision_file_loads(tmp_path):
    state = random_state(torchvision_resnet_keys((3, 4, 6, 3)))
    # Old torchvision files (resnet50-19c8e357.pth) predate num_batches_tracked.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = dilated_resnet50(pretrained=path)
    own = model.state_dict()
    for k, v in state.items():
        if k.startswith("fc."):
            assert k not in own
        else:
            torch.testing.assert_close(own[k], v, rtol=0, atol=0)
    report = load_torchvision_weights(model, state)
    assert report.ignored == ["fc.bias", "fc.weight"]
    assert len(report.missing_optional) == sum(k.endswith("num_batches_tracked") for k in own)


def test_torchvision_mismatch_lists_everything():
    state = random_state(torchvision_resnet_keys((3, 4, 6, 3)))
    del state["layer2.0.conv1.weight"]
    del state["layer3.1.bn2.running_var"]
    state["layer1.0.conv2.weight"] = torch.zeros(64, 64, 5, 5)
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as err:
        load_torchvision_weights(dilated_resnet50(), state)
    msg = str(err.value)
    for needle in (
        "missing keys (2)",
        "layer2.0.conv1.weight",
        "layer3.1.bn2.running_var",
        "unexpected keys (1)",
        "extra.weight",
        "shape mismatches (1)",
        "layer1.0.conv2.weight: torchvision ResNet weights has (64, 64, 5, 5), model expects (64, 64, 3, 3)",
    ):
        assert needle in msg
    # A ResNet-101 file does not fit a ResNet-50 backbone.
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        r101 = random_state(torchvision_resnet_keys((3, 4, 23, 3)))
        load_torchvision_weights(dilated_resnet50(), r101)


def test_read_state_dict_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_state_dict(bad)
    with pytest.raises(ValueError, match="not a state dict"):
        read_state_dict({"a": 3})
    with pytest.raises(TypeError, match="source must be"):
        read_state_dict(3)
    wrapped = {"epoch": 3, "state_dict": {"w": torch.ones(2)}, "optimizer": {}}
    assert list(read_state_dict(wrapped)) == ["w"]


def test_topology_matches_the_authors():
    m = dilated_resnet50()
    assert m.conv1.stride == (1, 1) and m.conv1.kernel_size == (7, 7)
    assert m.maxpool.stride == 2
    for stage, stride, dil in ((m.layer1, 1, 2), (m.layer2, 2, 2), (m.layer3, 2, 2), (m.layer4, 1, 4)):
        for j, blk in enumerate(stage):
            assert blk.conv2.dilation == (dil, dil) and blk.conv2.padding == (dil, dil)
            assert blk.conv2.stride == ((stride, stride) if j == 0 else (1, 1))
            assert blk.conv1.stride == (1, 1)
        assert stage[0].downsample[0].stride == (stride, stride)
    assert m.feature_info.channels() == [64, 256, 512, 2048]
    assert m.feature_info.reduction() == [1, 2, 4, 8]
    assert m.feature_info.module_name() == ["relu", "layer1", "layer2", "layer4"]


@pytest.mark.parametrize("size", [(32, 32), (37, 51), (9, 8), (1, 3)])
def test_any_size_feature_shapes(size):
    torch.manual_seed(0)
    m = dilated_resnet_tiny().eval()
    feats = m(torch.randn(2, 3, *size))
    assert len(feats) == 4
    for f, c, r in zip(feats, m.feature_info.channels(), m.feature_info.reduction(), strict=True):
        assert f.shape == (2, c, math.ceil(size[0] / r), math.ceil(size[1] / r))


def test_resnet50_shapes_small_input():
    m = dilated_resnet50().eval()
    with torch.no_grad():
        feats = m(torch.randn(1, 3, 19, 26))
    assert [tuple(f.shape) for f in feats] == [
        (1, 64, 19, 26),
        (1, 256, 10, 13),
        (1, 512, 5, 7),
        (1, 2048, 3, 4),
    ]


def test_tiny_is_small_and_configurable():
    m = dilated_resnet_tiny()
    assert sum(p.numel() for p in m.parameters()) < 500_000
    assert m.feature_info.channels() == [16, 16, 32, 128]
    w = dilated_resnet_tiny(widths=(8, 8, 16, 32))
    assert w.feature_info.channels() == [8, 8, 8, 32]


def test_tiny_pretrained_roundtrip(tmp_path):
    torch.manual_seed(1)
    a = dilated_resnet_tiny()
    torch.save(a.state_dict(), tmp_path / "tiny.pth")
    b = dilated_resnet_tiny(pretrained=tmp_path / "tiny.pth")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        dilated_resnet_tiny(pretrained=tmp_path / "tiny.pth", widths=(8, 16, 32, 64))


def test_checkpointed_stages_match_plain_run():
    torch.manual_seed(2)
    plain = dilated_resnet_tiny().train()
    ckpt = dilated_resnet_tiny(checkpoint_stages=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 21, 18)
    outs = []
    for m in (plain, ckpt):
        feats = m(x)
        loss = sum((f * (i + 1)).square().mean() for i, f in enumerate(feats))
        loss.backward()
        outs.append((feats, {n: p.grad.clone() for n, p in m.named_parameters()}))
    for fa, fb in zip(outs[0][0], outs[1][0], strict=True):
        torch.testing.assert_close(fa, fb)
    for n, g in outs[0][1].items():
        torch.testing.assert_close(g, outs[1][1][n], rtol=1e-4, atol=1e-6)
    # BatchNorm statistics are updated exactly once per forward despite the recomputation.
    for (n, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=n)


def test_bad_input_raises():
    m = dilated_resnet_tiny()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m(torch.randn(3, 8, 8))
    with pytest.raises(TypeError):
        m(None)
    with pytest.raises(ValueError, match="block must be"):
        DilatedResNet("wide")
    with pytest.raises(ValueError, match="layers must hold 4"):
        DilatedResNet(layers=(1, 2, 3))


def test_feature_info_helpers_and_errors():
    info = FeatureInfo.from_lists([8, 16], [2, 4], ["a", "b"])
    assert info.channels() == [8, 16] and info.reduction(1) == 4 and info.module_name(0) == "a"
    assert info.get_dicts() == [
        {"num_chs": 8, "reduction": 2, "module": "a"},
        {"num_chs": 16, "reduction": 4, "module": "b"},
    ]
    with pytest.raises(ValueError, match="same length"):
        FeatureInfo.from_lists([8], [2, 4])
    with pytest.raises(ValueError, match="positive int"):
        FeatureInfo([{"num_chs": 0, "reduction": 2}])


class _Pyramid(nn.Module):
    """A toy extractor returning five levels at strides 2..32."""

    def __init__(self):
        super().__init__()
        chans = [3, 8, 12, 16, 20, 24]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )

    def forward(self, x):
        out = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            out.append(x)
        return tuple(out)


def test_feature_list_backbone_probe_and_select():
    body = _Pyramid()
    bb = FeatureListBackbone(body, indices=(0, 1, 2, 4))
    assert bb.feature_info.channels() == [8, 12, 16, 24]
    assert bb.feature_info.reduction() == [2, 4, 8, 32]
    feats = bb(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == [8, 12, 16, 24]
    given = FeatureListBackbone(body, [8, 12, 16, 20, 24], [2, 4, 8, 16, 32])
    assert len(given(torch.randn(1, 3, 32, 32))) == 5
    with pytest.raises(ValueError, match="out of range"):
        FeatureListBackbone(body, indices=(0, 9))
    with pytest.raises(ValueError, match="both channels and reductions"):
        FeatureListBackbone(body, channels=[8])
    with pytest.raises(ValueError, match="module returned 5 features"):
        FeatureListBackbone(body, [8], [2])(torch.randn(1, 3, 32, 32))


def test_timm_backbone():
    pytest.importorskip("timm")
    bb = TimmBackbone("resnet18")
    assert bb.feature_info.channels() == [64, 64, 128, 512]
    assert bb.feature_info.reduction() == [2, 4, 8, 32]
    feats = bb(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (64, 16, 16), (128, 8, 8), (512, 2, 2)]
    explicit = TimmBackbone("resnet18", out_indices=(1, 2, 3))
    assert explicit.feature_info.reduction() == [4, 8, 16]
