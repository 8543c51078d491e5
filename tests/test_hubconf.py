"""hubconf.py: torch.hub.load(<local clone>, entry, source="local") builds and loads the models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from dynfuse.models import DFF, CASENet

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = str(Path(__file__).resolve().parents[1])
ENTRIES = {
    "dff_resnet50": (DFF, "resnet50"),
    "dff_resnet101": (DFF, "resnet101"),
    "casenet_resnet50": (CASENet, "resnet50"),
    "casenet_resnet101": (CASENet, "resnet101"),
    "dff_tiny": (DFF, "tiny"),
}


def test_entries():
    """The entry points torch.hub.list would show (it reads only GitHub repos): public callables."""
    spec = importlib.util.spec_from_file_location("hubconf", Path(ROOT) / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")]
    assert sorted(entries) == sorted(ENTRIES)
    assert hubconf.dependencies == ["torch"]


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_load_builds_the_model(entry):
    cls, backbone = ENTRIES[entry]
    with torch.device("meta"):  # the architecture, without allocating ResNet-101's weights
        model = torch.hub.load(ROOT, entry, source="local", num_classes=19)
    assert type(model) is cls and model.num_classes == 19
    assert model.backbone.build_config["name"] == backbone
    assert model.head.options == cls.head_class.default_options()


def test_load_passes_options_and_runs():
    model = torch.hub.load(ROOT, "dff_tiny", source="local", num_classes=3, learner="invariant").eval()
    assert model.head.options.learner == "invariant"
    with torch.no_grad():
        out = model(torch.randn(1, 3, 21, 30))
    assert out.fuse.shape == (1, 3, 21, 30)
    assert torch.hub.load(ROOT, "dff_tiny", source="local").num_classes == 19  # Cityscapes default


def test_load_weights_from_a_pretrained_folder(tmp_path):
    torch.manual_seed(0)
    model = torch.hub.load(ROOT, "dff_tiny", source="local", num_classes=2)
    with torch.no_grad():
        model(torch.randn(2, 3, 24, 24))  # BN statistics
    model.eval().save_pretrained(tmp_path)
    loaded = torch.hub.load(ROOT, "dff_tiny", source="local", num_classes=2, weights=str(tmp_path))
    x = torch.randn(1, 3, 19, 23)
    with torch.no_grad():
        assert torch.equal(loaded(x).fuse, model(x).fuse)
    with pytest.raises(ValueError, match="not this entry's dff on tiny with 19"):
        torch.hub.load(ROOT, "dff_tiny", source="local", weights=str(tmp_path))
    with pytest.raises(ValueError, match="not this entry's casenet on resnet50"):
        torch.hub.load(ROOT, "casenet_resnet50", source="local", num_classes=2, weights=str(tmp_path))
