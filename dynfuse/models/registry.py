"""Model builders by name: ``create_model("dff" | "casenet", backbone=..., num_classes=...)``.

Backbone names: "resnet50", "resnet101" (the authors' dilated ResNets), "tiny" (a small CPU-friendly
one with the same topology), "timm:<model name>" (any timm features_only model), or an ``nn.Module``
with a ``feature_info``. ``TABLE1`` maps each row of the paper's ablation (Table 1) to its model and
:class:`~dynfuse.heads.HeadOptions`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from torch import nn

# create_backbone lives in dynfuse.backbones; it stays importable from here.
from ..backbones.factory import BackboneSource as Source
from ..backbones.factory import create_backbone, list_backbones
from ..heads import CASENET_OPTIONS, HeadOptions
from .edge import DFF, MODEL_OPTIONS, CASENet, EdgeModel
from .pretrained import from_pretrained

__all__ = [
    "TABLE1",
    "Table1Row",
    "create_backbone",
    "create_model",
    "create_table1_model",
    "list_backbones",
    "list_models",
    "register_model",
]

_MODELS: dict[str, Callable[..., EdgeModel]] = {}


class Table1Row(NamedTuple):
    """One row of the paper's Table 1: the registered model, its head options and the paper's score."""

    model: str
    options: HeadOptions
    mf_ods: float  # mean MF-ODS (%), Cityscapes, ResNet-50, as printed in the paper


# The paper's Table 1 (Cityscapes, ResNet-50, mean MF-ODS %).
TABLE1: dict[str, Table1Row] = {
    "casenet": Table1Row("casenet", CASENET_OPTIONS, 78.4),  # reproduced baseline
    "+normalizer": Table1Row("dff", HeadOptions(learner="fixed"), 78.7),
    "+location-invariant": Table1Row("dff", HeadOptions(learner="invariant"), 79.1),
    "+location-adaptive+softmax": Table1Row("dff", HeadOptions(activation="softmax"), 80.1),
    "+location-adaptive": Table1Row("dff", HeadOptions(), 80.4),  # DFF
    "location-adaptive-no-normalizer": Table1Row("dff", HeadOptions(normalize=False), 78.9),
}


def register_model(name: str) -> Callable[[Callable[..., EdgeModel]], Callable[..., EdgeModel]]:
    """Decorator adding a builder ``fn(**kwargs) -> EdgeModel`` under ``name`` (lower case)."""

    def deco(fn: Callable[..., EdgeModel]) -> Callable[..., EdgeModel]:
        key = name.lower()
        if key in _MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Registered model names."""
    return sorted(_MODELS)


def create_model(
    name: str,
    *,
    backbone: str | nn.Module = "resnet50",
    num_classes: int,
    pretrained_backbone: Source = None,
    options: HeadOptions | None = None,
    **kwargs: Any,
) -> EdgeModel:
    """Build a registered model: ``EdgeModel(backbone, head)`` with the head made from ``options``.

    Args:
        name: "dff" or "casenet" (or anything registered with :func:`register_model`).
        backbone: "resnet50", "resnet101", "tiny", "timm:<name>" or an nn.Module with feature_info.
        num_classes: K.
        pretrained_backbone: local backbone weights (see :func:`create_backbone`); never downloads.
        options: a :class:`~dynfuse.heads.HeadOptions` (default: the model's own, DFF's or CASENet's).
        **kwargs: :class:`~dynfuse.heads.HeadOptions` fields applied on top of ``options``
            (``learner``, ``normalize``, ``activation``, ``upsample``, ``learner_resolution``,
            ``fusion_backend``) and the model options ``norm_layer``, ``checkpoint_backbone``,
            ``checkpoint_learner``, ``channels_last``. An unknown or invalid one is a ValueError.

    Example: ``create_model("dff", backbone="tiny", num_classes=19, learner="invariant")``.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {list_models()}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if options is not None:
        kwargs["options"] = options
    return _MODELS[key](
        backbone=backbone, num_classes=num_classes, pretrained_backbone=pretrained_backbone, **kwargs
    )


# ``create_model.from_pretrained(dir)`` reads like the builder it mirrors (see dynfuse.models.pretrained).
create_model.from_pretrained = from_pretrained  # type: ignore[attr-defined]


def create_table1_model(row: str, **kwargs: Any) -> EdgeModel:
    """Build the model of one row of the paper's Table 1 (keys of :data:`TABLE1`).

    ``kwargs`` go to :func:`create_model` (``num_classes`` is required); head option fields among
    them override the row's options (e.g. ``fusion_backend="torch"``).
    """
    if row not in TABLE1:
        raise ValueError(f"unknown Table 1 row {row!r}; rows: {list(TABLE1)}")
    entry = TABLE1[row]
    return create_model(entry.model, options=entry.options, **kwargs)


def _build(cls: type[DFF] | type[CASENet]) -> Callable[..., EdgeModel]:
    def build(
        *,
        backbone: str | nn.Module,
        num_classes: int,
        pretrained_backbone: Source = None,
        norm_layer: Callable[[int], nn.Module] | None = None,
        **kwargs: Any,
    ) -> EdgeModel:
        model_kw = {k: kwargs.pop(k) for k in MODEL_OPTIONS if k in kwargs}
        # Checked before building the backbone, which may be large.
        options = cls.resolve_options(**kwargs)
        bb = create_backbone(backbone, pretrained=pretrained_backbone, norm_layer=norm_layer)
        return cls(bb, num_classes, options=options, norm_layer=norm_layer, **model_kw)

    return build


register_model("dff")(_build(DFF))
register_model("casenet")(_build(CASENet))
