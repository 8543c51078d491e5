"""Evaluation settings and the named protocols of the DFF and SEAL MATLAB scripts.

Every reported number carries the settings it was computed with (tolerance, thin or raw,
prediction scale, resize, margin, ...), because each of them moves the scores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TypedDict

import numpy as np

from .counts import resolve_thresholds
from .preprocess import RESIZE_METHODS

__all__ = ["EvalSettings", "PROTOCOLS", "PROTOCOL_ALIASES", "DEFAULT_PROTOCOL", "protocol_settings"]


@dataclass(frozen=True)
class EvalSettings:
    """How predictions are turned into counts.

    Attributes:
        max_dist: matching tolerance as a fraction of the image diagonal (after margin crop).
        thresholds: int ``n`` (SEAL's ``linspace(1/(n+1), 1-1/(n+1), n)``) or explicit floats
            (any sequence; stored as a tuple of floats).
        thin: thin each binarised prediction (``bwmorph(., 'thin', Inf)``).
        thin_gt: thin the ground truth once (SEAL's "thin" GT protocol).
        nms: non-maximum suppression of the soft prediction first (off by default, as SEAL).
        kill_internal: drop predicted pixels inside the class region farther than the tolerance
            from its edges (for non-instance-sensitive GT; needs segmentation maps).
        margin: pixels cropped from every side of prediction and GT (SBD: 5).
        pred_scale: divide predictions by this; None = by dtype (float/bool 1, uint8 255,
            uint16 ``uint16_scale``).
        uint16_scale: divisor of 16-bit predictions when ``pred_scale`` is None: 65535 (dynfuse's
            default, full range onto [0, 1]) or 65536 (the authors' ``evaluate_imgs.m``; the
            ``dff-*`` and ``seal-*`` protocols).
        resize: how a prediction of another size is resized to the GT ("bicubic" = MATLAB).
        gt_scale: resample GT (and segmentation) by this factor with nearest neighbour first,
            to ``round(H * gt_scale), round(W * gt_scale)`` (pyedgeeval's ``scale``; 0.5 scores
            full-resolution Cityscapes GT at half resolution). Prefer GT made at the target size.
        instance_sensitive: whether the GT is instance-sensitive; recorded beside the numbers
            (None when unknown), it does not change the computation.
    """

    max_dist: float = 0.02
    thresholds: int | Sequence[float] = 99
    thin: bool = True
    thin_gt: bool = False
    nms: bool = False
    kill_internal: bool = False
    margin: int = 0
    pred_scale: float | None = None
    uint16_scale: float = 65535.0
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
        if not (isinstance(self.uint16_scale, (int, float)) and self.uint16_scale > 0):
            raise ValueError(f"uint16_scale must be > 0, got {self.uint16_scale!r}")

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


class _DffCommon(TypedDict):
    """The settings every ``dff-*`` protocol shares (typed so ``**_DFF`` is checked per field)."""

    uint16_scale: float
    instance_sensitive: bool


_DFF: _DffCommon = {"uint16_scale": 65536.0, "instance_sensitive": True}

#: Named protocols, each the settings of one MATLAB script of the authors (see docs/evaluation.md
#: for the table: source file, GT, paper table). GT thinning (``thin_gt``) is part of how the
#: authors *made* their "thin" GT (``bwmorph(., 'thin', Inf)`` on the full image, before any
#: margin crop); thinning is idempotent, so ``thin_gt=True`` leaves GT that is already thinned
#: (``dynfuse-prepare ... --eval-gt``) unchanged and makes thick GT what the authors scored.
PROTOCOLS: dict[str, EvalSettings] = {
    # DFF (Hu et al. 2019), lib/matlab/eval/demoBatchEval.m: tolerance 0.02, 99 thresholds,
    # instance-sensitive GT; Cityscapes GT at half resolution, no margin; SBD margin 5.
    "dff-cityscapes-thin": EvalSettings(max_dist=0.02, thin=True, thin_gt=True, margin=0, **_DFF),
    "dff-cityscapes-raw": EvalSettings(max_dist=0.02, thin=False, thin_gt=False, margin=0, **_DFF),
    "dff-sbd-thin": EvalSettings(max_dist=0.02, thin=True, thin_gt=True, margin=5, **_DFF),
    "dff-sbd-raw": EvalSettings(max_dist=0.02, thin=False, thin_gt=False, margin=5, **_DFF),
    # DFF's function/evaluation.m defaults (margin 0, 99 thresholds, thinpb true, maxDist 0.0075).
    "dff-evaluation-default": EvalSettings(
        max_dist=0.0075, thin=True, thin_gt=True, margin=0, uint16_scale=65536.0
    ),
    # SEAL (Yu et al. 2018), lib/matlab/eval/demoBatchEval.m: Cityscapes at 0.0035 (the DFF
    # paper's comparison with SEAL, Table 3), SBD original GT thin at 0.02 with margin 5.
    # SEAL scored both instance-sensitive and -insensitive GT, so that is left unrecorded; SEAL
    # reads 8-bit maps (/255), and 16-bit ones are read as the DFF code reads them (/65536).
    "seal-cityscapes-thin": EvalSettings(
        max_dist=0.0035, thin=True, thin_gt=True, margin=0, uint16_scale=65536.0
    ),
    "seal-cityscapes-raw": EvalSettings(
        max_dist=0.0035, thin=False, thin_gt=False, margin=0, uint16_scale=65536.0
    ),
    "seal-sbd": EvalSettings(max_dist=0.02, thin=True, thin_gt=True, margin=5, uint16_scale=65536.0),
}

#: Older names, kept working: each is the SEAL protocol of the same settings.
PROTOCOL_ALIASES: dict[str, str] = {
    "sbd": "seal-sbd",
    "cityscapes-thin": "seal-cityscapes-thin",
    "cityscapes-raw": "seal-cityscapes-raw",
}
PROTOCOLS.update({old: PROTOCOLS[new] for old, new in PROTOCOL_ALIASES.items()})

#: The protocol of the DFF paper's headline Cityscapes numbers (Tables 1-3, 0.02).
DEFAULT_PROTOCOL = "dff-cityscapes-thin"


def protocol_settings(name: str, **overrides) -> EvalSettings:
    """Settings of a named protocol with optional overrides (None values are ignored)."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(PROTOCOLS[name], **changes)
