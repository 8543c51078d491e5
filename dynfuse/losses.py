"""The reweighted multi-label edge loss of CASENet / DFF (DESIGN.md section 4).

For one image with logits ``x`` (K, H, W), binary targets ``y`` (K, H, W) and a valid-pixel mask
``m`` (H, W)::

    |P|   = number of valid pixels                      (pixels, not pixel-class pairs)
    |Y+|  = sum_{k,p} m_p y_kp                          (positives over all K channels)
    beta  = clamp((|P| - |Y+|) / |Y+|, 1, |P|)
    L_img = 1/(K H W) * sum_{k,p} m_p [ (1 - y) x + (1 + (beta - 1) y) log(1 + exp(-x)) ]

and the batch loss is the mean of ``L_img`` over the images. The bracket is the binary cross
entropy with logits where positives are weighted by ``beta``; it is evaluated in the stable form
``softplus(-x) = max(-x, 0) + log1p(exp(-|x|))`` and always in float32, whatever the logits' dtype.

Choices, stated because they change numbers:

* Denominator. DESIGN.md writes ``mean_{k,p} m_p [...]``: the mean runs over all K*H*W entries
  and masked entries contribute zero, which is what the authors' code does (``(loss *
  pad_mask).mean()``). That is the default (``denominator="all"``). ``denominator="valid"``
  divides by K*|P| instead, so heavily padded crops are not down-weighted.
* No positives (``|Y+| = 0``): beta is set to 1. Beta only multiplies the positive entries, so
  any finite value gives the same loss and gradient; the authors' code computes ``x/0 = inf``
  clamped to ``|P|``, which is equally irrelevant. An image with no valid pixel contributes 0.
* ``per_class=True`` uses one beta per class, ``beta_k = clamp((|P| - |Y+_k|) / |Y+_k|, 1, |P|)``
  (the option DESIGN.md asks for; not what the paper trains with).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["reweighted_edge_loss", "ReweightedEdgeLoss", "dff_loss", "DFFLoss", "edge_loss_beta"]

Denominator = Literal["all", "valid"]


def _check_inputs(logits: Any, targets: Any, valid_mask: Any) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets: expected a torch.Tensor, got {type(targets).__name__}")
    if logits.dim() != 4:
        raise ValueError(f"logits: expected shape (B, K, H, W), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits: expected a floating dtype, got {logits.dtype}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets: expected shape {tuple(logits.shape)} (as logits), got {tuple(targets.shape)}"
        )
    if targets.is_complex():
        raise TypeError(f"targets: expected bool or real dtype, got {targets.dtype}")
    if targets.device != logits.device:
        raise ValueError(f"targets: expected device {logits.device}, got {targets.device}")
    if valid_mask is not None:
        if not isinstance(valid_mask, Tensor):
            raise TypeError(
                f"valid_mask: expected a bool torch.Tensor or None, got {type(valid_mask).__name__}"
            )
        b, _, h, w = logits.shape
        if valid_mask.shape != (b, h, w):
            raise ValueError(f"valid_mask: expected shape {(b, h, w)}, got {tuple(valid_mask.shape)}")
        if valid_mask.dtype != torch.bool:
            raise TypeError(f"valid_mask: expected dtype torch.bool, got {valid_mask.dtype}")
        if valid_mask.device != logits.device:
            raise ValueError(f"valid_mask: expected device {logits.device}, got {valid_mask.device}")


def edge_loss_beta(targets: Tensor, valid_mask: Tensor | None = None, *, per_class: bool = False) -> Tensor:
    """The positive weight beta of each image (float32).

    Args:
        targets: (B, K, H, W) bool or {0, 1} real tensor.
        valid_mask: (B, H, W) bool or None (all valid).
        per_class: one beta per class instead of one per image.

    Returns:
        (B,) float32, or (B, K) with ``per_class=True``.
    """
    y = targets.to(torch.float32)
    b, k, h, w = y.shape
    if valid_mask is None:
        n_valid = torch.full((b,), float(h * w), dtype=torch.float32, device=y.device)
        y_valid = y
    else:
        m = valid_mask.to(torch.float32)
        n_valid = m.sum(dim=(1, 2))
        y_valid = y * m[:, None]
    if per_class:
        n_pos = y_valid.sum(dim=(2, 3))  # (B, K)
        n_valid = n_valid[:, None].expand_as(n_pos)
    else:
        n_pos = y_valid.sum(dim=(1, 2, 3))  # (B,)
    # |Y+| = 0: beta is irrelevant (it only scales positive entries), so take the neutral 1.
    ratio = (n_valid - n_pos) / n_pos.clamp_min(torch.finfo(torch.float32).tiny)
    beta = torch.minimum(ratio.clamp_min(1.0), n_valid.clamp_min(1.0))
    return torch.where(n_pos > 0, beta, torch.ones_like(beta))


def reweighted_edge_loss(
    logits: Tensor,
    targets: Tensor,
    valid_mask: Tensor | None = None,
    *,
    per_class: bool = False,
    denominator: Denominator = "all",
) -> Tensor:
    """Reweighted multi-label sigmoid cross entropy, averaged per image, then over the batch.

    Args:
        logits: (B, K, H, W) float32 / bfloat16 / float16 edge logits (computed in float32).
        targets: (B, K, H, W) bool, or real with values in {0, 1}; same shape as ``logits``.
        valid_mask: (B, H, W) bool, False on padding / ignored pixels; None means all valid.
        per_class: a beta per class (default: one beta per image over all K channels).
        denominator: ``"all"`` divides each image's masked sum by K*H*W (DESIGN.md, the
            authors' code); ``"valid"`` divides by K * (number of valid pixels).

    Returns:
        A float32 scalar tensor, differentiable with respect to ``logits``.
    """
    _check_inputs(logits, targets, valid_mask)
    if denominator not in ("all", "valid"):
        raise ValueError(f"denominator: expected 'all' or 'valid', got {denominator!r}")
    x = logits.to(torch.float32)
    y = targets.to(torch.float32)
    b, k, h, w = x.shape
    beta = edge_loss_beta(targets, valid_mask, per_class=per_class)
    pos_weight = beta.view(b, k, 1, 1) if per_class else beta.view(b, 1, 1, 1)
    m = None if valid_mask is None else valid_mask.to(torch.float32)[:, None]  # (B, 1, H, W)
    # BCE-with-logits with pos_weight is exactly (1-y)x + (1+(beta-1)y) softplus(-x), in one
    # fused, stable kernel and without extra (B, K, H, W) temporaries.
    per_entry = F.binary_cross_entropy_with_logits(x, y, weight=m, pos_weight=pos_weight, reduction="none")
    per_image = per_entry.sum(dim=(1, 2, 3))
    if denominator == "all":
        per_image = per_image / float(k * h * w)
    else:
        n_valid = torch.full((b,), float(h * w), device=x.device) if m is None else m.sum(dim=(1, 2, 3))
        per_image = torch.where(
            n_valid > 0, per_image / (k * n_valid).clamp_min(1.0), torch.zeros_like(per_image)
        )
    return per_image.mean()


class ReweightedEdgeLoss(nn.Module):
    """Module form of :func:`reweighted_edge_loss`.

    ``forward(logits (B,K,H,W), targets (B,K,H,W), valid_mask (B,H,W) bool | None) -> scalar``.
    """

    def __init__(self, *, per_class: bool = False, denominator: Denominator = "all") -> None:
        super().__init__()
        if denominator not in ("all", "valid"):
            raise ValueError(f"denominator: expected 'all' or 'valid', got {denominator!r}")
        self.per_class = bool(per_class)
        self.denominator: Denominator = denominator

    def forward(self, logits: Tensor, targets: Tensor, valid_mask: Tensor | None = None) -> Tensor:
        return reweighted_edge_loss(
            logits, targets, valid_mask, per_class=self.per_class, denominator=self.denominator
        )

    def extra_repr(self) -> str:
        return f"per_class={self.per_class}, denominator={self.denominator!r}"


def dff_loss(
    output: Any,
    targets: Tensor,
    valid_mask: Tensor | None = None,
    *,
    per_class: bool = False,
    denominator: Denominator = "all",
    side5_weight: float = 1.0,
    fuse_weight: float = 1.0,
) -> Tensor:
    """The DFF / CASENet training loss ``L(side5) + L(fuse)`` (weights 1 as the authors use).

    Args:
        output: anything with ``.side5`` and ``.fuse`` logits (B, K, H, W), e.g. ``DFFOutput``.
        targets: (B, K, H, W) edge targets; valid_mask: (B, H, W) bool or None.

    Returns:
        A float32 scalar tensor.
    """
    if not (hasattr(output, "side5") and hasattr(output, "fuse")):
        raise TypeError(
            f"output: expected an object with .side5 and .fuse (e.g. DFFOutput), got {type(output).__name__}"
        )
    loss_side5 = reweighted_edge_loss(
        output.side5, targets, valid_mask, per_class=per_class, denominator=denominator
    )
    loss_fuse = reweighted_edge_loss(
        output.fuse, targets, valid_mask, per_class=per_class, denominator=denominator
    )
    return side5_weight * loss_side5 + fuse_weight * loss_fuse


class DFFLoss(nn.Module):
    """Module form of :func:`dff_loss`: ``forward(output, targets, valid_mask=None) -> scalar``."""

    def __init__(
        self,
        *,
        per_class: bool = False,
        denominator: Denominator = "all",
        side5_weight: float = 1.0,
        fuse_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if denominator not in ("all", "valid"):
            raise ValueError(f"denominator: expected 'all' or 'valid', got {denominator!r}")
        self.per_class = bool(per_class)
        self.denominator: Denominator = denominator
        self.side5_weight = float(side5_weight)
        self.fuse_weight = float(fuse_weight)

    def forward(self, output: Any, targets: Tensor, valid_mask: Tensor | None = None) -> Tensor:
        return dff_loss(
            output,
            targets,
            valid_mask,
            per_class=self.per_class,
            denominator=self.denominator,
            side5_weight=self.side5_weight,
            fuse_weight=self.fuse_weight,
        )
