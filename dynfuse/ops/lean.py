"""The lean plain-PyTorch fusion: no concatenation, no stored product.

Forward accumulates ``w0 * side5 + sum_s w_{s+1} * sides[:, s]`` into one (B, K, H, W) buffer with
in-place multiply-adds, so the (B, K*(S+1), H, W) concat of the reference never exists. Backward is
written by hand from the saved inputs only (the concat is never saved), and reduces the gradients of
broadcast weights (invariant, fixed) with matrix products instead of broadcasting a full-size product.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce

from .utils import WeightForm, activate, as_5d, compute_dtype


def _coefficient(coeffs5d: torch.Tensor, j: int) -> torch.Tensor:
    """Weight slice j as (B|1, K, H|1, W|1), broadcastable against (B, K, H, W)."""
    return coeffs5d[:, :, j]


def _weighted_sum(
    side5: torch.Tensor, sides: torch.Tensor, coeffs5d: torch.Tensor, ct: torch.dtype
) -> torch.Tensor:
    """sum_j coeffs[:, :, j] * x_j accumulated in ``ct``; returns a fresh (B, K, H, W) tensor."""
    out = torch.mul(_coefficient(coeffs5d, 0).to(ct), side5.to(ct))
    for s in range(sides.shape[1]):
        out.addcmul_(_coefficient(coeffs5d, s + 1).to(ct), sides[:, s : s + 1].to(ct))
    return out


def _reduce_products(
    g: torch.Tensor,
    side5: torch.Tensor,
    sides: torch.Tensor,
    form: WeightForm,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. the (activated) coefficients, d c_j = reduce(g * x_j).

    Per-pixel products are computed in g's dtype and stored in ``out_dtype`` (default g's dtype), so
    half-precision weights get their gradient without a float32 copy of the whole tensor.

    Returns (B, K, S+1, H, W) for adaptive, (B, K, S+1) for invariant and (K, S+1) for fixed weights:
    broadcast axes are summed in float32 with deterministic reductions.
    """
    b, k, h, w = g.shape
    s = sides.shape[1]
    if form == "adaptive":
        out = torch.empty((b, k, s + 1, h, w), dtype=out_dtype or g.dtype, device=g.device)
        xs = [side5] + [sides[:, j : j + 1] for j in range(s)]
        for j, x in enumerate(xs):
            if torch.compiler.is_compiling():
                # torch.compile cannot trace out= on a strided view; it fuses the temporary away.
                out[:, :, j] = g * x
            else:
                torch.mul(g, x, out=out[:, :, j])  # no (B, K, H, W) temporary per input
        return out
    g_flat = rearrange(g, "b k h w -> b k (h w)")
    # (B, K, HW) @ (B, HW, S) sums g * side over the pixels for every class and side in one call.
    per_side = torch.bmm(g_flat, rearrange(sides, "b s h w -> b (h w) s"))
    per_class = torch.linalg.vecdot(g_flat, rearrange(side5, "b k h w -> b k (h w)"))
    out = torch.cat([per_class.unsqueeze(2), per_side], dim=2)
    return out if form == "invariant" else reduce(out, "b k j -> k j", "sum")


def _reduce_to_form(t: torch.Tensor, form: WeightForm) -> torch.Tensor:
    """Sum a (B, K, H, W) tensor over the weight form's broadcast axes, keeping a singleton j axis."""
    if form == "adaptive":
        return rearrange(t, "b k h w -> b k 1 h w")
    if form == "invariant":
        return reduce(t, "b k h w -> b k 1", "sum")
    return reduce(t, "b k h w -> k 1", "sum")


def _coefficients(
    weights: torch.Tensor, form: WeightForm, activation: str | None, ct: torch.dtype
) -> torch.Tensor:
    """The (activated) weights as a broadcastable 5-D view.

    Without an activation the weights stay in their dtype and each slice meets float32 operands
    (mixed-dtype products compute in float32), so half-precision weights are never copied whole; the
    softmax needs the whole activated tensor, computed in ``ct``.
    """
    if activation is None:
        return as_5d(weights, form)
    return activate(as_5d(weights, form).to(ct), activation)


class _LeanFusion(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        side5: torch.Tensor,
        sides: torch.Tensor,
        weights: torch.Tensor,
        form: WeightForm,
        activation: str | None,
    ) -> torch.Tensor:
        ct = compute_dtype(side5.dtype)
        coeffs = _coefficients(weights, form, activation, ct)
        out = _weighted_sum(side5, sides, coeffs, ct)
        ctx.save_for_backward(side5, sides, weights)
        ctx.form = form
        ctx.activation = activation
        return out.to(side5.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        side5, sides, weights = ctx.saved_tensors
        form: WeightForm = ctx.form
        ct = compute_dtype(side5.dtype)
        g = grad.to(ct)
        x5, xs = side5.to(ct), sides.to(ct)
        coeffs = _coefficients(weights, form, ctx.activation, ct)
        need_side5, need_sides, need_weights = ctx.needs_input_grad[:3]

        d_side5 = d_sides = d_weights = None
        if need_side5:
            d_side5 = torch.mul(g, _coefficient(coeffs, 0)).to(side5.dtype)
        if need_sides:
            d_sides = torch.empty_like(sides)
            scratch = torch.empty_like(g)
            for s in range(sides.shape[1]):
                torch.mul(g, _coefficient(coeffs, s + 1), out=scratch)
                d_sides[:, s] = scratch.sum(dim=1)
            del scratch
        if need_weights:
            plain = ctx.activation is None
            d_coeffs = _reduce_products(g, x5, xs, form, weights.dtype if plain else None)
            if not plain:
                # Softmax Jacobian: d w_j = a_j * (d a_j - sum_i a_i d a_i), and
                # sum_i a_i (g x_i) = g * fused, so the correction is reduce(g * fused).
                fused = _weighted_sum(x5, xs, coeffs, ct)
                g_fused = _reduce_to_form(g * fused, form)
                a = coeffs if form == "adaptive" else coeffs.reshape(d_coeffs.shape)
                d_coeffs = a * (d_coeffs - g_fused)
            d_weights = d_coeffs.reshape(weights.shape).to(weights.dtype)
        return d_side5, d_sides, d_weights, None, None


def lean_fuse(
    side5: torch.Tensor,
    sides: torch.Tensor,
    weights: torch.Tensor,
    form: WeightForm,
    activation: str | None,
) -> torch.Tensor:
    """Lean fusion on validated inputs; see :func:`dynfuse.ops.dynamic_fuse` for the contract."""
    return _LeanFusion.apply(side5, sides, weights, form, activation)
