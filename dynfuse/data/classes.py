"""Class names of the datasets, in label order, and the Cityscapes labelId table (importing this
module needs nothing beyond the standard library; shared by data and viz)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
SBD_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# Cityscapes labelId -> trainId (the official table, as the authors' labelid2trainid.m; every other
# labelId -> 255 = no class).
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
# Never a source of edges: "rectification border" and "out of roi". The authors test instanceIds
# against 2 and 3; Cityscapes gives every pixel of a class without instances instanceId = labelId,
# so that is the same set of pixels as labelIds 2 and 3.
CITYSCAPES_IGNORED_LABEL_IDS = (2, 3)


def cityscapes_train_ids(label_ids: Any) -> np.ndarray:
    """(H, W) Cityscapes labelIds -> (H, W) int64 numpy train ids (255 = no class)."""
    import numpy as np

    lut = np.full(256, 255, dtype=np.int64)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut[np.clip(np.asarray(label_ids).astype(np.int64), 0, 255)]
