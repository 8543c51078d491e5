"""``dynfuse-prepare``: semantic edge ground truth from the datasets' own release files, no MATLAB.

``dynfuse-prepare cityscapes ROOT OUT``
    ROOT is the Cityscapes root (``leftImg8bit/`` and ``gtFine/`` with ``*_gtFine_labelIds.png``
    and ``*_gtFine_instanceIds.png``). Labels map to the 19 train ids; labelIds 2 (rectification
    border) and 3 (out of roi) are ignored when looking for boundaries; edges are
    instance-sensitive unless ``--no-instance``. Writes
    ``OUT/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` (hard link, or copy),
    ``OUT/gtFine/<split>/<city>/<stem>_gtFine_edge.png`` and ``OUT/<split>.txt``.

``dynfuse-prepare sbd ROOT OUT``
    ROOT is the SBD ``dataset/`` folder (``img/*.jpg``, ``cls/*.mat``, ``inst/*.mat``,
    ``train.txt``, ``val.txt``). 20 classes; instance-sensitive edges from ``GTinst`` unless
    ``--no-instance`` (then from ``GTcls``). Training images are written at every offline scale
    (``--scales``, the paper's 0.5 0.75 1 1.25 1.5; segmentation resized with nearest neighbour
    *before* computing edges, image bicubic, as the authors do); val at scale 1. Writes
    ``OUT/image/<split>/scale_<s>/<name>.{png,jpg}``, ``OUT/edge/<split>/scale_<s>/<name>.png``
    and ``OUT/<split>.txt``.

Both: edge radius 2 (``--radius``), ``--workers N`` processes, a progress bar, resumable (every
output is written to a temporary file and renamed, so an existing output is complete and is
skipped; ``--overwrite`` redoes everything), and every unreadable input is reported by name
(the file lists are written only when no item failed; exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from .codecs import atomic_write, write_edge_png
from .edges import mask_to_edges

__all__ = ["main", "PrepareError", "CITYSCAPES_TRAIN_IDS", "cityscapes_train_ids"]

SETTINGS_FILE = "dynfuse_prepare.json"

# Cityscapes labelId -> trainId (the official table; everything else -> 255 = no class).
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_IGNORED_LABEL_IDS = (2, 3)  # rectification border, out of roi
SBD_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


class PrepareError(RuntimeError):
    """An input that cannot be used; the message names the file."""


def cityscapes_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """(H, W) Cityscapes labelIds -> (H, W) int64 train ids (255 = no class)."""
    lut = np.full(256, 255, dtype=np.int64)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut[np.clip(label_ids.astype(np.int64), 0, 255)]


# ---------------------------------------------------------------------------------------------
# Reading inputs, each failure named


def _read_png_array(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise PrepareError(f"{path}: cannot read ({exc})") from exc
    if arr.ndim != 2:
        raise PrepareError(f"{path}: expected a single-channel label image, got shape {arr.shape}")
    return arr


def _mat_field(path: Path, struct: str, field: str) -> Any:
    import scipy.io

    try:
        mat = scipy.io.loadmat(os.fspath(path), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises several unrelated types for a bad file
        raise PrepareError(f"{path}: cannot read .mat file ({type(exc).__name__}: {exc})") from exc
    if struct not in mat or not hasattr(mat[struct], field):
        raise PrepareError(f"{path}: expected a struct {struct!r} with a field {field!r}")
    return getattr(mat[struct], field)


def _sbd_segmentation(path: Path, struct: str) -> np.ndarray:
    seg = np.asarray(_mat_field(path, struct, "Segmentation"))
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise PrepareError(f"{path}: {struct}.Segmentation must be a 2-D integer map")
    return seg.astype(np.int64)


def _resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if arr.shape == size:
        return arr
    img = Image.fromarray(arr.astype(np.int32), mode="I")
    return np.asarray(img.resize((size[1], size[0]), Image.NEAREST)).astype(np.int64)


def _check_image(path: Path, size: tuple[int, int], against: Path) -> None:
    """Open the image header (cheap) and compare its (H, W) with the label's."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            found = (img.size[1], img.size[0])
    except (OSError, ValueError, SyntaxError) as exc:
        raise PrepareError(f"{path}: cannot read image ({exc})") from exc
    if found != size:
        raise PrepareError(f"{path}: image size {found} differs from {against} size {size}")


