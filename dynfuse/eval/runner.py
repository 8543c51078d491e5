"""Evaluate a folder of predictions against a folder of ground truth.

Per image the (K, T, 4) counts are cached on disk (``<out>/cache/<name>.npz``). An entry is
reused only when its key matches: the settings' fingerprint, the class count, and the size,
``mtime_ns``, ``ctime_ns`` and inode of every file it was computed from (the GT PNG, the K
prediction PNGs, the segmentation PNG with ``kill_internal``). So an interrupted run resumes where
it stopped, a finished one is re-scored instantly, and replaced predictions are scored again
(only the images whose files changed). Images run in parallel over CPU processes with a tqdm
progress bar. The output folder gets ``summary.json`` (settings, per-class and mean scores, PR
curves, warnings) and one ``pr_class_XXX.csv`` per class (threshold, recall, precision, F); every
file is written atomically (:mod:`dynfuse.atomic`), and the previous run's summary and CSVs are
removed first, so a failed run never leaves an older result that looks current.

Before scoring, the prediction folder's ``manifest.json`` (:mod:`.manifest`) is checked: a folder
whose prediction run did not complete, that was made for another class count, or that lacks
images being scored, is refused; a folder without a manifest (made by another tool) is scored
with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .api import EvalResult, EvalWarning, _gt_eval_size, _run_jobs, aggregate, evaluate_image, resize_notice
from .io import class_dir_name, list_names, prediction_class_folders, read_gt_png, read_prediction
from .manifest import MANIFEST_NAME, ManifestError, check_manifest
from .metrics import f_measure
from .settings import EvalSettings

__all__ = ["FolderSpec", "evaluate_folder", "write_outputs"]

_CACHE_VERSION = 2


@dataclass(frozen=True)
class FolderSpec:
    """Where the files are.

    Attributes:
        pred_dir: holds ``class_XXX/<name><pred_suffix>`` per class.
        gt_dir: holds ``<name><gt_suffix>`` bit-packed RGB PNGs.
        num_classes: K.
        gt_suffix, pred_suffix: file name endings (e.g. SEAL Cityscapes
            ``_gtProc_edge.png`` / ``_leftImg8bit.png``).
        seg_dir, seg_suffix: class-index PNGs for ``kill_internal``.
    """

    pred_dir: str
    gt_dir: str
    num_classes: int
    gt_suffix: str = ".png"
    pred_suffix: str = ".png"
    seg_dir: str | None = None
    seg_suffix: str = ".png"


def _input_files(spec: FolderSpec, name: str, settings: EvalSettings) -> list[Path]:
    files = [Path(spec.gt_dir) / f"{name}{spec.gt_suffix}"]
    files += [
        Path(spec.pred_dir) / class_dir_name(k) / f"{name}{spec.pred_suffix}" for k in range(spec.num_classes)
    ]
    if settings.kill_internal and spec.seg_dir is not None:
        files.append(Path(spec.seg_dir) / f"{name}{spec.seg_suffix}")
    return files


def cache_key(spec: FolderSpec, name: str, settings: EvalSettings) -> str:
    """Hex key of everything one image's counts depend on: settings, K, and per input file its
    size, ``mtime_ns``, ``ctime_ns`` and inode (a missing file gives its own key, never a hit
    that hides the error)."""
    stats = []
    for f in _input_files(spec, name, settings):
        try:
            st = os.stat(f)
            stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
        except OSError:
            stats.append([str(f), None])
    blob = json.dumps(
        {
            "v": _CACHE_VERSION,
            "settings": settings.fingerprint(),
            "num_classes": spec.num_classes,
            "files": stats,
        },
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()


def _load_cached(cache_path: str, key: str) -> tuple[np.ndarray, dict] | None:
    if not os.path.isfile(cache_path):
        return None
    try:
        with np.load(cache_path) as z:
            if "key" not in z.files or str(z["key"]) != key:
                return None  # another version of the inputs or settings (or an old cache format)
            info = json.loads(str(z["info"]))
            return z["counts"], info
    except (OSError, ValueError, KeyError):
        return None  # unreadable entry: recompute it


def _job(args) -> tuple[np.ndarray, dict]:
    """Counts of one image and what the checks need: ``{"gt_classes", "pred_size", "gt_size"}``."""
    spec, name, settings, cache_path = args
    key = cache_key(spec, name, settings) if cache_path is not None else ""
    if cache_path is not None:
        hit = _load_cached(cache_path, key)
        if hit is not None:
            return hit
    gt, gt_classes = read_gt_png(
        Path(spec.gt_dir) / f"{name}{spec.gt_suffix}", spec.num_classes, with_class_count=True
    )
    pred = read_prediction(spec.pred_dir, name, spec.num_classes, spec.pred_suffix)
    seg = None
    if settings.kill_internal:
        if spec.seg_dir is None:
            raise ValueError("kill_internal needs seg_dir (class-index PNGs)")
        from PIL import Image

        with Image.open(Path(spec.seg_dir) / f"{name}{spec.seg_suffix}") as im:
            seg = np.asarray(im).astype(np.int64)
    counts = evaluate_image(pred, gt, settings, seg, name=name)
    info = {
        "gt_classes": int(gt_classes),
        "pred_size": list(pred.shape[-2:]),
        "gt_size": list(_gt_eval_size(gt.shape[-2:], settings.gt_scale)),
    }
    if cache_path is not None:

        def write(tmp: str) -> None:
            np.savez(tmp, counts=counts, key=np.array(key), info=np.array(json.dumps(info)))

        # atomic: a killed run never leaves half an entry; not fsynced (a lost entry is recomputed)
        atomic_write(cache_path, write, durable=False)
    return counts, info


def _check_prediction_folder(spec: FolderSpec, names: list[str]) -> list[str]:
    """Refuse an incomplete or mismatched prediction folder; return warnings for the rest."""
    notes = []
    manifest = check_manifest(spec.pred_dir, spec.num_classes)
    if manifest is None:
        notes.append(
            f"{spec.pred_dir} has no {MANIFEST_NAME} (not written by dynfuse-predict): nothing "
            "says its prediction run completed, so it may hold a killed run's partial maps or mix "
            "two runs"
        )
    else:
        written = set(manifest.get("images", []))
        # The manifest lists the maps' names (file name without extension); with --pred-suffix
        # that is the image name plus the suffix's stem.
        missing = [
            n
            for n in names
            if n not in written and os.path.splitext(f"{n}{spec.pred_suffix}")[0] not in written
        ]
        if missing:
            skipped = {s.get("name") for s in manifest.get("skipped", []) if isinstance(s, dict)}
            why = " (the prediction run skipped some of them)" if skipped & set(missing) else ""
            raise ManifestError(
                f"{Path(spec.pred_dir) / MANIFEST_NAME}: {len(missing)} of the {len(names)} images to "
                f"score were not written by the run it records{why}, e.g. {missing[:3]}; any maps of "
                "theirs in the folder come from another run"
            )
    extra = [k for k in prediction_class_folders(spec.pred_dir) if k > spec.num_classes]
    if extra:
        notes.append(
            f"{spec.pred_dir} holds class folders up to {class_dir_name(max(extra) - 1)} but "
            f"--num-classes is {spec.num_classes}: only the first {spec.num_classes} classes are scored"
        )
    return notes


def evaluate_folder(
    spec: FolderSpec,
    settings: EvalSettings,
    *,
    out_dir: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    workers: int = 0,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
) -> EvalResult:
    """Evaluate every image of ``spec`` (or the given ``names``); write results to ``out_dir``.

    Warnings (also listed in ``result.warnings`` and ``summary.json``) are issued as
    :class:`~dynfuse.eval.api.EvalWarning` for: a prediction folder without a manifest, more
    classes in the GT PNGs or prediction folders than ``spec.num_classes``, predictions resized
    to their GT's size.

    Returns:
        :class:`EvalResult`; with ``out_dir`` also ``summary.json``, ``pr_class_XXX.csv`` and
        the per-image cache under ``cache/``.

    Raises:
        ManifestError: the prediction folder's manifest says its run did not complete, was made
            for another class count, or did not write some of the images to score.
    """
    if names is None:
        names = list_names(spec.gt_dir, spec.gt_suffix)
    names = list(names)
    if out_dir is not None:
        # first: whatever happens next, no earlier result is left looking like this run's
        _remove_previous_outputs(Path(out_dir))
    if not names:
        raise ValueError(f"no ground-truth files '*{spec.gt_suffix}' under {spec.gt_dir}")
    notes = _check_prediction_folder(spec, names)
    for note in notes:
        warnings.warn(note, EvalWarning, stacklevel=2)
    cache_root = None if out_dir is None else Path(out_dir) / "cache"
    jobs = [(spec, n, settings, None if cache_root is None else str(cache_root / f"{n}.npz")) for n in names]
    results = _run_jobs(_job, jobs, workers, progress, "dynfuse-eval")
    counts = np.stack([c for c, _ in results])
    later = _notes_from_images(spec, settings, names, [info for _, info in results])
    for note in later:
        warnings.warn(note, EvalWarning, stacklevel=2)
    result = aggregate(counts, settings, class_names, names)
    result.warnings.extend(notes + later)
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def _notes_from_images(
    spec: FolderSpec, settings: EvalSettings, names: list[str], infos: list[dict]
) -> list[str]:
    notes = []
    found = [int(i.get("gt_classes", 0)) for i in infos]
    over = [n for n, c in zip(names, found, strict=True) if c > spec.num_classes]
    if over:
        notes.append(
            f"ground-truth PNGs hold edges of classes up to {max(found)} ({len(over)} of "
            f"{len(names)} images, e.g. {over[0]}) but --num-classes is {spec.num_classes}: "
            f"classes {spec.num_classes + 1}..{max(found)} are not scored"
        )
    sizes: dict = {}
    for i in infos:
        ps, gs = tuple(i["pred_size"]), tuple(i["gt_size"])
        if ps != gs:
            sizes[(ps, gs)] = sizes.get((ps, gs), 0) + 1
    notice = resize_notice(sizes, settings.resize)
    if notice is not None:
        notes.append(notice)
    return notes


def _remove_previous_outputs(out: Path) -> None:
    """Drop an earlier run's summary and PR CSVs (the cache stays: it is keyed by content)."""
    if not out.is_dir():
        return
    for p in [out / "summary.json", *out.glob("pr_class_*.csv")]:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def write_outputs(result: EvalResult, out_dir: str | os.PathLike) -> None:
    """``summary.json`` and ``pr_class_XXX.csv`` per class in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for k in range(len(result.class_names)):
        r, p = result.recall[k], result.precision[k]
        f = f_measure(p, r)
        rows = np.stack([result.thresholds, r, p, f], axis=1)

        def write(tmp: str, rows: np.ndarray = rows) -> None:
            np.savetxt(
                tmp, rows, delimiter=",", header="threshold,recall,precision,f", comments="", fmt="%.6f"
            )

        atomic_write(out / f"pr_class_{k + 1:03d}.csv", write)
    result.to_json(out / "summary.json")  # last: its presence says the run finished
