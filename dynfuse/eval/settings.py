"""Evaluation settings and the named SEAL-style protocols.

Every reported number carries the settings it was computed with (tolerance, thin or raw,
prediction scale, resize, margin, ...), because each of them moves the scores.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

import numpy as np

from .counts import resolve_thresholds
from .preprocess import RESIZE_METHODS

__all__ = ["EvalSettings", "PROTOCOLS", "protocol_settings"]


@dataclass(frozen=True)
class EvalSettings:
    """How predictions are turned into counts.

    Attributes:
        max_dist: matching tolerance as a fraction of the image diagonal (after margin crop).
        thresholds: int ``n`` (SEAL's ``linspace(1/(n+1), 1-1/(n+1), n)``) or explicit floats.
        thin: thin each binarised prediction (``bwmorph(., 'thin', Inf)``).
        thin_gt: thin the ground truth once (SEAL's "thin" GT protocol).
        nms: non-maximum suppression of the soft prediction first (off by default, as SEAL).
        kill_internal: drop predicted pixels inside the class region farther than the tolerance
            from its edges (for non-instance-sensitive GT; needs segmentation maps).
        margin: pixels cropped from every side of prediction and GT (SBD: 5).
        pred_scale: divide integer predictions by this; None = by dtype (uint8 255, uint16 65535).
        resize: how a prediction of another size is resized to the GT ("bicubic" = MATLAB).
        gt_scale: resample GT (and segmentation) by this factor with nearest neighbour first,
            to ``round(H * gt_scale), round(W * gt_scale)`` (pyedgeeval's ``scale``; 0.5 scores
            full-resolution Cityscapes GT at half resolution). Prefer GT made at the target size.
        instance_sensitive: whether the GT is instance-sensitive; recorded beside the numbers
            (None when unknown), it does not change the computation.
    """

    max_dist: float = 0.02
    thresholds: int | tuple[float, ...] = 99
    thin: bool = True
    thin_gt: bool = False
    nms: bool = False
    kill_internal: bool = False
    margin: int = 0
    pred_scale: float | None = None
    resize: str = "bicubic"
    gt_scale: float = 1.0
    instance_sensitive: bool | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.max_dist, (int, float)) and 0 < self.max_dist < 1):
            raise ValueError(f"max_dist must be in (0, 1), got {self.max_dist!r}")
        if not isinstance(self.thresholds, (int, np.integer)):
            object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        resolve_thresholds(self.thresholds)  # validates
        if not isinstance(self.margin, (int, np.integer)) or self.margin < 0:
            raise ValueError(f"margin must be an int >= 0, got {self.margin!r}")
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {self.resize!r}")
        if not (isinstance(self.gt_scale, (int, float)) and 0 < self.gt_scale <= 1):
            raise ValueError(f"gt_scale must be in (0, 1], got {self.gt_scale!r}")
        if self.pred_scale is not None and not self.pred_scale > 0:
            raise ValueError(f"pred_scale must be > 0 or None, got {self.pred_scale!r}")

    def threshold_values(self) -> np.ndarray:
        return resolve_thresholds(self.thresholds)

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["thresholds"], tuple):
            d["thresholds"] = list(d["thresholds"])
        else:
            d["thresholds"] = int(d["thresholds"])
        return d

    def fingerprint(self) -> str:
        """Short hash of everything that changes the counts (used to key the resume cache)."""
        d = self.to_dict()
        d.pop("instance_sensitive")
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **changes) -> EvalSettings:
        return replace(self, **changes)


#: SEAL's settings. Cityscapes is evaluated at half resolution with tolerance 0.0035; "thin"
#: thins prediction and GT, "raw" neither. SBD uses tolerance 0.02 and a 5-pixel margin.
PROTOCOLS: dict[str, EvalSettings] = {
    "sbd": EvalSettings(max_dist=0.02, thin=True, thin_gt=True, margin=5),
    "cityscapes-thin": EvalSettings(max_dist=0.0035, thin=True, thin_gt=True, margin=0),
    "cityscapes-raw": EvalSettings(max_dist=0.0035, thin=False, thin_gt=False, margin=0),
}


def protocol_settings(name: str, **overrides) -> EvalSettings:
    """Settings of a named protocol with optional overrides (None values are ignored)."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(PROTOCOLS[name], **changes)
