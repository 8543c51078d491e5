"""``dynfuse-predict``: run a trained edge detector over a folder of images and save its maps.

For every input image ``<name>.<ext>`` it writes

* ``<out>/class_XXX/<name>.png``: one 16-bit greyscale PNG per class (``XXX`` = 1-based class
  index, 3 digits) holding the class's edge probability ``round(65535 * sigmoid(fuse))``; this is
  the layout SEAL-style evaluation (``dynfuse-eval``) reads;
* ``<out>/overlay/<name>.png``: the image with its class-coloured edges blended in (RGB, 8-bit);
* ``<out>/contact_sheet.png`` with ``--contact-sheet``: image | ground truth (with ``--gt-dir``) |
  prediction for the first ``--sheet-rows`` images written (:func:`write_contact_sheet`);
* ``<out>/manifest.json`` (:mod:`dynfuse.eval.manifest`): marked incomplete before the first map is
  (over)written and complete, with the images written and skipped, the checkpoint, the settings
  and the versions, only after the last one. ``dynfuse-eval`` refuses a folder whose run did not
  finish, so a killed or failed run is never scored as a mix of old and new maps.

Every file is written atomically (:func:`dynfuse.atomic.atomic_write`): a reader never sees half a
PNG. An unreadable image stops the run with a one-line error (exit status 2, manifest left
incomplete) unless ``--skip-unreadable`` is given; then it is skipped, listed on the console and in
the manifest's ``skipped``, and any map an earlier run wrote for it is removed.

The checkpoint is a dynfuse training checkpoint (``checkpoint.pt`` / ``final.pt``, which records
the model, backbone and classes), a ``save_pretrained`` folder (whose ``config.json`` also records
the input normalisation), the DFF authors' checkpoint (``{"epoch", "state_dict",
"optimizer"}`` with their key names, recognised and loaded through
:func:`dynfuse.models.load_official_dff` / ``load_official_casenet``; model, depth and classes are
read from the weights), or bare weights of our models, for which ``--model``, ``--backbone`` and
``--num-classes`` say what to build.

This module does not import :mod:`dynfuse.training`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write, fsync_dir
from .checkpoints import (
    TRAINING_CHECKPOINT_FORMAT,
    CheckpointError,
    extract_model_state,
    load_state_checked,
    read_checkpoint,
)
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .device import resolve_device
from .eval.manifest import MANIFEST_NAME, begin_manifest, finish_manifest

# The colouring lives in dynfuse.viz; these names stay importable from here.
from .viz import (
    CONTACT_SHEET_COLUMNS,
    class_palette,
    colour_edges,
    contact_sheet,
    contact_sheet_row,
    overlay_edges,
)

__all__ = [
    "CONTACT_SHEET_NAME",
    "IMAGE_EXTENSIONS",
    "class_palette",
    "colour_edges",
    "list_images",
    "load_model_for_inference",
    "main",
    "overlay_edges",
    "predict_probabilities",
    "read_image",
    "save_overlay",
    "save_probability_maps",
    "write_contact_sheet",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_MEAN = IMAGENET_MEAN
_STD = IMAGENET_STD
_PROG = "dynfuse-predict"
#: File name of the contact sheet in the output folder.
CONTACT_SHEET_NAME = "contact_sheet.png"


# ---------------------------------------------------------------- model
def load_model_for_inference(
    checkpoint: str | Path,
    *,
    model: str | None = None,
    backbone: str | None = None,
    num_classes: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint was trained as and load its weights (eval mode, on CPU).

    Args:
        checkpoint: path of a dynfuse training checkpoint, of a ``save_pretrained`` folder, of
            the DFF authors' checkpoint or of bare weights of our models.
        model: required for bare weights of our models; for a training or an authors'
            checkpoint it must be None or agree with what the checkpoint holds.
        backbone: as ``model``.
        num_classes: as ``model``.
        model_kwargs: as ``model``; they add to / override the recorded ones.

    Returns:
        ``(model, spec)`` where ``spec`` holds ``model``, ``backbone``, ``num_classes``,
        ``model_kwargs``, ``layout`` (``"dynfuse-training"``, ``"pretrained"``, ``"authors"`` or
        ``"bare"``) and
        ``mean``/``std`` (the input normalisation).

    Raises:
        CheckpointError: the file is not a checkpoint (the message names the file and what it
            is), the description is missing or disagrees, or the weights do not fit
            (:class:`~dynfuse.checkpoints.CheckpointMismatchError`, listing every key).
    """
    from .models import create_model

    path = Path(checkpoint)
    where = f"checkpoint {str(path)!r}"
    given = {"model": model, "backbone": backbone, "num_classes": num_classes}
    if path.is_dir():
        return _load_pretrained_folder(path, given, model_kwargs)
    obj = read_checkpoint(path)
    if obj.get("format") == TRAINING_CHECKPOINT_FORMAT:
        cfg = obj.get("config") or {}
        spec: dict[str, Any] = {k: cfg.get(k) for k in given}
        for key, value in given.items():
            if value is not None and value != spec[key]:
                raise CheckpointError(
                    f"--{key.replace('_', '-')} {value!r} disagrees with the checkpoint, which was "
                    f"trained with {key}={spec[key]!r}"
                )
        spec["model_kwargs"] = dict(cfg.get("model_kwargs") or {})
        if model_kwargs:
            spec["model_kwargs"].update(model_kwargs)
        spec["layout"] = "dynfuse-training"
        state = extract_model_state(obj, where=where)
    else:
        state = extract_model_state(obj, where=where)
        official = _load_official(state, where, given, model_kwargs)
        if official is not None:
            return official
        missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is None]
        if missing:
            raise CheckpointError(
                f"{where} holds bare weights without a model description: pass " + ", ".join(missing)
            )
        spec = dict(given)
        spec["model_kwargs"] = dict(model_kwargs or {})
        spec["layout"] = "bare"
    net = create_model(
        spec["model"],
        backbone=spec["backbone"],
        num_classes=spec["num_classes"],
        pretrained_backbone=None,
        **spec["model_kwargs"],
    )
    load_state_checked(
        net,
        state,
        what=where,
        hint=" (was it trained with another --model, --backbone or number of classes?)",
    )
    net.eval()
    spec["mean"], spec["std"] = _MEAN, _STD
    return net, spec


