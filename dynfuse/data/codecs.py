"""Multi-label edge label codecs: the authors' bit-packed RGB PNG and SEAL / CASENet ``.bin``.

RGB PNG (DFF): class ``c`` (0-based, ``c < 24``) is bit ``c`` of ``(R << 16) | (G << 8) | B``; so
classes 0-7 live in blue, 8-15 in green, 16-23 in red. Bits at or above ``num_classes`` are
ignored when decoding (the authors pad their label images with 255 and mask the padding out).

``.bin`` (SEAL, CASENet): raw little-endian uint32, row-major (H, W), no header (the size comes
from the matching image); class ``c`` (``c < 31``) is bit ``c`` and bit 31 marks an ignored pixel.
As the authors' ``gen_label.m`` does, no class bit is written on an ignored pixel.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

# The one atomic writer every tool shares; ``dynfuse.data.codecs.atomic_write`` stays importable.
from ..atomic import atomic_write

__all__ = [
    "EdgeLabelError",
    "MAX_PNG_CLASSES",
    "MAX_BIN_CLASSES",
    "encode_edge_png",
    "decode_edge_png",
    "read_edge_png",
    "write_edge_png",
    "encode_edge_bin",
    "decode_edge_bin",
    "read_edge_bin",
    "write_edge_bin",
    "atomic_write",
]

MAX_PNG_CLASSES = 24
MAX_BIN_CLASSES = 31
_IGNORE_BIT = np.uint32(1 << 31)


class EdgeLabelError(ValueError):
    """A label file that cannot be read or has the wrong format (the message names the file)."""


def _as_edges(edges: Any, max_classes: int) -> np.ndarray:
    if hasattr(edges, "detach") and hasattr(edges, "cpu"):
        edges = edges.detach().cpu().numpy()
    arr = np.asarray(edges)
    if arr.ndim != 3:
        raise ValueError(f"edges: expected shape (K, H, W), got {arr.shape}")
    if not 1 <= arr.shape[0] <= max_classes:
        raise ValueError(f"edges: expected 1..{max_classes} classes, got K = {arr.shape[0]}")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"edges: expected bool or {{0, 1}} numbers, got dtype {arr.dtype}")
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("edges: expected values in {0, 1}")
        arr = arr.astype(bool)
    return arr


def _check_num_classes(num_classes: Any, max_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes: expected an int, got {type(num_classes).__name__}")
    if not 1 <= int(num_classes) <= max_classes:
        raise ValueError(f"num_classes: expected 1..{max_classes}, got {num_classes}")
    return int(num_classes)


def encode_edge_png(edges: Any) -> np.ndarray:
    """(K, H, W) bool edges (K <= 24) -> (H, W, 3) uint8 RGB with the authors' bit layout."""
    arr = _as_edges(edges, MAX_PNG_CLASSES)
    k, h, w = arr.shape
    # Accumulate the 24-bit word, then split it into bytes: a loop over K full-image passes is
    # about twice as fast as np.packbits over a (H, W, 24) bit array.
    value = np.zeros((h, w), dtype="<u4")
    plane = np.empty((h, w), dtype="<u4")
    for c in range(k):
        plane[...] = arr[c]
        plane <<= np.uint32(c)
        value |= plane
    bgra = value.view(np.uint8).reshape(h, w, 4)  # little-endian bytes: B, G, R, 0
    return np.ascontiguousarray(bgra[..., 2::-1])


