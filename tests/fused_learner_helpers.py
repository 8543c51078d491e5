"""Shared by the fused-learner tests: an unfused head and its fused twin with one random state,
random features, and the comparisons of gradients and buffers."""

from __future__ import annotations

import torch
from torch import nn

from dynfuse import DFFHead

K = 2
CHANNELS = (4, 5, 6, 8)


def randomise_norms(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BatchNorm affine parameters and running statistics (defaults hide mistakes)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))


def heads(dtype=torch.float64, strides=(1, 2, 4, 4), chunk_elements=None, seed=0, **kwargs):
    """An unfused head and its fused twin with the same state (loaded through the state dict), the
    same for every run (the modules' initialisation draws from the global generator)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ref = DFFHead(CHANNELS, K, strides=strides, **kwargs)
    randomise_norms(ref, gen)
    fused = DFFHead(CHANNELS, K, strides=strides, fused_learner=True, **kwargs)
    fused.load_state_dict(ref.state_dict())  # same keys: the switch adds no parameters
    if chunk_elements is not None:
        fused.fused_learner.chunk_elements = chunk_elements
    return ref.to(dtype), fused.to(dtype)


def features(b, size, strides, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    return [
        torch.randn(b, c, -(-h // s), -(-w // s), generator=gen, dtype=dtype).requires_grad_()
        for c, s in zip(CHANNELS, strides, strict=True)
    ]


def run(head, feats, size, grad):
    out = head(feats, output_size=size)
    params = [p for _, p in head.named_parameters()]
    grads = torch.autograd.grad(out.fuse, feats + params, grad)
    return out, dict(
        zip(
            [f"feature{i}" for i in range(len(feats))] + [n for n, _ in head.named_parameters()],
            grads,
            strict=True,
        )
    )


def assert_grads_close(got, want, rtol):
    # Biases in front of a training-mode BatchNorm have a zero gradient up to rounding: compare every
    # gradient at the scale of the largest one.
    scale = max(float(g.abs().max()) for g in want.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=rtol * scale, msg=name)


def assert_same_buffers(a: nn.Module, b: nn.Module):
    bufs = dict(b.named_buffers())
    for name, buf in a.named_buffers():
        torch.testing.assert_close(bufs[name], buf, rtol=1e-12, atol=1e-12, msg=name)


def check_training_against_unfused(ref, fused, size, strides):
    """Training step in float64: fuse (1e-12), every gradient (1e-10 of the largest) and the
    running statistics of ``fused`` equal those of the unfused ``ref``."""
    feats = features(2, size, strides)
    grad = torch.randn(2, K, *size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out_ref, g_ref = run(ref, feats, size, grad)
    out, g = run(fused, feats, size, grad)
    torch.testing.assert_close(out.fuse, out_ref.fuse, rtol=1e-12, atol=1e-12)
    assert_grads_close(g, g_ref, 1e-10)
    assert_same_buffers(fused, ref)  # running statistics (unbiased var) and num_batches_tracked
    return out, out_ref


def check_bfloat16_against_float64(ref, fused, size):
    """``fused`` in bf16 against ``ref`` in float64 with the same bf16-rounded parameters and inputs:
    fuse within 2e-2 of its largest value, each gradient within 0.1 of its largest value, gradients
    that are zero up to rounding within 1e-2 of the largest gradient."""
    fused = fused.to(torch.bfloat16)
    ref.load_state_dict(fused.state_dict())  # float64 copy of the bf16-rounded parameters
    feats64 = [
        f.detach().to(torch.bfloat16).double().requires_grad_() for f in features(2, size, (1, 2, 4, 4))
    ]
    feats16 = [f.detach().to(torch.bfloat16).requires_grad_() for f in feats64]
    grad = torch.randn(2, K, *size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out_ref, g_ref = run(ref, feats64, size, grad)
    out, g = run(fused, feats16, size, grad.to(torch.bfloat16))
    assert out.fuse.dtype == torch.bfloat16
    scale = float(out_ref.fuse.detach().abs().max())
    torch.testing.assert_close(out.fuse.double(), out_ref.fuse, rtol=0, atol=2e-2 * scale)
    g_scale = max(float(v.abs().max()) for v in g_ref.values())
    for name, want in g_ref.items():
        assert g[name].dtype == torch.bfloat16, name
        top = float(want.abs().max())
        tol = 1e-2 * g_scale if top < 1e-6 * g_scale else 0.1 * top
        torch.testing.assert_close(g[name].double(), want, rtol=0, atol=tol, msg=name)
