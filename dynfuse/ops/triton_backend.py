"""The Triton backend of ``dynamic_fuse``: host side, custom ops and autograd.

Two PyTorch custom operators wrap the kernels of :mod:`dynfuse.ops.triton_kernels`:

* ``dynfuse::fusion_forward(side5, sides, weights, softmax) -> fused``
* ``dynfuse::fusion_backward(grad, side5, sides, weights, softmax) -> (d_side5, d_sides, d_weights)``

The forward op has an autograd formula (``register_autograd``) that calls the backward op, and both
have fake (meta) implementations, so ``torch.compile(fullgraph=True)`` traces through them without a
graph break. On torch >= 2.6 they are ``torch.library.triton_op``: the compiler sees the Triton
kernels inside; on older torch they are opaque ``torch.library.custom_op``.

Autocast: the ops have no autocast rule of their own. ``dynamic_fuse`` casts all three inputs to the
autocast dtype before it gets here, so under ``torch.autocast`` the kernels read and write that
dtype (bfloat16 / float16) and accumulate in float32. Called directly, the op runs in the inputs'
dtype.

Layouts: any strides are accepted. Each tensor must have (H, W) axes that flatten to one pixel
stride (true for contiguous, channel-sliced, channels_last and stride-0 expanded tensors); any other
tensor (e.g. a transposed or W-strided view) is copied with ``.contiguous()`` first, which costs one
extra pass over that tensor only.

float64 inputs never get here: ``resolve_backend`` sends them to the lean PyTorch path
(``dynfuse.ops.lean``, exact in float64); the kernels accumulate in float32 and exist for float32 /
bfloat16 / float16.

Importing this module imports Triton and registers the ops; ``dynfuse`` does that on first use (see
:mod:`dynfuse.ops.triton_mode`), not at ``import dynfuse``.

Only forward and first-order gradients are provided (no double backward).
"""

from collections.abc import Callable
from typing import Any

import torch
from einops import reduce
from triton.runtime.interpreter import InterpretedFunction

from . import triton_mode
from .triton_kernels import fusion_backward_kernel, fusion_forward_kernel
from .triton_mode import is_available  # noqa: F401  (old home of is_available; kept importable)
from .utils import WeightForm

if isinstance(fusion_forward_kernel, InterpretedFunction) != triton_mode.INTERPRET:
    # Triton decided the kernels' mode from TRITON_INTERPRET when they were decorated; dynfuse read
    # it when it was imported. They differ only if the variable changed in between.
    raise RuntimeError(
        "TRITON_INTERPRET changed after dynfuse was imported; set it (or unset it) in the environment "
        "before starting Python: the Triton mode is decided once per process"
    )

_INT32_MAX = 2**31 - 1
# Grid axis 1 (images) is limited to 65535 programs by CUDA; larger batches launch in chunks.
_MAX_GRID_Y = 65535

# Output allocator. Tests replace it with one that fills with NaN, so that an element a kernel
# forgets to write fails the comparison instead of passing as leftover memory.
_allocate: Callable[..., torch.Tensor] = torch.empty