def _load_pretrained_folder(
    folder: Path, given: dict[str, Any], model_kwargs: dict[str, Any] | None
) -> tuple[nn.Module, dict[str, Any]]:
    """A ``save_pretrained`` folder: the model, class count and normalisation its config records."""
    from .models.pretrained import CONFIG_NAME, from_pretrained, read_pretrained_config

    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"cannot read checkpoint {str(folder)!r}: it is a folder, not a checkpoint file, and not "
            f"a save_pretrained folder either (it has no {CONFIG_NAME})"
        )
    config = read_pretrained_config(folder)
    for key, value in given.items():
        if value is not None and value != config.get(key):
            raise CheckpointError(
                f"--{key.replace('_', '-')} {value!r} disagrees with the pretrained folder "
                f"{str(folder)!r}, which holds {key}={config.get(key)!r}"
            )
    net = from_pretrained(folder, **(model_kwargs or {}))
    inp = config.get("input") or {}
    spec = {k: config.get(k) for k in given}
    spec.update(
        model_kwargs=dict(model_kwargs or {}),
        layout="pretrained",
        mean=tuple(inp.get("mean") or _MEAN),
        std=tuple(inp.get("std") or _STD),
    )
    return net, spec


def _load_official(
    state: dict[str, torch.Tensor],
    where: str,
    given: dict[str, Any],
    model_kwargs: dict[str, Any] | None,
) -> tuple[nn.Module, dict[str, Any]] | None:
    """Load the DFF authors' weights through :mod:`dynfuse.models.official` (their key names differ
    from ours); None when ``state`` does not have their layout."""
    from .models.official import describe_official_state_dict, load_official_casenet, load_official_dff

    info = describe_official_state_dict(state)
    if info is None:
        return None
    found: dict[str, Any] = dict(info)
    for key, value in given.items():
        if value is not None and value != found[key]:
            raise CheckpointError(
                f"--{key.replace('_', '-')} {value!r} disagrees with {where}, an authors' "
                f"{str(found['model']).upper()} checkpoint with {key}={found[key]!r}"
            )
    loader = load_official_dff if found["model"] == "dff" else load_official_casenet
    net = loader(state, info["num_classes"], backbone=info["backbone"], **(model_kwargs or {}))
    net.eval()
    spec = dict(found, model_kwargs=dict(model_kwargs or {}), mean=_MEAN, std=_STD, layout="authors")
    return net, spec


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files among ``inputs`` (files, or folders whose images are taken, sorted)."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(
                sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            )
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"input {str(p)!r} is neither an image file nor a folder")
    stems = [p.stem for p in found]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(f"several inputs share the output name(s) {dupes[:5]}; rename them")
    return found


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as exc:
        raise ValueError(f"cannot read image {str(path)!r}: {exc}") from exc


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    image: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    amp: str = "off",
    mean: Sequence[float] = _MEAN,
    std: Sequence[float] = _STD,
) -> np.ndarray:
    """Edge probabilities of one image.

    Args:
        model: a network returning an object with ``fuse`` logits (B, K, H, W).
        image: uint8 RGB (H, W, 3).
        device: where to run; amp: ``"off"``, ``"bf16"`` or ``"fp16"`` autocast.

    Returns:
        float32 (K, H, W) ``sigmoid(fuse)`` in [0, 1].
    """
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"image: expected an (H, W, 3) array, got {getattr(image, 'shape', image)}")
    if image.dtype != np.uint8:
        raise TypeError(f"image: expected uint8, got {image.dtype}")
    device = torch.device(device)
    x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    x = ((x - m) / s)[None].to(device)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    ctx = (
        torch.autocast(device_type=device.type, dtype=dtypes[amp])
        if amp in dtypes
        else contextlib.nullcontext()
    )
    with ctx:
        out = model(x)
    return torch.sigmoid(out.fuse[0].float()).cpu().numpy()


