"""DFF / CASENet models: any-size forward/backward, Table 1 switches, memory options, builders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynfuse.backbones import FeatureListBackbone, dilated_resnet_tiny
from dynfuse.heads import CASENET_OPTIONS, CASENetHead, DFFHead, DFFOutput, HeadOptions, NoSide5W
from dynfuse.layers import FixedWeights, LocationAdaptiveLearner, LocationInvariantLearner
from dynfuse.models import (
    DFF,
    TABLE1,
    CASENet,
    CheckpointedAdaptiveLearner,
    create_backbone,
    create_model,
    create_table1_model,
    list_models,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _seeded_input(b, h, w, seed=0):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [(32, 32), (37, 29), (9, 14), (1, 1)])
@pytest.mark.parametrize("name", ["dff", "casenet"])
def test_any_size_forward_backward(name, size):
    torch.manual_seed(0)
    model = create_model(name, backbone="tiny", num_classes=3)
    out = model(_seeded_input(2, *size))
    assert isinstance(out, DFFOutput)
    assert out.side5.shape == out.fuse.shape == (2, 3, *size)
    assert torch.isfinite(out.fuse).all() and torch.isfinite(out.side5).all()
    (out.side5.square().mean() + out.fuse.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_params_split_backbone_head():
    model = create_model("dff", backbone="tiny", num_classes=4)
    bb = {id(p) for p in model.backbone.parameters()}
    hd = {id(p) for p in model.head.parameters()}
    assert bb and hd and not (bb & hd)
    assert bb | hd == {id(p) for p in model.parameters()}
    groups = model.param_groups(0.01)
    assert groups[0]["lr"] == 0.01 and groups[1]["lr"] == pytest.approx(0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("row", list(TABLE1))
def test_table1_rows(row):
    torch.manual_seed(1)
    model = create_table1_model(row, backbone="tiny", num_classes=3)
    head = model.head
    if row == "casenet":
        assert isinstance(model, CASENet) and isinstance(head, CASENetHead)
        assert isinstance(head.side5_w, NoSide5W) and isinstance(head.learner, FixedWeights)
        assert all(isinstance(s.norm, nn.Identity) for s in [*head.sides, head.side5])
    else:
        assert isinstance(model, DFF) and isinstance(head, DFFHead)
        options = TABLE1[row][1]
        assert isinstance(options, HeadOptions) and head.options == options
        expected_norm = options.normalize
        for blk in [*head.sides, head.side5]:
            assert isinstance(blk.norm, nn.BatchNorm2d) == expected_norm
        learner_cls = {
            "fixed": FixedWeights,
            "invariant": LocationInvariantLearner,
            "adaptive": LocationAdaptiveLearner,
        }[options.learner]
        assert isinstance(head.learner, learner_cls)
        assert head.activation == options.activation
    out = model(_seeded_input(2, 19, 23))
    weight_shape = {
        FixedWeights: (3, 4),
        LocationInvariantLearner: (2, 3, 4),
        LocationAdaptiveLearner: (2, 3, 4, 19, 23),
    }
    assert tuple(out.weights.shape) == weight_shape[type(head.learner)]
    (out.fuse.mean() + out.side5.mean()).backward()


def test_softmax_switch_changes_only_the_fusion():
    torch.manual_seed(2)
    plain = create_model("dff", backbone="tiny", num_classes=2).eval()
    soft = create_model("dff", backbone="tiny", num_classes=2, activation="softmax").eval()
    soft.load_state_dict(plain.state_dict())
    x = _seeded_input(1, 16, 16)
    with torch.no_grad():
        a, b = plain(x), soft(x)
    torch.testing.assert_close(a.side5, b.side5)
    torch.testing.assert_close(a.weights, b.weights)
    side_maps = torch.cat(
        [blk(f, (16, 16)) for blk, f in zip(plain.head.sides, plain.backbone(x)[:-1], strict=True)], 1
    )
    x_all = torch.cat([a.side5.unsqueeze(2), side_maps.unsqueeze(1).expand(-1, 2, -1, -1, -1)], 2)
    torch.testing.assert_close(b.fuse, (x_all * a.weights.softmax(2)).sum(2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.fuse, (x_all * a.weights).sum(2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_fusion_backends_agree(backend):
    torch.manual_seed(3)
    ref = create_model("dff", backbone="tiny", num_classes=3, fusion_backend="reference").eval()
    other = create_model("dff", backbone="tiny", num_classes=3, fusion_backend=backend).eval()
    other.load_state_dict(ref.state_dict())
    x = _seeded_input(2, 21, 17)
    with torch.no_grad():
        torch.testing.assert_close(other(x).fuse, ref(x).fuse, rtol=1e-5, atol=1e-5)


def _train_step(model, x):
    out = model(x)
    loss = (out.fuse * torch.linspace(-1, 1, out.fuse.numel()).view_as(out.fuse)).sum()
    loss = loss + out.side5.square().mean()
    loss.backward()
    return out, {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_checkpointing_matches_plain_training_step():
    torch.manual_seed(4)
    plain = create_model("dff", backbone="tiny", num_classes=3)
    ckpt = create_model(
        "dff", backbone="tiny", num_classes=3, checkpoint_backbone=True, checkpoint_learner=True
    )
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.checkpointing == {"backbone": True, "learner": True}
    assert isinstance(ckpt.head.learner, CheckpointedAdaptiveLearner)
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    x = _seeded_input(2, 23, 18)
    out_a, grads_a = _train_step(plain, x)
    out_b, grads_b = _train_step(ckpt, x)
    torch.testing.assert_close(out_b.fuse, out_a.fuse)
    for n, g in grads_a.items():
        torch.testing.assert_close(grads_b[n], g, rtol=1e-4, atol=1e-6, msg=n)
    for (n, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, msg=n)  # BN running stats updated once
    ckpt.set_checkpointing(backbone=False, learner=False)
    assert ckpt.checkpointing == {"backbone": False, "learner": False}
    assert type(ckpt.head.learner) is LocationAdaptiveLearner


def test_channels_last_matches():
    torch.manual_seed(5)
    plain = create_model("dff", backbone="tiny", num_classes=3)
    cl = create_model("dff", backbone="tiny", num_classes=3, channels_last=True)
    cl.load_state_dict(plain.state_dict())
    assert cl.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = _seeded_input(2, 24, 20)
    out_a, grads_a = _train_step(plain, x)
    out_b, grads_b = _train_step(cl, x)
    scale = float(out_a.fuse.detach().abs().max())
    torch.testing.assert_close(out_b.fuse, out_a.fuse, rtol=1e-4, atol=1e-5 * scale)
    # Different summation orders; conv biases in front of a BatchNorm have a zero gradient up to
    # rounding noise, so tolerances are relative to the largest gradient of the model.
    gmax = max(float(g.abs().max()) for g in grads_a.values())
    for n, g in grads_a.items():
        torch.testing.assert_close(grads_b[n], g, rtol=1e-3, atol=1e-4 * gmax, msg=n)


def test_learner_at_top_resolution():
    torch.manual_seed(6)
    full = create_model("dff", backbone="tiny", num_classes=3)
    top = create_model("dff", backbone="tiny", num_classes=3, learner_resolution="top")
    assert top.head.side5_w.upsample is None  # Side5-w stays at the top level's resolution
    n_full = sum(p.numel() for p in full.head.parameters())
    n_top = sum(p.numel() for p in top.head.parameters())
    assert n_top < n_full  # no dense (4K x 4K x 16 x 16) deconvolution
    out = top(_seeded_input(2, 29, 35))
    assert out.weights.shape == (2, 3, 4, 29, 35)
    out.fuse.mean().backward()


def test_bf16_autocast_forward_backward():
    torch.manual_seed(7)
    model = create_model("dff", backbone="tiny", num_classes=3)
    x = _seeded_input(2, 20, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.fuse.dtype == torch.bfloat16 and out.fuse.shape == (2, 3, 20, 28)
    assert torch.isfinite(out.fuse.float()).all()
    with torch.no_grad():
        want = model(x)  # fp32 run of the same weights
    scale = float(want.fuse.abs().max())
    torch.testing.assert_close(out.fuse.float(), want.fuse, rtol=0.05, atol=0.05 * scale)
    out.fuse.float().mean().backward()
    assert model.backbone.conv1.weight.grad is not None


def test_feature_list_backbone_in_dff():
    class Pyramid(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.b = nn.Conv2d(8, 12, 3, stride=2, padding=1)
            self.c = nn.Conv2d(12, 16, 3, stride=2, padding=1)

        def forward(self, x):
            a = torch.relu(self.a(x))
            b = torch.relu(self.b(a))
            return [a, b, torch.relu(self.c(b))]

    model = create_model("dff", backbone=FeatureListBackbone(Pyramid()), num_classes=2)
    assert model.head.strides == (2, 4, 8) and model.head.num_sides == 2
    out = model(_seeded_input(2, 30, 22))
    assert out.fuse.shape == (2, 2, 30, 22) and out.weights.shape == (2, 2, 3, 30, 22)


def test_timm_backbone_in_dff():
    pytest.importorskip("timm")
    torch.manual_seed(8)
    model = create_model("dff", backbone="timm:resnet18", num_classes=2, checkpoint_backbone=True)
    assert model.head.strides == (2, 4, 8, 32)
    out = model(_seeded_input(2, 45, 38))
    assert out.fuse.shape == (2, 2, 45, 38)
    out.fuse.mean().backward()
    assert model.checkpointing["backbone"]


def test_pretrained_tiny_backbone(tmp_path):
    torch.manual_seed(9)
    src = dilated_resnet_tiny()
    torch.save(src.state_dict(), tmp_path / "tiny.pth")
    model = create_model("dff", backbone="tiny", num_classes=2, pretrained_backbone=tmp_path / "tiny.pth")
    for (k, a), b in zip(src.state_dict().items(), model.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_builder_errors():
    assert list_models() == ["casenet", "dff"]
    with pytest.raises(ValueError, match="unknown model"):
        create_model("fcn", backbone="tiny", num_classes=2)
    with pytest.raises(ValueError, match="unknown backbone"):
        create_model("dff", backbone="vgg", num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        create_model("dff", backbone="tiny", num_classes=0)
    with pytest.raises(ValueError, match="apply to DFF only"):
        create_model("casenet", backbone="tiny", num_classes=2, learner="adaptive")
    with pytest.raises(ValueError, match="location-adaptive learner"):
        create_model("dff", backbone="tiny", num_classes=2, learner="invariant", checkpoint_learner=True)
    with pytest.raises(ValueError, match="learner must be one of"):
        create_model("dff", backbone="tiny", num_classes=2, learner="global")
    with pytest.raises(ValueError, match="unknown Table 1 row"):
        create_table1_model("row 7", backbone="tiny", num_classes=2)
    with pytest.raises(TypeError, match="feature_info"):
        DFF(nn.Conv2d(3, 3, 1), 2)
    with pytest.raises(ValueError, match="pretrained_backbone cannot"):
        create_backbone(dilated_resnet_tiny(), pretrained={})
    with pytest.raises(ValueError, match="set_grad_checkpointing"):
        DFF(
            FeatureListBackbone(nn.Conv2d(3, 4, 1), [4, 4], [1, 1], indices=(0, 0)),
            2,
            checkpoint_backbone=True,
        )


def test_bad_images_raise():
    model = create_model("dff", backbone="tiny", num_classes=2)
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        model([1, 2])
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.randn(1, 1, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_training_reduces_loss_quickly():
    """A few SGD steps on a fixed synthetic target lower the loss (the model can learn)."""
    torch.manual_seed(10)
    model = create_model("dff", backbone="tiny", num_classes=2)
    opt = torch.optim.SGD(model.param_groups(0.05), momentum=0.9)
    x = _seeded_input(4, 24, 24)
    target = torch.zeros(4, 2, 24, 24)
    target[:, 0, :, 12] = 1
    target[:, 1, 12, :] = 1
    losses = []
    for _ in range(15):
        out = model(x)
        loss = sum(nn.functional.binary_cross_entropy_with_logits(o, target) for o in out[:2])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_timm_backbone_local_weights(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(11)
    src = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    model = create_model("dff", backbone="timm:resnet18", num_classes=2, pretrained_backbone=path)
    ours = model.backbone.body.state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(ours[key], src.state_dict()[key]), key


def test_models_are_built_from_head_options():
    opts = HeadOptions(learner="invariant", fusion_backend="torch")
    a = create_model("dff", backbone="tiny", num_classes=2, options=opts)
    b = create_model("dff", backbone="tiny", num_classes=2, learner="invariant", fusion_backend="torch")
    c = DFF(dilated_resnet_tiny(), 2, options=opts)
    assert a.head.options == b.head.options == c.head.options == opts
    # Fields given beside options override them (create_table1_model relies on it).
    d = create_table1_model("+location-invariant", backbone="tiny", num_classes=2, fusion_backend="torch")
    assert d.head.options == opts
    assert create_model("casenet", backbone="tiny", num_classes=2).head.options == CASENET_OPTIONS
    dff_row = TABLE1["+location-adaptive"]
    assert dff_row.options == HeadOptions() and dff_row.mf_ods == 80.4
    model, options, _ = TABLE1["casenet"]  # rows unpack like the (model, options) pairs they were
    assert (model, options) == ("casenet", CASENET_OPTIONS)


def test_create_model_option_errors_are_value_errors():
    # dynfuse-train turns these into one-line CLI errors (--model-kw).
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['learnr'\] for DFF: head options are"):
        create_model("dff", backbone="tiny", num_classes=2, learnr="fixed")
    with pytest.raises(ValueError, match="model options"):
        create_model("casenet", backbone="tiny", num_classes=2, checkpoint_backbon=True)
    with pytest.raises(ValueError, match="normalize must be True or False"):
        create_model("dff", backbone="tiny", num_classes=2, normalize="false")
    with pytest.raises(ValueError, match="learner must be one of"):
        create_model("dff", backbone="tiny", num_classes=2, learner="bogus")
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 2.5"):
        create_model("dff", backbone="tiny", num_classes=2.5)
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 2.5"):
        DFF(dilated_resnet_tiny(), 2.5)
    with pytest.raises(ValueError, match="location-adaptive learner, this head has FixedWeights"):
        create_model("casenet", backbone="tiny", num_classes=2, checkpoint_learner=True)


def test_image_dtype_mismatch_is_named():
    model = create_model("dff", backbone="tiny", num_classes=2)
    with pytest.raises(
        TypeError, match="images has dtype torch.float64 but the model's parameters are torch.float32"
    ):
        model(torch.randn(1, 3, 16, 16, dtype=torch.float64))


@pytest.mark.parametrize("name", ["dff", "casenet"])
def test_version1_model_state_loads(name):
    # A model state dict in the version-1 layout (fixed fusion bias at head.learner.bias).
    torch.manual_seed(12)
    kwargs = {"learner": "fixed"} if name == "dff" else {}
    model = create_model(name, backbone="tiny", num_classes=2, **kwargs)
    state = model.state_dict()
    old = {("head.learner.bias" if k == "head.fusion.bias" else k): v for k, v in state.items()}
    fresh = create_model(name, backbone="tiny", num_classes=2, **kwargs)
    fresh.load_state_dict(old)  # no metadata: the head goes by the keys
    assert torch.equal(fresh.head.fusion.bias, model.head.fusion.bias)
