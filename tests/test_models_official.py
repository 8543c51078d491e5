"""Authors'-checkpoint parity: our DFF / CASENet loaded from a Lavender105/DFF-format checkpoint give
the same outputs as an independent functional re-implementation of the authors' forward.

The checkpoint is built here with random weights under the authors' key names and shapes
(``exps/models/dff.py``, ``casenet.py`` and PyTorch-Encoding's dilated ResNet); the reference forward
below uses only ``torch.nn.functional`` and that raw state dict, with the authors' growing
``torch.cat`` shared concatenation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynfuse.backbones import CheckpointMismatchError
from dynfuse.models import (
    DFF,
    CASENet,
    convert_official_state_dict,
    load_official_casenet,
    load_official_dff,
    to_official_state_dict,
)

pytestmark = pytest.mark.usefixtures("one_thread")


R50 = (3, 4, 6, 3)
R101 = (3, 4, 23, 3)


def _bn_keys(keys, prefix, c):
    for name in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{prefix}.{name}"] = (c,)
    keys[f"{prefix}.num_batches_tracked"] = ()


def authors_keys(model: str, k: int, layers=R50) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the authors' DFF / CaseNet state dict (backbone under ``pretrained.``)."""
    keys: dict[str, tuple[int, ...]] = {"pretrained.conv1.weight": (64, 3, 7, 7)}
    _bn_keys(keys, "pretrained.bn1", 64)
    cin = 64
    for stage, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=True), start=1):
        for j in range(n):
            p = f"pretrained.layer{stage}.{j}"
            keys[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            _bn_keys(keys, f"{p}.bn1", planes)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn_keys(keys, f"{p}.bn2", planes)
            keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            _bn_keys(keys, f"{p}.bn3", planes * 4)
            if j == 0:
                keys[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                _bn_keys(keys, f"{p}.downsample.1", planes * 4)
            cin = planes * 4
    keys["pretrained.fc.weight"] = (1000, 2048)  # the authors keep the ImageNet classifier
    keys["pretrained.fc.bias"] = (1000,)
    side_in = {"side1": 64, "side2": 256, "side3": 512}
    deconv_k = {"side2": 4, "side3": 8, "side5": 16}
    if model == "dff":
        for name, cin in side_in.items():
            keys[f"{name}.0.weight"] = (1, cin, 1, 1)
            keys[f"{name}.0.bias"] = (1,)
            _bn_keys(keys, f"{name}.1", 1)
            if name != "side1":
                keys[f"{name}.2.weight"] = (1, 1, deconv_k[name], deconv_k[name])
        for name, c in (("side5", k), ("side5_w", 4 * k)):
            keys[f"{name}.0.weight"] = (c, 2048, 1, 1)
            keys[f"{name}.0.bias"] = (c,)
            _bn_keys(keys, f"{name}.1", c)
            keys[f"{name}.2.weight"] = (c, c, 16, 16)
        for i in (1, 2, 3):
            keys[f"ada_learner.conv{i}.0.weight"] = (4 * k, 4 * k, 1, 1)
            keys[f"ada_learner.conv{i}.0.bias"] = (4 * k,)
            _bn_keys(keys, f"ada_learner.conv{i}.1", 4 * k)
    else:
        keys["side1.weight"] = (1, 64, 1, 1)
        keys["side1.bias"] = (1,)
        for name in ("side2", "side3"):
            keys[f"{name}.0.weight"] = (1, side_in[name], 1, 1)
            keys[f"{name}.0.bias"] = (1,)
            keys[f"{name}.1.weight"] = (1, 1, deconv_k[name], deconv_k[name])
        keys["side5.0.weight"] = (k, 2048, 1, 1)
        keys["side5.0.bias"] = (k,)
        keys["side5.1.weight"] = (k, k, 16, 16)
        keys["fuse.weight"] = (k, 4, 1, 1)
        keys["fuse.bias"] = (k,)
    return keys


def random_checkpoint(keys, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in keys.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            sd[key] = 1 + 0.2 * torch.rand(shape, generator=g, dtype=dtype)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            sd[key] = 0.1 * torch.randn(shape, generator=g, dtype=dtype)
        elif len(shape) == 1:  # BN weight
            sd[key] = 1 + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
        else:
            fan_in = math.prod(shape[1:])
            sd[key] = torch.randn(shape, generator=g, dtype=dtype) / math.sqrt(fan_in)
    return sd


# ---- the authors' forward, functionally ------------------------------------------------------


def _bn(x, sd, p):
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"],
        sd[f"{p}.running_var"],
        sd[f"{p}.weight"],
        sd[f"{p}.bias"],
        training=False,
        eps=1e-5,
    )


def authors_backbone(x, sd, layers):
    x = F.conv2d(x, sd["pretrained.conv1.weight"], stride=1, padding=3)
    c1 = F.relu(_bn(x, sd, "pretrained.bn1"))
    x = F.max_pool2d(c1, 3, stride=2, padding=1)
    outs = []
    for stage, (n, stride, dil) in enumerate(zip(layers, (1, 2, 2, 1), (2, 2, 2, 4), strict=True), 1):
        for j in range(n):
            p = f"pretrained.layer{stage}.{j}"
            s = stride if j == 0 else 1
            out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
            out = F.conv2d(out, sd[f"{p}.conv2.weight"], stride=s, padding=dil, dilation=dil)
            out = F.relu(_bn(out, sd, f"{p}.bn2"))
            out = _bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                res = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=s), sd, f"{p}.downsample.1")
            else:
                res = x
            x = F.relu(out + res)
        outs.append(x)
    return c1, outs[0], outs[1], outs[3]


