"""Side feature normalization block: 1x1 conv -> BatchNorm -> upsampling to the output size."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]
UPSAMPLE_MODES = ("deconv", "bilinear")


def fit_to_size(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop (top-left) or resize a (B, C, h, w) map to exactly (B, C, H, W).

    Each side longer than the target is cropped (a transposed convolution of a ceil-rounded level
    overshoots by less than its stride); a map still smaller than the target afterwards (a level
    rounded down) is resized bilinearly, so any input size gives the requested output size. The
    authors never crop: their deconvolutions give exactly the image size only when H and W are
    multiples of 8, and there this function is the identity, so their outputs are kept.

    While traced (ONNX export) the map is always cropped and then resized to (H, W) with the sizes
    taken from the graph, not from the example input: cropping a side that fits is a no-op and
    resizing a map to its own size is the identity, so the one graph computes what the branches
    below compute, for every image size.
    """
    if torch.jit.is_tracing():
        h, w = size[0], size[1]
        return F.interpolate(x[..., :h, :w], size=(h, w), mode="bilinear", align_corners=False)
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] == h and x.shape[-1] == w:
        return x
    x = x[..., :h, :w]
    if x.shape[-2] == h and x.shape[-1] == w:
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def check_feature(name: str, x: object, channels: int | None) -> torch.Tensor:
    """Raise a clear error unless ``x`` is a floating (B, channels, h, w) tensor (any C if None)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    return x


def check_dtype(name: str, x: torch.Tensor, params: torch.Tensor, owner: str) -> None:
    """Raise a TypeError naming both dtypes unless ``x`` fits a layer whose parameters are ``params``.

    Equal dtypes fit; so does any floating input under ``torch.autocast`` for ``x``'s device (autocast
    casts the inputs of each convolution), which is how fp16/bf16 features meet fp32 weights.
    """
    if x.dtype == params.dtype or torch.is_autocast_enabled(x.device.type):
        return
    raise TypeError(
        f"{name} has dtype {x.dtype} but the {owner}'s parameters are {params.dtype}: cast the "
        f"input (.to({params.dtype})), convert the {owner} (.to({x.dtype})), or run under "
        "torch.autocast"
    )


class SideNormBlock(nn.Module):
    """1x1 conv (with bias) -> BatchNorm -> upsampling by ``scale`` -> exact crop/resize.

    Input (B, in_channels, h, w) at stride ``scale``; output (B, out_channels, H, W) at the requested
    ``output_size`` (by default (h*scale, w*scale)), in the input's dtype.

    Args:
        in_channels: channels of the backbone feature map.
        out_channels: 1 for Side1-3, K for Side5, K*(S+1) for Side5-w.
        scale: the feature map's stride relative to the output (1 means no upsampling layer).
        norm: apply the normalizer (BatchNorm); ``False`` gives CASENet's side block.
        upsample: "deconv" (``ConvTranspose2d(c, c, 2*scale, stride=scale, padding=scale//2)`` as the
            authors do) or "bilinear" (parameter-free).
        norm_layer: the normalization layer factory (default ``nn.BatchNorm2d``; e.g. SyncBatchNorm).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        *,
        norm: bool = True,
        upsample: str = "deconv",
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer stride, got {scale!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scale = int(scale)
        self.upsample_mode = upsample
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)
        self.norm = norm_layer(out_channels) if norm else nn.Identity()
        self.upsample: nn.Module | None
        if self.scale > 1 and upsample == "deconv":
            s = self.scale
            self.upsample = nn.ConvTranspose2d(
                out_channels, out_channels, 2 * s, stride=s, padding=s // 2, bias=False
            )
        else:
            self.upsample = None

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        check_feature("SideNormBlock input", x, self.in_channels)
        check_dtype("SideNormBlock input", x, self.conv.weight, "block")
        if output_size is None:
            output_size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        y = self.norm(self.conv(x))
        if self.upsample is not None:
            y = self.upsample(y)
        return fit_to_size(y, output_size)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, scale={self.scale}, "
            f"norm={not isinstance(self.norm, nn.Identity)}, upsample={self.upsample_mode!r}"
        )
