"""Adapters that let a DFF head sit on other feature extractors.

- ``FeatureListBackbone`` wraps any module whose forward returns a list / tuple (or dict) of feature
  maps, optionally selecting some of them, and gives it a ``feature_info`` (given, or measured once
  with a probe input).
- ``TimmBackbone`` builds (or wraps) a ``timm`` ``features_only`` model. timm is optional: it is
  only imported when this adapter is used, and nothing is downloaded unless you ask for
  ``pretrained=True``.

Both return ``[f_1, ..., f_n]`` ordered low -> top level, which is what ``DFFHead`` expects: the
first n-1 are the shared low-level sides, the last one the top (class) level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .feature_info import FeatureInfo

__all__ = ["FeatureListBackbone", "TimmBackbone", "default_dff_indices"]


# timm arguments that only say where starting weights come from: not needed to rebuild a model.
_WEIGHT_SOURCE_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


def default_dff_indices(num_features: int) -> tuple[int, ...]:
    """Default DFF levels: the three lowest and the top one (like c1, c2, c3, c5)."""
    if num_features < 2:
        raise ValueError(f"a DFF head needs at least 2 feature levels, got {num_features}")
    if num_features <= 4:
        return tuple(range(num_features))
    return (0, 1, 2, num_features - 1)


def _as_list(out: Any, where: str) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        out = [out]
    elif isinstance(out, Mapping):
        out = list(out.values())
    if not isinstance(out, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in out):
        raise TypeError(f"{where} must return a list/tuple/dict of tensors, got {type(out).__name__}")
    return list(out)


class FeatureListBackbone(nn.Module):
    """Wrap ``module`` (forward(x) -> list/tuple/dict of (B, C_i, H_i, W_i)) as a DFF backbone.

    Args:
        module: the feature extractor; becomes ``self.body`` (its parameters count as backbone).
        channels: per *returned* feature (after ``indices``). When both ``channels`` and
            ``reductions`` are None they are measured once by running ``module`` in eval mode on a
            zero probe of ``probe_size``.
        reductions: the stride of each returned feature (give both, or neither).
        indices: which of the module's outputs to return, in order (default: all).
        in_channels: image channels, for input checks and the probe.
        probe_size: (H, W) of the probe; a multiple of the largest stride.
    """

    def __init__(
        self,
        module: nn.Module,
        channels: Sequence[int] | None = None,
        reductions: Sequence[int] | None = None,
        *,
        indices: Sequence[int] | None = None,
        in_channels: int = 3,
        probe_size: tuple[int, int] = (64, 64),
    ):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        self.body = module
        self.in_channels = in_channels
        self.indices = None if indices is None else tuple(int(i) for i in indices)
        if channels is None and reductions is None:
            self.feature_info = self._probe(probe_size)
        elif channels is not None and reductions is not None:
            self.feature_info = FeatureInfo.from_lists(list(channels), list(reductions))
        else:
            raise ValueError("give both channels and reductions, or neither (to measure them)")

    def _select(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.indices is None:
            return feats
        bad = [i for i in self.indices if not -len(feats) <= i < len(feats)]
        if bad:
            raise ValueError(f"indices {bad} out of range for a module returning {len(feats)} features")
        return [feats[i] for i in self.indices]

    @torch.no_grad()
    def _probe(self, size: tuple[int, int]) -> FeatureInfo:
        was_training = self.body.training
        self.body.eval()
        try:
            param = next(self.body.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            dtype = param.dtype if param is not None and param.is_floating_point() else None
            probe = torch.zeros(1, self.in_channels, *size, device=device, dtype=dtype)
            feats = self._select(_as_list(self.body(probe), "module"))
        finally:
            self.body.train(was_training)
        return FeatureInfo.from_lists(
            [int(f.shape[1]) for f in feats],
            [max(1, round(size[0] / f.shape[-2])) for f in feats],
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        feats = self._select(_as_list(self.body(x), "module"))
        if len(feats) != len(self.feature_info):
            raise ValueError(
                f"module returned {len(feats)} features, feature_info describes {len(self.feature_info)}"
            )
        return feats


class TimmBackbone(nn.Module):
    """A ``timm`` ``features_only`` model as a DFF backbone.

    Args:
        model: a timm model name (built with ``features_only=True``) or an existing features_only
            model (anything with a timm ``feature_info``).
        out_indices: which feature levels to return; default: the three lowest and the top one.
        pretrained: passed to ``timm.create_model`` when ``model`` is a name (downloads weights!).
        in_channels: image channels.
        **timm_kwargs: more ``timm.create_model`` arguments (e.g. ``output_stride=8``).

    Built from a name, it records how (``build_config``: ``{"name": "timm:<name>", "kwargs"}``), so a
    model on it can be saved with ``save_pretrained``; wrapped from a module, ``build_config`` is None.
    """

    build_config: dict[str, Any] | None = None

    def __init__(
        self,
        model: str | nn.Module,
        out_indices: Sequence[int] | None = None,
        *,
        pretrained: bool = False,
        in_channels: int = 3,
        **timm_kwargs: Any,
    ):
        super().__init__()
        if isinstance(model, str):
            name = model
            try:
                import timm
            except ImportError as exc:  # optional dependency
                raise ImportError("TimmBackbone needs timm: pip install 'dynfuse[timm]'") from exc
            kwargs = dict(timm_kwargs)
            if out_indices is not None:
                kwargs["out_indices"] = tuple(int(i) for i in out_indices)
            model = timm.create_model(
                model, features_only=True, pretrained=pretrained, in_chans=in_channels, **kwargs
            )
            # Without explicit out_indices timm returns every level; keep DFF's default four.
            info: Any = model.feature_info  # timm's FeatureInfo (nn.Module's typing does not know it)
            n = len(info.channels())
            self.indices = None if out_indices is not None else default_dff_indices(n)
            # How to build it again (what save_pretrained writes; ``pretrained`` only set the
            # starting weights). A backbone made from a module has no such record.
            rebuild = {k: v for k, v in timm_kwargs.items() if k not in _WEIGHT_SOURCE_KWARGS}
            if out_indices is not None:
                rebuild["out_indices"] = list(kwargs["out_indices"])
            if in_channels != 3:
                rebuild["in_channels"] = in_channels
            self.build_config = {"name": f"timm:{name}", "kwargs": rebuild}
        elif isinstance(model, nn.Module):
            if not hasattr(model, "feature_info"):
                raise TypeError("model must be a timm features_only model (with feature_info)")
            info = model.feature_info
            n = len(info.channels())
            self.indices = (
                tuple(int(i) for i in out_indices) if out_indices is not None else default_dff_indices(n)
            )
        else:
            raise TypeError(f"model must be a timm model name or module, got {type(model)}")
        self.body = model
        self.in_channels = in_channels
        # Transformer families (Swin, ...) hand back channels-last maps; timm says so in output_fmt.
        fmt = getattr(model, "output_fmt", "NCHW")
        self.channels_last_output = str(getattr(fmt, "value", fmt)) == "NHWC"
        chans, reds = list(info.channels()), list(info.reduction())
        names = list(info.module_name())
        if self.indices is not None:
            chans = [chans[i] for i in self.indices]
            reds = [reds[i] for i in self.indices]
            names = [names[i] for i in self.indices]
        self.feature_info = FeatureInfo.from_lists(chans, reds, names)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        feats = _as_list(self.body(x), "timm model")
        if self.indices is not None:
            feats = [feats[i] for i in self.indices]
        if self.channels_last_output:  # (B, H, W, C) -> (B, C, H, W), as DFFHead expects
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return feats
