"""``dynfuse-predict``: run a trained edge detector over a folder of images and save its maps.

For every input image ``<name>.<ext>`` it writes

* ``<out>/class_XXX/<name>.png``: one 16-bit greyscale PNG per class (``XXX`` = 1-based class
  index, 3 digits) holding the class's edge probability ``round(65535 * sigmoid(fuse))``; this is
  the layout SEAL-style evaluation (``dynfuse-eval``) reads;
* ``<out>/overlay/<name>.png``: the image with its class-coloured edges blended in (RGB, 8-bit).

The checkpoint is a dynfuse training checkpoint (``checkpoint.pt`` / ``final.pt``, which records
the model, backbone and classes) or bare weights (``state_dict`` or the authors'
``{"state_dict": ...}``), for which ``--model``, ``--backbone`` and ``--num-classes`` say what to
build.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "IMAGE_EXTENSIONS",
    "class_palette",
    "colour_edges",
    "list_images",
    "load_model_for_inference",
    "main",
    "overlay_edges",
    "predict_probabilities",
    "save_probability_maps",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


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
        checkpoint: path of a dynfuse training checkpoint or of bare weights.
        model, backbone, num_classes, model_kwargs: required for bare weights; for a training
            checkpoint they must be None or agree with what it records.

    Returns:
        ``(model, spec)`` where ``spec`` holds ``model``, ``backbone``, ``num_classes``,
        ``model_kwargs`` and ``mean``/``std`` (the input normalisation).

    Raises:
        CheckpointError: unreadable file, missing specification or weights that do not fit.
    """
    from dynfuse.models import create_model
    from dynfuse.training.checkpoint import (
        CHECKPOINT_FORMAT,
        CheckpointError,
        extract_model_state,
        load_model_state,
    )

    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} (corrupt, truncated or not a torch file): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict")
    given = {"model": model, "backbone": backbone, "num_classes": num_classes}
    if obj.get("format") == CHECKPOINT_FORMAT:
        cfg = obj.get("config", {})
        spec = {k: cfg.get(k) for k in given}
        for key, value in given.items():
            if value is not None and value != spec[key]:
                raise CheckpointError(
                    f"--{key.replace('_', '-')} {value!r} disagrees with the checkpoint, which was "
                    f"trained with {key}={spec[key]!r}"
                )
        spec["model_kwargs"] = dict(cfg.get("model_kwargs") or {})
        if model_kwargs:
            spec["model_kwargs"].update(model_kwargs)
    else:
        missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is None]
        if missing:
            raise CheckpointError(
                f"{str(path)!r} holds bare weights without a model description: pass "
                + ", ".join(missing)
            )
        spec = dict(given)
        spec["model_kwargs"] = dict(model_kwargs or {})
    net = create_model(spec["model"], backbone=spec["backbone"], num_classes=spec["num_classes"],
                       pretrained_backbone=None, **spec["model_kwargs"])
    load_model_state(net, extract_model_state(obj))
    net.eval()
    spec["mean"], spec["std"] = _MEAN, _STD
    return net, spec


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files among ``inputs`` (files, or folders whose images are taken, sorted)."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(sorted(q for q in p.iterdir()
                                if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS))
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
        raise ValueError(f"cannot read image {str(path)!r}: {type(exc).__name__}: {exc}") from exc


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
    ctx = (torch.autocast(device_type=device.type, dtype=dtypes[amp]) if amp in dtypes
           else contextlib.nullcontext())
    with ctx:
        out = model(x)
    return torch.sigmoid(out.fuse[0].float()).cpu().numpy()


