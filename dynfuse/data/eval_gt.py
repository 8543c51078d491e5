"""The evaluation ground truth the DFF authors score on, computed from the datasets' release files.

Written from the authors' ``data/cityscapes-preprocess/code/demoGenGT.m`` and
``data/sbd-preprocess/code/demoGenGT.m`` (Lavender105/DFF); ``dynfuse-prepare ... --eval-gt``
writes these maps as bit-packed RGB PNGs. Each variant comes in two kinds: ``inst``
(instance-sensitive, what the paper's tables use) and ``cls`` (instance-insensitive).

Cityscapes (19 classes), both variants at half resolution:

- ``gt_thin``: labelIds and instanceIds are first resized to half size with MATLAB's
  ``imresize(., 0.5, 'nearest')``; edges are computed there with radius **1** (candidates from the
  half-size instanceIds, labelIds 2 and 3 ignored), then each class map is thinned
  (``bwmorph(., 'thin', Inf)``).
- ``gt_raw``: edges at full resolution with radius 2 (the training-label recipe), then each class
  map is resized to half size with ``imresize(., 0.5, 'nearest')``; not thinned.

For both, the ``cls`` kind takes its candidates from instanceIds too (as the authors do): it
differs from class-only candidates where a pixel's other-class neighbours are all ignored.

SBD (20 classes), full resolution:

- ``gt_orig_thin``: ``cls`` is SBD's own ``GTcls.Boundaries`` as released (not thinned); ``inst``
  is, per class, the union of SBD's per-instance ``GTinst.Boundaries`` of that class, thinned.
- ``gt_orig_raw``: radius-2 edges of ``GTcls.Segmentation`` (``cls``) and of the instance map of
  each class (``inst``), no candidate step, no thinning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .classes import CITYSCAPES_IGNORED_LABEL_IDS, cityscapes_train_ids
from .edges import mask_to_edges
from .resize import matlab_nearest_indices

__all__ = [
    "CITYSCAPES_EVAL_VARIANTS",
    "SBD_EVAL_VARIANTS",
    "EVAL_GT_KINDS",
    "cityscapes_eval_gt",
    "sbd_eval_gt_raw",
    "sbd_eval_gt_thin",
    "thin_classes",
]

CITYSCAPES_EVAL_VARIANTS = ("gt_thin", "gt_raw")
SBD_EVAL_VARIANTS = ("gt_orig_thin", "gt_orig_raw")
EVAL_GT_KINDS = ("cls", "inst")
CITYSCAPES_EVAL_SCALE = 0.5
CITYSCAPES_THIN_RADIUS = 1.0  # demoGenGT.m: radius = [1, 2] for gt_thin, gt_raw
EVAL_RADIUS = 2.0


def thin_classes(edges: np.ndarray) -> np.ndarray:
    """(K, H, W) bool -> (K, H, W) bool, each class map thinned as ``bwmorph(., 'thin', Inf)``."""
    from ..eval.thin import thin  # here, so that importing dynfuse.data does not load dynfuse.eval

    out = np.zeros_like(edges, dtype=bool)
    for k in range(edges.shape[0]):
        if edges[k].any():
            out[k] = thin(edges[k])
    return out


def _half_nearest(maps: np.ndarray) -> np.ndarray:
    """MATLAB ``imresize(., 0.5, 'nearest')`` of the last two axes of ``maps``."""
    h, w = maps.shape[-2:]
    rows = matlab_nearest_indices(h, CITYSCAPES_EVAL_SCALE)
    cols = matlab_nearest_indices(w, CITYSCAPES_EVAL_SCALE)
    return maps[..., rows[:, None], cols[None, :]]


def cityscapes_eval_gt(
    label_ids: np.ndarray,
    instance_ids: np.ndarray,
    variants: tuple[str, ...] = CITYSCAPES_EVAL_VARIANTS,
) -> dict[tuple[str, str], np.ndarray]:
    """The authors' Cityscapes evaluation GT of one image.

    Args:
        label_ids: (H, W) integer Cityscapes ``*_gtFine_labelIds.png``.
        instance_ids: (H, W) integer ``*_gtFine_instanceIds.png``.
        variants: a subset of ``("gt_thin", "gt_raw")``.

    Returns:
        ``{(variant, kind): (19, ceil(H/2), ceil(W/2)) bool}`` for each variant and kind
        (``"cls"``, ``"inst"``).
    """
    unknown = set(variants) - set(CITYSCAPES_EVAL_VARIANTS)
    if unknown:
        raise ValueError(f"variants: expected a subset of {CITYSCAPES_EVAL_VARIANTS}, got {sorted(unknown)}")
    label_ids = np.asarray(label_ids)
    instance_ids = np.asarray(instance_ids)
    if label_ids.ndim != 2 or label_ids.shape != instance_ids.shape:
        raise ValueError(
            f"label_ids and instance_ids: expected two (H, W) maps of one size, got "
            f"{label_ids.shape} and {instance_ids.shape}"
        )

    def edges(labels: np.ndarray, inst: np.ndarray, radius: float) -> dict[str, np.ndarray]:
        train_ids = cityscapes_train_ids(labels)
        ignore = np.isin(labels, CITYSCAPES_IGNORED_LABEL_IDS)
        return {
            "inst": mask_to_edges(train_ids, 19, radius=radius, ignore=ignore, instance_map=inst),
            "cls": mask_to_edges(train_ids, 19, radius=radius, ignore=ignore, candidate_map=inst),
        }

    out: dict[tuple[str, str], np.ndarray] = {}
    if "gt_thin" in variants:
        half = edges(_half_nearest(label_ids), _half_nearest(instance_ids), CITYSCAPES_THIN_RADIUS)
        for kind in EVAL_GT_KINDS:
            out[("gt_thin", kind)] = thin_classes(half[kind])
    if "gt_raw" in variants:
        full = edges(label_ids, instance_ids, EVAL_RADIUS)
        for kind in EVAL_GT_KINDS:
            out[("gt_raw", kind)] = np.ascontiguousarray(_half_nearest(full[kind]))
    return out


def sbd_eval_gt_raw(
    cls_segmentation: np.ndarray, inst_segmentation: np.ndarray, categories: np.ndarray
) -> dict[str, np.ndarray]:
    """SBD ``gt_orig_raw`` of one image.

    Args:
        cls_segmentation: (H, W) integer ``GTcls.Segmentation`` (0 background, 1..20 classes).
        inst_segmentation: (H, W) integer ``GTinst.Segmentation`` (0 background, i = instance i).
        categories: (N,) integer ``GTinst.Categories`` (1-based class of instance i).

    Returns:
        ``{"cls": (20, H, W) bool, "inst": (20, H, W) bool}``.
    """
    cls_seg = np.asarray(cls_segmentation).astype(np.int64)
    inst_seg = np.asarray(inst_segmentation).astype(np.int64)
    if cls_seg.ndim != 2 or cls_seg.shape != inst_seg.shape:
        raise ValueError(
            f"segmentations: expected two (H, W) maps of one size, got {cls_seg.shape} and {inst_seg.shape}"
        )
    labels = cls_seg - 1
    labels[(labels < 0) | (labels >= 20)] = -1
    cats = np.atleast_1d(np.asarray(categories)).astype(np.int64).ravel()
    lut = np.full(max(int(inst_seg.max(initial=0)), cats.size) + 1, -1, dtype=np.int64)
    lut[1 : cats.size + 1] = cats - 1
    inst_labels = lut[np.clip(inst_seg, 0, lut.size - 1)]
    inst_labels[(inst_labels < 0) | (inst_labels >= 20)] = -1
    return {
        "cls": mask_to_edges(labels, 20, radius=EVAL_RADIUS),
        "inst": mask_to_edges(inst_labels, 20, radius=EVAL_RADIUS, instance_map=inst_seg),
    }


def sbd_eval_gt_thin(
    cls_boundaries: list[Any], inst_boundaries: list[Any], categories: np.ndarray
) -> dict[str, np.ndarray]:
    """SBD ``gt_orig_thin`` of one image, from the boundaries SBD ships.

    Args:
        cls_boundaries: 20 (H, W) boolean maps, ``GTcls.Boundaries`` (dense or scipy sparse).
        inst_boundaries: N (H, W) boolean maps, ``GTinst.Boundaries`` (one per instance).
        categories: (N,) integer ``GTinst.Categories`` (1-based class of instance i).

    Returns:
        ``{"cls": (20, H, W) bool, "inst": (20, H, W) bool}``: ``cls`` as released, ``inst`` the
        per-class union of instance boundaries, thinned.
    """
    cls_maps = [_dense_bool(b) for b in cls_boundaries]
    if len(cls_maps) != 20:
        raise ValueError(f"GTcls.Boundaries: expected 20 class maps, got {len(cls_maps)}")
    shape = cls_maps[0].shape
    cats = np.atleast_1d(np.asarray(categories)).astype(np.int64).ravel()
    inst_maps = [_dense_bool(b) for b in inst_boundaries]
    if len(inst_maps) != cats.size:
        raise ValueError(f"GTinst: {len(inst_maps)} instance boundary maps for {cats.size} categories")
    for m in (*cls_maps, *inst_maps):
        if m.shape != shape:
            raise ValueError(f"boundary maps differ in size: {m.shape} and {shape}")
    union = np.zeros((20, *shape), dtype=bool)
    for cat, m in zip(cats, inst_maps, strict=True):
        if not 1 <= cat <= 20:
            raise ValueError(f"GTinst.Categories: class {cat} outside 1..20")
        union[cat - 1] |= m
    return {"cls": np.stack(cls_maps), "inst": thin_classes(union)}


def _dense_bool(m: Any) -> np.ndarray:
    if hasattr(m, "toarray"):  # scipy sparse, as loadmat returns MATLAB sparse matrices
        m = m.toarray()
    arr = np.asarray(m)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D boundary map, got shape {arr.shape}")
    return arr != 0