def _link_or_copy(src: Path, dst: Path, copy: bool) -> None:
    if dst.exists():
        return
    if not src.is_file():
        raise PrepareError(f"{src}: image not found")

    def write(tmp: str) -> None:
        if not copy:
            os.unlink(tmp)
            try:
                os.link(src, tmp)
                return
            except OSError:
                pass  # another file system, or no hard links: copy instead
        shutil.copyfile(src, tmp)

    atomic_write(dst, write)


# ---------------------------------------------------------------------------------------------
# Work items (top-level functions so that worker processes can run them)


@dataclass(frozen=True)
class _CityscapesItem:
    image_src: Path
    label_ids: Path
    instance_ids: Path
    image_dst: Path
    edge_dst: Path
    radius: float
    instance: bool
    copy_images: bool


def _do_cityscapes(item: _CityscapesItem) -> None:
    if item.image_dst.exists() and item.edge_dst.exists():
        return
    if not item.label_ids.is_file():
        raise PrepareError(f"{item.label_ids}: label file not found")
    label_ids = _read_png_array(item.label_ids)
    _check_image(item.image_src, label_ids.shape, item.label_ids)
    _link_or_copy(item.image_src, item.image_dst, item.copy_images)
    if item.edge_dst.exists():
        return
    train_ids = cityscapes_train_ids(label_ids)
    ignore = np.isin(label_ids, CITYSCAPES_IGNORED_LABEL_IDS)
    instances = None
    if item.instance:
        instances = _read_png_array(item.instance_ids)
        if instances.shape != label_ids.shape:
            raise PrepareError(
                f"{item.instance_ids}: size {instances.shape} differs from {item.label_ids} "
                f"{label_ids.shape}"
            )
    edges = mask_to_edges(train_ids, 19, radius=item.radius, ignore=ignore, instance_map=instances)
    write_edge_png(item.edge_dst, edges)


@dataclass(frozen=True)
class _SBDItem:
    name: str
    image_src: Path
    mat: Path
    scale: float
    image_dst: Path
    edge_dst: Path
    radius: float
    instance: bool
    copy_images: bool


def _sbd_labels(item: _SBDItem) -> tuple[np.ndarray, np.ndarray | None]:
    """(label map 0..19 or -1, instance map or None) at full resolution."""
    if item.instance:
        seg = _sbd_segmentation(item.mat, "GTinst")
        categories = np.atleast_1d(np.asarray(_mat_field(item.mat, "GTinst", "Categories")))
        categories = categories.astype(np.int64).ravel()
        lut = np.full(max(int(seg.max()), categories.size) + 1, -1, dtype=np.int64)
        lut[1 : categories.size + 1] = categories - 1  # instance i (1-based) -> class 0-based
        labels = lut[np.clip(seg, 0, lut.size - 1)]
        labels[(labels < 0) | (labels >= 20)] = -1
        return labels, seg
    seg = _sbd_segmentation(item.mat, "GTcls")
    labels = seg - 1
    labels[(labels < 0) | (labels >= 20)] = -1
    return labels, None


def _do_sbd(item: _SBDItem) -> None:
    if item.image_dst.exists() and item.edge_dst.exists():
        return
    from PIL import Image

    labels, instances = _sbd_labels(item)
    h, w = labels.shape
    # MATLAB's imresize(x, s) output size: ceil(s * size).
    size = (max(1, math.ceil(h * item.scale)), max(1, math.ceil(w * item.scale)))
    _check_image(item.image_src, (h, w), item.mat)
    if not item.image_dst.exists():
        if item.scale == 1.0:
            _link_or_copy(item.image_src, item.image_dst, item.copy_images)
        else:
            try:
                with Image.open(item.image_src) as img:
                    image = img.convert("RGB")
            except (OSError, ValueError, SyntaxError) as exc:
                raise PrepareError(f"{item.image_src}: cannot read image ({exc})") from exc
            resized = image.resize((size[1], size[0]), Image.BICUBIC)
            atomic_write(item.image_dst, lambda tmp: resized.save(tmp, format="PNG"))
    if not item.edge_dst.exists():
        labels = _resize_nearest(labels, size)
        if instances is not None:
            instances = _resize_nearest(instances, size)
        edges = mask_to_edges(labels, 20, radius=item.radius, instance_map=instances)
        write_edge_png(item.edge_dst, edges)


