"""The fused location-adaptive branch as a module: Side5-w upsampling + learner + fusion in one op.

It owns no parameters: it reads the head's own Side5-w block and :class:`LocationAdaptiveLearner`, so
state dicts (and the authors' checkpoints) are the same with the switch on or off.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..ops import dynamic_fuse
from ..ops.fused_learner import (
    DEFAULT_CHUNK_ELEMENTS,
    LEARNER_BACKENDS,
    BatchNormState,
    UpsampleGeometry,
    deconv_output_size,
    fused_learner_fuse,
    materialize_weights,
)
from ..ops.validation import check_activation, compute_dtype
from .learners import LocationAdaptiveLearner
from .side_norm import SideNormBlock, check_feature


def _check_learner(learner: nn.Module) -> LocationAdaptiveLearner:
    if not isinstance(learner, LocationAdaptiveLearner):
        raise TypeError(f"the fused learner needs a LocationAdaptiveLearner, got {type(learner).__name__}")
    for name in ("conv1", "conv2", "conv3"):
        block = getattr(learner, name)
        conv, bn = block[0], block[1]
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(
                f"the fused learner needs nn.BatchNorm2d in the learner, {name} has {type(bn).__name__} "
                "(other normalisations, e.g. SyncBatchNorm's cross-process statistics, are not fused; "
                "use the unfused head)"
            )
        if conv.bias is None or conv.kernel_size != (1, 1):
            raise TypeError(f"the fused learner needs 1x1 convolutions with bias, {name} has {conv}")
    if learner.hidden_channels != learner.in_channels or learner.in_channels != (
        learner.num_classes * learner.num_inputs
    ):
        raise ValueError(
            "the fused learner needs in = hidden = K*(S+1) channels (the authors' learner), got "
            f"in={learner.in_channels}, hidden={learner.hidden_channels}, "
            f"K*(S+1)={learner.num_classes * learner.num_inputs}"
        )
    return learner


def _norm_state(bn: nn.BatchNorm2d) -> BatchNormState:
    return BatchNormState(bn.weight, bn.bias, bn.running_mean, bn.running_var, float(bn.eps))


def _conv_bias(conv: nn.Conv2d) -> torch.Tensor:
    """The 1x1 convolution's bias (:func:`_check_learner` requires one)."""
    if conv.bias is None:
        raise TypeError(f"the fused learner needs 1x1 convolutions with bias, got {conv}")
    return conv.bias


def _running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(running_mean, running_var) of a BatchNorm2d built with track_running_stats=True."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"the fused learner in eval mode needs BatchNorm running statistics "
            f"(track_running_stats=True), {bn} has none"
        )
    return bn.running_mean, bn.running_var


def _update_running(bn: nn.BatchNorm2d, mean: torch.Tensor, var_unbiased: torch.Tensor) -> None:
    """BatchNorm2d's running-statistics update (momentum, or a cumulative average if momentum is None)."""
    if not (bn.training and bn.track_running_stats) or bn.running_mean is None:
        return
    # track_running_stats=True registers all three buffers; only a user who set one to None gets here.
    if bn.running_var is None or bn.num_batches_tracked is None:
        raise ValueError(f"{bn} tracks running statistics but has running_var or num_batches_tracked None")
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else float(bn.momentum)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(var_unbiased.to(bn.running_var.dtype), factor)


