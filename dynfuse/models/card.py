"""The model card (``README.md``) of a ``save_pretrained`` folder, generated from its config.

Every statement in the card comes from ``config.json``: what the model is, its classes and input,
how it was trained and its score with the protocol it was measured with (both only when given).
The front matter is what the Hugging Face Hub reads (library, tags, metrics).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["model_card"]

_PAPERS = {
    "dff": "Dynamic Feature Fusion for Semantic Edge Detection (Hu et al., IJCAI 2019)",
    "casenet": "CASENet: Deep Category-Aware Semantic Edge Detection (Yu et al., CVPR 2017), as the "
    "DFF authors reproduced it",
}
_BACKBONES = {
    "resnet50": "the authors' dilated ResNet-50 (features at strides 1/2/4/8)",
    "resnet101": "the authors' dilated ResNet-101 (features at strides 1/2/4/8)",
    "tiny": "dynfuse's tiny dilated ResNet (a CPU-sized demo backbone, strides 1/2/4/8)",
}


def _table1_row(config: Mapping[str, Any]) -> str | None:
    """The paper's Table 1 row this head is, if any (backend and upsampling aside)."""
    from .registry import TABLE1

    opts = dict(config.get("head_options") or {})
    for row, entry in TABLE1.items():
        ref = entry.options.to_dict()
        keys = ("learner", "normalize", "activation", "learner_resolution")
        if entry.model == config.get("model") and all(ref[k] == opts.get(k) for k in keys):
            return row
    return None


def _protocol_settings(protocol: str) -> str | None:
    try:
        from ..eval.settings import PROTOCOLS
    except ImportError:  # pragma: no cover - eval is part of the package
        return None
    settings = PROTOCOLS.get(protocol)
    return None if settings is None else repr(settings)


def _what(config: Mapping[str, Any]) -> list[str]:
    model, backbone = str(config.get("model")), str(config.get("backbone"))
    if backbone.startswith("timm:"):
        bb = f"the timm model `{backbone[5:]}` (features_only)"
    else:
        bb = _BACKBONES.get(backbone, f"`{backbone}`")
    kwargs = config.get("backbone_kwargs") or {}
    if kwargs:
        bb += f" with `{json.dumps(kwargs, sort_keys=True)}`"
    lines = [
        f"A **{model.upper()}** semantic edge detector for {config.get('num_classes')} classes on "
        f"{bb}, saved with dynfuse {config.get('dynfuse_version')}.",
        "",
        f"Model: {_PAPERS.get(model, model)}.",
        "",
    ]
    row = _table1_row(config)
    opts = config.get("head_options") or {}
    head = ", ".join(f"{k}={v!r}" for k, v in opts.items())
    lines.append(f"Head: `HeadOptions({head})`" + (f' (the paper\'s Table 1 row "{row}").' if row else "."))
    return lines


def model_card(config: Mapping[str, Any]) -> str:
    """Markdown text of the model card for a ``save_pretrained`` config."""
    metrics = config.get("metrics") or {}
    front = [
        "---",
        "library_name: dynfuse",
        "tags:",
        "- semantic-edge-detection",
        "- dynfuse",
        f"- {config.get('model')}",
        "pipeline_tag: image-segmentation",
        "---",
        "",
    ]
    model, k = str(config.get("model")).upper(), config.get("num_classes")
    title = f"# {model} on {config.get('backbone')}, {k} classes"
    out = [*front, title, "", *_what(config), ""]
    inp = config.get("input") or {}
    out += [
        "## Use",
        "",
        "```python",
        "import dynfuse",
        "",
        'model = dynfuse.from_pretrained("<this folder or user/repo>")  # eval mode',
        "out = model(images)  # images: (B, 3, H, W) float, normalised as below; any H, W",
        "edges = out.fuse.sigmoid()  # (B, K, H, W) per-class edge probabilities",
        "```",
        "",
        "## Input",
        "",
        f"{inp.get('channels', 'RGB')} images scaled to {inp.get('scale', '[0, 1]')}, then "
        f"`(x - mean) / std` per channel with mean `{inp.get('mean')}` and std `{inp.get('std')}`. "
        "Any height and width (the outputs have the input's size). dtype "
        f"`{config.get('dtype')}`.",
        "",
        "## Classes",
        "",
    ]
    names = config.get("class_names")
    if names:
        out += ["| index | name |", "|---|---|"] + [f"| {i} | {n} |" for i, n in enumerate(names)]
    else:
        out.append(f"{k} classes; their names were not given when the model was saved.")
    out += ["", "## Training", ""]
    training = config.get("training")
    if training:
        out += [f"- **{k}**: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in training.items()]
    else:
        out.append("Not recorded (no training details were given when the model was saved).")
    out += ["", "## Evaluation", ""]
    if metrics:
        protocol = str(config.get("protocol"))
        settings = _protocol_settings(protocol)
        out.append(f"Protocol: **{protocol}**" + (f" (`{settings}`)" if settings else "") + ".")
        out += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
        out += [
            "",
            "Scores depend on the protocol (tolerance, thinning, resolution): compare only "
            "numbers measured with the same one.",
        ]
    else:
        out.append("No score was given when the model was saved.")
    out += [
        "",
        "## Files",
        "",
        "- `model.safetensors`: the weights (safetensors, no pickle)",
        "- `config.json`: everything above, read by `dynfuse.from_pretrained`",
        "",
    ]
    return "\n".join(out)
