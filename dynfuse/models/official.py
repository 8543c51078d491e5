"""Load the DFF authors' checkpoints (Lavender105/DFF) into our models.

The authors' ``DFF`` module (``exps/models/dff.py``) names its parts ``pretrained`` (the dilated
ResNet, torchvision names, including an unused ``fc`` classifier), ``side1`` = Sequential(conv, BN),
``side2``/``side3``/``side5``/``side5_w`` = Sequential(conv, BN, deconv), and ``ada_learner`` with
``conv1``/``conv2``/``conv3`` = Sequential(conv, BN[, ReLU]). Their ``CaseNet`` has ``side1`` = a bare
conv, ``side2``/``side3``/``side5`` = Sequential(conv, deconv) and ``fuse`` = a grouped 1x1 conv.
Training saved ``{"epoch", "state_dict", "optimizer"}`` with ``model.module.state_dict()``; other
copies carry a ``module.`` prefix. Their forward is, per class k, the concatenation (side5_k, side1,
side2, side3) -- the same order as ours -- so the weights map one to one, and our model's outputs equal
theirs wherever theirs are defined (inputs whose sides are multiples of 8).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import TypedDict

import torch

from ..backbones.loading import read_state_dict
from ..backbones.resnet import dilated_resnet50, dilated_resnet101
from ..checkpoints import CheckpointMismatchError, load_state_checked, strip_module_prefix
from .edge import DFF, CASENet

__all__ = [
    "convert_official_state_dict",
    "describe_official_state_dict",
    "load_official_casenet",
    "load_official_dff",
    "to_official_state_dict",
]

# (authors' pattern, our replacement); the first match wins.
_DFF_RULES: tuple[tuple[str, str], ...] = (
    (r"^pretrained\.", "backbone."),
    (r"^side([123])\.0\.", "head.sides.{i}.conv."),
    (r"^side([123])\.1\.", "head.sides.{i}.norm."),
    (r"^side([23])\.2\.", "head.sides.{i}.upsample."),
    (r"^side5\.0\.", "head.side5.conv."),
    (r"^side5\.1\.", "head.side5.norm."),
    (r"^side5\.2\.", "head.side5.upsample."),
    (r"^side5_w\.0\.", "head.side5_w.conv."),
    (r"^side5_w\.1\.", "head.side5_w.norm."),
    (r"^side5_w\.2\.", "head.side5_w.upsample."),
    (r"^ada_learner\.(conv[123]\.[01]\.)", "head.learner.{g}"),
)
_CASENET_RULES: tuple[tuple[str, str], ...] = (
    (r"^pretrained\.", "backbone."),
    (r"^side1\.(weight|bias)$", "head.sides.0.conv.{g}"),
    (r"^side([23])\.0\.", "head.sides.{i}.conv."),
    (r"^side([23])\.1\.", "head.sides.{i}.upsample."),
    (r"^side5\.0\.", "head.side5.conv."),
    (r"^side5\.1\.", "head.side5.upsample."),
    # The grouped 1x1 conv: its weight is the fixed learner's, its bias the fusion's.
    (r"^fuse\.weight$", "head.learner.weight"),
    (r"^fuse\.bias$", "head.fusion.bias"),
)
_RULES = {"dff": _DFF_RULES, "casenet": _CASENET_RULES}


def _rename(key: str, rules: tuple[tuple[str, str], ...]) -> str | None:
    for pattern, repl in rules:
        m = re.match(pattern, key)
        if m is None:
            continue
        group = m.group(1) if m.groups() else ""
        new = repl.format(i=int(group) - 1 if group.isdigit() else "", g=group)
        return new + key[m.end() :]
    return None


def convert_official_state_dict(
    state: Mapping[str, torch.Tensor], model: str = "dff"
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Rename the authors' keys to ours.

    Returns ``(converted, unknown, dropped)``: ``unknown`` are keys no rule matches (reported as
    unexpected when loading), ``dropped`` the backbone's ImageNet classifier (``pretrained.fc.*``),
    which the edge model never uses. A ``module.`` prefix on every key is removed first.
    """
    if model not in _RULES:
        raise ValueError(f"model must be one of {sorted(_RULES)}, got {model!r}")
    state = strip_module_prefix(state)
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    dropped: list[str] = []
    for key, value in state.items():
        if key.startswith("pretrained.fc."):
            dropped.append(key)
            continue
        new = _rename(key, _RULES[model])
        if new is None:
            unknown.append(key)
            converted[key] = value  # kept under its own name, so the loader lists it as unexpected
        else:
            converted[new] = value
    return converted, unknown, dropped