class FusedLocationAdaptiveFusion(nn.Module):
    """Side5-w upsampling, the location-adaptive learner and the fusion without full-size activations.

    forward(side5_w, learner, top, side5, sides, output_size) -> (fuse (B, K, H, W), weights or None):
    the same fused map (and running-statistics updates) as ``dynamic_fuse(side5, sides,
    learner(side5_w(top, output_size)))``, computed by :func:`dynfuse.ops.fused_learner.fused_learner_fuse`
    from the Side5-w block's low-resolution output. ``weights`` (B, K, S+1, H, W) is computed only
    when ``return_weights`` is True (visualisation); otherwise it is None.

    Falls back to the unfused modules when the Side5-w transposed convolution gives a map smaller than
    the output (the head then resizes it bilinearly; only cropping is fused).

    Args:
        activation: None or "softmax" over the S+1 weights.
        chunk_elements: scratch budget of one chunk of output rows, in elements of (B, C, rows, W).
        return_weights: also compute the weights (chunk by chunk, without autograd).
        backend: "auto", "torch" or "triton" (see :func:`dynfuse.ops.fused_learner.fused_learner_fuse`).
    """

    def __init__(
        self,
        *,
        activation: str | None = None,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        return_weights: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.activation = check_activation(activation)
        if backend not in LEARNER_BACKENDS:
            raise ValueError(f"backend must be one of {LEARNER_BACKENDS}, got {backend!r}")
        self.backend = backend
        if int(chunk_elements) < 1:
            raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements!r}")
        self.chunk_elements = int(chunk_elements)
        self.return_weights = bool(return_weights)

    def forward(
        self,
        side5_w: SideNormBlock,
        learner: LocationAdaptiveLearner,
        top: torch.Tensor,
        side5: torch.Tensor,
        sides: torch.Tensor,
        output_size: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        learner = _check_learner(learner)
        check_feature("top feature map", top, side5_w.in_channels)
        size = (int(output_size[0]), int(output_size[1]))
        z = side5_w.norm(side5_w.conv(top))
        c1, c2, c3 = (getattr(learner, f"conv{i}") for i in (1, 2, 3))
        deconv = side5_w.upsample
        up_weight: torch.Tensor | None
        up_bias: torch.Tensor | None
        if isinstance(deconv, nn.ConvTranspose2d):
            s, pad = side5_w.scale, int(deconv.padding[0])
            cover = (deconv_output_size(z.shape[-2], s, pad), deconv_output_size(z.shape[-1], s, pad))
            if cover[0] < size[0] or cover[1] < size[1]:
                weights = learner(side5_w(top, size))
                fuse = dynamic_fuse(side5, sides, weights.to(side5.dtype), activation=self.activation)
                return fuse, weights
            geometry = UpsampleGeometry("deconv", size, s, pad)
            # conv1 folded into the transposed convolution: Wf[i, o] = sum_c Wd[i, c] W1[o, c] per tap,
            # in float32 for half-precision weights (its gradient is a sum with heavy cancellation).
            ct = compute_dtype(deconv.weight.dtype)
            low = z
            with torch.autocast(top.device.type, enabled=False):
                up_weight = torch.einsum(
                    "icyx,oc->ioyx", deconv.weight.to(ct), c1[0].weight[:, :, 0, 0].to(ct)
                )
            up_bias = _conv_bias(c1[0])
        else:
            geometry = UpsampleGeometry("resize", size)
            low = c1[0](z)  # conv1 commutes with the crop and the bilinear resize (weights sum to 1)
            up_weight = up_bias = None
        bns: tuple[nn.BatchNorm2d, nn.BatchNorm2d, nn.BatchNorm2d] = (c1[1], c2[1], c3[1])
        modes = {bn.training or bn.running_mean is None for bn in bns}
        if len(modes) > 1:
            raise ValueError(
                "the fused learner needs its three BatchNorm layers all in training mode or all "
                "in eval mode (with running statistics); got a mix"
            )
        batch_stats = modes.pop()
        norms = (_norm_state(bns[0]), _norm_state(bns[1]), _norm_state(bns[2]))
        conv_weights = (c2[0].weight[:, :, 0, 0], c3[0].weight[:, :, 0, 0])
        conv_biases = (_conv_bias(c2[0]), _conv_bias(c3[0]))
        result = fused_learner_fuse(
            low,
            up_weight,
            up_bias,
            conv_weights,
            conv_biases,
            norms,
            side5,
            sides,
            geometry,
            batch_stats=batch_stats,
            activation=self.activation,
            chunk_elements=self.chunk_elements,
            backend=self.backend,
        )
        if batch_stats:
            assert result.batch_mean is not None and result.batch_var_unbiased is not None
            for i, bn in enumerate(bns):
                _update_running(bn, result.batch_mean[i], result.batch_var_unbiased[i])
        weights = None
        if self.return_weights:
            if batch_stats:
                assert result.batch_mean is not None and result.batch_var is not None
                means, variances = result.batch_mean, result.batch_var
            else:
                running = [_running_stats(bn) for bn in bns]
                means = torch.stack([mean for mean, _ in running])
                variances = torch.stack([var for _, var in running])
            weights = materialize_weights(
                low,
                up_weight,
                up_bias,
                conv_weights,
                conv_biases,
                norms,
                geometry,
                means,
                variances,
                learner.num_classes,
            )
        return result.fuse, weights

    def extra_repr(self) -> str:
        return (
            f"activation={self.activation!r}, chunk_elements={self.chunk_elements}, "
            f"return_weights={self.return_weights}, backend={self.backend!r}"
        )