def _run_item(job: tuple[Callable[[Any], None], Any]) -> str | None:
    func, item = job
    try:
        func(item)
    except PrepareError as exc:
        return str(exc)
    except Exception as exc:  # report and go on; the message names the item
        return f"{getattr(item, 'edge_dst', item)}: {type(exc).__name__}: {exc}"
    return None


def _run_all(
    func: Callable[[Any], None], items: Sequence[Any], workers: int, desc: str, quiet: bool
) -> list[str]:
    from tqdm import tqdm

    jobs = [(func, item) for item in items]
    errors: list[str] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=quiet, file=sys.stderr)
    try:
        if workers <= 1 or len(jobs) <= 1:
            results: Iterable[str | None] = map(_run_item, jobs)
            for err in results:
                if err:
                    errors.append(err)
                bar.update()
        else:
            with get_context("fork" if sys.platform != "win32" else "spawn").Pool(workers) as pool:
                for err in pool.imap_unordered(_run_item, jobs, chunksize=1):
                    if err:
                        errors.append(err)
                    bar.update()
    finally:
        bar.close()
    return sorted(errors)


# ---------------------------------------------------------------------------------------------
# Settings (resume safety) and file lists


def _check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    path = out / SETTINGS_FILE
    if path.exists() and not overwrite:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PrepareError(f"{path}: cannot read ({exc}); use --overwrite") from exc
        if old != settings:
            raise PrepareError(
                f"{path}: OUT was prepared with other settings {old}; now {settings}. "
                "Use another OUT or --overwrite."
            )
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _write_list(path: Path, rows: Iterable[tuple[Path, Path]], root: Path) -> None:
    lines = [
        f"{a.relative_to(root).as_posix()} {b.relative_to(root).as_posix()}\n" for a, b in rows
    ]
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8"))


def _remove_outputs(items: Sequence[Any]) -> None:
    for item in items:
        for p in (item.image_dst, item.edge_dst):
            if p.exists():
                p.unlink()


def _cityscapes_items(args: argparse.Namespace) -> dict[str, list[_CityscapesItem]]:
    root, out = Path(args.root), Path(args.out)
    suffix = "_leftImg8bit.png"
    per_split: dict[str, list[_CityscapesItem]] = {}
    for split in args.splits:
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise PrepareError(f"{image_dir}: not found (is ROOT the Cityscapes root?)")
        items = []
        for image in sorted(image_dir.glob(f"*/*{suffix}")):
            city = image.parent.name
            stem = image.name[: -len(suffix)]
            gt = root / "gtFine" / split / city
            items.append(
                _CityscapesItem(
                    image_src=image,
                    label_ids=gt / f"{stem}_gtFine_labelIds.png",
                    instance_ids=gt / f"{stem}_gtFine_instanceIds.png",
                    image_dst=out / "leftImg8bit" / split / city / image.name,
                    edge_dst=out / "gtFine" / split / city / f"{stem}_gtFine_edge.png",
                    radius=args.radius,
                    instance=args.instance,
                    copy_images=args.copy_images,
                )
            )
        if not items:
            raise PrepareError(f"{image_dir}: no */*{suffix} images found")
        per_split[split] = items
    return per_split


def _sbd_items(args: argparse.Namespace) -> dict[str, list[_SBDItem]]:
    root, out = Path(args.root), Path(args.out)
    mat_dir = root / ("inst" if args.instance else "cls")
    if not mat_dir.is_dir():
        raise PrepareError(f"{mat_dir}: not found (is ROOT the SBD 'dataset' folder?)")
    per_split: dict[str, list[_SBDItem]] = {}
    for split in args.splits:
        list_path = root / f"{split}.txt"
        try:
            names = [n.strip() for n in list_path.read_text(encoding="utf-8").split() if n.strip()]
        except OSError as exc:
            raise PrepareError(f"{list_path}: cannot read the SBD file list ({exc})") from exc
        if not names:
            raise PrepareError(f"{list_path}: the SBD file list is empty")
        scales = args.scales if split == "train" else (1.0,)
        items = []
        for name in names:
            for scale in scales:
                tag = f"scale_{scale:g}"
                ext = ".jpg" if scale == 1.0 else ".png"
                items.append(
                    _SBDItem(
                        name=name,
                        image_src=root / "img" / f"{name}.jpg",
                        mat=mat_dir / f"{name}.mat",
                        scale=float(scale),
                        image_dst=out / "image" / split / tag / f"{name}{ext}",
                        edge_dst=out / "edge" / split / tag / f"{name}.png",
                        radius=args.radius,
                        instance=args.instance,
                        copy_images=args.copy_images,
                    )
                )
        per_split[split] = items
    return per_split