def to_official_state_dict(model: DFF | CASENet) -> dict[str, torch.Tensor]:
    """Our model's state dict under the authors' key names (the inverse of the conversion)."""
    kind = "casenet" if isinstance(model, CASENet) else "dff"
    ours = model.state_dict()
    return {theirs: ours[mine] for theirs, mine in _official_key_candidates(ours, kind).items()}


def _official_key_candidates(our_keys: Iterable[str], kind: str) -> dict[str, str]:
    """Map each of our keys to the authors' name by trying the inverse of each rule."""
    inv_rules: list[tuple[str, str]] = []
    if kind == "dff":
        inv_rules = [
            (r"^backbone\.", "pretrained."),
            (r"^head\.sides\.(\d)\.conv\.", "side{n}.0."),
            (r"^head\.sides\.(\d)\.norm\.", "side{n}.1."),
            (r"^head\.sides\.(\d)\.upsample\.", "side{n}.2."),
            (r"^head\.side5\.conv\.", "side5.0."),
            (r"^head\.side5\.norm\.", "side5.1."),
            (r"^head\.side5\.upsample\.", "side5.2."),
            (r"^head\.side5_w\.conv\.", "side5_w.0."),
            (r"^head\.side5_w\.norm\.", "side5_w.1."),
            (r"^head\.side5_w\.upsample\.", "side5_w.2."),
            (r"^head\.learner\.", "ada_learner."),
        ]
    else:
        inv_rules = [
            (r"^backbone\.", "pretrained."),
            (r"^head\.sides\.0\.conv\.", "side1."),
            (r"^head\.sides\.(\d)\.conv\.", "side{n}.0."),
            (r"^head\.sides\.(\d)\.upsample\.", "side{n}.1."),
            (r"^head\.side5\.conv\.", "side5.0."),
            (r"^head\.side5\.upsample\.", "side5.1."),
            (r"^head\.learner\.", "fuse."),
            (r"^head\.fusion\.", "fuse."),
        ]
    out = {}
    for key in our_keys:
        for pattern, repl in inv_rules:
            m = re.match(pattern, key)
            if m is None:
                continue
            n = int(m.group(1)) + 1 if m.groups() else 0
            out[repl.format(n=n) + key[m.end() :]] = key
            break
        else:
            raise ValueError(f"no authors' name for parameter {key!r}")
    return out


def _infer_depth(state: Mapping[str, torch.Tensor]) -> str:
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^pretrained\.layer3\.(\d+)\.", k))}
    depth = {6: "resnet50", 23: "resnet101"}.get(len(blocks))
    if depth is None:
        raise CheckpointMismatchError(
            f"cannot tell the backbone from the checkpoint: layer3 has {len(blocks)} blocks "
            "(ResNet-50 has 6, ResNet-101 has 23); is this an authors' DFF/CASENet checkpoint?"
        )
    return depth


def _infer_classes(state: Mapping[str, torch.Tensor], num_classes: int | None) -> int:
    w = state.get("side5.0.weight")
    if w is None:
        raise CheckpointMismatchError(
            "checkpoint has no 'side5.0.weight' (the Side5 classifier); is this an authors' "
            "DFF/CASENet checkpoint?"
        )
    found = int(w.shape[0])
    if num_classes is not None and int(num_classes) != found:
        raise CheckpointMismatchError(
            f"num_classes={num_classes} but the checkpoint's side5.0.weight has {found} classes "
            f"(shape {tuple(w.shape)})"
        )
    return found


