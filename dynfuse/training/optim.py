"""SGD with the paper's parameter groups and the per-iteration "poly" learning-rate schedule.

The authors train the pretrained backbone at the base learning rate and every other parameter
(sides, learner, fusion) at 10x, with momentum 0.9 and weight decay 1e-4 on all parameters, and
decay the rate as ``lr * (1 - it / max_it) ** 0.9`` after every iteration.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["PolyLR", "build_optimizer", "build_param_groups", "poly_factor"]


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP and torch.compile wrap the model; the groups are defined on the original module.
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def build_param_groups(
    model: nn.Module, lr: float, *, head_lr_mult: float = 10.0, weight_decay: float = 1e-4
) -> list[dict]:
    """Split trainable parameters into a backbone group (``lr``) and a head group (``lr*mult``).

    Args:
        model: a model with a ``backbone`` submodule (as built by ``dynfuse.create_model``);
            every trainable parameter outside it joins the head group.
        lr: base learning rate (> 0).
        head_lr_mult: multiplier for the non-backbone parameters (the paper: 10).
        weight_decay: L2 weight decay applied to both groups (the paper: 1e-4).

    Returns:
        Two param-group dicts named ``"backbone"`` and ``"head"`` (empty groups are dropped).
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not head_lr_mult > 0:
        raise ValueError(f"head_lr_mult must be > 0, got {head_lr_mult}")
    base = _unwrap(model)
    backbone = getattr(base, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(
            f"model must have a 'backbone' nn.Module attribute to build parameter groups, "
            f"got {type(base).__name__} without one"
        )
    backbone_ids = {id(p) for p in backbone.parameters()}
    backbone_params: list[nn.Parameter] = []
    head_params: list[nn.Parameter] = []
    for p in base.parameters():
        if not p.requires_grad:
            continue
        (backbone_params if id(p) in backbone_ids else head_params).append(p)
    groups = [
        {"name": "backbone", "params": backbone_params, "lr": lr, "weight_decay": weight_decay},
        {
            "name": "head",
            "params": head_params,
            "lr": lr * head_lr_mult,
            "weight_decay": weight_decay,
        },
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("model has no trainable parameters")
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    head_lr_mult: float = 10.0,
) -> torch.optim.SGD:
    """SGD over :func:`build_param_groups` (the paper's optimiser)."""
    groups = build_param_groups(model, lr, head_lr_mult=head_lr_mult, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def poly_factor(iteration: int, max_iters: int, power: float = 0.9) -> float:
    """``(1 - iteration / max_iters) ** power``, clamped to 0 after the last iteration."""
    if max_iters <= 0:
        raise ValueError(f"max_iters must be > 0, got {max_iters}")
    return max(0.0, 1.0 - iteration / max_iters) ** power


class PolyLR(LRScheduler):
    """Poly decay stepped once per iteration: ``lr_i = base_lr * (1 - i / max_iters) ** power``.

    A closed form of the step count, so ``state_dict``/``load_state_dict`` (inherited) restore it
    exactly on resume, unlike a ``LambdaLR`` whose lambda cannot be saved.

    Args:
        optimizer: the optimiser whose groups' ``initial_lr`` are the base rates.
        max_iters: total number of optimiser steps of the run (> 0).
        power: the poly exponent (the paper: 0.9).
        last_epoch: the step count to start from (-1 for a new run), as in torch schedulers.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        power: float = 0.9,
        last_epoch: int = -1,
    ) -> None:
        if max_iters <= 0:
            raise ValueError(f"max_iters must be > 0, got {max_iters}")
        if power < 0:
            raise ValueError(f"power must be >= 0, got {power}")
        self.max_iters = int(max_iters)
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | torch.Tensor]:  # base_lrs may hold tensor rates (torch's type)
        factor = poly_factor(self.last_epoch, self.max_iters, self.power)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        return self.get_lr()