# ---------------------------------------------------------------- saving
def save_probability_maps(probs: np.ndarray, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``out_dir/class_XXX/<name>.png`` (16-bit, 1-based XXX) for each class of ``probs``.

    Args:
        probs: float (K, H, W) in [0, 1] (values outside are clipped).
    """
    from PIL import Image

    if probs.ndim != 3:
        raise ValueError(f"probs: expected (K, H, W), got shape {probs.shape}")
    q = np.rint(np.clip(probs, 0.0, 1.0) * 65535.0).astype(np.uint16)
    paths = []
    for k in range(q.shape[0]):
        folder = Path(out_dir) / f"class_{k + 1:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        Image.fromarray(q[k]).save(path)  # uint16 2-D array -> 16-bit greyscale PNG
        paths.append(path)
    return paths


def class_palette(num_classes: int) -> np.ndarray:
    """float32 (K, 3) RGB colours in [0, 1]: ``dynfuse.viz.palette_for`` (Cityscapes' colours for
    19 classes, PASCAL VOC's for 20, evenly spaced hues otherwise)."""
    from dynfuse.viz import palette_for

    return palette_for(num_classes).astype(np.float32) / 255.0


def colour_edges(probs: np.ndarray, palette: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Blend per-class probabilities into one colour edge map.

    Returns:
        ``(colour, strength)``: float32 (H, W, 3) probability-weighted mean class colour and
        float32 (H, W) edge strength ``max_k p_k``.
    """
    k = probs.shape[0]
    palette = class_palette(k) if palette is None else np.asarray(palette, dtype=np.float32)
    if palette.shape != (k, 3):
        raise ValueError(f"palette: expected ({k}, 3), got {palette.shape}")
    p = np.clip(probs.astype(np.float32), 0.0, 1.0)
    total = p.sum(axis=0)
    colour = np.einsum("khw,kc->hwc", p, palette) / np.maximum(total, 1e-6)[..., None]
    return colour, p.max(axis=0)


def overlay_edges(image: np.ndarray, probs: np.ndarray, *, alpha: float = 0.85,
                  dim: float = 0.5) -> np.ndarray:
    """uint8 (H, W, 3): the image, dimmed by ``dim``, with class-coloured edges on top."""
    colour, strength = colour_edges(probs)
    base = image.astype(np.float32) / 255.0 * dim
    a = (alpha * strength)[..., None]
    return np.rint(255.0 * ((1 - a) * base + a * colour)).clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------- command line
def build_parser(prog: str = "dynfuse-predict") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Save per-class 16-bit edge probability PNGs (class_XXX/<name>.png) and "
                    "class-coloured overlays for images.",
    )
    p.add_argument("checkpoint", help="dynfuse checkpoint (final.pt / checkpoint.pt) or weights")
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--output-dir", "-o", required=True)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    p.add_argument("--model", choices=("dff", "casenet"), default=None,
                   help="for bare weights: the architecture")
    p.add_argument("--backbone", default=None, help="for bare weights: resnet50, resnet101, tiny")
    p.add_argument("--num-classes", type=int, default=None, help="for bare weights")
    p.add_argument("--no-overlay", action="store_true", help="only write the probability maps")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dynfuse-predict``; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    from dynfuse.training.checkpoint import CheckpointError
    from dynfuse.training.distributed import resolve_device

    try:
        device = resolve_device(args.device)
        images = list_images(args.inputs)
        model, spec = load_model_for_inference(
            args.checkpoint, model=args.model, backbone=args.backbone,
            num_classes=args.num_classes)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"dynfuse-predict: error: {exc}", file=sys.stderr)
        return 2
    if not images:
        print(f"dynfuse-predict: error: no images ({', '.join(IMAGE_EXTENSIONS)}) in "
              f"{args.inputs}", file=sys.stderr)
        return 2
    model = model.to(device)
    out_dir = Path(args.output_dir)
    iterator: Any = images
    if not args.no_progress:
        try:
            from tqdm import tqdm

            iterator = tqdm(images, desc="predict", dynamic_ncols=True)
        except ImportError:
            pass
    from PIL import Image

    for path in iterator:
        try:
            image = read_image(path)
        except ValueError as exc:
            print(f"dynfuse-predict: error: {exc}", file=sys.stderr)
            return 2
        probs = predict_probabilities(model, image, device=device, amp=args.amp,
                                      mean=spec["mean"], std=spec["std"])
        save_probability_maps(probs, out_dir, path.stem)
        if not args.no_overlay:
            (out_dir / "overlay").mkdir(parents=True, exist_ok=True)
            Image.fromarray(overlay_edges(image, probs)).save(out_dir / "overlay" / f"{path.stem}.png")
    print(f"wrote {spec['num_classes']} class maps for {len(images)} image(s) to {out_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
