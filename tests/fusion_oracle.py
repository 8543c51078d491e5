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
