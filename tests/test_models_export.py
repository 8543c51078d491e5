"""Export: ONNX (checked under onnxruntime) and torch.compile of whole models."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from dynfuse.models import create_model, export_onnx, fusion_backend

pytestmark = pytest.mark.usefixtures("one_thread")


def _input(b, h, w, seed):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["dff", "casenet"])
def test_onnx_matches_pytorch(name):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = create_model(name, backbone="tiny", num_classes=3)
    # Non-trivial BN statistics so eval mode is not an identity normalisation.
    with torch.no_grad():
        for _ in range(2):
            model(_input(2, 29, 35, seed=1))
    buf = io.BytesIO()
    export_onnx(model, buf, (29, 35), batch_size=2)
    assert model.training  # mode restored
    model.eval()
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    names = ["side5", "fuse"] + (["weights"] if name == "dff" else [])
    assert [o.name for o in sess.get_outputs()] == names
    for batch in (2, 1, 3):  # dynamic batch
        x = _input(batch, 29, 35, seed=batch)
        with torch.no_grad():
            ref = model(x)
        got = sess.run(None, {"images": x.numpy()})
        for g, r in zip(got, ref[: len(names)], strict=True):
            np.testing.assert_allclose(g, r.numpy(), rtol=1e-4, atol=1e-5)


def test_onnx_export_to_file_and_errors(tmp_path):
    pytest.importorskip("onnx")
    model = create_model("dff", backbone="tiny", num_classes=2).eval()
    path = tmp_path / "dff.onnx"
    export_onnx(model, path, (16, 24), dynamic_batch=False)
    assert path.stat().st_size > 10_000
    assert not model.training
    with pytest.raises(ValueError, match="image_size"):
        export_onnx(model, path, (16,))
    with pytest.raises(TypeError, match="nn.Module"):
        export_onnx(object(), path, (16, 16))


def test_fusion_backend_context_restores():
    model = create_model("dff", backbone="tiny", num_classes=2, fusion_backend="torch")
    with fusion_backend(model, "reference"):
        assert model.head.fusion.backend == "reference"
    assert model.head.fusion.backend == "torch"


def test_compile_whole_model_single_graph():
    """The whole model (backbone, head, fusion op) captures as one graph and trains."""
    torch.manual_seed(1)
    model = create_model("dff", backbone="tiny", num_classes=3)
    ref = create_model("dff", backbone="tiny", num_classes=3)
    ref.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = _input(2, 21, 26, seed=2)
    out, want = compiled(x), ref(x)
    torch.testing.assert_close(out.fuse, want.fuse, rtol=1e-5, atol=1e-5)
    (out.fuse.mean() + out.side5.mean()).backward()
    (want.fuse.mean() + want.side5.mean()).backward()
    torch.testing.assert_close(
        model.backbone.conv1.weight.grad, ref.backbone.conv1.weight.grad, rtol=1e-4, atol=1e-6
    )


@pytest.mark.slow
def test_compile_inductor_eval():
    torch.manual_seed(2)
    model = create_model("dff", backbone="tiny", num_classes=3).eval()
    compiled = torch.compile(model)
    x = _input(1, 24, 20, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x).fuse, model(x).fuse, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- any image size (issue 11 item 5)
# Sizes an export at EXPORT_SIZE must serve: multiples of 8, odd ones, smaller than the largest
# stride, taller than wide and the reverse.
EXPORT_SIZE = (48, 64)
OTHER_SIZES = [(48, 64), (32, 40), (29, 35), (33, 17), (5, 7), (1, 1)]


class _FloorLevels(torch.nn.Module):
    """Levels at strides 1/2/4/8 made by unpadded pooling, which rounds odd sizes down (the
    heads then resize their upsampled maps instead of cropping them)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.top = torch.nn.Conv2d(4, 6, 1)

    def forward(self, x):
        f = torch.relu(self.stem(x))
        pool = torch.nn.functional.avg_pool2d  # kernel = stride, no padding: floor(H / stride)
        return [f, pool(f, 2), pool(f, 4), self.top(pool(f, 8))]