def block_config(jp: int, hw: int, elem_size: int) -> tuple[int, int]:
    """(pixels per program, warps) for both kernels, given the padded row count ``jp`` (next power
    of two >= S+1), the pixels per image and the inputs' element size in bytes.

    Both kernels use (jp, BLOCK) register tiles of about 4096 elements and 4 warps, with at least
    16 bytes per thread and row so that loads and stores are full 16-byte vectors (8 pixels per
    thread for bfloat16 / float16, 4 for float32). Measured on an H100 (torch 2.11, Triton 3.6,
    B=8, K=19, S=3, 640x640; ``bench_fusion.py --tune``, see docs/kernel.md): float32 ran the same
    from 512 to 2048 pixels; bfloat16 needs 1024 pixels with 4 warps (forward 0.26 ms, backward
    0.49 ms) where 512 pixels, or 1024 with 8 warps, gave 16-byte-short vectors and 0.63 / 0.77 ms.
    The best config was the same for the forward and the backward kernel, so there is one rule.
    Small images get one small block so that tiny inputs do not run mostly masked lanes.
    """
    warps = 4
    vector = 32 * warps * 16 // elem_size  # pixels for 16 bytes per thread and row
    block = min(4096, max(4096 // jp, vector, 128))
    if hw <= 128:
        block = 128
    return block, warps


def _pixel_stride(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Return ``t`` (or a contiguous copy) and the stride of its flattened (H, W) pixel axis."""
    h, w = t.shape[-2], t.shape[-1]
    sh, sw = t.stride(-2), t.stride(-1)
    if h == 1:
        return t, sw
    if w == 1 or sh == w * sw:
        return t, sw if w != 1 else sh
    t = t.contiguous()
    return t, 1


def _needs_wide(hw: int, *row_pix: tuple[int, int, int]) -> bool:
    """Whether an in-kernel per-pixel offset may pass 2**31 - 1, so the kernel must use int64.

    Each entry is (largest row index, row stride, pixel stride) of one tensor as the kernels address
    it: ``row * row_stride + pixel * pixel_stride`` (image and class offsets are added to the scalar
    base pointer in 64-bit arithmetic and never limit this).
    """
    return any(r * abs(rs) + (hw - 1) * abs(ps) > _INT32_MAX for r, rs, ps in row_pix)


def _check_pixels(hw: int) -> None:
    # Pixel indices are int32 inside the kernels (offsets may be int64, indices are not).
    if hw > _INT32_MAX - 4096:
        raise ValueError(f"H*W must be below 2**31 - 4096 for the Triton backend, got {hw}")


def _weight_strides(weights: torch.Tensor, w_p: int) -> tuple[int, int, int, int]:
    """(b, k, j, p) strides of any weight form, 0 along its broadcast axes."""
    if weights.dim() == 5:
        st = weights.stride()
        return st[0], st[1], st[2], w_p
    if weights.dim() == 3:
        st = weights.stride()
        return st[0], st[1], st[2], 0
    st = weights.stride()
    return 0, st[0], st[1], 0


def _launch(kernel: object, grid: tuple[int, int], **kwargs: object) -> None:
    """Launch ``kernel[grid](**kwargs)``, through ``torch.library.wrap_triton`` where the compiler can
    trace it; the CPU interpreter's kernels are launched directly (torch cannot trace those)."""
    if _WRAP is not None and not triton_mode.INTERPRET:
        _WRAP(kernel)[grid](**kwargs)
    else:
        kernel[grid](**kwargs)  # type: ignore[index]


def _padded_rows(s: int) -> int:
    """Next power of two >= S+1: the row count of the kernels' (rows, pixels) tiles."""
    return 1 << s.bit_length()


def _batch_chunks(b: int) -> list[tuple[int, int]]:
    return [(i, min(b, i + _MAX_GRID_Y)) for i in range(0, b, _MAX_GRID_Y)]


def _flat_weights(weights: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Weights with flattenable (H, W) axes (copied if not) and their (b, k, j, p) strides."""
    if weights.dim() == 5:
        weights, w_p = _pixel_stride(weights)
        return weights, _weight_strides(weights, w_p)
    return weights, _weight_strides(weights, 0)


def _forward_impl(
    side5: torch.Tensor, sides: torch.Tensor, weights: torch.Tensor, softmax: bool
) -> torch.Tensor:
    """Launch the forward kernel: (B, K, H, W) fused output in side5's dtype."""
    b, k, h, w = side5.shape
    s = sides.shape[1]
    hw = h * w
    _check_pixels(hw)
    out = _allocate((b, k, h, w), dtype=side5.dtype, device=side5.device)
    if out.numel() == 0:
        return out
    side5, s5_p = _pixel_stride(side5)
    sides, sd_p = _pixel_stride(sides)
    weights, (w_b, w_k, w_j, w_p) = _flat_weights(weights)
    jp = _padded_rows(s)
    block, warps = block_config(jp, hw, side5.element_size())
    wide = _needs_wide(hw, (0, 0, s5_p), (s - 1, sides.stride(1), sd_p), (s, w_j, w_p), (0, 0, out.stride(3)))
    for lo, hi in _batch_chunks(b):
        _launch(
            fusion_forward_kernel,
            ((hw + block - 1) // block, hi - lo),
            side5_ptr=side5[lo:hi],
            sides_ptr=sides[lo:hi],
            w_ptr=weights[lo:hi] if weights.dim() != 2 else weights,
            out_ptr=out[lo:hi],
            K=k,
            S=s,
            HW=hw,
            s5_b=side5.stride(0),
            s5_k=side5.stride(1),
            s5_p=s5_p,
            sd_b=sides.stride(0),
            sd_s=sides.stride(1),
            sd_p=sd_p,
            w_b=w_b,
            w_k=w_k,
            w_j=w_j,
            w_p=w_p,
            o_b=out.stride(0),
            o_k=out.stride(1),
            o_p=out.stride(3),
            SOFTMAX=softmax,
            W_PIX=weights.dim() == 5,
            JP=jp,
            BLOCK=block,
            WIDE=wide,
            num_warps=warps,
        )
    return out


def _backward_impl(
    grad: torch.Tensor,
    side5: torch.Tensor,
    sides: torch.Tensor,
    weights: torch.Tensor,
    softmax: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel: (d side5, d sides, d weights), each in its input's dtype and shape."""
    b, k, h, w = side5.shape
    s = sides.shape[1]
    hw = h * w
    _check_pixels(hw)
    pix_weights = weights.dim() == 5
    d5 = _allocate((b, k, h, w), dtype=side5.dtype, device=side5.device)
    ds = _allocate((b, s, h, w), dtype=sides.dtype, device=sides.device)
    if b * k * hw == 0:
        # Nothing to launch: sums over an empty set of classes or pixels are zero.
        return d5, torch.zeros_like(ds), weights.new_zeros(weights.shape)

    grad, g_p = _pixel_stride(grad)
    side5, s5_p = _pixel_stride(side5)
    sides, sd_p = _pixel_stride(sides)
    weights, (w_b, w_k, w_j, w_p) = _flat_weights(weights)
    jp = _padded_rows(s)
    block, warps = block_config(jp, hw, side5.element_size())
    nblk = (hw + block - 1) // block
    if pix_weights:
        dw = _allocate(tuple(weights.shape), dtype=weights.dtype, device=weights.device)
        part = dw  # unused by the kernel when the weights are per pixel
        dw_b, dw_k, dw_j, dw_p = dw.stride(0), dw.stride(1), dw.stride(2), dw.stride(4)
    else:
        # Per-program partial sums of the broadcast weights' gradient, summed below in a fixed order.
        part = _allocate((b, nblk, k, jp), dtype=torch.float32, device=side5.device)
        dw = part  # unused by the kernel when the weights are broadcast
        dw_b = dw_k = dw_j = dw_p = 0
    wide = _needs_wide(
        hw,
        (0, 0, g_p),
        (0, 0, s5_p),
        (s - 1, sides.stride(1), sd_p),
        (s, w_j, w_p),
        (0, 0, d5.stride(3)),
        (s - 1, ds.stride(1), ds.stride(3)),
        (s, dw_j, dw_p),
    )
    for lo, hi in _batch_chunks(b):
        _launch(
            fusion_backward_kernel,
            (nblk, hi - lo),
            g_ptr=grad[lo:hi],
            side5_ptr=side5[lo:hi],
            sides_ptr=sides[lo:hi],
            w_ptr=weights[lo:hi] if weights.dim() != 2 else weights,
            d5_ptr=d5[lo:hi],
            ds_ptr=ds[lo:hi],
            dw_ptr=dw[lo:hi],
            part_ptr=part[lo:hi],
            K=k,
            S=s,
            HW=hw,
            g_b=grad.stride(0),
            g_k=grad.stride(1),
            g_p=g_p,
            s5_b=side5.stride(0),
            s5_k=side5.stride(1),
            s5_p=s5_p,
            sd_b=sides.stride(0),
            sd_s=sides.stride(1),
            sd_p=sd_p,
            w_b=w_b,
            w_k=w_k,
            w_j=w_j,
            w_p=w_p,
            d5_b=d5.stride(0),
            d5_k=d5.stride(1),
            d5_p=d5.stride(3),
            ds_b=ds.stride(0),
            ds_s=ds.stride(1),
            ds_p=ds.stride(3),
            dw_b=dw_b,
            dw_k=dw_k,
            dw_j=dw_j,
            dw_p=dw_p,
            SOFTMAX=softmax,
            W_PIX=pix_weights,
            JP=jp,
            BLOCK=block,
            WIDE=wide,
            num_warps=warps,
        )
    if not pix_weights:
        # (B, blocks, K, JP) partials -> (B, K, S+1) per image, then over images for fixed weights.
        per_image = reduce(part, "b blocks k j -> b k j", "sum")[:, :, : s + 1]
        reduced = per_image if weights.dim() == 3 else reduce(per_image, "b k j -> k j", "sum")
        dw = reduced.to(weights.dtype).contiguous()
    return d5, ds, dw


_FORWARD_SCHEMA = "(Tensor side5, Tensor sides, Tensor weights, bool softmax) -> Tensor"
_BACKWARD_SCHEMA = (
    "(Tensor grad, Tensor side5, Tensor sides, Tensor weights, bool softmax) -> (Tensor, Tensor, Tensor)"
)

_TRITON_OP = getattr(torch.library, "triton_op", None)
_WRAP = getattr(torch.library, "wrap_triton", None) if _TRITON_OP is not None else None

if _TRITON_OP is not None and _WRAP is not None:
    # The implementations are traceable (torch ops + wrap_triton launches), so triton_op registers
    # them as their own fake kernels and lets torch.compile see the Triton kernels.
    _fusion_forward = _TRITON_OP(
        "dynfuse::fusion_forward", _forward_impl, mutates_args=(), schema=_FORWARD_SCHEMA
    )
    _fusion_backward = _TRITON_OP(
        "dynfuse::fusion_backward", _backward_impl, mutates_args=(), schema=_BACKWARD_SCHEMA
    )
else:
    _WRAP = None
    _fusion_forward = torch.library.custom_op(
        "dynfuse::fusion_forward", _forward_impl, mutates_args=(), schema=_FORWARD_SCHEMA
    )
    _fusion_backward = torch.library.custom_op(
        "dynfuse::fusion_backward", _backward_impl, mutates_args=(), schema=_BACKWARD_SCHEMA
    )

    @_fusion_forward.register_fake
    def _forward_fake(
        side5: torch.Tensor, sides: torch.Tensor, weights: torch.Tensor, softmax: bool
    ) -> torch.Tensor:
        return side5.new_empty(side5.shape)

    @_fusion_backward.register_fake
    def _backward_fake(
        grad: torch.Tensor, side5: torch.Tensor, sides: torch.Tensor, weights: torch.Tensor, softmax: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return side5.new_empty(side5.shape), sides.new_empty(sides.shape), weights.new_empty(weights.shape)


def _setup_context(
    ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool], output: torch.Tensor
) -> None:
    side5, sides, weights, softmax = inputs
    ctx.save_for_backward(side5, sides, weights)
    ctx.softmax = softmax


def _backward(
    ctx: Any, grad: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
    side5, sides, weights = ctx.saved_tensors
    d5, ds, dw = torch.ops.dynfuse.fusion_backward(grad, side5, sides, weights, ctx.softmax)
    need = ctx.needs_input_grad
    return (d5 if need[0] else None, ds if need[1] else None, dw if need[2] else None, None)


torch.library.register_autograd("dynfuse::fusion_forward", _backward, setup_context=_setup_context)


def triton_fuse(
    side5: torch.Tensor,
    sides: torch.Tensor,
    weights: torch.Tensor,
    form: WeightForm,
    activation: str | None,
) -> torch.Tensor:
    """Fused fusion on validated inputs (see :func:`dynfuse.ops.dynamic_fuse` for the contract).

    side5 (B, K, H, W), sides (B, S, H, W), weights (B, K, S+1, H, W) | (B, K, S+1) | (K, S+1), one
    float32 / bfloat16 / float16 dtype and one device. Returns (B, K, H, W) in side5's dtype;
    differentiable in all three inputs. float64 never gets here: ``resolve_backend`` sends it to the
    lean path.
    """
    if side5.dtype == torch.float64:
        raise TypeError(
            "the Triton kernels accumulate in float32 and do not take float64; "
            "dynamic_fuse runs float64 on the lean 'torch' backend"
        )
    return torch.ops.dynfuse.fusion_forward(side5, sides, weights, activation == "softmax")