def decode_edge_png(rgb: Any, num_classes: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (num_classes, H, W) bool; bits >= num_classes are ignored."""
    k = _check_num_classes(num_classes, MAX_PNG_CLASSES)
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb: expected shape (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise TypeError(f"rgb: expected dtype uint8, got {arr.dtype}")
    value = (
        (arr[..., 0].astype(np.uint32) << np.uint32(16))
        | (arr[..., 1].astype(np.uint32) << np.uint32(8))
        | arr[..., 2]
    )
    out = np.empty((k, *value.shape), dtype=bool)
    for c in range(k):
        np.not_equal(value & np.uint32(1 << c), 0, out=out[c])
    return out


def write_edge_png(path: str | os.PathLike[str], edges: Any) -> None:
    """Write (K, H, W) bool edges as a bit-packed RGB PNG (atomically)."""
    from PIL import Image

    rgb = encode_edge_png(edges)
    atomic_write(path, lambda tmp: Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG"))


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an 8-bit RGB(A) image as (H, W, 3) uint8; EdgeLabelError naming the file if not."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode not in ("RGB", "RGBA"):
                raise EdgeLabelError(f"{os.fspath(path)}: expected an RGB image, got mode {mode}")
            arr = np.asarray(img.convert("RGB"))
    except EdgeLabelError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise EdgeLabelError(f"{os.fspath(path)}: cannot read image ({exc})") from exc
    return arr


def read_edge_png(path: str | os.PathLike[str], num_classes: int) -> np.ndarray:
    """Read a bit-packed RGB edge PNG -> (num_classes, H, W) bool."""
    return decode_edge_png(read_rgb(path), num_classes)


def encode_edge_bin(edges: Any, ignore: Any = None) -> np.ndarray:
    """(K, H, W) bool edges (K <= 31), optional (H, W) bool ignore -> (H, W) uint32."""
    arr = _as_edges(edges, MAX_BIN_CLASSES)
    k, h, w = arr.shape
    out = np.zeros((h, w), dtype=np.uint32)
    for c in range(k):
        out |= arr[c].astype(np.uint32) << np.uint32(c)
    if ignore is not None:
        if hasattr(ignore, "detach"):
            ignore = ignore.detach().cpu().numpy()
        ign = np.asarray(ignore)
        if ign.shape != (h, w) or ign.dtype != np.bool_:
            raise ValueError(f"ignore: expected a bool ({h}, {w}) mask, got {ign.dtype} {ign.shape}")
        out[ign] = _IGNORE_BIT  # no class bit on an ignored pixel, as gen_label.m
    return out


def decode_edge_bin(label: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint32 -> (edges (num_classes, H, W) bool, ignore (H, W) bool)."""
    k = _check_num_classes(num_classes, MAX_BIN_CLASSES)
    arr = np.asarray(label)
    if arr.ndim != 2:
        raise ValueError(f"label: expected shape (H, W), got {arr.shape}")
    if arr.dtype != np.uint32:
        raise TypeError(f"label: expected dtype uint32, got {arr.dtype}")
    edges = np.stack([(arr >> np.uint32(c)) & np.uint32(1) for c in range(k)]).astype(bool)
    ignore = (arr & _IGNORE_BIT) != 0
    return edges, ignore


def write_edge_bin(path: str | os.PathLike[str], edges: Any, ignore: Any = None) -> None:
    """Write a SEAL ``.bin`` label (raw little-endian uint32, row-major), atomically."""
    data = encode_edge_bin(edges, ignore).astype("<u4", copy=False)
    atomic_write(path, lambda tmp: data.tofile(tmp))


def read_edge_bin(
    path: str | os.PathLike[str], num_classes: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Read a SEAL ``.bin`` label of ``size`` = (H, W) -> (edges (K, H, W) bool, ignore (H, W))."""
    h, w = (int(size[0]), int(size[1]))
    try:
        raw = np.fromfile(path, dtype="<u4")
    except OSError as exc:
        raise EdgeLabelError(f"{os.fspath(path)}: cannot read ({exc})") from exc
    if raw.size != h * w:
        raise EdgeLabelError(
            f"{os.fspath(path)}: expected {h * w} uint32 values for size {(h, w)}, "
            f"found {raw.size} (file of {os.path.getsize(path)} bytes)"
        )
    return decode_edge_bin(raw.reshape(h, w).astype(np.uint32, copy=False), num_classes)
