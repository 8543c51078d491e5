"""torch.hub entry points: ``torch.hub.load(<clone or owner/repo>, "dff_resnet50", num_classes=19)``.

Each entry builds the model with :func:`dynfuse.models.create_model` (keyword arguments pass
through: head options such as ``learner="invariant"``, ``pretrained_backbone=<local ImageNet
file>``, ``channels_last=True``) with random head weights, or, with ``weights=<folder or Hub id>``,
loads a model saved with ``save_pretrained`` after checking that it is this entry's architecture.
Nothing is downloaded unless ``weights`` names a Hub repository.

    model = torch.hub.load("/path/to/dynfuse", "dff_resnet50", source="local", num_classes=19)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch.hub lists every public callable here as an entry point: no runtime imports
    from typing import Any

dependencies = ["torch"]


def _entry(model: str, backbone: str, num_classes: int, weights: str | None, **kwargs: Any):
    from dynfuse.models import create_model, from_pretrained

    if weights is None:
        return create_model(model, backbone=backbone, num_classes=num_classes, **kwargs)
    loaded = from_pretrained(weights, **kwargs)
    config = loaded.pretrained_config or {}
    found = (config.get("model"), config.get("backbone"), config.get("num_classes"))
    if found != (model, backbone, num_classes):
        raise ValueError(
            f"weights {weights!r} hold {found[0]} on {found[1]} with {found[2]} classes, not this "
            f"entry's {model} on {backbone} with {num_classes}: load them with "
            "dynfuse.from_pretrained, or pass the matching num_classes"
        )
    return loaded


def dff_resnet50(num_classes: int = 19, *, weights: str | None = None, **kwargs: Any):
    """DFF (the paper's model) on the authors' dilated ResNet-50; 19 classes (Cityscapes) by default."""
    return _entry("dff", "resnet50", num_classes, weights, **kwargs)


def dff_resnet101(num_classes: int = 19, *, weights: str | None = None, **kwargs: Any):
    """DFF on the authors' dilated ResNet-101."""
    return _entry("dff", "resnet101", num_classes, weights, **kwargs)


def casenet_resnet50(num_classes: int = 19, *, weights: str | None = None, **kwargs: Any):
    """CASENet (as the DFF authors reproduced it) on the dilated ResNet-50."""
    return _entry("casenet", "resnet50", num_classes, weights, **kwargs)


def casenet_resnet101(num_classes: int = 19, *, weights: str | None = None, **kwargs: Any):
    """CASENet on the dilated ResNet-101."""
    return _entry("casenet", "resnet101", num_classes, weights, **kwargs)


def dff_tiny(num_classes: int = 19, *, weights: str | None = None, **kwargs: Any):
    """DFF on dynfuse's tiny dilated ResNet (about 0.3 M backbone parameters; CPU demos and tests)."""
    return _entry("dff", "tiny", num_classes, weights, **kwargs)