def _floor_backbone():
    from dynfuse.backbones import FeatureListBackbone

    return FeatureListBackbone(_FloorLevels(), channels=[4, 4, 4, 6], reductions=[1, 2, 4, 8])


def _check_sizes(model, names, sizes, ort):
    buf = io.BytesIO()
    export_onnx(model, buf, EXPORT_SIZE)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == names
    for i, (h, w) in enumerate(sizes):
        x = _input(2, h, w, seed=10 + i)
        with torch.no_grad():
            ref = model(x)
        got = sess.run(None, {"images": x.numpy()})
        for name, g, r in zip(names, got, ref, strict=False):
            assert g.shape == tuple(r.shape), (name, h, w)
            np.testing.assert_allclose(g, r.numpy(), rtol=1e-4, atol=1e-5, err_msg=f"{name} at {h}x{w}")


@pytest.mark.parametrize(
    ("name", "kwargs", "names"),
    [
        ("dff", {}, ["side5", "fuse", "weights"]),
        ("dff", {"learner": "invariant"}, ["side5", "fuse", "weights"]),
        ("dff", {"learner": "fixed"}, ["side5", "fuse"]),
        ("casenet", {}, ["side5", "fuse"]),
        ("dff", {"learner_resolution": "top", "upsample": "bilinear"}, ["side5", "fuse", "weights"]),
    ],
    ids=["adaptive", "invariant", "fixed", "casenet", "top-bilinear"],
)
def test_onnx_any_image_size(name, kwargs, names):
    """One export (at 48x64) runs at every size, odd ones too, with the model's outputs. Before,
    the graph took only the export size ('Got invalid dimensions for input: images'), and with H, W
    merely declared dynamic the crop sizes stayed constants of the graph, so 29x35 failed ('Non
    concat axis dimensions must match')."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(3)
    model = create_model(name, backbone="tiny", num_classes=3, **kwargs)
    with torch.no_grad():
        model(_input(2, 29, 35, seed=1))  # non-trivial BN statistics
    model.eval()
    _check_sizes(model, names, OTHER_SIZES, ort)


def test_onnx_any_image_size_levels_rounded_down():
    """A backbone whose levels round odd sizes down: the heads resize instead of cropping, and the
    exported graph does the same at every size."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(4)
    from dynfuse.models import DFF

    model = DFF(_floor_backbone(), 2).eval()
    _check_sizes(model, ["side5", "fuse", "weights"], [(48, 64), (29, 35), (33, 17), (12, 9)], ort)


def test_onnx_fixed_size_on_request():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = create_model("casenet", backbone="tiny", num_classes=2).eval()
    buf = io.BytesIO()
    export_onnx(model, buf, (16, 24), dynamic_size=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    sess.run(None, {"images": _input(1, 16, 24, seed=0).numpy()})
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        sess.run(None, {"images": _input(1, 24, 16, seed=0).numpy()})


def test_fit_to_size_crops_the_long_side_then_resizes_the_short_one():
    """A map longer than the target on one side and shorter on the other: the long side is cropped
    (as every overshooting deconvolution output is) and only then the short side resized, which is
    what the traced form used by the exporter (crop, then resize) computes."""
    from dynfuse.layers.side_norm import fit_to_size

    x = torch.randn(1, 2, 6, 3, generator=torch.Generator().manual_seed(0))
    got = fit_to_size(x, (5, 4))
    want = torch.nn.functional.interpolate(x[..., :5, :], size=(5, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert fit_to_size(x, (6, 3)) is x
    torch.testing.assert_close(fit_to_size(x, (4, 2)), x[..., :4, :2], rtol=0, atol=0)


def test_onnx_any_image_size_timm_backbone():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("timm")
    torch.manual_seed(5)
    model = create_model("dff", backbone="timm:resnet18", num_classes=2).eval()
    _check_sizes(model, ["side5", "fuse", "weights"], [(48, 64), (45, 77), (33, 17)], ort)
