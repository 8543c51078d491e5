"""Semantic edge evaluation: pixel correspondence, MF-ODS / OIS / AP, SEAL protocols.

Deterministic, pure Python (numpy + scipy), permissively licensed. See docs/evaluation.md.
"""

from .api import EvalResult, aggregate, evaluate_edges, evaluate_image
from .counts import image_class_counts, resolve_thresholds
from .io import decode_bitpacked
from .match import match_edges
from .metrics import ClassScores, score_class
from .preprocess import edge_nms, kill_internal_mask
from .runner import FolderSpec, evaluate_folder
from .settings import PROTOCOLS, EvalSettings, protocol_settings
from .thin import thin

__all__ = [
    "match_edges",
    "thin",
    "image_class_counts",
    "resolve_thresholds",
    "evaluate_edges",
    "evaluate_image",
    "aggregate",
    "EvalResult",
    "EvalSettings",
    "PROTOCOLS",
    "protocol_settings",
    "ClassScores",
    "score_class",
    "FolderSpec",
    "evaluate_folder",
    "decode_bitpacked",
    "edge_nms",
    "kill_internal_mask",
]
