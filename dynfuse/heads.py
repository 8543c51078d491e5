"""DFF and CASENet heads: multi-level backbone features -> (side5, fuse, weights).

A head takes S+1 feature maps ordered from the lowest level to the top one, normalises each to the
output size with a :class:`SideNormBlock`, predicts fusion weights from the top level and fuses with
:func:`dynfuse.ops.dynamic_fuse`. It works on any backbone that reports channels and strides. What
kind of head it is (the rows of the paper's Table 1 and our extensions) is one value,
:class:`HeadOptions`.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.feature_info import parse_feature_info
from .layers import (
    DynamicFusion,
    FixedWeights,
    FusedLocationAdaptiveFusion,
    LocationAdaptiveLearner,
    LocationInvariantLearner,
    SideNormBlock,
)
from .layers.side_norm import UPSAMPLE_MODES, NormLayer, check_dtype, check_feature
from .ops.validation import BACKENDS, check_activation

__all__ = [
    "CASENET_OPTIONS",
    "CASENetHead",
    "DFFHead",
    "DFFOutput",
    "HEAD_STATE_VERSION",
    "HeadOptions",
    "LEARNERS",
    "LEARNER_RESOLUTIONS",
    "NoSide5W",
    "check_level_sizes",
    "check_output_size",
    "parse_feature_info",
    "upgrade_state_dict",
]

LEARNERS = ("adaptive", "invariant", "fixed")
LEARNER_RESOLUTIONS = ("full", "top")


@dataclass(frozen=True)
class HeadOptions:
    """What kind of DFF head to build: everything but the backbone's channels/strides and K.

    Every builder takes these fields as keyword arguments (:class:`DFFHead`, :class:`DFF
    <dynfuse.models.DFF>`, :func:`~dynfuse.models.create_model`, ``dynfuse-train --model-kw``), and
    each row of the paper's Table 1 is one value (:data:`dynfuse.models.TABLE1`).

    Attributes:
        learner: "adaptive" (per location, the paper's best), "invariant" (per image) or "fixed"
            (learned constants, CASENet-style fusion).
        normalize: BatchNorm in the Side1-3 and Side5 blocks (the paper's normalizer). The Side5-w
            block feeding the learner always keeps its BatchNorm, as in the authors' code.
        activation: None (the paper's choice) or "softmax" over the S+1 weights.
        upsample: "deconv" (the authors' transposed convolutions) or "bilinear".
        learner_resolution: "full" runs Side5-w and the learner at the output size (the paper);
            "top" runs them at the top level's resolution and upsamples the weights bilinearly
            (far less memory; not the paper's model). Needs a learner that reads features.
        fusion_backend: backend of :func:`dynfuse.ops.dynamic_fuse` ("auto", "torch",
            "reference", "triton"); "reference" or "torch" for ONNX export.
        fused_learner: compute Side5-w's upsampling, the location-adaptive learner and the fusion
            in one recomputing op (:class:`~dynfuse.layers.FusedLocationAdaptiveFusion`): the same
            outputs, gradients and BatchNorm statistics without any (B, K*(S+1), H, W) activation
            (about three times the branch's FLOPs). Needs learner="adaptive" and
            learner_resolution="full"; ``DFFOutput.weights`` is None unless
            ``head.fused_learner.return_weights`` is set. ``fusion_backend="triton"`` runs it on its
            Triton kernel; "auto" runs the plain-PyTorch schedule until the kernel has a GPU record.
    """

    learner: str = "adaptive"
    normalize: bool = True
    activation: str | None = None
    upsample: str = "deconv"
    learner_resolution: str = "full"
    fusion_backend: str = "auto"
    fused_learner: bool = False

    def __post_init__(self) -> None:
        if self.learner not in LEARNERS:
            raise ValueError(f"learner must be one of {LEARNERS}, got {self.learner!r}")
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be True or False, got {self.normalize!r}")
        check_activation(self.activation)
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if self.learner_resolution not in LEARNER_RESOLUTIONS:
            raise ValueError(
                f"learner_resolution must be one of {LEARNER_RESOLUTIONS}, got {self.learner_resolution!r}"
            )
        if self.learner == "fixed" and self.learner_resolution != "full":
            raise ValueError(
                f"learner_resolution={self.learner_resolution!r} needs a learner that reads features "
                "('adaptive' or 'invariant'); the 'fixed' learner has no Side5-w block"
            )
        if self.fusion_backend not in BACKENDS:
            raise ValueError(f"fusion_backend must be one of {BACKENDS}, got {self.fusion_backend!r}")
        if not isinstance(self.fused_learner, bool):
            raise ValueError(f"fused_learner must be True or False, got {self.fused_learner!r}")
        if self.fused_learner and (self.learner != "adaptive" or self.learner_resolution != "full"):
            raise ValueError(
                "fused_learner=True needs learner='adaptive' and learner_resolution='full', got "
                f"learner={self.learner!r}, learner_resolution={self.learner_resolution!r}"
            )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names (the dataclass fields)."""
        return tuple(f.name for f in fields(cls))

    def replace(self, **changes: Any) -> HeadOptions:
        """A copy with ``changes``; an unknown name is a ValueError listing the known ones."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise ValueError(f"unknown head option(s) {unknown}; HeadOptions has {list(self.names())}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: CASENet's head (Table 1 row 1): fixed fusion, side blocks without the normalizer.
CASENET_OPTIONS = HeadOptions(learner="fixed", normalize=False)
# What makes a head CASENet's; the other options (backend, upsampling) are free.
_CASENET_DEFINING = ("learner", "normalize", "activation")

#: Format version of a head's state dict. 1: fixed heads kept the fusion bias at ``learner.bias``
#: (a FixedFusion learner); 2: ``fusion.bias`` (a FixedWeights learner and a biased DynamicFusion).
HEAD_STATE_VERSION = 2
# Version 1 -> 2 renames, relative to the head's prefix.
_V1_RENAMES = (("learner.bias", "fusion.bias"),)


def upgrade_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A dynfuse head's or model's state dict of any earlier format under today's keys (a new dict).

    Version 1 kept a fixed head's fusion bias at ``<prefix>learner.bias``; it is now
    ``<prefix>fusion.bias``. No other learner has a ``bias`` of its own, so the key tells the format.
    Current state dicts pass through unchanged; a ``module.`` prefix may be there or not. Meant for
    dynfuse models and heads (any ``*.learner.bias`` is taken for a version-1 head's). Checkpoint
    loaders that compare key sets call this first; ``module.load_state_dict`` needs no call (see
    ``DFFHead._load_from_state_dict``).
    """
    out = dict(state)
    for key in list(out):
        for old, new in _V1_RENAMES:
            if key == old or key.endswith("." + old):
                renamed = key[: -len(old)] + new
                if renamed not in out:
                    out[renamed] = out.pop(key)
    return out


class DFFOutput(NamedTuple):
    """What a DFF or CASENet head (and model) returns.

    side5: (B, K, H, W) class logits of the Side5 block.
    fuse: (B, K, H, W) fused logits.
    weights: fusion weights in the op's forms: (B, K, S+1, H, W) adaptive, (B, K, S+1) invariant,
        (K, S+1) fixed. Before the optional softmax. None with ``fused_learner=True`` unless the
        head's ``fused_learner.return_weights`` is set (the fused branch never builds them otherwise).
    """

    side5: torch.Tensor
    fuse: torch.Tensor
    weights: torch.Tensor | None


def _is_int(v: object) -> bool:
    # SymInt: sizes under torch.compile with dynamic shapes; 0-d integer tensors: sizes while the
    # ONNX exporter traces.
    if isinstance(v, torch.Tensor):
        return v.dim() == 0 and not v.dtype.is_floating_point and v.dtype != torch.bool
    return isinstance(v, (numbers.Integral, torch.SymInt)) and not isinstance(v, bool)


def _positive_ints(name: str, values: object) -> tuple[int, ...]:
    if isinstance(values, (str, torch.Tensor)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a sequence of positive ints, got {values!r}")
    if not all(_is_int(v) and v >= 1 for v in values):
        raise ValueError(f"{name} must be positive ints, got {list(values)}")
    return tuple(int(v) for v in values)


def check_output_size(output_size: object) -> tuple[int, int]:
    """``(H, W)`` as two ints, or a ValueError; any length-2 sequence of positive ints (torch.Size too)."""
    if (
        isinstance(output_size, (str, torch.Tensor))
        or not isinstance(output_size, Sequence)
        or len(output_size) != 2
        or not all(_is_int(v) and v >= 1 for v in output_size)
    ):
        shown = tuple(output_size) if isinstance(output_size, Sequence) else output_size
        raise ValueError(f"output_size must be (H, W), two positive ints, got {shown!r}")
    # While the ONNX exporter traces, the sizes are 0-d tensors computed from the input's shape;
    # int() would bake the example's size into the graph, so they stay tensors there.
    if torch.jit.is_tracing():
        return output_size[0], output_size[1]
    return int(output_size[0]), int(output_size[1])


def _fits(got: int, full: int, stride: int) -> bool:
    # A stride-s level of an H-row output has floor(H/s) or ceil(H/s) rows: backbones differ in how
    # they round odd sizes (padded convolutions ceil, unpadded pooling floors).
    return got == full // stride or got == -(-full // stride)


def check_level_sizes(
    features: Sequence[torch.Tensor], strides: Sequence[int], output_size: tuple[int, int]
) -> None:
    """Raise a ValueError unless every level's (h, w) is the output size over its stride, rounded
    either way. A map that does not fit would otherwise be cropped or resized silently."""
    out_h, out_w = output_size
    top = len(features) - 1
    for i, (f, s) in enumerate(zip(features, strides, strict=True)):
        h, w = f.shape[-2], f.shape[-1]
        if _fits(h, out_h, s) and _fits(w, out_w, s):
            continue
        want = "x".join(str(-(-n // s)) if n % s == 0 else f"{n // s}|{-(-n // s)}" for n in (out_h, out_w))
        name = f"feature map {i}" + (" (top)" if i == top else "")
        raise ValueError(
            f"{name} is {h}x{w} but has stride {s}: an output of {out_h}x{out_w} needs {want} "
            "there (output / stride, rounded down or up). Do the strides match the backbone, and "
            "output_size the image size?"
        )


def _upsample_weights(weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-location weights (B, K, N, h, w) bilinearly to (B, K, N, H, W); other forms as they are."""
    if weights.dim() != 5 or (weights.shape[-2], weights.shape[-1]) == size:
        return weights
    b, k, n, h, w = weights.shape
    up = F.interpolate(weights.reshape(b, k * n, h, w), size=size, mode="bilinear", align_corners=False)
    return up.view(b, k, n, *size)


class NoSide5W(nn.Module):
    """The Side5-w slot of a head whose learner reads no features (:class:`FixedWeights`).

    ``forward(top, output_size)`` returns ``top`` untouched: no parameters, no computation.
    """

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        return x


_LEARNER_CLASSES: dict[str, type[nn.Module]] = {
    "adaptive": LocationAdaptiveLearner,
    "invariant": LocationInvariantLearner,
    "fixed": FixedWeights,
}


class DFFHead(nn.Module):
    """Dynamic Feature Fusion head.

    Args:
        in_channels: channels of the S+1 input levels, lowest first, top (Side5) last.
        num_classes: K.
        strides: stride of each level relative to the output (e.g. (1, 2, 4, 8) for the authors'
            dilated ResNet, (4, 8, 16, 32) for a plain one).
        options: a :class:`HeadOptions` (default: the paper's DFF).
        norm_layer: 2-D normalization factory (default BatchNorm2d).
        feature_indices: if set, forward() accepts the backbone's full feature list and picks these.
        **option_changes: any :class:`HeadOptions` field (``learner``, ``normalize``, ``activation``,
            ``upsample``, ``learner_resolution``, ``fusion_backend``; ``backend`` is accepted for
            ``fusion_backend``), applied on top of ``options``.

    Parts, the same for every kind of head: ``sides`` (Side1..S, one map each), ``side5`` (K class
    maps), ``side5_w`` (the learner's input; :class:`NoSide5W` for the fixed learner), ``learner``
    (the weights) and ``fusion`` (:class:`DynamicFusion`, with a per-class bias for fixed weights).

    forward(features, output_size=None) -> DFFOutput with side5 and fuse (B, K, H, W) logits; the
    default output size is the lowest level's size times its stride. Each level must be
    ``output_size / stride`` (rounded down or up) and of the head's dtype (or run under autocast).
    """

    # State-dict format (see HEAD_STATE_VERSION); torch stores it in each state dict's metadata.
    _version = HEAD_STATE_VERSION

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        strides: Sequence[int],
        options: HeadOptions | None = None,
        norm_layer: NormLayer | None = None,
        feature_indices: Sequence[int] | None = None,
        **option_changes: Any,
    ) -> None:
        super().__init__()
        opts = self.resolve_options(options, **option_changes)
        in_channels = _positive_ints("in_channels", in_channels)
        strides = _positive_ints("strides", strides)
        if len(in_channels) < 2:
            raise ValueError(f"in_channels needs at least 2 levels (S >= 1 plus the top), got {in_channels}")
        if len(strides) != len(in_channels):
            raise ValueError(
                f"strides must give one stride per level: {len(in_channels)} levels, got {list(strides)}"
            )
        if not _is_int(num_classes) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.options = opts
        self.in_channels = in_channels
        self.strides = strides
        self.num_classes = int(num_classes)
        self.num_sides = len(in_channels) - 1
        self.feature_indices = tuple(feature_indices) if feature_indices is not None else None
        if self.feature_indices is not None and len(self.feature_indices) != len(in_channels):
            raise ValueError(f"feature_indices {self.feature_indices} must name {len(in_channels)} levels")
        k, n_in = self.num_classes, self.num_sides + 1
        c_top, s_top = in_channels[-1], strides[-1]
        side = functools.partial(SideNormBlock, upsample=opts.upsample, norm_layer=norm_layer)
        self.sides = nn.ModuleList(
            side(c, 1, s, norm=opts.normalize) for c, s in zip(in_channels[:-1], strides[:-1], strict=True)
        )
        self.side5 = side(c_top, k, s_top, norm=opts.normalize)
        fixed = opts.learner == "fixed"
        self.side5_w: nn.Module
        self.learner: nn.Module
        if fixed:
            self.side5_w = NoSide5W()
            self.learner = FixedWeights(k, n_in)
        else:
            w_scale = s_top if opts.learner_resolution == "full" else 1
            self.side5_w = side(c_top, k * n_in, w_scale)
            extra = {"norm_layer": norm_layer} if opts.learner == "adaptive" else {}
            self.learner = _LEARNER_CLASSES[opts.learner](k * n_in, k, n_in, **extra)
        # CASENet's fused grouped convolution has a per-class bias; the DFF fusion has none.
        self.fusion = DynamicFusion(
            activation=opts.activation,
            backend=opts.fusion_backend,
            num_classes=k,
            bias=fixed,
            num_inputs=n_in,
        )
        self.fused_learner = (
            FusedLocationAdaptiveFusion(
                activation=opts.activation,
                backend=opts.fusion_backend if opts.fusion_backend in ("auto", "triton") else "torch",
            )
            if opts.fused_learner
            else None
        )

    @classmethod
    def default_options(cls) -> HeadOptions:
        """The options this class starts from (the paper's DFF)."""
        return HeadOptions()

    @classmethod
    def resolve_options(cls, options: HeadOptions | None = None, **changes: Any) -> HeadOptions:
        """``options`` (default :meth:`default_options`) with ``changes``; ``backend`` means
        ``fusion_backend``. Raises ValueError for an unknown or invalid option."""
        if "backend" in changes:
            if "fusion_backend" in changes:
                raise ValueError("give backend or fusion_backend, not both (they are one option)")
            changes["fusion_backend"] = changes.pop("backend")
        if options is not None and not isinstance(options, HeadOptions):
            raise TypeError(f"options must be a HeadOptions, got {type(options).__name__}")
        return (options or cls.default_options()).replace(**changes)

    # Read-only views of the options, for code written against the attributes.
    @property
    def learner_kind(self) -> str:
        return self.options.learner

    @property
    def normalize(self) -> bool:
        return self.options.normalize

    @property
    def activation(self) -> str | None:
        return self.options.activation

    @property
    def learner_resolution(self) -> str:
        return self.options.learner_resolution

    @classmethod
    def from_feature_info(
        cls,
        feature_info: Any,
        num_classes: int,
        *,
        indices: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> DFFHead:
        """Build a head from a backbone's feature description.

        ``feature_info``: timm's ``FeatureInfo`` (``model.feature_info`` of a ``features_only`` model),
        a list of its dicts, or a list of (channels, stride). ``indices`` picks the S+1 levels to use
        (default: all, lowest first); forward() then accepts the backbone's full list of maps.
        ``kwargs`` go to the constructor (``options``, ``norm_layer``, option fields).
        """
        levels = parse_feature_info(feature_info)
        if indices is not None:
            bad = [i for i in indices if not -len(levels) <= i < len(levels)]
            if bad:
                raise ValueError(f"indices {list(indices)} out of range for {len(levels)} levels")
            levels = [levels[i] for i in indices]
        return cls(
            [c for c, _ in levels],
            num_classes,
            strides=[s for _, s in levels],
            feature_indices=indices,
            **kwargs,
        )

    def _select(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The S+1 maps this head uses, each checked: a floating 4-D tensor with the level's channels,
        the first one's batch, and the head's dtype (unless autocast casts it)."""
        if isinstance(features, torch.Tensor) or not isinstance(features, Sequence):
            raise TypeError(
                f"features must be a list of {len(self.in_channels)} feature maps, "
                f"got {type(features).__name__}"
            )
        feats = list(features)
        if self.feature_indices is not None and len(feats) != len(self.in_channels):
            try:
                feats = [feats[i] for i in self.feature_indices]
            except IndexError:
                raise ValueError(
                    f"features has {len(feats)} maps; feature_indices {self.feature_indices} do not fit"
                ) from None
        if len(feats) != len(self.in_channels):
            raise ValueError(
                f"expected {len(self.in_channels)} feature maps (channels {self.in_channels}), "
                f"got {len(feats)}"
            )
        params = self.side5.conv.weight
        for i, (f, c) in enumerate(zip(feats, self.in_channels, strict=True)):
            name = f"feature map {i}" + (" (top)" if i == self.num_sides else "")
            check_feature(name, f, c)
            check_dtype(name, f, params, "head")
            if f.shape[0] != feats[0].shape[0]:
                raise ValueError(f"{name} has batch {f.shape[0]}, feature map 0 has {feats[0].shape[0]}")
        return feats

    def forward(
        self, features: Sequence[torch.Tensor], output_size: Sequence[int] | None = None
    ) -> DFFOutput:
        feats = self._select(features)
        if output_size is None:
            output_size = (feats[0].shape[-2] * self.strides[0], feats[0].shape[-1] * self.strides[0])
        size = check_output_size(output_size)
        check_level_sizes(feats, self.strides, size)
        top = feats[-1]
        side5 = self.side5(top, size)
        sides = torch.cat([blk(f, size) for blk, f in zip(self.sides, feats[:-1], strict=True)], dim=1)
        sides = sides.to(side5.dtype)
        if self.fused_learner is not None:  # same model, no full-resolution learner activations
            fuse, fused_weights = self.fused_learner(self.side5_w, self.learner, top, side5, sides, size)
            return DFFOutput(side5, fuse, fused_weights)
        # "top" runs Side5-w and the learner at the top level's size, then upsamples the weights.
        at = size if self.options.learner_resolution == "full" else (top.shape[-2], top.shape[-1])
        weights = _upsample_weights(self.learner(self.side5_w(top, at)), size)
        fuse = self.fusion(side5, sides, weights.to(side5.dtype))
        return DFFOutput(side5, fuse, weights)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        *args: Any,
    ) -> None:
        # Version-1 state dicts (saved before FixedWeights) keep the fixed fusion's bias at
        # ``learner.bias``; move it to where it lives now. Children load after this, from the same dict.
        if local_metadata.get("version", 1) < 2:
            for old, new in _V1_RENAMES:
                if prefix + old in state_dict and prefix + new not in state_dict:
                    state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def extra_repr(self) -> str:
        o = self.options
        return (
            f"in_channels={self.in_channels}, num_classes={self.num_classes}, strides={self.strides}, "
            f"learner={o.learner!r}, normalize={o.normalize}, activation={o.activation!r}, "
            f"learner_resolution={o.learner_resolution!r}"
            + (", fused_learner=True" if o.fused_learner else "")
        )


class CASENetHead(DFFHead):
    """CASENet's head: side blocks without the normalizer and a fixed per-class fusion with a bias
    (:data:`CASENET_OPTIONS`).

    Same inputs and outputs as :class:`DFFHead`; ``weights`` of the output is the (K, S+1) fixed form.
    Options other than ``fusion_backend`` (``backend``) and ``upsample`` would make it another
    model and are refused: for the fixed fusion with the normalizer use ``DFFHead(learner="fixed")``.
    """

    @classmethod
    def resolve_options(cls, options: HeadOptions | None = None, **changes: Any) -> HeadOptions:
        opts = super().resolve_options(options, **changes)
        changed = {
            n: getattr(opts, n) for n in _CASENET_DEFINING if getattr(opts, n) != getattr(CASENET_OPTIONS, n)
        }
        if changed:
            shown = ", ".join(f"{n}={v!r}" for n, v in changed.items())
            raise ValueError(
                f"CASENet has a fixed fusion without normalizer; {shown}: options that apply to DFF "
                "only (for CASENet's fusion with the normalizer use create_model('dff', learner='fixed'))"
            )
        return opts

    @classmethod
    def default_options(cls) -> HeadOptions:
        return CASENET_OPTIONS
