"""Shareable models: ``save_pretrained`` / ``from_pretrained`` folders and Hugging Face Hub repos.

A saved model is a folder of three files, none of them a pickle:

* ``model.safetensors``: the state dict (every parameter and buffer, BatchNorm statistics included);
* ``config.json``: how to build the model again (model, backbone name and its keyword arguments,
  number of classes, the :class:`~dynfuse.heads.HeadOptions`, the model options), the class names,
  the input normalisation, the dtype, the weights' SHA-256, the dynfuse version and the format
  version, plus the score and its protocol and the training details when given;
* ``README.md``: a model card generated from the same facts.

:func:`from_pretrained` rebuilds the model from ``config.json`` and copies the weights in with a
checked load, so the loaded model's outputs equal the saved one's exactly. A Hub repository id
(``"user/repo"``) is downloaded with ``huggingface_hub.snapshot_download`` first (the optional
``hub`` extra); :func:`push_to_hub` uploads such a folder.

How a model was built is recorded once, by the code that builds it: the named backbone builders
put a ``build_config`` on the backbone (``create_backbone``, ``dilated_resnet*``, ``TimmBackbone``
made from a name), and :func:`model_build_config` reads the rest from the live model (its class,
``head.options``, ``num_classes``, ``channels_last``, ``checkpointing``), so it cannot go stale. A
model around a backbone module of your own cannot be rebuilt from a config; saving it raises.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write, atomic_write_text
from ..backbones.factory import backbone_from_config
from ..checkpoints import CheckpointError, CheckpointNotFoundError, load_state_checked
from ..heads import HeadOptions
from .edge import EdgeModel

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "build_model_from_config",
    "from_pretrained",
    "init_from_pretrained",
    "load_pretrained_weights",
    "model_build_config",
    "push_to_hub",
    "read_pretrained_config",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: ``config.json``'s ``"format"``; ``"format_version"`` says which layout (this code reads 1).
FORMAT = "dynfuse-pretrained"
FORMAT_VERSION = 1

#: Settings ``from_pretrained`` may change: they do not change the weights' layout or the outputs.
LOAD_OVERRIDES = ("fusion_backend", "channels_last", "checkpoint_backbone", "checkpoint_learner")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------- the build config
def model_build_config(model: EdgeModel) -> dict[str, Any]:
    """How to build ``model`` again: ``{"model", "backbone", "backbone_kwargs", "num_classes",
    "head_options", "model_options"}`` (JSON values).

    Raises:
        ValueError: the model is not a registered DFF / CASENet, or its backbone was given as a
            module (nothing says how to build that module again).
    """
    name = getattr(type(model), "config_name", None)
    if not isinstance(model, EdgeModel) or name is None:
        raise ValueError(
            f"{type(model).__name__} cannot be saved with save_pretrained: only dynfuse's DFF and "
            "CASENet models (create_model('dff' | 'casenet', ...)) have a config that rebuilds them"
        )
    record = getattr(model.backbone, "build_config", None)
    if record is None:
        raise ValueError(
            f"this model's backbone ({type(model.backbone).__name__}) was passed in as a module, so "
            "config.json cannot say how to build it again. Build the model with a backbone name "
            "(create_model(..., backbone='resnet50' | 'resnet101' | 'tiny' | 'timm:<name>')) or "
            "TimmBackbone('<timm name>', ...), or save model.state_dict() and rebuild it yourself"
        )
    ckpt = model.checkpointing
    return {
        "model": name,
        "backbone": record["name"],
        "backbone_kwargs": dict(record["kwargs"]),
        "num_classes": model.num_classes,
        "head_options": model.head.options.to_dict(),
        "model_options": {
            "channels_last": model.channels_last,
            "checkpoint_backbone": ckpt["backbone"],
            "checkpoint_learner": ckpt["learner"],
        },
    }


def build_model_from_config(config: Mapping[str, Any]) -> EdgeModel:
    """A model (random weights) as :func:`model_build_config` describes it."""
    from .registry import create_model

    try:
        options = HeadOptions(**config["head_options"])
        backbone = backbone_from_config({"name": config["backbone"], "kwargs": config.get("backbone_kwargs")})
        return create_model(
            config["model"],
            backbone=backbone,
            num_classes=config["num_classes"],
            options=options,
            **config.get("model_options", {}),
        )
    except KeyError as exc:
        raise CheckpointError(f"the model config has no {exc.args[0]!r}") from None
    except TypeError as exc:  # an option this version does not know
        raise CheckpointError(f"cannot build the model in the config: {exc}") from exc


def _check_rebuilds(model: EdgeModel, config: Mapping[str, Any]) -> None:
    """Refuse to save a config that would not rebuild ``model`` (e.g. a custom ``norm_layer``):
    the model built from it, on the meta device (no memory), must have the same state dict keys
    and shapes."""
    try:
        with torch.device("meta"):
            rebuilt = build_model_from_config(config)
    except NotImplementedError:  # a builder that cannot run on meta
        rebuilt = build_model_from_config(config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if want != got:
        diff = sorted(set(want) ^ set(got)) + sorted(k for k in want if k in got and want[k] != got[k])
        raise ValueError(
            "config.json would not rebuild this model: the model built from it differs in "
            f"{len(diff)} state-dict entries (e.g. {diff[:3]}). Was it built with a custom "
            "norm_layer or changed after construction? Save model.state_dict() instead"
        )


# ---------------------------------------------------------------- saving
def _default_normalization(model: EdgeModel) -> tuple[list[float], list[float]]:
    cfg = getattr(getattr(model.backbone, "body", None), "pretrained_cfg", None)  # timm models
    if isinstance(cfg, Mapping) and cfg.get("mean") is not None and cfg.get("std") is not None:
        return [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD  # lazy: keeps `import dynfuse` light

    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def _check_vector(name: str, values: Sequence[float] | None, channels: int) -> list[float] | None:
    if values is None:
        return None
    out = [float(v) for v in values]
    if len(out) != channels or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be {channels} finite numbers (one per input channel), got {values!r}")
    if name == "std" and not all(v > 0 for v in out):
        raise ValueError(f"std must be positive, got {values!r}")
    return out


def _check_metrics(metrics: Mapping[str, Any] | None, protocol: str | None) -> dict[str, float] | None:
    if metrics is None:
        if protocol is not None:
            raise ValueError("protocol is given without metrics: it says how the metrics were measured")
        return None
    if not protocol or not isinstance(protocol, str):
        raise ValueError(
            "metrics need the protocol they were measured with (protocol='cityscapes-thin', 'sbd', ... "
            "as dynfuse-eval --protocol names it): a score without its protocol cannot be compared"
        )
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"metric {key!r} must be a finite number, got {value!r}")
        out[str(key)] = float(value)
    return out


def _json_value(name: str, value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must hold JSON values (str, numbers, lists, dicts): {exc}") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_pretrained(
    model: EdgeModel,
    save_directory: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    metrics: Mapping[str, float] | None = None,
    protocol: str | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``save_directory`` as ``model.safetensors``, ``config.json`` and ``README.md``.

    Args:
        model: a DFF / CASENet built from a backbone name (see :func:`model_build_config`).
        save_directory: the folder (created; these three files in it are replaced).
        class_names: K names (default: the model's ``class_names``, set by :func:`from_pretrained`).
        mean: the input normalisation's per-RGB-channel mean on images scaled to [0, 1] (default:
            the loaded model's, else the timm backbone's pre-training statistics, else ImageNet's).
        std: the per-channel standard deviation of the same normalisation (same default).
        metrics: scores, e.g. ``{"mf_ods": 0.804, "mf_ois": 0.812}``; needs ``protocol``.
        protocol: how they were measured (e.g. a ``dynfuse-eval --protocol`` name).
        training: how the model was trained (JSON values, e.g. dataset, epochs, crop, lr), shown
            in the model card.

    Class names and normalisation of a loaded model carry over; its metrics and training details
    never do (the weights may have changed since): give them again if they still hold.

    Returns:
        The folder. Files are written atomically, the config last, and the config records the
        weights' SHA-256, so a folder left by an interrupted save never loads as a mix.

    Raises:
        ValueError: the model cannot be rebuilt from a config, or an argument is invalid.
    """
    config = model_build_config(model)
    _check_rebuilds(model, config)
    loaded = getattr(model, "pretrained_config", None) or {}
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != model.num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names, the model has {model.num_classes} classes"
            )
    in_channels = int(getattr(model.backbone, "in_channels", 3))
    default_mean, default_std = _default_normalization(model)
    loaded_input = loaded.get("input") or {}
    mean = _check_vector("mean", mean, in_channels) or loaded_input.get("mean") or default_mean
    std = _check_vector("std", std, in_channels) or loaded_input.get("std") or default_std
    scores = _check_metrics(metrics, protocol)
    train_info = _json_value("training", dict(training)) if training is not None else None

    from safetensors.torch import save_file

    from .. import __version__

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state.values() if v.is_floating_point()})
    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save_directory {str(folder)!r} is a file, not a folder")
    weights = atomic_write(
        folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"})
    )
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dynfuse_version": __version__,
        **config,
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "class_names": class_names,
        "input": {
            "channels": "RGB" if in_channels == 3 else in_channels,
            "scale": "[0, 1]",
            "mean": list(mean),
            "std": list(std),
            "layout": "(B, C, H, W), any H, W >= 1",
        },
        "metrics": scores,
        "protocol": protocol,
        "training": train_info,
        "weights_sha256": _sha256(weights),
    }
    from .card import model_card

    atomic_write_text(folder / CARD_NAME, model_card(full))
    atomic_write_text(folder / CONFIG_NAME, json.dumps(full, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------- loading
def read_pretrained_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a ``save_pretrained`` folder, checked.

    Raises:
        CheckpointNotFoundError: no such folder.
        CheckpointError: not a folder, no config, not ours, a newer format, or unreadable.
    """
    path = Path(folder)
    where = f"pretrained folder {str(path)!r}"
    if not path.exists():
        raise CheckpointNotFoundError(f"{where} does not exist")
    if not path.is_dir():
        raise CheckpointError(
            f"{where} is a file; from_pretrained takes a folder written by "
            "save_pretrained (or a Hub repository id)"
        )
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{where} has no {CONFIG_NAME}: it was not written by save_pretrained "
            "(or the save was interrupted)"
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {cfg_path}: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f'{cfg_path} is not a dynfuse model config (no "format": "{FORMAT}")')
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path} has format version {version!r}, written by dynfuse "
            f"{config.get('dynfuse_version')}; this dynfuse reads up to {FORMAT_VERSION}: upgrade dynfuse"
        )
    return config


def _read_weights(folder: Path, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"pretrained folder {str(folder)!r} has no {WEIGHTS_NAME}")
    want = config.get("weights_sha256")
    if want is not None and _sha256(path) != want:
        raise CheckpointError(
            f"{path} is not the file {CONFIG_NAME} describes (its SHA-256 differs): a save or copy "
            "was interrupted or the files come from different models"
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _resolve(source: str | os.PathLike[str], **download: Any) -> Path:
    """A local folder, or the snapshot of a Hub repository id."""
    path = Path(source)
    if path.exists() or not isinstance(source, str) or not _REPO_ID.match(source):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ImportError(
            f"{source!r} is not a local folder; loading it from the Hugging Face Hub needs "
            "huggingface_hub: pip install 'dynfuse[hub]'"
        ) from exc
    try:
        local = snapshot_download(
            repo_id=source,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
            **{k: v for k, v in download.items() if v is not None},
        )
    except Exception as exc:  # network, authentication, unknown repo: one message naming both readings
        raise CheckpointNotFoundError(
            f"{source!r} is not a local folder, and downloading it as a Hugging Face Hub repository "
            f"failed: {type(exc).__name__}: {exc}"
        ) from exc
    return Path(local)


def from_pretrained(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    map_location: str | torch.device = "cpu",
    **overrides: Any,
) -> EdgeModel:
    """Load a model saved with :func:`save_pretrained`: the same outputs, in eval mode.

    Args:
        source: a folder, or a Hugging Face Hub repository id ``"user/repo"`` (needs the ``hub``
            extra; ``revision``, ``cache_dir``, ``token``, ``local_files_only`` go to
            ``huggingface_hub.snapshot_download``). A path that exists is always a folder.
        map_location: device of the returned model.
        **overrides: settings that do not change the weights or outputs: ``fusion_backend``
            (e.g. "torch" where the saved "triton" cannot run), ``channels_last``,
            ``checkpoint_backbone``, ``checkpoint_learner``.

    Returns:
        The model, with ``class_names`` (list or None) and ``pretrained_config`` (the config dict:
        input ``mean``/``std`` under ``"input"``, metrics, training) attached.

    Raises:
        CheckpointError: the folder is not a complete ``save_pretrained`` folder, the weights do
            not fit the config (every key listed) or an override is not allowed.
    """
    bad = sorted(set(overrides) - set(LOAD_OVERRIDES))
    if bad:
        raise CheckpointError(
            f"from_pretrained cannot change {bad}: they would make another model than the saved "
            f"one; it may change {list(LOAD_OVERRIDES)}"
        )
    folder = _resolve(
        source, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only or None
    )
    config = read_pretrained_config(folder)
    build = {
        **config,
        "head_options": dict(config.get("head_options") or {}),
        "model_options": dict(config.get("model_options") or {}),
    }
    for key, value in overrides.items():
        target = "head_options" if key == "fusion_backend" else "model_options"
        build[target][key] = value
    model = build_model_from_config(build)
    load_pretrained_weights(model, folder, config=config)
    dtype = config.get("dtype")
    if isinstance(dtype, str) and dtype != "float32":
        model.to(getattr(torch, dtype))
    model.to(map_location)
    model.eval()
    model.class_names = config.get("class_names")
    model.pretrained_config = config
    return model


def load_pretrained_weights(
    model: torch.nn.Module, folder: str | os.PathLike[str], *, config: Mapping[str, Any] | None = None
) -> torch.nn.Module:
    """Copy the weights of a ``save_pretrained`` folder into ``model`` (which must fit them exactly:
    a :class:`~dynfuse.checkpoints.CheckpointMismatchError` lists every key that does not).
    ``dynfuse-train --init-from`` starts training this way."""
    folder = Path(folder)
    if config is None:
        config = read_pretrained_config(folder)
    state = _read_weights(folder, config)
    desc = f"{config.get('model')} on {config.get('backbone')}, {config.get('num_classes')} classes"
    load_state_checked(model, state, what=f"pretrained folder {str(folder)!r} ({desc})")
    return model


def init_from_pretrained(model: EdgeModel, source: str | os.PathLike[str]) -> EdgeModel:
    """Start ``model`` from the weights of a ``save_pretrained`` folder (``dynfuse-train
    --init-from``): the folder must hold the same model (model, backbone, classes and head options;
    the fusion backend may differ), else a :class:`~dynfuse.checkpoints.CheckpointError` lists
    what differs. Only weights are copied; nothing about a training run (epoch, optimiser) is."""
    folder = _resolve(source)
    config = read_pretrained_config(folder)
    try:
        mine: dict[str, Any] | None = model_build_config(model)
    except ValueError:  # a backbone module: the checked load below still compares every key
        mine = None
    if mine is not None:
        diffs = [
            f"{k} {config.get(k)!r} there, {mine[k]!r} here"
            for k in ("model", "backbone", "backbone_kwargs", "num_classes")
            if config.get(k) != mine[k]
        ]
        theirs = config.get("head_options") or {}
        diffs += [
            f"{k} {theirs.get(k)!r} there, {v!r} here"
            for k, v in mine["head_options"].items()
            if k != "fusion_backend" and theirs.get(k) != v
        ]
        if diffs:
            raise CheckpointError(
                f"pretrained folder {str(folder)!r} holds another model than the one to start: "
                + "; ".join(diffs)
            )
    load_pretrained_weights(model, folder, config=config)
    return model


# ---------------------------------------------------------------- the Hub
def push_to_hub(
    model: EdgeModel,
    repo_id: str,
    *,
    commit_message: str = "Upload dynfuse model",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    **save_kwargs: Any,
) -> Any:
    """Save ``model`` (``save_kwargs`` as for :func:`save_pretrained`) to a temporary folder and
    upload it to the Hub repository ``repo_id`` (created if missing). Needs the ``hub`` extra and
    a login (``huggingface-cli login`` or ``token``). Returns the upload's commit info."""
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:
        raise ImportError("push_to_hub needs huggingface_hub: pip install 'dynfuse[hub]'") from exc
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, **save_kwargs)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision
        )
