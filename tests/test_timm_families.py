"""A DFF on each timm family of benchmarks/timm_families.py: forward + backward at an odd size,
strides read from feature_info, and the authors' output-stride-8 geometry where timm offers it."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from timm_families import FAMILIES, build  # noqa: E402

pytestmark = pytest.mark.slow  # ~1-3 s per family on 2 cores; the full tier (.ci/run) runs them

CASES = [(f, None) for f in FAMILIES] + [(f, 8) for f in FAMILIES if f.output_stride_8]


@pytest.mark.parametrize(
    ("family", "output_stride"), CASES, ids=[f"{f.model}-os{o or 'default'}" for f, o in CASES]
)
def test_dff_on_timm_family(family, output_stride):
    torch.manual_seed(0)
    # Odd sizes, so every level's rounding meets the head's geometry checks; a few backbones only
    # accept multiples of their own (HRNet's branch fusions, MaxViT's attention grids).
    size = (70, 90) if family.size_multiple == 1 else (2 * family.size_multiple, 3 * family.size_multiple)
    model = build(family, num_classes=3, size=size, output_stride=output_stride)
    strides = list(model.backbone.feature_info.reduction())
    assert len(strides) >= 2 and strides == sorted(strides)
    if output_stride == 8:
        assert max(strides) == 8
    x = torch.randn(2, 3, *size)
    out = model(x)
    assert out.side5.shape == out.fuse.shape == (2, 3, *size)
    assert out.weights.shape == (2, 3, len(strides), *size)
    (out.side5.mean() + out.fuse.mean()).backward()
    head_grads = [p.grad for p in model.head.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
    first = next(p for p in model.backbone.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0  # gradients reach the backbone
