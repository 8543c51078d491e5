"""Training configuration: one dataclass whose fields also define the ``dynfuse-train`` flags.

Each :class:`TrainConfig` field is declared once, with :func:`option`: its default, its help text,
its flag group, its choices, its value check and how ``--resume`` treats a change of it. The
command-line parser (:func:`build_parser`), the checks of a config built in Python
(:meth:`TrainConfig.validate`) and the resume comparison (:func:`resume_policy`) all read those
declarations, so a new option is one new field.

Defaults come in layers: the dataclass default, then the dataset's entry of ``DATASET_DEFAULTS``,
(on ``--resume``, then the checkpoint's settings,) then the flags given
(:meth:`TrainConfig.for_dataset`, :func:`parse_config`).

``DATASET_DEFAULTS`` holds the paper's settings (DFF, IJCAI 2019, section 5.1; DESIGN.md section 4):
Cityscapes lr 0.08, batch 8, crop 640, 200 epochs; SBD lr 0.05, batch 16, crop 352, 10 epochs; both
with SGD momentum 0.9, weight decay 1e-4, 10x head lr and poly 0.9. ``synthetic`` is a CPU demo: a
tiny DFF on procedural scenes that trains in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "DATASET_DEFAULTS",
    "ConfigError",
    "TrainConfig",
    "build_parser",
    "check_runnable",
    "flag_name",
    "option",
    "parse_config",
    "resume_policy",
]

DATASETS = ("cityscapes", "sbd", "synthetic")

# The batch size is the global batch (summed over all processes), as in the paper's 4-GPU runs.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cityscapes": {
        "num_classes": 19,
        "backbone": "resnet50",
        "lr": 0.08,
        "batch_size": 8,
        "crop_size": 640,
        "epochs": 200,
        "workers": 8,
        "val_every": 10,
        "val_max_images": 20,
        "val_max_dist": 0.02,
        "val_scale": 0.5,
        "val_thresholds": 19,
        "log_every": 20,
        "device": "auto",
    },
    "sbd": {
        "num_classes": 20,
        "backbone": "resnet50",
        "lr": 0.05,
        "batch_size": 16,
        "crop_size": 352,
        "epochs": 10,
        "workers": 8,
        "val_every": 1,
        "val_max_images": 200,
        "val_max_dist": 0.02,
        "val_thresholds": 19,
        "log_every": 20,
        "device": "auto",
    },
    "synthetic": {
        # From scratch (no pretrained backbone) the tiny DFF wants a higher rate than the paper's
        # fine-tuning: on 8 epochs of 256 scenes, val loss 0.90 / 0.43 / 0.26 / 0.27 for lr
        # 0.01 / 0.03 / 0.1 / 0.3 (H100 sweep, seed 0).
        "num_classes": 4,
        "backbone": "tiny",
        "lr": 0.1,
        "batch_size": 8,
        "crop_size": 64,
        "epochs": 8,
        "workers": 0,
        "val_every": 2,
        "val_max_images": None,
        "val_max_dist": 0.02,
        "val_thresholds": 19,
        "log_every": 8,
        "val_at_start": True,
        "device": "cpu",
        "train_length": 256,
        "val_length": 32,
    },
}

# How ``--resume`` treats a setting that differs from the checkpoint's (field metadata "resume"):
#   "fixed":   refused unless --allow-changed-config; then the new value is used from here on
#   "weights": refused always (the saved weights would not fit the model)
#   "replan":  allowed with a warning (a new --epochs re-plans the learning-rate schedule)
#   "free":    allowed silently (where and how the run executes, not what it computes)
RESUME_POLICIES = ("fixed", "weights", "replan", "free")


class ConfigError(ValueError):
    """A setting (or a combination of settings) that cannot run.

    ``field`` names the :class:`TrainConfig` field at fault (None when several are), and
    ``problem`` says what is wrong with it; ``str(error)`` is ``"<field> <problem>"``. The CLI
    prints it with the flag's name instead: ``argument --lr: must be ...``.
    """

    def __init__(self, field: str | None, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}" if field else problem)

    def for_cli(self) -> str:
        """The message as ``dynfuse-train`` shows it (flag names instead of field names)."""
        return f"argument {flag_name(self.field)}: {self.problem}" if self.field else self.problem


# ---------------------------------------------------------------- value checks
@dataclass(frozen=True)
class Bounds:
    """A numeric range check: finite, optionally bounded below/above, open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        parts = []
        if self.low is not None and self.high is not None:
            return (
                f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                f"{')' if self.high_open else ']'}"
            )
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_num(self.high)}")
        return " and ".join(parts)

    def problem(self, value: float) -> str | None:
        """None when ``value`` is inside, else what is wrong ("must be >= 8, got 7")."""
        ok = math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if ok:
            return None
        what = "a finite number " if not math.isfinite(value) else ""
        return f"must be {what}{self.describe()}, got {value!r}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def option(
    default: Any = MISSING,
    *,
    help: str,  # noqa: A002 (the argparse word)
    group: str,
    default_factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    bounds: Bounds | None = None,
    resume: str = "fixed",
    negatable: bool = True,
    parse: Callable[[str], Any] | None = None,
    repeat: bool = False,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A :class:`TrainConfig` field with everything the parser and the checks need.

    Args:
        default, default_factory: as for :func:`dataclasses.field`.
        help: the flag's help text (the defaults are appended by the parser).
        group: flag group in ``--help`` ("data", "model", "optimisation", "run", "validation").
        flag: the flag (default ``--<name with dashes>``).
        choices: allowed values, or a function returning them (read when used, e.g. a registry).
        bounds: numeric range of the value (None values skip the check).
        resume: how ``--resume`` treats a change, one of :data:`RESUME_POLICIES`.
        negatable: booleans get ``--x/--no-x`` (True) or only ``--x`` (False).
        parse: converts one flag argument (default: the field's type).
        repeat: the flag may be repeated; the values are collected (``model_kwargs``: a dict).
        metavar: the placeholder shown in ``--help``.
        cli: False keeps the field out of the parser.
    """
    if resume not in RESUME_POLICIES:
        raise ValueError(f"resume must be one of {RESUME_POLICIES}, got {resume!r}")
    metadata = {
        "help": help,
        "group": group,
        "flag": flag,
        "choices": choices,
        "bounds": bounds,
        "resume": resume,
        "negatable": negatable,
        "parse": parse,
        "repeat": repeat,
        "metavar": metavar,
        "cli": cli,
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _model_names() -> list[str]:
    from dynfuse.models.registry import list_models

    return list_models()


def _backbone_names() -> list[str]:
    from dynfuse.models.registry import list_backbones

    return list_backbones()


def _model_kwarg(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"KEY must be a Python identifier, got {key!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # bare words such as learner=invariant stay strings
    return key, value


_POSITIVE = Bounds(low=0, low_open=True)
_NON_NEGATIVE = Bounds(low=0)


@dataclass
class TrainConfig:
    """Everything one training run depends on (saved inside every checkpoint).

    ``batch_size`` is global: each of the ``world_size`` processes loads
    ``batch_size // world_size`` images per step. Build one with per-dataset defaults with
    :meth:`for_dataset`; the plain constructor uses the dataclass defaults (the synthetic demo's).
    """

    # Field order is the constructor's positional order: new fields go at the end.
    dataset: str = option(
        "synthetic",
        group="data",
        choices=DATASETS,
        help="what to train on (synthetic: procedural scenes, no download)",
    )
    data_root: str | None = option(
        None,
        group="data",
        metavar="DIR",
        help="prepared dataset folder (dynfuse-prepare output); not for synthetic",
    )
    model: str = option(
        "dff",
        group="model",
        choices=_model_names,
        resume="weights",
        help="registered model name (dynfuse.models.list_models())",
    )
    backbone: str = option(
        "tiny",
        group="model",
        resume="weights",
        help="a name of dynfuse.models.list_backbones() or timm:<model name>",
    )
    num_classes: int = option(
        4, group="model", bounds=Bounds(low=1), resume="weights", help="number of edge classes K"
    )
    pretrained_backbone: str | None = option(
        None,
        group="model",
        metavar="FILE",
        help="local path of ImageNet backbone weights (torchvision ResNet file)",
    )
    model_kwargs: dict[str, Any] = option(
        group="model",
        default_factory=dict,
        flag="--model-kw",
        parse=_model_kwarg,
        repeat=True,
        metavar="KEY=VALUE",
        help="extra dynfuse.create_model keyword (JSON value), repeatable",
    )
    epochs: int = option(
        8,
        group="optimisation",
        bounds=Bounds(low=1),
        resume="replan",
        help="length of the run (a new value on --resume re-plans the schedule)",
    )
    batch_size: int = option(
        8, group="optimisation", bounds=Bounds(low=1), help="global batch size (split evenly over processes)"
    )
    crop_size: int = option(
        64,
        group="data",
        bounds=Bounds(low=8),
        help="square training crop side in pixels (>= 8, the backbones' output stride)",
    )
    lr: float = option(
        0.1, group="optimisation", bounds=_POSITIVE, help="backbone learning rate (head: x --head-lr-mult)"
    )
    momentum: float = option(
        0.9, group="optimisation", bounds=Bounds(low=0, high=1, high_open=True), help="SGD momentum"
    )
    weight_decay: float = option(
        1e-4, group="optimisation", bounds=_NON_NEGATIVE, help="L2 weight decay on every parameter"
    )
    head_lr_mult: float = option(
        10.0,
        group="optimisation",
        bounds=_POSITIVE,
        help="learning-rate multiplier of everything outside the backbone",
    )
    poly_power: float = option(
        0.9,
        group="optimisation",
        bounds=_NON_NEGATIVE,
        help="exponent of the poly schedule lr * (1 - it/max_it) ** power",
    )
    amp: str = option(
        "off",
        group="optimisation",
        choices=("off", "bf16", "fp16"),
        help="autocast precision (fp16 uses a GradScaler)",
    )
    device: str = option("cpu", group="run", resume="free", help="auto, cpu, cuda or cuda:N")
    seed: int = option(0, group="run", help="seed of weights, data order and augmentation")
    workers: int = option(
        0, group="data", bounds=_NON_NEGATIVE, resume="free", help="data-loader processes per rank"
    )
    val_every: int = option(
        2,
        group="validation",
        bounds=_NON_NEGATIVE,
        help="validate every N epochs (and after the last); 0 disables",
    )
    val_max_images: int | None = option(
        None,
        group="validation",
        bounds=Bounds(low=1),
        help="images scored with MF-ODS per validation (the loss uses all); None: all",
    )
    val_max_dist: float = option(
        0.02,
        group="validation",
        bounds=Bounds(0, 1, True, True),
        help="MF-ODS matching tolerance as a fraction of the image diagonal",
    )
    val_thresholds: int = option(
        19, group="validation", bounds=Bounds(low=1), help="thresholds for validation MF-ODS (few = fast)"
    )
    val_at_start: bool = option(
        False, group="validation", resume="free", help="also validate the untrained model"
    )
    val_scale: float = option(
        1.0,
        group="validation",
        bounds=Bounds(0, 1, low_open=True),
        help="score MF-ODS at this fraction of the resolution (Cityscapes: 0.5, as SEAL)",
    )
    log_every: int = option(
        10, group="run", bounds=Bounds(low=1), resume="free", help="iterations between log records"
    )
    output_dir: str = option(
        "runs/synthetic-dff", group="run", resume="free", metavar="DIR", help="run folder"
    )
    resume: str | None = option(
        None,
        group="run",
        resume="free",
        metavar="CHECKPOINT",
        help="checkpoint to continue from, or 'auto' for <output-dir>/checkpoint.pt when it exists",
    )
    sync_bn: str = option(
        "auto",
        group="optimisation",
        choices=("auto", "on", "off"),
        help="SyncBatchNorm under DDP (auto: on for CUDA, off for CPU/gloo)",
    )
    train_length: int | None = option(
        None, group="data", bounds=Bounds(low=1), help="synthetic only: number of training scenes (None: 320)"
    )
    val_length: int | None = option(
        None,
        group="data",
        bounds=Bounds(low=1),
        help="synthetic only: number of validation scenes (None: 32)",
    )
    cache: bool = option(
        True, group="data", resume="free", help="synthetic only: render scenes once and keep them in memory"
    )
    tensorboard: bool = option(
        True, group="run", resume="free", help="also write TensorBoard scalars to <output-dir>/tb"
    )
    progress: bool = option(True, group="run", resume="free", help="tqdm progress bars")
    overwrite: bool = option(
        False,
        group="run",
        resume="free",
        negatable=False,
        help="start a new run in an output folder that is not empty; the "
        "old run's files are replaced when the new run's first "
        "checkpoint lands",
    )
    init_from: str | None = option(
        None,
        group="model",
        resume="free",
        metavar="DIR",
        help="start from the weights of a save_pretrained folder (model, backbone and classes must "
        "match; epochs, optimiser and schedule start fresh)",
    )
    allow_changed_config: bool = option(
        False,
        group="run",
        resume="free",
        negatable=False,
        help="with --resume: continue with settings that differ from the checkpoint's (they "
        "apply from the resumed epoch on; config.json records the change)",
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` (a ValueError) naming the first field with an impossible value.

        Checks each field's declared type, choices and bounds, then the rules that tie fields
        together. Whether the model can be built and the device exists is
        :func:`check_runnable`'s job (it needs the registry and torch).
        """
        hints = _type_hints()
        for f in fields(self):
            value = getattr(self, f.name)
            base, optional = _base_type(hints[f.name])
            if value is None:
                if not optional:
                    raise ConfigError(f.name, "must be given, got None")
                continue
            if base is int and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(f.name, f"must be an integer, got {value!r}")
            if base is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise ConfigError(f.name, f"must be a number, got {value!r}")
            if base is bool and not isinstance(value, bool):
                raise ConfigError(f.name, f"must be True or False, got {value!r}")
            if base is str and not isinstance(value, str):
                raise ConfigError(f.name, f"must be a string, got {value!r}")
            if base is dict and not isinstance(value, dict):
                raise ConfigError(f.name, f"must be a dict, got {value!r}")
            choices = _choices(f)
            if choices is not None and value not in choices:
                raise ConfigError(f.name, f"must be one of {tuple(choices)}, got {value!r}")
            bounds: Bounds | None = f.metadata.get("bounds")
            if bounds is not None:
                problem = bounds.problem(value)
                if problem:
                    raise ConfigError(f.name, problem)
        if self.dataset != "synthetic" and not self.data_root:
            raise ConfigError("data_root", f"is required for dataset {self.dataset!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (saved in checkpoints and ``config.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def for_dataset(cls, dataset: str = "synthetic", **settings: Any) -> TrainConfig:
        """A config with the layered defaults: dataclass, then ``DATASET_DEFAULTS[dataset]``,
        then ``settings``. Without ``output_dir`` the run folder is ``runs/<dataset>-<model>``."""
        if dataset not in DATASET_DEFAULTS:
            raise ConfigError("dataset", f"must be one of {DATASETS}, got {dataset!r}")
        values = {**DATASET_DEFAULTS[dataset], **settings, "dataset": dataset}
        if "output_dir" not in settings:
            values["output_dir"] = f"runs/{dataset}-{values.get('model', 'dff')}"
        return cls(**values)


_FIELDS = {f.name: f for f in fields(TrainConfig)}
for _name, _defaults in DATASET_DEFAULTS.items():  # a typo here would silently drop a default
    _unknown = set(_defaults) - set(_FIELDS)
    if _unknown:
        raise RuntimeError(f"DATASET_DEFAULTS[{_name!r}] has unknown settings {sorted(_unknown)}")


def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the non-None type, whether None is allowed) of a field annotation."""
    args = typing.get_args(hint)
    if args and type(None) in args:
        (base,) = [a for a in args if a is not type(None)]
        return typing.get_origin(base) or base, True
    return typing.get_origin(hint) or hint, False


def _choices(f: Any) -> Sequence[str] | None:
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def flag_name(name: str | None) -> str:
    """The command-line flag of a :class:`TrainConfig` field (``lr`` -> ``--lr``)."""
    if name is None or name not in _FIELDS:
        return str(name)
    return _FIELDS[name].metadata.get("flag") or "--" + name.replace("_", "-")


def resume_policy(name: str) -> str:
    """How ``--resume`` treats a change of field ``name``: one of :data:`RESUME_POLICIES`."""
    return _FIELDS[name].metadata.get("resume", "fixed") if name in _FIELDS else "free"


# ---------------------------------------------------------------- the parser
_GROUPS = ("data", "model", "optimisation", "run", "validation")


def _default_text(f: Any) -> str:
    """The real default of a field as ``--help`` shows it, per dataset where they differ."""
    if f.name == "output_dir":
        return "runs/<dataset>-<model>"
    base = f.default_factory() if f.default is MISSING else f.default
    per = {name: d[f.name] for name, d in DATASET_DEFAULTS.items() if f.name in d}
    if f.name == "model_kwargs":
        return "none"
    if not per or all(v == base for v in per.values()):
        return str(base)
    if len(per) == len(DATASET_DEFAULTS):
        return ", ".join(f"{name} {v}" for name, v in per.items())
    others = ", ".join(f"{name} {v}" for name, v in per.items() if v != base)
    return f"{base}; {others}"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the epilog's table layout (defaults are written into each help text)."""


class _Parser(argparse.ArgumentParser):
    """Errors as two lines: a short usage and ``dynfuse-train: error: ...`` (exit 2)."""

    def format_usage(self) -> str:
        return f"usage: {self.prog} [options]  (--help lists them)\n"


def build_parser(prog: str = "dynfuse-train") -> argparse.ArgumentParser:
    """The ``dynfuse-train`` / ``examples/train_dff.py`` argument parser, made from :class:`TrainConfig`.

    Every option defaults to "not given" (``argparse.SUPPRESS``), so the namespace holds exactly
    the flags on the command line; :func:`parse_config` layers them over the defaults.
    """
    keys = ("lr", "batch_size", "crop_size", "epochs", "backbone", "num_classes", "device")
    rows = [
        f"  {name:<11}" + "  ".join(f"{k.replace('_', '-')}={DATASET_DEFAULTS[name][k]}" for k in keys)
        for name in DATASETS
    ]
    p = _Parser(
        prog=prog,
        description="Train a DFF or CASENet semantic edge detector (single process or torchrun DDP).",
        formatter_class=_HelpFormatter,
        epilog="per-dataset defaults (the paper's for cityscapes and sbd):\n" + "\n".join(rows),
    )
    groups = {name: p.add_argument_group(name) for name in _GROUPS}
    hints = _type_hints()
    for f in fields(TrainConfig):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        base, _ = _base_type(hints[f.name])
        text = meta["help"].replace("%", "%%") + f" (default: {_default_text(f)})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if meta.get("negatable", True) else "store_true"
        else:
            kwargs["type"] = meta.get("parse") or base
            if meta.get("repeat"):
                kwargs["action"] = "append"
            choices = _choices(f)
            if choices is not None:
                kwargs["choices"] = choices
        groups[meta["group"]].add_argument(flag_name(f.name), **kwargs)
    return p


def parse_config(argv: Sequence[str] | None = None, prog: str = "dynfuse-train") -> TrainConfig:
    """Parse command-line arguments into a :class:`TrainConfig` with per-dataset defaults.

    Any impossible value ends the process like an argparse error: a short usage line and
    ``<prog>: error: argument --flag: ...`` on stderr, exit status 2. Whether the model, files and
    device the config names exist is :func:`check_runnable`'s (``dynfuse-train`` runs both).
    """
    parser = build_parser(prog)
    given = vars(parser.parse_args(argv))
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
    # On --resume, settings not given are the checkpoint's (so "--resume auto" alone continues a
    # run); a given one that differs is what Trainer refuses without --allow-changed-config.
    settings = {**_resumed_settings(given), **given}
    try:
        config = TrainConfig.for_dataset(settings.pop("dataset", "synthetic"), **settings)
    except ConfigError as exc:
        parser.error(exc.for_cli())  # exits with status 2
        raise  # unreachable
    return config


def _resumed_settings(given: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's settings that ``--resume`` carries over (all but the "free" ones), or {}
    when there is no readable checkpoint (the trainer then reports it or starts afresh)."""
    resume = given.get("resume")
    if not resume:
        return {}
    if resume == "auto":
        dataset = given.get("dataset", "synthetic")
        out = given.get("output_dir") or f"runs/{dataset}-{given.get('model', 'dff')}"
        path = os.path.join(out, "checkpoint.pt")
    else:
        path = resume
    if not os.path.isfile(path):
        return {}
    from .checkpoint import CheckpointError, load_checkpoint

    try:
        saved = load_checkpoint(path, map_location="cpu")["config"]
    except CheckpointError:
        return {}
    return {k: v for k, v in saved.items() if k in _FIELDS and resume_policy(k) != "free"}


# ---------------------------------------------------------------- checks that need torch
def check_runnable(config: TrainConfig) -> None:
    """Check what :meth:`TrainConfig.validate` cannot: that the model can be built from the
    config's model, backbone, classes and ``model_kwargs`` (on the meta device, so nothing is
    allocated), that the files and the device it names exist.

    Raises:
        ConfigError: naming the setting at fault.
    """
    import torch

    from .distributed import resolve_device

    if config.data_root is not None and config.dataset != "synthetic":
        if not os.path.isdir(config.data_root):
            raise ConfigError(
                "data_root", f"{config.data_root!r} is not a directory (run dynfuse-prepare first)"
            )
    if config.pretrained_backbone is not None and not os.path.isfile(config.pretrained_backbone):
        raise ConfigError("pretrained_backbone", f"no file at {config.pretrained_backbone!r}")
    resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0") or 0))
    from dynfuse.models import create_model

    def build() -> None:
        create_model(
            config.model, backbone=config.backbone, num_classes=config.num_classes, **config.model_kwargs
        )

    error: Exception
    try:
        with torch.device("meta"):
            build()
        return
    except (ValueError, TypeError) as exc:
        error = exc
    except (RuntimeError, NotImplementedError):
        # Construction that reads tensor values fails on meta (and timm raises RuntimeError for
        # an unknown name): build it for real to tell the two apart.
        try:
            build()
            return
        except (ValueError, TypeError, RuntimeError) as exc:
            error = exc
    kw = "".join(f" --model-kw {k}={json.dumps(v)}" for k, v in config.model_kwargs.items())
    raise ConfigError(
        None, f"cannot build --model {config.model} --backbone {config.backbone}{kw}: {error}"
    ) from error
