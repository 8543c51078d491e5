"""Argument checks for the fusion op.

Every public entry point validates its tensors here so that a user sees one clear message naming the
tensor, what was expected and what was given, instead of a broadcasting error deep inside a kernel.
"""

from __future__ import annotations

import torch

# as_5d, compute_dtype and WeightForm live in ops/utils.py; importable from here as before.
from .utils import WeightForm, as_5d, compute_dtype

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "FLOAT_DTYPES",
    "WeightForm",
    "as_5d",
    "check_activation",
    "check_backend",
    "compute_dtype",
    "validate_fusion_inputs",
]

BACKENDS = ("auto", "triton", "torch", "reference")
ACTIVATIONS = (None, "softmax")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_backend(backend: object) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_activation(activation: object) -> str | None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def _check_tensor(name: str, t: object, ndim: int | tuple[int, ...]) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point or t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float32, bfloat16, float16 or float64), got dtype {t.dtype}"
        )
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if t.dim() not in allowed:
        expected = " or ".join(f"{n}-D" for n in allowed)
        raise ValueError(f"{name} must be {expected}, got a {t.dim()}-D tensor of shape {tuple(t.shape)}")
    return t


def validate_fusion_inputs(side5: torch.Tensor, sides: torch.Tensor, weights: torch.Tensor) -> WeightForm:
    """Check shapes, dtypes and devices of the fusion op's inputs and return the weight form.

    side5 (B, K, H, W), sides (B, S, H, W), weights (B, K, S+1, H, W) | (B, K, S+1) | (K, S+1), or
    the flat learner output (B, K*(S+1), H, W), reported as "adaptive" (the caller views it as
    (B, K, S+1, H, W) with :func:`dynfuse.ops.utils.unflatten_weights`).
    All three must share one floating dtype and one device.
    """
    _check_tensor("side5", side5, 4)
    _check_tensor("sides", sides, 4)
    _check_tensor("weights", weights, (5, 4, 3, 2))
    b, k, h, w = side5.shape
    if sides.shape[0] != b or sides.shape[2:] != side5.shape[2:]:
        raise ValueError(
            f"sides must have shape (B={b}, S, H={h}, W={w}) to match side5 {tuple(side5.shape)}, "
            f"got {tuple(sides.shape)}"
        )
    s = sides.shape[1]
    if s < 1:
        raise ValueError(f"sides must hold at least one shared map (S >= 1), got S={s}")
    if weights.dim() == 5:
        form: WeightForm = "adaptive"
        expected: tuple[int, ...] = (b, k, s + 1, h, w)
    elif weights.dim() == 4:
        form = "adaptive"
        expected = (b, k * (s + 1), h, w)
        if tuple(weights.shape) != expected:
            raise ValueError(
                f"flat (4-D) weights must have shape (B, K*(S+1), H, W) = {expected} for side5 "
                f"{tuple(side5.shape)} and sides {tuple(sides.shape)} (K={k}, S+1={s + 1}), "
                f"got {tuple(weights.shape)}"
            )
    elif weights.dim() == 3:
        form = "invariant"
        expected = (b, k, s + 1)
    else:
        form = "fixed"
        expected = (k, s + 1)
    if tuple(weights.shape) != expected:
        raise ValueError(
            f"{form} weights must have shape {expected} for side5 {tuple(side5.shape)} and "
            f"sides {tuple(sides.shape)} (K={k}, S+1={s + 1}), got {tuple(weights.shape)}"
        )
    for name, t in (("sides", sides), ("weights", weights)):
        if t.device != side5.device:
            raise ValueError(
                f"{name} is on {t.device} but side5 is on {side5.device}; move all inputs to one device"
            )
        if t.dtype != side5.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but side5 has dtype {side5.dtype}; "
                "the fusion op takes one dtype for all inputs (cast them, or run under autocast)"
            )
    return form