def _load_official(
    kind: str,
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    num_classes: int | None,
    backbone: str | None,
    map_location: str | torch.device,
    model_kwargs: dict,
) -> DFF | CASENet:
    state = read_state_dict(source, map_location=map_location)  # unwrapped, prefix stripped
    depth = backbone or _infer_depth(state)
    builders = {"resnet50": dilated_resnet50, "resnet101": dilated_resnet101}
    if depth not in builders:
        raise ValueError(f"backbone must be one of {sorted(builders)} or None, got {depth!r}")
    k = _infer_classes(state, num_classes)
    cls = DFF if kind == "dff" else CASENet
    model = cls(builders[depth](), k, **model_kwargs)
    converted, _unknown, _dropped = convert_official_state_dict(state, kind)
    load_state_checked(model, converted, what=f"authors' {kind.upper()} checkpoint (renamed)")
    return model


def load_official_dff(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    num_classes: int | None = None,
    *,
    backbone: str | None = None,
    map_location: str | torch.device = "cpu",
    fusion_backend: str = "auto",
    **model_kwargs,
) -> DFF:
    """Build our :class:`DFF` from an authors' checkpoint (path or state dict).

    Accepts ``{"epoch", "state_dict", "optimizer"}`` or a bare state dict, with or without a
    ``module.`` prefix. The backbone depth (ResNet-50/101) and K are read from the weights;
    ``num_classes`` is checked against them. ``pretrained.fc.*`` (the unused ImageNet classifier) is
    dropped; missing ``num_batches_tracked`` buffers are tolerated. Any other missing, unexpected or
    mis-shaped key raises :class:`~dynfuse.backbones.CheckpointMismatchError` listing all of them.
    The model comes back in training mode, like any freshly built module; call ``.eval()`` to
    predict. Extra keyword arguments go to :class:`DFF` (e.g. ``checkpoint_backbone=True``).
    """
    model = _load_official(
        "dff",
        source,
        num_classes,
        backbone,
        map_location,
        dict(fusion_backend=fusion_backend, **model_kwargs),
    )
    assert isinstance(model, DFF)
    return model


def load_official_casenet(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    num_classes: int | None = None,
    *,
    backbone: str | None = None,
    map_location: str | torch.device = "cpu",
    fusion_backend: str = "auto",
    **model_kwargs,
) -> CASENet:
    """Build our :class:`CASENet` from the authors' CASENet checkpoint; see :func:`load_official_dff`."""
    model = _load_official(
        "casenet",
        source,
        num_classes,
        backbone,
        map_location,
        dict(fusion_backend=fusion_backend, **model_kwargs),
    )
    assert isinstance(model, CASENet)
    return model


class OfficialCheckpointInfo(TypedDict):
    """What :func:`describe_official_state_dict` finds in an authors' checkpoint."""

    model: str  # "dff" | "casenet"
    backbone: str  # "resnet50" | "resnet101"
    num_classes: int


def describe_official_state_dict(state: Mapping[str, torch.Tensor]) -> OfficialCheckpointInfo | None:
    """What an authors' checkpoint holds, or None when ``state`` does not have their key layout.

    Args:
        state: a state dict with any ``module.`` prefix already removed.

    Returns:
        ``{"model": "dff" | "casenet", "backbone": "resnet50" | "resnet101", "num_classes": K}``
        when the keys are the authors' (``pretrained.*`` backbone, ``side5.0.weight``, and
        ``ada_learner.*`` for DFF or ``fuse.weight`` for CASENet), else None. Our own models'
        state dicts (``backbone.*``, ``head.*``) are never taken for theirs.

    Raises:
        CheckpointMismatchError: the layout is the authors' but the backbone depth is neither
            ResNet-50 nor ResNet-101.
    """
    if "side5.0.weight" not in state or not any(k.startswith("pretrained.") for k in state):
        return None
    if any(k.startswith("ada_learner.") for k in state):
        kind = "dff"
    elif "fuse.weight" in state:
        kind = "casenet"
    else:
        return None
    return OfficialCheckpointInfo(
        model=kind, backbone=_infer_depth(state), num_classes=_infer_classes(state, None)
    )
