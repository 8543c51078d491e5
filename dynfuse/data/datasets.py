"""Cityscapes and SBD semantic-edge datasets over the layout ``dynfuse-prepare`` writes.

A prepared root holds ``<split>.txt`` file lists whose lines are ``IMAGE EDGE_PNG`` (paths relative
to the root; a leading ``/`` is accepted, so the authors' own ``data_proc`` lists also load) and
the bit-packed RGB edge PNGs (:mod:`dynfuse.data.codecs`). A line with only an image path is an
unlabelled item (no edges, all pixels valid).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import EdgeDataset
from .classes import CITYSCAPES_CLASSES, SBD_CLASSES
from .codecs import EdgeLabelError, read_edge_png
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["EdgeListDataset", "Cityscapes", "SBD", "CITYSCAPES_CLASSES", "SBD_CLASSES"]


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; EdgeLabelError naming the file when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        raise EdgeLabelError(f"{os.fspath(path)}: cannot read image ({exc})") from exc


def read_file_list(path: str | os.PathLike[str]) -> list[tuple[str, str | None]]:
    """Parse a file list: one ``IMAGE [EDGE]`` pair per non-empty line."""
    entries: list[tuple[str, str | None]] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 2:
                raise ValueError(f"{os.fspath(path)}:{number}: expected 'IMAGE [EDGE]', got {line.strip()!r}")
            image = parts[0].lstrip("/")
            edge = parts[1].lstrip("/") if len(parts) == 2 else None
            entries.append((image, edge))
    return entries


class EdgeListDataset(EdgeDataset):
    """Items listed in ``root/<split>.txt`` (or ``list_file``), edges as bit-packed RGB PNGs.

    Args:
        root: the prepared root (``dynfuse-prepare ... OUT``).
        split: the list name, e.g. "train" or "val".
        transform: joint transform applied before normalisation (``dynfuse.data.transforms``).
        num_classes: K, the number of bits to decode (default: ``len(self.classes)`` of a dataset
            class that names its classes; required otherwise).
        list_file: a list to use instead of ``root/<split>.txt``; its paths are relative to root.
    """

    classes: tuple[str, ...] = ()

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        num_classes: int | None = None,
        list_file: str | os.PathLike[str] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(transform, mean, std)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"root: {os.fspath(root)!r} is not a directory (run dynfuse-prepare first)"
            )
        self.split = split
        if num_classes is None:
            if not self.classes:
                raise ValueError("num_classes: required for a dataset class without class names")
            num_classes = len(self.classes)
        self.num_classes = int(num_classes)
        lst = Path(list_file) if list_file is not None else self.root / f"{split}.txt"
        if not lst.is_file():
            available = sorted(p.stem for p in self.root.glob("*.txt"))
            raise FileNotFoundError(
                f"split: no file list {os.fspath(lst)!r} for split {split!r} (lists in root: {available})"
            )
        self.entries = read_file_list(lst)
        if not self.entries:
            raise ValueError(f"{os.fspath(lst)}: the file list is empty")

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int) -> dict[str, Any]:
        image_rel, edge_rel = self.entries[index]
        image = read_image(self.root / image_rel)
        h, w = image.shape[:2]
        if edge_rel is None:
            edges = np.zeros((self.num_classes, h, w), dtype=bool)
        else:
            edge_path = self.root / edge_rel
            edges = read_edge_png(edge_path, self.num_classes)
            if edges.shape[1:] != (h, w):
                raise EdgeLabelError(
                    f"{os.fspath(edge_path)}: edge size {edges.shape[1:]} differs from the "
                    f"image {os.fspath(self.root / image_rel)} size {(h, w)}"
                )
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).to(torch.float32).div_(255.0),
            "edges": torch.from_numpy(edges),
            "valid": torch.ones((h, w), dtype=torch.bool),
            "name": Path(image_rel).stem,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={os.fspath(self.root)!r}, split={self.split!r}, "
            f"items={len(self)}, num_classes={self.num_classes})"
        )


class Cityscapes(EdgeListDataset):
    """Cityscapes semantic edges (19 train-id classes) prepared by ``dynfuse-prepare cityscapes``.

    ``Cityscapes(root, "train", transform=train_transforms(640, short_side=(480, 1280)))``
    reproduces the paper's training input; ``Cityscapes(root, "val")`` gives full images.
    """

    classes = CITYSCAPES_CLASSES


class SBD(EdgeListDataset):
    """SBD semantic edges (20 VOC classes) prepared by ``dynfuse-prepare sbd``.

    The train list holds every training image at each offline scale (the paper: 0.5-1.5), so
    ``SBD(root, "train", transform=train_transforms(352))`` reproduces the paper's input.
    """

    classes = SBD_CLASSES
