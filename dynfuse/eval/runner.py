"""Evaluate a folder of predictions against a folder of ground truth.

Per image the (K, T, 4) counts are cached on disk (``<out>/cache/<name>.npz``, keyed by the
settings' fingerprint), so an interrupted run resumes where it stopped and a finished one can be
re-scored instantly. Images run in parallel over CPU processes with a tqdm progress bar. The
output folder gets ``summary.json`` (settings, per-class and mean scores, PR curves) and one
``pr_class_XXX.csv`` per class (threshold, recall, precision, F).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .api import EvalResult, _run_jobs, aggregate, evaluate_image
from .io import list_names, read_gt_png, read_prediction
from .metrics import f_measure
from .settings import EvalSettings

__all__ = ["FolderSpec", "evaluate_folder"]


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


def _job(args) -> np.ndarray:
    spec, name, settings, cache_path = args
    if cache_path is not None and os.path.isfile(cache_path):
        try:
            with np.load(cache_path) as z:
                if str(z["fingerprint"]) == settings.fingerprint():
                    return z["counts"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: recompute it
    gt = read_gt_png(Path(spec.gt_dir) / f"{name}{spec.gt_suffix}", spec.num_classes)
    pred = read_prediction(spec.pred_dir, name, spec.num_classes, spec.pred_suffix)
    seg = None
    if settings.kill_internal:
        if spec.seg_dir is None:
            raise ValueError("kill_internal needs seg_dir (class-index PNGs)")
        from PIL import Image

        with Image.open(Path(spec.seg_dir) / f"{name}{spec.seg_suffix}") as im:
            seg = np.asarray(im).astype(np.int64)
    counts = evaluate_image(pred, gt, settings, seg)
    if cache_path is not None:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        tmp = f"{cache_path}.tmp.npz"
        np.savez(tmp, counts=counts, fingerprint=np.array(settings.fingerprint()))
        os.replace(tmp, cache_path)  # atomic: a killed run never leaves half a file
    return counts


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

    Returns:
        :class:`EvalResult`; with ``out_dir`` also ``summary.json``, ``pr_class_XXX.csv`` and
        the per-image cache under ``cache/``.
    """
    if names is None:
        names = list_names(spec.gt_dir, spec.gt_suffix)
    names = list(names)
    if not names:
        raise ValueError(f"no ground-truth files '*{spec.gt_suffix}' under {spec.gt_dir}")
    cache_root = None if out_dir is None else Path(out_dir) / "cache"
    jobs = [
        (spec, n, settings, None if cache_root is None else str(cache_root / f"{n}.npz"))
        for n in names
    ]
    counts = np.stack(_run_jobs(_job, jobs, workers, progress, "dynfuse-eval"))
    result = aggregate(counts, settings, class_names, names)
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def write_outputs(result: EvalResult, out_dir: str | os.PathLike) -> None:
    """``summary.json`` and ``pr_class_XXX.csv`` per class in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "summary.json")
    for k in range(len(result.class_names)):
        r, p = result.recall[k], result.precision[k]
        f = f_measure(p, r)
        rows = np.stack([result.thresholds, r, p, f], axis=1)
        np.savetxt(
            out / f"pr_class_{k + 1:03d}.csv",
            rows,
            delimiter=",",
            header="threshold,recall,precision,f",
            comments="",
            fmt="%.6f",
        )