def _growing_cat(side5, side1, side2, side3):
    fuse = torch.cat((side5[:, 0:1], side1, side2, side3), 1)
    for i in range(side5.size(1) - 1):
        fuse = torch.cat((fuse, side5[:, i + 1 : i + 2], side1, side2, side3), 1)
    return fuse


def authors_dff_forward(x, sd, k, layers=R50):
    c1, c2, c3, c5 = authors_backbone(x, sd, layers)

    def side(name, feat, stride):
        y = _bn(F.conv2d(feat, sd[f"{name}.0.weight"], sd[f"{name}.0.bias"]), sd, f"{name}.1")
        if stride > 1:
            y = F.conv_transpose2d(y, sd[f"{name}.2.weight"], stride=stride, padding=stride // 2)
        return y

    side1, side2, side3 = side("side1", c1, 1), side("side2", c2, 2), side("side3", c3, 4)
    side5, side5_w = side("side5", c5, 8), side("side5_w", c5, 8)
    w = side5_w
    for i in (1, 2, 3):
        w = _bn(
            F.conv2d(w, sd[f"ada_learner.conv{i}.0.weight"], sd[f"ada_learner.conv{i}.0.bias"]),
            sd,
            f"ada_learner.conv{i}.1",
        )
        if i < 3:
            w = F.relu(w)
    n, _, h, wd = w.shape
    w = w.view(n, k, -1, h, wd)
    fuse = _growing_cat(side5, side1, side2, side3).view(n, k, -1, h, wd)
    return side5, torch.sum(fuse * w, 2), w


def authors_casenet_forward(x, sd, k, layers=R50):
    c1, c2, c3, c5 = authors_backbone(x, sd, layers)

    def side(name, feat, stride):
        y = F.conv2d(feat, sd[f"{name}.0.weight"], sd[f"{name}.0.bias"])
        return F.conv_transpose2d(y, sd[f"{name}.1.weight"], stride=stride, padding=stride // 2)

    side1 = F.conv2d(c1, sd["side1.weight"], sd["side1.bias"])
    side2, side3, side5 = side("side2", c2, 2), side("side3", c3, 4), side("side5", c5, 8)
    fuse = F.conv2d(_growing_cat(side5, side1, side2, side3), sd["fuse.weight"], sd["fuse.bias"], groups=k)
    return side5, fuse


# ---- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dff_checkpoint():
    k = 3
    return k, random_checkpoint(authors_keys("dff", k), seed=1)


def _close(a, b):
    # float32 end to end (float64 convolutions are slow on CPU); a wrong mapping is off by O(1).
    scale = b.abs().max().clamp_min(1e-3)
    torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5 * float(scale))


@pytest.mark.parametrize("size", [(24, 32), (8, 40)])
def test_dff_matches_authors_forward(tmp_path, dff_checkpoint, size):
    k, sd = dff_checkpoint
    path = tmp_path / "checkpoint_200.pth.tar"
    torch.save({"epoch": 200, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    model = load_official_dff(path, num_classes=k, fusion_backend="reference").eval()
    assert isinstance(model, DFF)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref_side5, ref_fuse, ref_w = authors_dff_forward(x, sd, k)
        out = model(x)
    assert ref_fuse.abs().max() > 1e-3  # the check is not vacuous
    _close(out.side5, ref_side5)
    _close(out.weights, ref_w)
    _close(out.fuse, ref_fuse)
    # The lean backend computes the same fusion without the concatenation.
    model.head.fusion.backend = "torch"
    with torch.no_grad():
        _close(model(x).fuse, ref_fuse)


def test_dff_module_prefix_and_bare_dict(dff_checkpoint):
    k, sd = dff_checkpoint
    prefixed = {f"module.{key}": v for key, v in sd.items()}
    a = load_official_dff(prefixed).eval()  # K and depth read from the weights
    assert a.num_classes == k and len(a.backbone.layer3) == 6
    x = torch.randn(2, 3, 24, 32)  # the size of the first parity case: reuses its conv plans
    with torch.no_grad():
        _close(a(x).fuse, authors_dff_forward(x, sd, k)[1])


def test_dff_roundtrip_to_official(dff_checkpoint):
    k, sd = dff_checkpoint
    model = load_official_dff(sd, k)
    back = to_official_state_dict(model)
    expected = {key for key in sd if not key.startswith("pretrained.fc.")}
    assert set(back) == expected
    for key in expected:
        assert torch.equal(back[key], sd[key]), key


def test_dff_checkpoint_errors(dff_checkpoint):
    k, sd = dff_checkpoint
    with pytest.raises(CheckpointMismatchError, match="num_classes=5 but"):
        load_official_dff(sd, 5)
    broken = dict(sd)
    del broken["ada_learner.conv2.1.running_var"]
    broken["side2.2.weight"] = torch.zeros(1, 1, 3, 3)
    broken["side4.0.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        load_official_dff(broken, k)
    msg = str(err.value)
    assert "missing keys (1)" in msg and "head.learner.conv2.1.running_var" in msg
    assert "unexpected keys (1)" in msg and "side4.0.weight" in msg
    assert "shape mismatches (1)" in msg and "head.sides.1.upsample.weight" in msg
    no_side5 = {key: v for key, v in sd.items() if not key.startswith("side5.")}
    with pytest.raises(CheckpointMismatchError, match="side5.0.weight"):
        load_official_dff(no_side5, k)
    with pytest.raises(CheckpointMismatchError, match="layer3 has 0 blocks"):
        load_official_dff({"side5.0.weight": sd["side5.0.weight"]}, k)
    with pytest.raises(FileNotFoundError):
        load_official_dff("/nonexistent/checkpoint.pth.tar", k)


def test_old_checkpoint_without_num_batches_tracked(dff_checkpoint):
    k, sd = dff_checkpoint
    old = {key: v for key, v in sd.items() if not key.endswith("num_batches_tracked")}
    model = load_official_dff(old, k)
    assert isinstance(model, DFF)


def test_convert_reports_unknown_and_dropped(dff_checkpoint):
    _, sd = dff_checkpoint
    converted, unknown, dropped = convert_official_state_dict({**sd, "extra.w": torch.zeros(1)})
    assert unknown == ["extra.w"]
    assert sorted(dropped) == ["pretrained.fc.bias", "pretrained.fc.weight"]
    assert "head.learner.conv3.1.weight" in converted and "backbone.layer4.2.conv3.weight" in converted
    with pytest.raises(ValueError, match="model must be one of"):
        convert_official_state_dict(sd, "fcn")


def test_casenet_matches_authors_forward():
    k = 4
    sd = random_checkpoint(authors_keys("casenet", k), seed=2)
    model = load_official_casenet({"state_dict": sd, "epoch": 1}, k).eval()
    assert isinstance(model, CASENet)
    x = torch.randn(2, 3, 24, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_side5, ref_fuse = authors_casenet_forward(x, sd, k)
        out = model(x)
    _close(out.side5, ref_side5)
    _close(out.fuse, ref_fuse)
    back = to_official_state_dict(model)
    assert set(back) == {key for key in sd if not key.startswith("pretrained.fc.")}
    # The grouped conv splits in two: its weight is the fixed learner's, its bias the fusion's.
    assert torch.equal(model.head.learner.weight, sd["fuse.weight"])
    assert torch.equal(model.head.fusion.bias, sd["fuse.bias"])
    for key in ("fuse.weight", "fuse.bias"):
        assert torch.equal(back[key], sd[key]), key
    converted, unknown, _ = convert_official_state_dict(sd, "casenet")
    assert not unknown and "head.fusion.bias" in converted and "head.learner.bias" not in converted


@pytest.mark.slow
def test_resnet101_depth_is_inferred():
    k = 2
    sd = random_checkpoint(authors_keys("dff", k, R101), seed=4)
    model = load_official_dff(sd).eval()
    assert len(model.backbone.layer3) == 23
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        _close(model(x).fuse, authors_dff_forward(x, sd, k, R101)[1])
