"""Reading ground truth and predictions from the folder layouts the runner accepts.

- Ground truth: RGB PNG with one bit per class, class ``c`` (0-based) is bit ``c`` of
  ``(R << 16) | (G << 8) | B`` (our prepared layout; SEAL / pyedgeeval Cityscapes PNGs use the
  same packing), file ``<gt_dir>/<name><gt_suffix>``.
- Predictions: one grey PNG per class (8-bit or 16-bit), ``<pred_dir>/class_XXX/<name><suffix>``
  with ``XXX`` the 1-based class number on 3 digits (SEAL / pyedgeeval layout).
- Segmentation (only for ``kill_internal``): grey PNG of class indices, ``<seg_dir>/<name>...``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "decode_bitpacked",
    "read_gt_png",
    "read_pred_png",
    "read_prediction",
    "class_dir_name",
    "classes_in_bitpacked",
    "prediction_class_folders",
    "list_names",
]


def decode_bitpacked(rgb: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W, 3) uint8 bit-packed edges -> (K, H, W) bool (class c = bit c of R<<16|G<<8|B)."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb must have shape (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise TypeError(f"rgb must be uint8, got {arr.dtype}")
    if not 1 <= num_classes <= 24:
        raise ValueError(f"num_classes must be in [1, 24], got {num_classes}")
    code = (
        (arr[..., 0].astype(np.uint32) << 16)
        | (arr[..., 1].astype(np.uint32) << 8)
        | arr[..., 2].astype(np.uint32)
    )
    bits = np.arange(num_classes, dtype=np.uint32)
    return ((code[None] >> bits[:, None, None]) & 1).astype(bool)


def classes_in_bitpacked(rgb: np.ndarray) -> int:
    """Number of the highest class with an edge pixel in a bit-packed (H, W, 3) uint8 map
    (0 when it holds no edge): what the file says K is at least."""
    arr = np.asarray(rgb)
    code = (
        (arr[..., 0].astype(np.uint32) << 16)
        | (arr[..., 1].astype(np.uint32) << 8)
        | arr[..., 2].astype(np.uint32)
    )
    return int(code.max()).bit_length() if code.size else 0


def read_gt_png(
    path: str | os.PathLike, num_classes: int, *, with_class_count: bool = False
) -> np.ndarray | tuple[np.ndarray, int]:
    """(K, H, W) bool edges from a bit-packed RGB PNG (and, with ``with_class_count``, the
    highest class number with an edge in the file, see :func:`classes_in_bitpacked`)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise ValueError(f"{path}: ground-truth PNG must be RGB, got mode {im.mode}")
            rgb = np.asarray(im)
    except OSError as e:
        raise ValueError(f"{path}: cannot read ground-truth PNG ({e})") from e
    edges = decode_bitpacked(rgb, num_classes)
    if with_class_count:
        return edges, classes_in_bitpacked(rgb)
    return edges


def read_pred_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 or uint16 array of one class's prediction PNG (values unscaled)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im).astype(np.uint16)
            if im.mode == "I":
                arr = np.asarray(im)
                if arr.min() < 0 or arr.max() > 65535:
                    raise ValueError(f"{path}: 32-bit PNG values outside the 16-bit range")
                return arr.astype(np.uint16)
            if im.mode == "L":
                return np.asarray(im)
            raise ValueError(f"{path}: prediction PNG must be 8- or 16-bit grey, got {im.mode}")
    except OSError as e:
        raise ValueError(f"{path}: cannot read prediction PNG ({e})") from e


def class_dir_name(k: int) -> str:
    """Folder of class ``k`` (0-based): ``class_001`` for k = 0 (SEAL naming)."""
    return f"class_{k + 1:03d}"


def read_prediction(
    pred_dir: str | os.PathLike, name: str, num_classes: int, suffix: str = ".png"
) -> np.ndarray:
    """(K, H, W) uint8/uint16 prediction of image ``name`` from the per-class layout."""
    maps = []
    for k in range(num_classes):
        path = Path(pred_dir) / class_dir_name(k) / f"{name}{suffix}"
        if not path.is_file():
            raise FileNotFoundError(f"missing prediction {path}")
        maps.append(read_pred_png(path))
    dtypes = {m.dtype for m in maps}
    shapes = {m.shape for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"prediction maps of {name} differ in size: {sorted(shapes)}")
    dtype = np.uint16 if np.dtype(np.uint16) in dtypes else np.uint8
    if len(dtypes) > 1:
        raise ValueError(f"prediction maps of {name} mix bit depths {sorted(map(str, dtypes))}")
    return np.stack(maps).astype(dtype)


def prediction_class_folders(pred_dir: str | os.PathLike) -> list[int]:
    """1-based numbers of the ``class_XXX`` folders present in ``pred_dir`` (sorted)."""
    root = Path(pred_dir)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        tail = p.name[len("class_") :]
        if p.is_dir() and p.name.startswith("class_") and len(tail) == 3 and tail.isdigit():
            out.append(int(tail))
    return sorted(out)


def list_names(gt_dir: str | os.PathLike, suffix: str = ".png") -> list[str]:
    """Sorted names (relative paths without ``suffix``) of the ground-truth files."""
    root = Path(gt_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"gt_dir {root} is not a directory")
    names = [
        str(p.relative_to(root).as_posix())[: -len(suffix)] for p in root.rglob(f"*{suffix}") if p.is_file()
    ]
    return sorted(names)
