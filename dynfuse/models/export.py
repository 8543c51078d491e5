"""ONNX export of DFF / CASENet models.

We use PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): on these
models it takes well under a second, where the ``torch.export``-based one takes ~15 s on the tiny model.

The graph takes any image height and width (and any batch): the heads crop or resize every
upsampled map to the input size with sizes read from the input inside the graph
(:func:`dynfuse.layers.side_norm.fit_to_size` has one traced form for all sizes), so the example
``image_size`` only serves the tracing. ``dynamic_size=False`` fixes H and W to it instead.

The fusion runs through the plain-op "reference" backend during export (the Triton and lean paths
are custom autograd functions with no ONNX symbolic); the model's own backend is restored afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..layers import DynamicFusion, FixedFusion
from .edge import EdgeModel

__all__ = ["export_onnx", "fusion_backend"]

OUTPUT_NAMES = ("side5", "fuse", "weights")


@contextlib.contextmanager
def fusion_backend(model: nn.Module, backend: str) -> Iterator[nn.Module]:
    """Temporarily set the fusion backend of every fusion module in ``model``."""
    mods = [m for m in model.modules() if isinstance(m, (DynamicFusion, FixedFusion))]
    saved = [m.backend for m in mods]
    try:
        for m in mods:
            m.backend = backend
        yield model
    finally:
        for m, b in zip(mods, saved, strict=True):
            m.backend = b


class _Outputs(nn.Module):
    """The model's outputs as a plain tuple of the first ``n`` (what the ONNX graph returns)."""

    def __init__(self, model: nn.Module, n: int):
        super().__init__()
        self.model = model
        self.n = n

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(images))[: self.n]


def export_onnx(
    model: EdgeModel,
    path: str | os.PathLike[str] | io.BytesIO,
    image_size: Sequence[int],
    *,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    dynamic_size: bool = True,
    opset_version: int = 17,
    in_channels: int = 3,
) -> None:
    """Export ``model`` (eval mode) to ONNX with inputs ``images`` (B, C, H, W) float32 and outputs
    ``side5``, ``fuse`` (B, K, H, W) logits and ``weights`` (the fusion weights: (B, K, S+1, H, W)
    location-adaptive, (B, K, S+1) invariant; not an output for fixed fusion -- CASENet or
    ``learner="fixed"`` -- whose weights are graph constants).

    Args:
        model: a DFF / CASENet model; exported in eval mode (its mode is restored afterwards).
        path: file path or a writable binary buffer.
        image_size: (H, W) of the example input the graph is traced with; any H, W >= 1.
        batch_size: batch of the example input.
        dynamic_batch: the graph accepts any batch (else only ``batch_size``).
        dynamic_size: the graph accepts any H, W >= 1, odd ones too, and gives the same outputs as
            the model (else only ``image_size``).
        opset_version: ONNX opset (17 is supported by onnxruntime >= 1.14).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if len(image_size) != 2 or any(int(s) < 1 for s in image_size):
        raise ValueError(f"image_size must be (H, W) with positive sides, got {tuple(image_size)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros(batch_size, in_channels, int(image_size[0]), int(image_size[1]), device=device)
    options = getattr(getattr(model, "head", None), "options", None)
    learner = options.learner if options is not None else "adaptive"
    # Fixed (CASENet-style) weights are constants of the graph, not an output.
    names = list(OUTPUT_NAMES[:2]) if learner == "fixed" else list(OUTPUT_NAMES)
    dynamic_axes = _dynamic_axes(names, learner, batch=dynamic_batch, size=dynamic_size)
    was_training = model.training
    model.eval()
    try:
        with fusion_backend(model, "reference"), warnings.catch_warnings(), torch.no_grad():
            # The tracer warns about every Python-side shape check it evaluates once (the heads'
            # size checks); they add nothing to the graph, whose sizes come from the input.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                _Outputs(model, len(names)).eval(),
                (example,),
                # torch's annotation omits buffers, which the exporter writes to all the same.
                path if isinstance(path, io.BytesIO) else os.fspath(path),  # type: ignore[arg-type]
                input_names=["images"],
                output_names=names,
                dynamic_axes=dynamic_axes or None,
                opset_version=opset_version,
                dynamo=False,
            )
    finally:
        model.train(was_training)


def _dynamic_axes(names: list[str], learner: str, *, batch: bool, size: bool) -> dict[str, dict[int, str]]:
    """The exporter's ``dynamic_axes`` for the input and each output (by its layout)."""
    # Axes of (batch, height, width) in each tensor; invariant weights (B, K, S+1) have no H, W.
    where = {
        "images": (0, 2, 3),
        "side5": (0, 2, 3),
        "fuse": (0, 2, 3),
        "weights": (0, 3, 4) if learner == "adaptive" else (0, None, None),
    }
    axes: dict[str, dict[int, str]] = {}
    for name in ["images", *names]:
        b, h, w = where[name]
        entry: dict[int, str] = {}
        if batch:
            entry[b] = "batch"
        if size and h is not None and w is not None:
            entry[h], entry[w] = "height", "width"
        if entry:
            axes[name] = entry
    return axes
