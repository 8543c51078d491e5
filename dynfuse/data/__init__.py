"""Data: label codecs, mask -> edge ground truth, datasets and joint transforms."""

from .base import EdgeDataset
from .edges import disc_offsets, mask_to_edges
from .synthetic import Synthetic, SyntheticScene
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    Compose,
    Normalize,
    PadTo,
    RandomCrop,
    RandomMirror,
    RandomScale,
    Resize,
    train_transforms,
    val_transforms,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CenterCrop",
    "Compose",
    "EdgeDataset",
    "Normalize",
    "PadTo",
    "RandomCrop",
    "RandomMirror",
    "RandomScale",
    "Resize",
    "Synthetic",
    "SyntheticScene",
    "disc_offsets",
    "mask_to_edges",
    "train_transforms",
    "val_transforms",
]