def _prepare(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not Path(args.root).is_dir():
        raise PrepareError(f"{args.root}: ROOT is not a directory")
    settings: dict[str, Any] = {
        "dataset": args.dataset,
        "format": "rgb-bitpacked-png",
        "num_classes": 19 if args.dataset == "cityscapes" else 20,
        "radius": args.radius,
        "instance_sensitive": args.instance,
    }
    if args.dataset == "cityscapes":
        per_split: dict[str, list[Any]] = _cityscapes_items(args)
        func: Callable[[Any], None] = _do_cityscapes
    else:
        settings["train_scales"] = list(args.scales)
        per_split = _sbd_items(args)
        func = _do_sbd
    _check_settings(out, settings, args.overwrite)
    failed = 0
    for split, items in per_split.items():
        if args.overwrite:
            _remove_outputs(items)
        errors = _run_all(func, items, args.workers, f"{args.dataset} {split}", args.quiet)
        for err in sorted(set(errors)):  # one file can fail several items (SBD scales)
            print(f"dynfuse-prepare: error: {err}", file=sys.stderr)
        failed += len(errors)
        if errors:
            print(
                f"dynfuse-prepare: {len(errors)} of {len(items)} {split} items failed; "
                f"{out / (split + '.txt')} not written. Fix them and rerun (finished items "
                "are skipped).",
                file=sys.stderr,
            )
            continue
        _write_list(out / f"{split}.txt", ((i.image_dst, i.edge_dst) for i in items), out)
        if not args.quiet:
            print(f"dynfuse-prepare: {split}: {len(items)} items -> {out / (split + '.txt')}")
    return 1 if failed else 0


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in text.replace(",", " ").split())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.5,1,1.5, got {text!r}") from exc
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive scales, got {text!r}")
    return values


def _splits(text: str) -> tuple[str, ...]:
    values = tuple(s for s in text.replace(",", " ").split() if s)
    if not values:
        raise argparse.ArgumentTypeError("expected split names like train,val")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynfuse-prepare",
        description="Make multi-label semantic edge ground truth (bit-packed RGB PNGs) and file "
        "lists from Cityscapes or SBD release files.",
    )
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="{cityscapes,sbd}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("root", metavar="ROOT", help="the dataset's release folder")
        p.add_argument("out", metavar="OUT", help="output folder (the datasets' root)")
        p.add_argument("--radius", type=float, default=2.0, help="edge radius (default 2)")
        p.add_argument(
            "--no-instance",
            dest="instance",
            action="store_false",
            help="class boundaries only (default: instance-sensitive edges)",
        )
        p.add_argument(
            "--workers",
            type=int,
            default=max(1, min(8, os.cpu_count() or 1)),
            help="worker processes (default: CPUs, at most 8)",
        )
        p.add_argument("--overwrite", action="store_true", help="redo finished outputs")
        p.add_argument(
            "--copy-images",
            action="store_true",
            help="copy images (default: a hard link where possible)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    city = sub.add_parser("cityscapes", help="Cityscapes gtFine -> 19-class edges")
    common(city)
    city.add_argument(
        "--splits", type=_splits, default=("train", "val"), help="default: train,val"
    )
    sbd = sub.add_parser("sbd", help="SBD cls/inst .mat -> 20-class edges")
    common(sbd)
    sbd.add_argument("--splits", type=_splits, default=("train", "val"), help="default: train,val")
    sbd.add_argument(
        "--scales",
        type=_scales,
        default=SBD_SCALES,
        help="offline scales of the train split (default: 0.5,0.75,1,1.25,1.5; val uses 1)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dynfuse-prepare``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print("dynfuse-prepare: error: --workers must be >= 1", file=sys.stderr)
        return 2
    if not (args.radius >= 0 and math.isfinite(args.radius)):
        print("dynfuse-prepare: error: --radius must be a finite number >= 0", file=sys.stderr)
        return 2
    try:
        return _prepare(args)
    except PrepareError as exc:
        print(f"dynfuse-prepare: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
