"""``dynamic_fuse``: the public fusion op and its backend dispatch."""

from __future__ import annotations

import torch

from . import triton_mode
from .lean import lean_fuse
from .reference import reference_fuse
from .utils import unflatten_weights
from .validation import check_activation, check_backend, validate_fusion_inputs


def triton_interpreting() -> bool:
    """True when the process started with ``TRITON_INTERPRET=1``: Triton kernels then run on CPU
    tensors (slowly). Read once, when dynfuse is imported."""
    return triton_mode.INTERPRET


def triton_importable() -> bool:
    """Whether the ``triton`` package is installed (checked once, at import)."""
    return triton_mode.TRITON_INSTALLED


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Map ``backend`` to the concrete backend that runs for tensors on ``device`` of ``dtype``.

    "auto" picks Triton for CUDA tensors when Triton is installed, and for any tensors when the
    process started with ``TRITON_INTERPRET=1``; otherwise the lean "torch" path. float64 (exact
    checks such as gradcheck) always runs on the lean "torch" path instead of Triton: the kernels
    accumulate in float32. So the backend returned is the one :func:`dynamic_fuse` runs.
    """
    check_backend(backend)
    if backend == "auto":
        backend = _auto_backend(device)
    if backend == "triton" and dtype == torch.float64:
        return "torch"
    return backend


def _auto_backend(device: torch.device) -> str:
    if not triton_mode.TRITON_INSTALLED:
        return "torch"
    if device.type == "cuda":
        return "triton"
    # The interpreter cannot run under torch.compile (fake tensors have no data): compiled CPU code
    # always takes the lean path.
    if not torch.compiler.is_compiling() and triton_mode.INTERPRET:
        return "triton"
    return "torch"


def _autocast_inputs(
    side5: torch.Tensor, sides: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Under autocast the op runs in the autocast dtype (float32 accumulation inside).

    Heads produce their maps from different layers (convolutions give the autocast dtype, some norm
    and resize layers give float32), so the op casts all three inputs to one dtype instead of failing.
    """
    if not isinstance(side5, torch.Tensor) or not side5.dtype.is_floating_point:
        return side5, sides, weights
    device_type = side5.device.type
    if not torch.is_autocast_enabled(device_type):
        return side5, sides, weights
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.Tensor) and t.dtype.is_floating_point and t.dtype != torch.float64:
            return t.to(dtype)
        return t

    return cast(side5), cast(sides), cast(weights)


def dynamic_fuse(
    side5: torch.Tensor,
    sides: torch.Tensor,
    weights: torch.Tensor,
    *,
    activation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Weighted multiply and category-wise sum of DFF (Eq. 3 with learned weights).

    ``fused[b, k] = sum_j a(w)[b, k, j] * x[b, k, j]`` with ``x[b, k, :] = (side5[b, k], sides[b, 0],
    ..., sides[b, S-1])``: the order of the paper's shared concatenation.

    Args:
        side5: (B, K, H, W) class responses; float32, bfloat16 or float16 (float64 for checks).
        sides: (B, S, H, W) shared low-level responses, S >= 1, broadcast over the K classes.
        weights: (B, K, S+1, H, W) location-adaptive, (B, K, S+1) location-invariant or (K, S+1)
            fixed weights; or the flat learner output (B, K*(S+1), H, W), taken as the adaptive
            form with channel k*(S+1) + j holding input j of class k (S from ``sides``). Its
            gradient is flat too.
        activation: None (the paper's choice) or "softmax" over the S+1 weights of each class and
            location.
        backend: "auto", "triton", "torch" (lean) or "reference" (the literal concatenation);
            :func:`resolve_backend` says which one runs (float64 always runs "torch" for
            "triton": the kernels accumulate in float32).

    Returns:
        (B, K, H, W) in side5's dtype, accumulated in float32. Under ``torch.autocast`` all inputs are
        first cast to the autocast dtype.
    """
    check_backend(backend)
    check_activation(activation)
    side5, sides, weights = _autocast_inputs(side5, sides, weights)
    form = validate_fusion_inputs(side5, sides, weights)
    if weights.dim() == 4:
        weights = unflatten_weights(weights, sides.shape[1] + 1)
    if backend == "triton" and not torch.compiler.is_compiling():
        # Eager-only check (environment and device), also for float64 that then runs "torch".
        triton_mode.check_triton_usable(side5.device)
    chosen = resolve_backend(backend, side5.device, side5.dtype)
    if chosen == "reference":
        return reference_fuse(side5, sides, weights, form, activation)
    if chosen == "triton":
        # Importing the backend registers its custom ops: on the first Triton call, not at
        # ``import dynfuse`` (it imports Triton and parts of torch's compiler, about a second).
        # Under torch.compile, Dynamo runs this import for real while it traces.
        from .triton_backend import triton_fuse

        return triton_fuse(side5, sides, weights, form, activation)
    return lean_fuse(side5, sides, weights, form, activation)