# ---------------------------------------------------------------- saving
def _save_png(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as a PNG at ``path`` atomically (never a partial file, even when killed).

    Not fsynced one by one: :func:`main` syncs once before it marks the run complete."""
    from PIL import Image

    image = Image.fromarray(array)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"), durable=False)


def save_probability_maps(probs: np.ndarray, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``out_dir/class_XXX/<name>.png`` (16-bit, 1-based XXX) for each class of ``probs``.

    Each file is written atomically: an earlier file of that name stays whole until the new one
    replaces it.

    Args:
        probs: float (K, H, W) in [0, 1] (values outside are clipped).

    Returns:
        The K paths written.
    """
    if probs.ndim != 3:
        raise ValueError(f"probs: expected (K, H, W), got shape {probs.shape}")
    q = np.rint(np.clip(probs, 0.0, 1.0) * 65535.0).astype(np.uint16)
    # uint16 2-D arrays become 16-bit greyscale PNGs
    return [_save_png(Path(out_dir) / f"class_{k + 1:03d}" / f"{name}.png", q[k]) for k in range(q.shape[0])]


def save_overlay(image: np.ndarray, probs: np.ndarray, out_dir: str | Path, name: str) -> Path:
    """Write ``out_dir/overlay/<name>.png``: :func:`dynfuse.viz.overlay_edges` (RGB, 8-bit)."""
    return _save_png(Path(out_dir) / "overlay" / f"{name}.png", overlay_edges(image, probs))


def write_contact_sheet(
    rows: Sequence[tuple[str, Sequence[np.ndarray | None]]], out_dir: str | Path, *, with_gt: bool
) -> Path:
    """Write ``out_dir/contact_sheet.png`` atomically from :func:`dynfuse.viz.contact_sheet_row` rows."""
    columns = CONTACT_SHEET_COLUMNS if with_gt else (CONTACT_SHEET_COLUMNS[0], CONTACT_SHEET_COLUMNS[2])
    return _save_png(Path(out_dir) / CONTACT_SHEET_NAME, contact_sheet(rows, columns))


def _gt_path(gt_dir: Path, name: str) -> Path:
    return gt_dir / f"{name}.png"


def _read_gt(gt_dir: Path, name: str, num_classes: int, size: tuple[int, int]) -> np.ndarray | None:
    """The bit-packed ground truth of image ``name`` (None when the folder has none); ValueError
    naming the file when it cannot be read or is not the image's size."""
    from .data.codecs import read_edge_png

    path = _gt_path(gt_dir, name)
    if not path.is_file():
        return None
    gt = read_edge_png(path, num_classes)  # EdgeLabelError (a ValueError) names the file
    if gt.shape[1:] != size:
        raise ValueError(
            f"ground truth {str(path)!r} is {gt.shape[1]}x{gt.shape[2]}, its image {size[0]}x{size[1]}"
        )
    return gt


def _check_gt_dir(gt_dir: Path, images: Sequence[Path], num_classes: int, rows: int) -> None:
    """Fail before any map is written when ``--gt-dir`` cannot serve the sheet: not a folder, none
    of the sheet's images has a label there, or a label there is unreadable or of another size."""
    from PIL import Image

    if not gt_dir.is_dir():
        raise ValueError(f"--gt-dir {str(gt_dir)!r} is not a folder")
    first = images[:rows]
    if not any(_gt_path(gt_dir, p.stem).is_file() for p in first):
        names = ", ".join(p.stem + ".png" for p in first[:3]) + (", ..." if len(first) > 3 else "")
        raise ValueError(
            f"--gt-dir {str(gt_dir)!r} has none of {names} (bit-packed edge PNGs named like the images)"
        )
    for p in first:
        try:
            with Image.open(p) as im:
                size = (im.height, im.width)
        except Exception:  # unreadable images are reported by the run itself
            continue
        _read_gt(gt_dir, p.stem, num_classes, size)


class _ContactSheet:
    """The rows of ``--contact-sheet``: tiles of the first ``max_rows`` images written."""

    def __init__(self, max_rows: int, gt_dir: Path | None, num_classes: int, max_height: int) -> None:
        self.max_rows, self.gt_dir = max_rows, gt_dir
        self.num_classes, self.max_height = num_classes, max_height
        self.rows: list[tuple[str, list[np.ndarray | None]]] = []
        self.without_gt: list[str] = []

    def settings(self) -> dict[str, Any]:
        return {
            "file": CONTACT_SHEET_NAME,
            "max_rows": self.max_rows,
            "max_height": self.max_height,
            "gt_dir": str(self.gt_dir.resolve()) if self.gt_dir is not None else None,
        }

    def add(self, name: str, image: np.ndarray, probs: np.ndarray) -> None:
        """Keep this image's tiles while the sheet has room (ValueError: its GT is unusable)."""
        if len(self.rows) >= self.max_rows:
            return
        gt = None
        if self.gt_dir is not None:
            gt = _read_gt(self.gt_dir, name, self.num_classes, image.shape[:2])
            if gt is None:
                self.without_gt.append(name)
        self.rows.append(
            (
                name,
                contact_sheet_row(
                    image, probs, gt, with_gt=self.gt_dir is not None, max_height=self.max_height
                ),
            )
        )

    def write(self, out_dir: Path, producer: dict[str, Any]) -> Path:
        """Write the sheet and record its rows in the producer's settings."""
        producer["settings"]["contact_sheet"].update(
            images=[n for n, _ in self.rows], without_gt=list(self.without_gt)
        )
        return write_contact_sheet(self.rows, out_dir, with_gt=self.gt_dir is not None)


def _contact_sheet_for(
    args: argparse.Namespace, images: Sequence[Path], num_classes: int
) -> _ContactSheet | None:
    """The contact sheet the arguments ask for (None: none), its ground truth checked."""
    if not args.contact_sheet:
        if args.gt_dir is not None:
            raise ValueError("--gt-dir is read for the contact sheet only: add --contact-sheet")
        return None
    gt_dir = Path(args.gt_dir) if args.gt_dir is not None else None
    if gt_dir is not None:
        _check_gt_dir(gt_dir, images, num_classes, args.sheet_rows)
    return _ContactSheet(args.sheet_rows, gt_dir, num_classes, args.sheet_height)


def _map_folders(out_dir: Path) -> list[Path]:
    """The folders of ``out_dir`` that hold per-image PNGs (class_XXX and overlay)."""
    if not out_dir.is_dir():
        return []
    return sorted(
        p
        for p in out_dir.iterdir()
        if p.is_dir() and (re.fullmatch(r"class_\d{3}", p.name) or p.name == "overlay")
    )


def _remove_maps(out_dir: Path, name: str) -> int:
    """Remove every map of image ``name`` (an earlier run's, now stale); returns how many."""
    removed = 0
    for folder in _map_folders(out_dir):
        target = folder / f"{name}.png"
        if target.is_file():
            target.unlink()
            removed += 1
    return removed


def _remove_temporaries(out_dir: Path) -> None:
    """Remove the temporary files a killed run left (``.<name>.png.<random>.tmp.png``)."""
    for folder in _map_folders(out_dir):
        for tmp in folder.glob(".*.tmp.png"):
            tmp.unlink(missing_ok=True)
    for tmp in out_dir.glob(f".{CONTACT_SHEET_NAME}.*.tmp.png"):
        tmp.unlink(missing_ok=True)


def _stale_maps(out_dir: Path, names: set[str], num_classes: int) -> int:
    """How many maps in ``out_dir`` an earlier run wrote that are not part of this run."""
    count = 0
    for folder in _map_folders(out_dir):
        extra_class = folder.name != "overlay" and int(folder.name[6:]) > num_classes
        count += sum(
            1
            for p in folder.glob("*.png")
            if not p.name.startswith(".") and (extra_class or p.stem not in names)
        )
    return count


def _sync(out_dir: Path) -> None:
    """Flush every map to disk before the manifest says complete (one sync per run, not per file)."""
    if hasattr(os, "sync"):
        os.sync()
    else:  # pragma: no cover - Windows: the folders at least
        for folder in _map_folders(out_dir):
            fsync_dir(folder)


def _versions() -> dict[str, str]:
    import PIL

    from . import __version__

    return {
        "dynfuse": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- command line
def build_parser(prog: str = _PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Save per-class 16-bit edge probability PNGs (class_XXX/<name>.png), "
        "class-coloured overlays and a manifest.json of the run for images.",
    )
    p.add_argument(
        "checkpoint",
        help="dynfuse checkpoint (final.pt / checkpoint.pt), a save_pretrained folder, "
        "the DFF authors' checkpoint, or bare weights",
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--output-dir", "-o", required=True, help="folder for the maps (created)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    p.add_argument(
        "--model", choices=("dff", "casenet"), default=None, help="for bare weights: the architecture"
    )
    p.add_argument("--backbone", default=None, help="for bare weights: resnet50, resnet101, tiny")
    p.add_argument("--num-classes", type=int, default=None, help="for bare weights")
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="skip images that cannot be decoded (listed on the console and in "
        "manifest.json) instead of stopping at the first one",
    )
    p.add_argument("--no-overlay", action="store_true", help="only write the probability maps")
    p.add_argument(
        "--contact-sheet",
        action="store_true",
        help=f"also write {CONTACT_SHEET_NAME}: image | ground truth (with --gt-dir) | "
        "prediction, one row per image, for the first --sheet-rows images written",
    )
    p.add_argument(
        "--sheet-rows",
        type=_positive_int,
        default=16,
        metavar="N",
        help="contact sheet: number of images (default: 16)",
    )
    p.add_argument(
        "--gt-dir",
        default=None,
        help="for the contact sheet: folder of bit-packed edge PNGs (dynfuse-prepare "
        "labels) named <image name>.png",
    )
    p.add_argument(
        "--sheet-height",
        type=_positive_int,
        default=256,
        metavar="PX",
        help="contact sheet: largest tile height; larger images shrink by an integer "
        "factor, edges by block maxima (default: 256)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _check_output_dir(out_dir: Path) -> None:
    """Refuse an ``--output-dir`` that is an existing file (or lies under one)."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "" if folder == out_dir else f" (its parent {str(folder)!r} is a file)"
                raise ValueError(f"--output-dir {str(out_dir)!r} is not a folder{what}")
            return


def _error(message: str) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return 2


class _Stop(Exception):
    """Ends a run early with this message (the manifest stays incomplete); ``hint`` closes the
    parenthesis that says so."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _predict_each(
    images: Any,
    model: nn.Module,
    spec: dict[str, Any],
    args: argparse.Namespace,
    device: torch.device,
    out_dir: Path,
    sheet: _ContactSheet | None,
) -> tuple[list[str], list[dict[str, str]]]:
    """Predict and save every image; returns the names written and the inputs skipped.

    Raises:
        _Stop: an unreadable image (without ``--skip-unreadable``), a failed write, or an unusable
            ground truth for the contact sheet.
    """
    written: list[str] = []
    skipped: list[dict[str, str]] = []
    for path in images:
        try:
            image = read_image(path)
        except ValueError as exc:
            if not args.skip_unreadable:
                raise _Stop(str(exc), "; --skip-unreadable skips such images") from exc
            skipped.append({"name": path.stem, "reason": str(exc)})
            _remove_maps(out_dir, path.stem)  # an earlier run's maps of it would pass for ours
            continue
        probs = predict_probabilities(
            model, image, device=device, amp=args.amp, mean=spec["mean"], std=spec["std"]
        )
        try:
            save_probability_maps(probs, out_dir, path.stem)
            if not args.no_overlay:
                save_overlay(image, probs, out_dir, path.stem)
        except OSError as exc:  # disk full, permissions: the files written so far are whole
            raise _Stop(f"cannot write the maps of {str(path)!r} to {str(out_dir)!r}: {exc}") from exc
        written.append(path.stem)
        if sheet is not None:
            try:
                sheet.add(path.stem, image, probs)
            except ValueError as exc:  # a ground truth past the ones checked up front
                raise _Stop(str(exc)) from exc
    return written, skipped


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dynfuse-predict``; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    out_dir = Path(args.output_dir)
    try:
        _check_output_dir(out_dir)
        device = resolve_device(args.device)
        images = list_images(args.inputs)
        if not images:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {args.inputs}")
        model, spec = load_model_for_inference(
            args.checkpoint, model=args.model, backbone=args.backbone, num_classes=args.num_classes
        )
        num_classes = int(spec["num_classes"])
        sheet = _contact_sheet_for(args, images, num_classes)
        out_dir.mkdir(parents=True, exist_ok=True)
    except (CheckpointError, ValueError, OSError) as exc:
        return _error(str(exc))
    model = model.to(device)
    producer = {
        "tool": _PROG,
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "settings": {
            "model": spec["model"],
            "backbone": spec["backbone"],
            "num_classes": num_classes,
            "model_kwargs": spec["model_kwargs"],
            "checkpoint_layout": spec["layout"],
            "mean": list(spec["mean"]),
            "std": list(spec["std"]),
            "amp": args.amp,
            "device": str(device),
            "overlay": not args.no_overlay,
            "skip_unreadable": args.skip_unreadable,
            "inputs": [str(Path(i).resolve()) for i in args.inputs],
            "contact_sheet": sheet.settings() if sheet is not None else None,
        },
        "versions": _versions(),
    }
    _remove_temporaries(out_dir)
    # From here until finish_manifest, the folder says "a run is writing (or died) here".
    begin_manifest(out_dir, producer)
    # An earlier run's sheet is not this run's (and a killed run must not leave one passing for it).
    (out_dir / CONTACT_SHEET_NAME).unlink(missing_ok=True)
    iterator: Any = images
    if not args.no_progress:
        try:
            from tqdm import tqdm

            iterator = tqdm(images, desc="predict", dynamic_ncols=True)
        except ImportError:
            pass
    try:
        written, skipped = _predict_each(iterator, model, spec, args, device, out_dir, sheet)
    except _Stop as exc:
        return _error(f"{exc}; stopped ({out_dir / MANIFEST_NAME} marks this run incomplete{exc.hint})")
    if not written:
        return _error(
            f"none of the {len(images)} image(s) could be read; nothing written "
            f"({out_dir / MANIFEST_NAME} marks this run incomplete)"
        )
    if sheet is not None:
        try:
            sheet.write(out_dir, producer)
        except OSError as exc:
            return _error(
                f"cannot write {str(out_dir / CONTACT_SHEET_NAME)!r}: {exc}; stopped "
                f"({out_dir / MANIFEST_NAME} marks this run incomplete)"
            )
    _sync(out_dir)
    finish_manifest(out_dir, images=written, num_classes=num_classes, producer=producer, skipped=skipped)
    print(f"wrote {num_classes} class maps for {len(written)} image(s) to {out_dir}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s) (listed in {out_dir / MANIFEST_NAME}):")
        for item in skipped:
            print(f"  {item['reason']}")
    if sheet is not None:
        print(
            f"wrote {out_dir / CONTACT_SHEET_NAME} ({len(sheet.rows)} image(s))"
            + (f"; no ground truth for {', '.join(sheet.without_gt)}" if sheet.without_gt else "")
        )
    stale = _stale_maps(out_dir, set(written), num_classes)
    if stale:
        print(
            f"note: {out_dir} also holds {stale} map(s) from an earlier run that this run did not "
            f"write; {MANIFEST_NAME} lists this run's images"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
