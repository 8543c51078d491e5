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
    torch.testing.assert_close(model.backbone.conv1.weight.grad, ref.backbone.conv1.weight.grad,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compile_inductor_eval():
    torch.manual_seed(2)
    model = create_model("dff", backbone="tiny", num_classes=3).eval()
    compiled = torch.compile(model)
    x = _input(1, 24, 20, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x).fuse, model(x).fuse, rtol=1e-4, atol=1e-5)
