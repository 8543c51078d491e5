"""``dynfuse-prepare``: semantic edge ground truth from the datasets' own release files, no MATLAB.

``dynfuse-prepare cityscapes ROOT OUT``
    ROOT is the Cityscapes root (``leftImg8bit/`` and ``gtFine/`` with ``*_gtFine_labelIds.png``
    and ``*_gtFine_instanceIds.png``). Labels map to the 19 train ids; labelIds 2 (rectification
    border) and 3 (out of roi) are ignored when looking for boundaries; edges are
    instance-sensitive unless ``--no-instance`` (candidates then still come from instanceIds, as
    the authors' instance-insensitive GT). Writes
    ``OUT/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` (hard link, or copy),
    ``OUT/gtFine/<split>/<city>/<stem>_gtFine_edge.png`` and ``OUT/<split>.txt``.

``dynfuse-prepare sbd ROOT OUT``
    ROOT is the SBD ``dataset/`` folder (``img/*.jpg``, ``cls/*.mat``, ``inst/*.mat``,
    ``train.txt``, ``val.txt``). 20 classes; instance-sensitive edges from ``GTinst`` unless
    ``--no-instance`` (then from ``GTcls``). Training images are written at every offline scale
    (``--scales``, the paper's 0.5 0.75 1 1.25 1.5; segmentation resized first with MATLAB's
    ``imresize(seg, s, 'nearest')`` sampling (:mod:`dynfuse.data.resize`) *before* computing
    edges, image bicubic, as the authors do); val at scale 1. Writes
    ``OUT/image/<split>/scale_<s>/<name>.{png,jpg}``, ``OUT/edge/<split>/scale_<s>/<name>.png``
    and ``OUT/<split>.txt``.

``dynfuse-prepare cityscapes|sbd ROOT OUT --eval-gt``
    The evaluation GT the authors score on (:mod:`dynfuse.data.eval_gt`), default split ``val``:
    ``OUT/gt_eval/<variant>/<kind>/<split>/<name>.png`` with variant ``gt_thin`` / ``gt_raw``
    (Cityscapes, half resolution) or ``gt_orig_thin`` / ``gt_orig_raw`` (SBD), kind ``inst`` /
    ``cls``, and ``<name>`` the image's file name without extension (as ``dynfuse-predict`` names
    its maps), so each folder is a ``dynfuse-eval --gt-dir``. ``OUT/gt_eval/<split>.txt`` lists
    the names. The recipe has no options: ``--radius``, ``--no-instance``, ``--scales`` and
    ``--copy-images`` are refused.

All: edge radius 2 (``--radius``), ``--workers N`` processes, a progress bar, resumable (every
output is written to a temporary file and renamed, so an existing output is complete and is
skipped; ``--overwrite`` redoes everything), every input image is fully decoded (a truncated
file is an error), and every unreadable input is reported by name (a split's file list exists
only when no item of the split failed; exit status 1 otherwise).
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

from ..atomic import atomic_write, atomic_write_text
from .classes import CITYSCAPES_IGNORED_LABEL_IDS, CITYSCAPES_TRAIN_IDS, cityscapes_train_ids
from .codecs import write_edge_png
from .edges import mask_to_edges
from .eval_gt import (
    CITYSCAPES_EVAL_VARIANTS,
    EVAL_GT_KINDS,
    SBD_EVAL_VARIANTS,
    cityscapes_eval_gt,
    sbd_eval_gt_raw,
    sbd_eval_gt_thin,
)
from .resize import matlab_resize_nearest, matlab_resized_length

__all__ = [
    "main",
    "PrepareError",
    "CITYSCAPES_TRAIN_IDS",
    "cityscapes_train_ids",
    "EVAL_GT_DIR",
    "eval_gt_dir",
]

SETTINGS_FILE = "dynfuse_prepare.json"
EVAL_GT_DIR = "gt_eval"  # OUT/gt_eval/<variant>/<kind>/<split>/<name>.png
SBD_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


class PrepareError(RuntimeError):
    """An input that cannot be used; the message names the file."""


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


def _mat_struct(path: Path, struct: str) -> Any:
    import scipy.io

    try:
        mat = scipy.io.loadmat(os.fspath(path), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises several unrelated types for a bad file
        raise PrepareError(f"{path}: cannot read .mat file ({type(exc).__name__}: {exc})") from exc
    if struct not in mat:
        raise PrepareError(f"{path}: expected a struct {struct!r}")
    return mat[struct]


def _field(obj: Any, path: Path, struct: str, field: str) -> Any:
    if not hasattr(obj, field):
        raise PrepareError(f"{path}: expected a struct {struct!r} with a field {field!r}")
    return getattr(obj, field)


def _mat_field(path: Path, struct: str, field: str) -> Any:
    return _field(_mat_struct(path, struct), path, struct, field)


def _segmentation(obj: Any, path: Path, struct: str) -> np.ndarray:
    seg = np.asarray(_field(obj, path, struct, "Segmentation"))
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise PrepareError(f"{path}: {struct}.Segmentation must be a 2-D integer map")
    return seg.astype(np.int64)


def _sbd_segmentation(path: Path, struct: str) -> np.ndarray:
    return _segmentation(_mat_struct(path, struct), path, struct)


def _cell_list(value: Any) -> list[Any]:
    """A MATLAB cell array as loadmat(squeeze_me=True) gives it -> list (a 1-cell array is squeezed)."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return list(value.ravel())
    return [value]


