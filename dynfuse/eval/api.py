"""In-memory evaluation: arrays in, MF-ODS / OIS / AP out (what training calls to validate)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from .counts import image_class_counts
from .metrics import ClassScores, pr_curve, score_class
from .preprocess import crop_margin, edge_nms, kill_internal_mask, resize_to, to_probability
from .settings import EvalSettings
from .thin import thin as thin_map

__all__ = ["EvalResult", "EvalWarning", "evaluate_image", "evaluate_edges", "aggregate"]


class EvalWarning(UserWarning):
    """Something about the inputs that changes or may invalidate the scores (resized
    predictions, a prediction folder without a manifest, more classes in the data than asked)."""


def _as_khw(name: str, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (K, H, W) (or (H, W) for one class), got {arr.shape}")
    return arr


def evaluate_image(
    pred: np.ndarray,
    gt: np.ndarray,
    settings: EvalSettings,
    seg: np.ndarray | None = None,
    *,
    name: str | None = None,
) -> np.ndarray:
    """Counts of every class of one image.

    Order (the authors' ``demoGenGT.m`` + ``evaluate_imgs.m``): the GT is thinned on the full
    image (they thin when they make the GT), the prediction is resized to the GT size, then
    both are margin-cropped, the prediction optionally NMS'd, and the counts taken.

    Args:
        pred: (K, H', W') probabilities (float in [0, 1], bool, or uint8 / uint16 scaled by
            ``settings.pred_scale`` / ``settings.uint16_scale``); resized to the GT size when
            H', W' differ.
        gt: (K, H, W) bool ground-truth edges.
        settings: see :class:`EvalSettings`.
        seg: (H, W) int map of class indices (0..K-1; anything else = no class), needed only
            for ``settings.kill_internal``.
        name: how error messages name this image.

    Returns:
        (K, T, 4) int64 counts ``(cnt_r, sum_r, cnt_p, sum_p)``.

    Raises:
        ValueError: NaN / infinite predictions (naming the image and classes), shape mismatches.
    """
    p = _as_khw("pred", pred)
    g = _as_khw("gt", gt)
    what = "image" if name is None else f"image {name}"
    if p.shape[0] != g.shape[0]:
        raise ValueError(f"{what}: pred has {p.shape[0]} classes, gt has {g.shape[0]}")
    _check_finite(p, what)
    if g.dtype != bool:
        g = g != 0
    if settings.gt_scale != 1.0:
        g = _nearest_scale(g, settings.gt_scale)
        if seg is not None:
            seg = _nearest_scale(np.asarray(seg)[None], settings.gt_scale)[0]
    if settings.kill_internal:
        if seg is None:
            raise ValueError("kill_internal needs seg, an (H, W) map of class indices")
        seg = np.asarray(seg)
        if seg.shape != g.shape[1:]:
            raise ValueError(f"seg must have shape {g.shape[1:]}, got {seg.shape}")
    thr = settings.threshold_values()
    probs = to_probability(p, settings.pred_scale, settings.uint16_scale)
    out = np.zeros((g.shape[0], thr.size, 4), dtype=np.int64)
    for k in range(g.shape[0]):
        pk = resize_to(probs[k], g.shape[1:], settings.resize)
        gk = g[k]
        if settings.thin_gt and gk.any():
            gk = thin_map(gk)  # full image first: the authors thin when making the GT
        sk = None if seg is None or not settings.kill_internal else seg == k
        pk = crop_margin(pk, settings.margin)
        gk = crop_margin(gk, settings.margin)
        if sk is not None:
            sk = crop_margin(sk, settings.margin)
        if settings.nms:
            pk = edge_nms(pk)
        keep = None if sk is None else kill_internal_mask(gk, sk, settings.max_dist)
        out[k] = image_class_counts(pk, gk, thr, max_dist=settings.max_dist, thin=settings.thin, keep=keep)
    return out


def _check_finite(pred: np.ndarray, what: str) -> None:
    """Raise on NaN / inf, naming the classes (1-based, as the class_XXX folders) and counts."""
    if not np.issubdtype(pred.dtype, np.floating) or np.isfinite(pred).all():
        return
    bad = ~np.isfinite(pred)
    per_class = bad.reshape(bad.shape[0], -1).sum(axis=1)
    classes = [f"class {k + 1} ({int(n)} values)" for k, n in enumerate(per_class) if n]
    raise ValueError(
        f"{what}: prediction holds NaN or infinite values in {', '.join(classes)}; "
        "a diverged or broken model cannot be scored"
    )


def resize_notice(sizes: dict[tuple[tuple[int, int], tuple[int, int]], int], method: str) -> str | None:
    """One line saying which prediction sizes were resized to which GT sizes, or None.

    Args:
        sizes: ``{((pred_h, pred_w), (gt_h, gt_w)): number of images}`` of the mismatches.
        method: the resize method used.
    """
    if not sizes:
        return None
    how = {
        "bicubic": "bicubic (MATLAB imresize: antialiased, mirrored border, as the authors' evaluate_imgs.m)",
        "bilinear": "bilinear (PIL)",
        "nearest": "nearest (PIL, as pyedgeeval)",
    }.get(method, method)
    parts = [f"{n} image(s) {ph}x{pw} -> {gh}x{gw}" for ((ph, pw), (gh, gw)), n in sorted(sizes.items())]
    return (
        f"predictions of another size than their ground truth were resized to the GT size with {how}: "
        + "; ".join(parts)
        + " (pass resize='none' / --resize none to refuse)"
    )


def _nearest_scale(x: np.ndarray, scale: float) -> np.ndarray:
    """(C, H, W) nearest-neighbour resampling to ``int(H * scale + 0.5)`` x ``int(W * scale + 0.5)``
    (PIL NEAREST sampling positions, as pyedgeeval's ``scale``)."""
    h, w = x.shape[-2:]
    nh, nw = max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)
    return x[..., _nearest_index(h, nh)[:, None], _nearest_index(w, nw)[None, :]]


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel, bit-exact with PIL's NEAREST: PIL starts at half a
    step and adds the step once per pixel, so the sums are accumulated in the same order."""
    step = n_in / n_out
    pos = np.cumsum(np.concatenate(([0.5 * step], np.full(n_out - 1, step))))
    return np.minimum(np.floor(pos).astype(np.int64), n_in - 1)


@dataclass
class EvalResult:
    """Scores of a dataset; fractions in [0, 1].

    Attributes:
        mf_ods: mean over classes of the per-class ODS F-measure (MF-ODS).
        mf_ois: mean over classes of the per-class OIS F-measure.
        mean_ap: mean over classes of :attr:`ap`.
        ods, ois: (K,) per-class scores.
        ap: (K,) the authors' AP (``collect_eval_bdry.m``: precision interpolated at recall
            0:0.01:1, x 0.01), the number the DFF paper's code reports. ``auc`` is an alias.
        ap_max_precision: (K,) pyEdgeEval's ``AP`` (mean over t of the best precision at
            recall >= t), a different metric; ``mean_ap_max_precision`` its class mean.
        thresholds: (T,) thresholds used.
        settings: the :class:`EvalSettings` as a dict.
        class_names: K names.
        per_class: :class:`ClassScores` per class (thresholds, recall, precision of the optimum).
        recall, precision: (K, T) dataset-level PR curves.
        counts: (N, K, T, 4) per-image counts (what the resume cache stores).
    """

    mf_ods: float
    mf_ois: float
    mean_ap: float
    ods: np.ndarray
    ois: np.ndarray
    ap: np.ndarray
    ap_max_precision: np.ndarray
    thresholds: np.ndarray
    settings: dict
    class_names: list[str]
    per_class: list[ClassScores] = field(repr=False)
    recall: np.ndarray = field(repr=False)
    precision: np.ndarray = field(repr=False)
    counts: np.ndarray = field(repr=False)
    image_names: list[str] | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list, repr=False)

    @property
    def auc(self) -> np.ndarray:
        """(K,) alias of :attr:`ap` (BSDS's ``Area_PR`` is the authors' AP formula)."""
        return self.ap

    @property
    def mean_ap_max_precision(self) -> float:
        """Mean over classes of :attr:`ap_max_precision` (pyEdgeEval's ``AP``)."""
        return float(np.mean(self.ap_max_precision))

    def to_dict(self, *, include_pr: bool = True) -> dict:
        """JSON-ready dict: means, per-class scores, settings, and (optionally) PR curves."""
        classes = []
        for k, name in enumerate(self.class_names):
            sc = self.per_class[k]
            entry = {"index": k, "name": name, **{f: float(getattr(sc, f)) for f in _FIELDS}}
            if include_pr:
                entry["pr"] = {
                    "threshold": self.thresholds.tolist(),
                    "recall": self.recall[k].tolist(),
                    "precision": self.precision[k].tolist(),
                }
            classes.append(entry)
        out = {
            "mf_ods": self.mf_ods,
            "mf_ois": self.mf_ois,
            "mean_ap": self.mean_ap,
            "mean_ap_max_precision": self.mean_ap_max_precision,
            "metrics": METRIC_DEFINITIONS,
            "num_images": int(self.counts.shape[0]),
            "settings": self.settings,
            "classes": classes,
        }
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def to_json(self, path: str | os.PathLike | None = None, **kwargs) -> str:
        text = json.dumps(self.to_dict(**kwargs), indent=2)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    def table(self) -> str:
        """Plain-text table of per-class scores (in %) with the settings underneath."""
        lines = [f"{'class':>16} {'ODS':>6} {'OIS':>6} {'AP':>6}"]
        for k, name in enumerate(self.class_names):
            lines.append(
                f"{name[:16]:>16} {100 * self.ods[k]:6.1f} {100 * self.ois[k]:6.1f} {100 * self.ap[k]:6.1f}"
            )
        lines.append(
            f"{'mean':>16} {100 * self.mf_ods:6.1f} {100 * self.mf_ois:6.1f} {100 * self.mean_ap:6.1f}"
        )
        lines.append(
            "AP: the authors' (collect_eval_bdry.m: precision interpolated at recall 0:0.01:1); "
            f"pyEdgeEval's max-precision AP: mean {100 * self.mean_ap_max_precision:.1f}"
        )
        s = self.settings
        lines.append(
            f"settings: max_dist={s['max_dist']} thin={s['thin']} thin_gt={s['thin_gt']} "
            f"nms={s['nms']} kill_internal={s['kill_internal']} margin={s['margin']} "
            f"gt_scale={s['gt_scale']} "
            f"thresholds={s['thresholds']} instance_sensitive={s['instance_sensitive']}"
        )
        return "\n".join(lines)


_FIELDS = (
    "ods",
    "ods_threshold",
    "ods_recall",
    "ods_precision",
    "ois",
    "ois_recall",
    "ois_precision",
    "ap",
    "ap_max_precision",
    "auc",
)

#: What each reported number is (written into summary.json beside the numbers).
METRIC_DEFINITIONS = {
    "ods": "F at the best threshold for the dataset (counts summed over images; maxF interpolation "
    "between thresholds, as collect_eval_bdry.m)",
    "ois": "F of the counts at each image's best threshold, summed over images",
    "ap": "the authors' AP (collect_eval_bdry.m): precision interpolated (interp1) over the distinct "
    "recalls at recall 0:0.01:1, NaN -> 0, summed x 0.01; 'auc' is the same number",
    "ap_max_precision": "pyEdgeEval's AP: mean over t in 0:0.01:1 of the best precision at recall >= t "
    "(not the authors' AP)",
}


def aggregate(
    counts: np.ndarray,
    settings: EvalSettings,
    class_names: Sequence[str] | None = None,
    image_names: Sequence[str] | None = None,
) -> EvalResult:
    """Dataset scores from (N, K, T, 4) per-image counts."""
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim != 4 or c.shape[3] != 4:
        raise ValueError(f"counts must have shape (N, K, T, 4), got {c.shape}")
    thr = settings.threshold_values()
    k = c.shape[1]
    names = list(class_names) if class_names is not None else [f"class_{i + 1:03d}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for {k} classes")
    per_class = [score_class(c[:, i], thr) for i in range(k)]
    curves = [pr_curve(c[:, i]) for i in range(k)]
    ods = np.array([s.ods for s in per_class])
    ois = np.array([s.ois for s in per_class])
    ap = np.array([s.ap for s in per_class])
    return EvalResult(
        mf_ods=float(ods.mean()),
        mf_ois=float(ois.mean()),
        mean_ap=float(ap.mean()),
        ods=ods,
        ois=ois,
        ap=ap,
        ap_max_precision=np.array([s.ap_max_precision for s in per_class]),
        thresholds=thr,
        settings=settings.to_dict(),
        class_names=names,
        per_class=per_class,
        recall=np.stack([cv[0] for cv in curves]),
        precision=np.stack([cv[1] for cv in curves]),
        counts=c,
        image_names=list(image_names) if image_names is not None else None,
    )


def _eval_job(args):
    pred, gt, settings, seg, name = args
    return evaluate_image(pred, gt, settings, seg, name=name)


def evaluate_edges(
    preds: Iterable[np.ndarray],
    gts: Iterable[np.ndarray],
    *,
    max_dist: float = 0.02,
    thresholds: int | Sequence[float] = 99,
    thin: bool = True,
    workers: int = 0,
    settings: EvalSettings | None = None,
    segs: Iterable[np.ndarray] | None = None,
    class_names: Sequence[str] | None = None,
    progress: bool = False,
    **options: Any,
) -> EvalResult:
    """MF-ODS, OIS and AP of predictions against ground truth, in memory.

    Args:
        preds: sequence of (K, H, W) probability maps (float in [0, 1], bool, uint8 / uint16).
        gts: sequence of (K, H, W) bool ground-truth edges (same length as ``preds``).
        max_dist: see :class:`EvalSettings` (ignored when ``settings`` is given).
        thresholds: see :class:`EvalSettings` (ignored when ``settings`` is given).
        thin: see :class:`EvalSettings` (ignored when ``settings`` is given).
        workers: 0 or 1 evaluate in this process (no multiprocessing); n > 1 uses n processes.
        settings: full settings (e.g. ``PROTOCOLS["cityscapes-thin"]``), overrides the above.
        segs: per image (H, W) class-index maps, for ``kill_internal``.
        class_names: K names for the report.
        progress: show a tqdm progress bar.
        **options: further :class:`EvalSettings` fields (``thin_gt``, ``nms``, ``margin``, ...).

    Returns:
        :class:`EvalResult`.
    """
    if settings is None:
        settings = EvalSettings(max_dist=max_dist, thresholds=thresholds, thin=thin, **options)
    elif options:
        settings = settings.replace(**options)
    pred_list = list(preds)
    gt_list = list(gts)
    if len(pred_list) != len(gt_list):
        raise ValueError(f"preds has {len(pred_list)} images, gts has {len(gt_list)}")
    if not pred_list:
        raise ValueError("preds is empty")
    seg_list = list(segs) if segs is not None else [None] * len(pred_list)
    if len(seg_list) != len(pred_list):
        raise ValueError(f"segs has {len(seg_list)} maps for {len(pred_list)} images")
    if not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    sizes: dict = {}
    for i, (p, g) in enumerate(zip(pred_list, gt_list, strict=True)):
        _check_finite(_as_khw("pred", p), f"image {i}")  # before any work is spent
        ps, gs = tuple(np.shape(p)[-2:]), _gt_eval_size(np.shape(g)[-2:], settings.gt_scale)
        if ps != gs:
            sizes[(ps, gs)] = sizes.get((ps, gs), 0) + 1
    notes = []
    notice = resize_notice(sizes, settings.resize) if settings.resize != "none" else None
    if notice is not None:
        warnings.warn(notice, EvalWarning, stacklevel=2)
        notes.append(notice)
    jobs = [
        (p, g, settings, s, str(i))
        for i, (p, g, s) in enumerate(zip(pred_list, gt_list, seg_list, strict=True))
    ]
    results = _run_jobs(_eval_job, jobs, workers, progress, "eval")
    res = aggregate(np.stack(results), settings, class_names)
    res.warnings.extend(notes)
    return res


def _gt_eval_size(shape, gt_scale: float) -> tuple[int, int]:
    """(H, W) of the GT after ``gt_scale`` resampling (the size predictions are resized to)."""
    h, w = int(shape[0]), int(shape[1])
    if gt_scale == 1.0:
        return h, w
    return max(int(h * gt_scale + 0.5), 1), max(int(w * gt_scale + 0.5), 1)


def _run_jobs(fn, jobs: list, workers: int, progress: bool, desc: str) -> list:
    """Run ``fn`` over ``jobs`` in order, in-process or in a process pool, with optional tqdm."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=desc)
    out = []
    try:
        if workers <= 1:
            for job in jobs:
                out.append(fn(job))
                if bar is not None:
                    bar.update(1)
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for res in pool.imap(fn, jobs):
                    out.append(res)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out
