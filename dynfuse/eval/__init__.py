"""Semantic edge evaluation: pixel correspondence, MF-ODS / OIS / AP, the DFF and SEAL protocols.

Deterministic, pure Python (numpy + scipy), permissively licensed. See docs/evaluation.md.
"""

from .api import EvalResult, EvalWarning, aggregate, evaluate_edges, evaluate_image
from .counts import image_class_counts, resolve_thresholds
from .io import decode_bitpacked
from .manifest import ManifestError
from .match import match_edges
from .metrics import ClassScores, score_class
from .preprocess import edge_nms, kill_internal_mask, matlab_imresize
from .runner import FolderSpec, evaluate_folder
from .settings import DEFAULT_PROTOCOL, PROTOCOL_ALIASES, PROTOCOLS, EvalSettings, protocol_settings
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
    "EvalWarning",
    "EvalSettings",
    "PROTOCOLS",
    "PROTOCOL_ALIASES",
    "DEFAULT_PROTOCOL",
    "ManifestError",
    "matlab_imresize",
    "protocol_settings",
    "ClassScores",
    "score_class",
    "FolderSpec",
    "evaluate_folder",
    "decode_bitpacked",
    "edge_nms",
    "kill_internal_mask",
]