def _load_image(path: Path, size: tuple[int, int], against: Path) -> Any:
    """Decode the whole image (a truncated file fails here) and compare its (H, W) with the label's.

    Returns:
        the loaded PIL image.
    """
    from PIL import Image

    if not path.is_file():
        raise PrepareError(f"{path}: image not found")
    try:
        with Image.open(path) as img:
            img.load()  # full decode: the header alone reads fine from a truncated PNG
            image = img.copy() if img.mode == "RGB" else img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise PrepareError(f"{path}: cannot read image ({exc})") from exc
    found = (image.size[1], image.size[0])
    if found != size:
        raise PrepareError(f"{path}: image size {found} differs from {against} size {size}")
    return image


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

    # Not durable: a hard link has no new content to sync, and fsync would need write access to
    # the (often read-only) dataset file.
    atomic_write(dst, write, durable=False)


# ---------------------------------------------------------------------------------------------
# Work items (top-level functions so that worker processes can run them)


def _read_label_pair(label_path: Path, instance_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Cityscapes (labelIds, instanceIds) of one image, each failure named."""
    for path in (label_path, instance_path):
        if not path.is_file():
            raise PrepareError(f"{path}: label file not found")
    label_ids = _read_png_array(label_path)
    instances = _read_png_array(instance_path)
    if instances.shape != label_ids.shape:
        raise PrepareError(
            f"{instance_path}: size {instances.shape} differs from {label_path} {label_ids.shape}"
        )
    return label_ids, instances


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

    def outputs(self) -> tuple[Path, ...]:
        return (self.image_dst, self.edge_dst)


def _do_cityscapes(item: _CityscapesItem) -> None:
    if item.image_dst.exists() and item.edge_dst.exists():
        return
    label_ids, instances = _read_label_pair(item.label_ids, item.instance_ids)
    _load_image(item.image_src, label_ids.shape, item.label_ids)
    _link_or_copy(item.image_src, item.image_dst, item.copy_images)
    if item.edge_dst.exists():
        return
    train_ids = cityscapes_train_ids(label_ids)
    ignore = np.isin(label_ids, CITYSCAPES_IGNORED_LABEL_IDS)
    if item.instance:
        edges = mask_to_edges(train_ids, 19, radius=item.radius, ignore=ignore, instance_map=instances)
    else:
        # The authors' instance-insensitive GT: candidates from instanceIds, classes only after.
        edges = mask_to_edges(train_ids, 19, radius=item.radius, ignore=ignore, candidate_map=instances)
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

    def outputs(self) -> tuple[Path, ...]:
        return (self.image_dst, self.edge_dst)


def _sbd_labels(item: _SBDItem) -> tuple[np.ndarray, np.ndarray | None]:
    """(label map 0..19 or -1, instance map or None) at full resolution."""
    if item.instance:
        obj = _mat_struct(item.mat, "GTinst")
        seg = _segmentation(obj, item.mat, "GTinst")
        categories = np.atleast_1d(np.asarray(_field(obj, item.mat, "GTinst", "Categories")))
        categories = categories.astype(np.int64).ravel()
        lut = np.full(max(int(seg.max(initial=0)), categories.size) + 1, -1, dtype=np.int64)
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
    size = (matlab_resized_length(h, item.scale), matlab_resized_length(w, item.scale))
    image = _load_image(item.image_src, (h, w), item.mat)
    if not item.image_dst.exists():
        if item.scale == 1.0:
            _link_or_copy(item.image_src, item.image_dst, item.copy_images)
        else:
            resized = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            atomic_write(item.image_dst, lambda tmp: resized.save(tmp, format="PNG"))
    if not item.edge_dst.exists():
        # The segmentation is rescaled first, as MATLAB's imresize(seg, s, 'nearest') samples it.
        labels = matlab_resize_nearest(labels, item.scale)
        if instances is not None:
            instances = matlab_resize_nearest(instances, item.scale)
        edges = mask_to_edges(labels, 20, radius=item.radius, instance_map=instances)
        write_edge_png(item.edge_dst, edges)


# Evaluation GT: one item per image writes every (variant, kind) map that is missing.


@dataclass(frozen=True)
class _CityscapesEvalItem:
    label_ids: Path
    instance_ids: Path
    targets: tuple[tuple[str, str, Path], ...]  # (variant, kind, output PNG)

    def outputs(self) -> tuple[Path, ...]:
        return tuple(p for _, _, p in self.targets)


def _do_cityscapes_eval(item: _CityscapesEvalItem) -> None:
    todo = [t for t in item.targets if not t[2].exists()]
    if not todo:
        return
    label_ids, instances = _read_label_pair(item.label_ids, item.instance_ids)
    variants = tuple(v for v in CITYSCAPES_EVAL_VARIANTS if any(t[0] == v for t in todo))
    maps = cityscapes_eval_gt(label_ids, instances, variants)
    for variant, kind, path in todo:
        write_edge_png(path, maps[(variant, kind)])


@dataclass(frozen=True)
class _SBDEvalItem:
    cls_mat: Path
    inst_mat: Path
    targets: tuple[tuple[str, str, Path], ...]

    def outputs(self) -> tuple[Path, ...]:
        return tuple(p for _, _, p in self.targets)


def _do_sbd_eval(item: _SBDEvalItem) -> None:
    todo = [t for t in item.targets if not t[2].exists()]
    if not todo:
        return
    cls = _mat_struct(item.cls_mat, "GTcls")
    inst = _mat_struct(item.inst_mat, "GTinst")
    categories = _field(inst, item.inst_mat, "GTinst", "Categories")
    where = f"{item.cls_mat} / {item.inst_mat}"
    maps: dict[tuple[str, str], np.ndarray] = {}
    try:
        if any(t[0] == "gt_orig_thin" for t in todo):
            thin = sbd_eval_gt_thin(
                _cell_list(_field(cls, item.cls_mat, "GTcls", "Boundaries")),
                _cell_list(_field(inst, item.inst_mat, "GTinst", "Boundaries")),
                categories,
            )
            maps.update({("gt_orig_thin", k): v for k, v in thin.items()})
        if any(t[0] == "gt_orig_raw" for t in todo):
            raw = sbd_eval_gt_raw(
                _segmentation(cls, item.cls_mat, "GTcls"),
                _segmentation(inst, item.inst_mat, "GTinst"),
                categories,
            )
            maps.update({("gt_orig_raw", k): v for k, v in raw.items()})
    except ValueError as exc:
        raise PrepareError(f"{where}: {exc}") from exc
    for variant, kind, path in todo:
        write_edge_png(path, maps[(variant, kind)])


def _run_item(job: tuple[Callable[[Any], None], Any]) -> str | None:
    func, item = job
    try:
        func(item)
    except PrepareError as exc:
        return str(exc)
    except Exception as exc:  # report and go on; the message names the item
        return f"{item.outputs()[-1]}: {type(exc).__name__}: {exc}"
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
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _write_list(path: Path, rows: Iterable[tuple[Path, Path]], root: Path) -> None:
    lines = [f"{a.relative_to(root).as_posix()} {b.relative_to(root).as_posix()}\n" for a, b in rows]
    atomic_write_text(path, "".join(lines))


def _start_split(list_path: Path, items: Sequence[Any], overwrite: bool) -> None:
    """A split's list exists only while the split is complete: drop it until this run ends well."""
    if list_path.exists():
        list_path.unlink()
    if overwrite:
        _remove_outputs(items)


def _remove_outputs(items: Sequence[Any]) -> None:
    for item in items:
        for p in item.outputs():
            if p.exists():
                p.unlink()


_CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"


def _cityscapes_images(root: Path, split: str) -> list[tuple[Path, str, str]]:
    """(image, city, stem) of every ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png``, sorted."""
    suffix = _CITYSCAPES_IMAGE_SUFFIX
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise PrepareError(f"{image_dir}: not found (is ROOT the Cityscapes root?)")
    found = [
        (image, image.parent.name, image.name[: -len(suffix)])
        for image in sorted(image_dir.glob(f"*/*{suffix}"))
    ]
    if not found:
        raise PrepareError(f"{image_dir}: no */*{suffix} images found")
    return found


def _sbd_names(root: Path, split: str) -> list[str]:
    list_path = root / f"{split}.txt"
    try:
        names = [n.strip() for n in list_path.read_text(encoding="utf-8").split() if n.strip()]
    except OSError as exc:
        raise PrepareError(f"{list_path}: cannot read the SBD file list ({exc})") from exc
    if not names:
        raise PrepareError(f"{list_path}: the SBD file list is empty")
    return names


def _cityscapes_items(args: argparse.Namespace) -> dict[str, list[_CityscapesItem]]:
    root, out = Path(args.root), Path(args.out)
    per_split: dict[str, list[_CityscapesItem]] = {}
    for split in args.splits:
        items = []
        for image, city, stem in _cityscapes_images(root, split):
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
        per_split[split] = items
    return per_split


def _sbd_items(args: argparse.Namespace) -> dict[str, list[_SBDItem]]:
    root, out = Path(args.root), Path(args.out)
    mat_dir = root / ("inst" if args.instance else "cls")
    if not mat_dir.is_dir():
        raise PrepareError(f"{mat_dir}: not found (is ROOT the SBD 'dataset' folder?)")
    per_split: dict[str, list[_SBDItem]] = {}
    for split in args.splits:
        names = _sbd_names(root, split)
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


def eval_gt_dir(out: str | os.PathLike[str], variant: str, kind: str, split: str) -> Path:
    """Folder of one evaluation-GT set: ``OUT/gt_eval/<variant>/<kind>/<split>`` (``--gt-dir``)."""
    return Path(out) / EVAL_GT_DIR / variant / kind / split


def _targets(
    out: Path, variants: Sequence[str], split: str, filename: str
) -> tuple[tuple[str, str, Path], ...]:
    return tuple(
        (variant, kind, eval_gt_dir(out, variant, kind, split) / filename)
        for variant in variants
        for kind in EVAL_GT_KINDS
    )


def _cityscapes_eval_items(args: argparse.Namespace) -> dict[str, list[_CityscapesEvalItem]]:
    root, out = Path(args.root), Path(args.out)
    per_split: dict[str, list[_CityscapesEvalItem]] = {}
    for split in args.splits:
        items = []
        for _, city, stem in _cityscapes_images(root, split):
            gt = root / "gtFine" / split / city
            # Named as the image minus its extension, as dynfuse-predict names its maps.
            filename = f"{stem}{_CITYSCAPES_IMAGE_SUFFIX}"
            items.append(
                _CityscapesEvalItem(
                    label_ids=gt / f"{stem}_gtFine_labelIds.png",
                    instance_ids=gt / f"{stem}_gtFine_instanceIds.png",
                    targets=_targets(out, CITYSCAPES_EVAL_VARIANTS, split, filename),
                )
            )
        per_split[split] = items
    return per_split


def _sbd_eval_items(args: argparse.Namespace) -> dict[str, list[_SBDEvalItem]]:
    root, out = Path(args.root), Path(args.out)
    for sub in ("cls", "inst"):
        if not (root / sub).is_dir():
            raise PrepareError(f"{root / sub}: not found (is ROOT the SBD 'dataset' folder?)")
    return {
        split: [
            _SBDEvalItem(
                cls_mat=root / "cls" / f"{name}.mat",
                inst_mat=root / "inst" / f"{name}.mat",
                targets=_targets(out, SBD_EVAL_VARIANTS, split, f"{name}.png"),
            )
            for name in _sbd_names(root, split)
        ]
        for split in args.splits
    }


def _report_split(split: str, items: Sequence[Any], errors: list[str], list_path: Path) -> bool:
    """Print the split's errors; True when it is complete (then its list may be written)."""
    for err in sorted(set(errors)):  # one file can fail several items (SBD scales)
        print(f"dynfuse-prepare: error: {err}", file=sys.stderr)
    if errors:
        print(
            f"dynfuse-prepare: {len(errors)} of {len(items)} {split} items failed; "
            f"{list_path} not written. Fix them and rerun (finished items are skipped).",
            file=sys.stderr,
        )
        return False
    return True


def _prepare(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not Path(args.root).is_dir():
        raise PrepareError(f"{args.root}: ROOT is not a directory")
    num_classes = 19 if args.dataset == "cityscapes" else 20
    if args.eval_gt:
        return _prepare_eval_gt(args, out, num_classes)
    settings: dict[str, Any] = {
        "dataset": args.dataset,
        "format": "rgb-bitpacked-png",
        "num_classes": num_classes,
        "radius": args.radius,
        "instance_sensitive": args.instance,
    }
    if args.dataset == "cityscapes":
        if not args.instance:
            settings["candidates"] = "instanceIds"  # the authors' instance-insensitive recipe
        per_split: dict[str, list[Any]] = _cityscapes_items(args)
        func: Callable[[Any], None] = _do_cityscapes
    else:
        settings["train_scales"] = list(args.scales)
        settings["label_resize"] = "matlab-nearest"
        per_split = _sbd_items(args)
        func = _do_sbd
    _check_settings(out, settings, args.overwrite)
    failed = 0
    for split, items in per_split.items():
        list_path = out / f"{split}.txt"
        _start_split(list_path, items, args.overwrite)
        errors = _run_all(func, items, args.workers, f"{args.dataset} {split}", args.quiet)
        failed += len(errors)
        if _report_split(split, items, errors, list_path):
            _write_list(list_path, ((i.image_dst, i.edge_dst) for i in items), out)
            if not args.quiet:
                print(f"dynfuse-prepare: {split}: {len(items)} items -> {list_path}")
    return 1 if failed else 0


def _prepare_eval_gt(args: argparse.Namespace, out: Path, num_classes: int) -> int:
    gt_root = out / EVAL_GT_DIR
    if args.dataset == "cityscapes":
        variants: tuple[str, ...] = CITYSCAPES_EVAL_VARIANTS
        per_split: dict[str, list[Any]] = _cityscapes_eval_items(args)
        func: Callable[[Any], None] = _do_cityscapes_eval
        recipe = "data/cityscapes-preprocess/code/demoGenGT.m"
    else:
        variants = SBD_EVAL_VARIANTS
        per_split = _sbd_eval_items(args)
        func = _do_sbd_eval
        recipe = "data/sbd-preprocess/code/demoGenGT.m"
    settings = {
        "dataset": args.dataset,
        "format": "rgb-bitpacked-png",
        "num_classes": num_classes,
        "eval_gt": {"recipe": recipe, "variants": list(variants), "kinds": list(EVAL_GT_KINDS)},
    }
    _check_settings(gt_root, settings, args.overwrite)
    failed = 0
    for split, items in per_split.items():
        list_path = gt_root / f"{split}.txt"
        _start_split(list_path, items, args.overwrite)
        errors = _run_all(func, items, args.workers, f"{args.dataset} eval GT {split}", args.quiet)
        failed += len(errors)
        if _report_split(split, items, errors, list_path):
            names = [item.targets[0][2].name[: -len(".png")] for item in items]
            atomic_write_text(list_path, "".join(f"{n}\n" for n in names))
            if not args.quiet:
                for variant in variants:
                    for kind in EVAL_GT_KINDS:
                        print(
                            f"dynfuse-prepare: {split}: {len(items)} GT maps -> "
                            f"{eval_gt_dir(out, variant, kind, split)}"
                        )
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
        "lists from Cityscapes or SBD release files: training labels, or with --eval-gt the "
        "evaluation GT the DFF authors score on.",
    )
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="{cityscapes,sbd}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("root", metavar="ROOT", help="the dataset's release folder")
        p.add_argument("out", metavar="OUT", help="output folder (the datasets' root)")
        p.add_argument(
            "--eval-gt",
            action="store_true",
            help=f"write the authors' evaluation GT instead of training labels: "
            f"OUT/{EVAL_GT_DIR}/<variant>/{{cls,inst}}/<split>/<name>.png (default split: val)",
        )
        p.add_argument("--radius", type=float, default=None, help="edge radius (default 2)")
        p.add_argument(
            "--no-instance",
            dest="instance",
            action="store_false",
            default=None,
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
            default=None,
            help="copy images (default: a hard link where possible)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument(
            "--splits",
            type=_splits,
            default=None,
            help="default: train,val (with --eval-gt: val)",
        )

    city = sub.add_parser("cityscapes", help="Cityscapes gtFine -> 19-class edges")
    common(city)
    sbd = sub.add_parser("sbd", help="SBD cls/inst .mat -> 20-class edges")
    common(sbd)
    sbd.add_argument(
        "--scales",
        type=_scales,
        default=None,
        help="offline scales of the train split (default: 0.5,0.75,1,1.25,1.5; val uses 1)",
    )
    return parser


def _resolve(args: argparse.Namespace) -> str | None:
    """Fill the mode-dependent defaults; an error message for a flag the mode does not use."""
    if args.eval_gt:
        # The evaluation GT follows the authors' recipe exactly: nothing of it is a setting.
        given = [
            flag
            for flag, value in (
                ("--radius", args.radius),
                ("--no-instance", args.instance),
                ("--copy-images", args.copy_images),
                ("--scales", getattr(args, "scales", None)),
            )
            if value is not None
        ]
        if given:
            return (
                f"{', '.join(given)} cannot be used with --eval-gt (it writes the authors' recipe: "
                "both cls/ and inst/, their radii and scales, no images)"
            )
        args.splits = args.splits or ("val",)
        return None
    args.radius = 2.0 if args.radius is None else args.radius
    args.instance = True if args.instance is None else args.instance
    args.copy_images = bool(args.copy_images)
    args.splits = args.splits or ("train", "val")
    if args.dataset == "sbd":
        args.scales = args.scales or SBD_SCALES
    if not (args.radius >= 0 and math.isfinite(args.radius)):
        return "--radius must be a finite number >= 0"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dynfuse-prepare``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print("dynfuse-prepare: error: --workers must be >= 1", file=sys.stderr)
        return 2
    problem = _resolve(args)
    if problem:
        print(f"dynfuse-prepare: error: {problem}", file=sys.stderr)
        return 2
    try:
        return _prepare(args)
    except PrepareError as exc:
        print(f"dynfuse-prepare: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
