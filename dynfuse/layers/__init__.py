"""DFF layers: thin ``nn.Module`` wrappers over :mod:`dynfuse.ops`."""

from .concat import SharedConcat
from .fused_learner import FusedLocationAdaptiveFusion
from .fusion import DynamicFusion, FixedFusion
from .learners import LocationAdaptiveLearner, LocationInvariantLearner
from .side_norm import SideNormBlock, fit_to_size

__all__ = [
    "DynamicFusion",
    "FixedFusion",
    "FusedLocationAdaptiveFusion",
    "LocationAdaptiveLearner",
    "LocationInvariantLearner",
    "SharedConcat",
    "SideNormBlock",
    "fit_to_size",
]
