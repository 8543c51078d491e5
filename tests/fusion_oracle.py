"""An independent float64 statement of the fusion op, written from Eq. (3) with explicit loops over
the inputs, for the tests of every backend."""

from __future__ import annotations

import torch


def expand_weights(weights: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """Any weight form -> (B, K, S+1, H, W) float64 (a copy)."""
    weights = weights.double()
    if weights.dim() == 2:
        weights = weights.unsqueeze(0).expand(b, -1, -1)
    if weights.dim() == 3:
        weights = weights[..., None, None].expand(-1, -1, -1, h, w)
    return weights.clone()


def oracle_fuse(side5, sides, weights, activation=None):
    """fused[b,k] = sum_j a(w)[b,k,j] x_j with x_0 = side5[b,k], x_j = sides[b,j-1]; float64."""
    b, k, h, w = side5.shape
    s = sides.shape[1]
    wt = expand_weights(weights, b, h, w)
    if activation == "softmax":
        wt = torch.softmax(wt, dim=2)
    out = torch.zeros(b, k, h, w, dtype=torch.float64)
    for c in range(k):
        out[:, c] = wt[:, c, 0] * side5[:, c].double()
        for j in range(s):
            out[:, c] = out[:, c] + wt[:, c, j + 1] * sides[:, j].double()
    return out


def oracle_grads(side5, sides, weights, grad, activation=None):
    """Gradients of <grad, oracle_fuse(...)> w.r.t. (side5, sides, weights), float64, by autograd."""
    a = side5.detach().double().requires_grad_()
    c = sides.detach().double().requires_grad_()
    w = weights.detach().double().requires_grad_()
    out = oracle_fuse(a, c, w, activation)
    return torch.autograd.grad(out, (a, c, w), grad.double())


# ------------------------------------------------------------------------------------------------
# Inputs shared by the tests of every backend (tests/test_ops.py, tests/test_triton_fusion.py)
# ------------------------------------------------------------------------------------------------
FORMS = ("adaptive", "invariant", "fixed")
WEIGHT_SHAPES = {
    "adaptive": lambda b, k, s, h, w: (b, k, s + 1, h, w),
    "invariant": lambda b, k, s, h, w: (b, k, s + 1),
    "fixed": lambda b, k, s, h, w: (k, s + 1),
}
#: Memory layouts holding the same values. "contiguous"; "sliced": channel slices of wider tensors
#: (side5 along K, sides along B, weights along their second axis); "channels_last": side maps
#: channels_last, weights with their first and last axes swapped in memory; "transposed": H and W
#: swapped in memory (not flattenable to one pixel stride, so the Triton host copies them);
#: "permuted": side5 H/W-transposed, sides with B and S swapped, weights with first/last swapped.
LAYOUTS = ("contiguous", "sliced", "channels_last", "transposed", "permuted")


def _reversed_axes(t: torch.Tensor) -> torch.Tensor:
    """Same values, with the first and last axes swapped in memory."""
    return t.transpose(0, -1).contiguous().transpose(0, -1)


def _slice_of(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Same values, as a slice of a tensor twice as wide along ``dim``."""
    return torch.cat([t, torch.zeros_like(t)], dim=dim).narrow(dim, 0, t.shape[dim])


def make_inputs(b, k, s, h, w, form, *, dtype=torch.float32, layout="contiguous", device="cpu", seed=0):
    """(side5 (B, K, H, W), sides (B, S, H, W), weights of ``form``) in ``dtype`` on ``device``.

    Values are float64 ``randn + 0.5`` (offset from 0 so that a dropped term shows) rounded to
    ``dtype``; the same seed gives the same values in every layout of :data:`LAYOUTS`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) + 0.5).to(device=device, dtype=dtype)

    side5, sides, weights = rnd(b, k, h, w), rnd(b, s, h, w), rnd(*WEIGHT_SHAPES[form](b, k, s, h, w))
    if layout == "sliced":
        side5, sides, weights = _slice_of(side5, 1), _slice_of(sides, 0), _slice_of(weights, 1)
    elif layout == "channels_last":
        side5 = side5.contiguous(memory_format=torch.channels_last)
        sides = sides.contiguous(memory_format=torch.channels_last)
        weights = _reversed_axes(weights)
    elif layout == "transposed":
        side5, sides = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (side5, sides))
        if weights.dim() == 5:
            weights = weights.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "permuted":
        side5 = side5.transpose(-1, -2).contiguous().transpose(-1, -2)
        sides = sides.transpose(0, 1).contiguous().transpose(0, 1)
        weights = _reversed_axes(weights)
    return side5, sides, weights
