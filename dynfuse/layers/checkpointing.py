"""Activation checkpointing that keeps BatchNorm statistics right.

Non-reentrant checkpointing re-runs a block's forward during backward; in training mode that would
update every BatchNorm's running statistics a second time. :func:`run_checkpointed` restores them
after the recomputation, so a checkpointed training step leaves the same state as a plain one. Used
by the dilated ResNet's stages and by :class:`~dynfuse.layers.CheckpointedAdaptiveLearner`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["run_checkpointed"]


def _snapshot_bn_buffers(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (buf, buf.clone())
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buf in m.buffers()
    ]


class _StageRunner:
    """Runs ``fn`` under activation checkpointing without double-counting BatchNorm statistics.

    The recomputation (the second call for one forward) restores the BatchNorm buffers of ``owner``
    it touched, so running stats match a plain run.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], owner: nn.Module):
        self.fn = fn
        self.owner = owner
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            return self.fn(x)
        saved = _snapshot_bn_buffers(self.owner)
        try:
            return self.fn(x)
        finally:
            # ``finally``: checkpoint's early stop aborts the recomputation with an exception once
            # it has every tensor it needs.
            with torch.no_grad():
                for buf, old in saved:
                    buf.copy_(old)


def run_checkpointed(
    fn: Callable[[torch.Tensor], torch.Tensor], owner: nn.Module, x: torch.Tensor
) -> torch.Tensor:
    """``fn(x)`` with activations recomputed in backward; BN buffers of ``owner`` updated once."""
    return checkpoint(_StageRunner(fn, owner), x, use_reentrant=False)
