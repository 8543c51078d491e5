"""Data: label codecs, mask -> edge ground truth (training labels and the authors' evaluation GT),
MATLAB-equal label resizing, datasets and joint transforms."""

from .base import EdgeDataset
from .codecs import (
    EdgeLabelError,
    decode_edge_bin,
    decode_edge_png,
    encode_edge_bin,
    encode_edge_png,
    read_edge_bin,
    read_edge_png,
    write_edge_bin,
    write_edge_png,
)
from .datasets import CITYSCAPES_CLASSES, SBD, SBD_CLASSES, Cityscapes, EdgeListDataset
from .edges import disc_offsets, mask_to_edges
from .eval_gt import cityscapes_eval_gt, sbd_eval_gt_raw, sbd_eval_gt_thin
from .resize import matlab_nearest_indices, matlab_resize_nearest
from .synthetic import Synthetic, SyntheticScene
from .synthetic_ablation import AblationScene, SyntheticAblation
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
    "AblationScene",
    "CITYSCAPES_CLASSES",
    "SBD",
    "SBD_CLASSES",
    "Cityscapes",
    "EdgeListDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CenterCrop",
    "Compose",
    "EdgeDataset",
    "EdgeLabelError",
    "Normalize",
    "PadTo",
    "RandomCrop",
    "RandomMirror",
    "RandomScale",
    "Resize",
    "Synthetic",
    "SyntheticAblation",
    "SyntheticScene",
    "decode_edge_bin",
    "decode_edge_png",
    "disc_offsets",
    "encode_edge_bin",
    "encode_edge_png",
    "mask_to_edges",
    "matlab_nearest_indices",
    "matlab_resize_nearest",
    "cityscapes_eval_gt",
    "sbd_eval_gt_raw",
    "sbd_eval_gt_thin",
    "read_edge_bin",
    "read_edge_png",
    "train_transforms",
    "val_transforms",
    "write_edge_bin",
    "write_edge_png",
]
