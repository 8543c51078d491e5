"""DFF layers: thin ``nn.Module`` wrappers over :mod:`dynfuse.ops`."""

from .checkpointing import run_checkpointed
from .concat import SharedConcat
from .fused_learner import FusedLocationAdaptiveFusion
from .fusion import DynamicFusion, FixedFusion
from .learners import (
    CheckpointedAdaptiveLearner,
    FixedWeights,
    LocationAdaptiveLearner,
    LocationInvariantLearner,
)
from .side_norm import SideNormBlock, fit_to_size

__all__ = [
    "CheckpointedAdaptiveLearner",
    "DynamicFusion",
    "FixedFusion",
    "FixedWeights",
    "FusedLocationAdaptiveFusion",
    "LocationAdaptiveLearner",
    "LocationInvariantLearner",
    "SharedConcat",
    "SideNormBlock",
    "fit_to_size",
    "run_checkpointed",
]
