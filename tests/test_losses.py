"""Tests of dynfuse.losses against float64 references and BCE-with-logits with pos_weight."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from dynfuse.losses import (
    DFFLoss,
    ReweightedEdgeLoss,
    dff_loss,
    edge_loss_beta,
    reweighted_edge_loss,
)


def reference_loss(x, y, m=None, per_class=False, denominator="all"):
    """Literal float64 loops over images of the formula in DESIGN.md section 4."""
    x = x.double()
    y = y.double()
    b, k, h, w = x.shape
    m = torch.ones(b, h, w, dtype=torch.float64) if m is None else m.double()
    total = 0.0
    for i in range(b):
        mi = m[i][None]
        n_valid = float(m[i].sum())
        if per_class:
            n_pos = (y[i] * mi).sum(dim=(1, 2))
            beta = torch.ones(k, dtype=torch.float64)
            for c in range(k):
                if n_pos[c] > 0:
                    beta[c] = min(max((n_valid - n_pos[c]) / n_pos[c], 1.0), n_valid)
            beta = beta.view(k, 1, 1)
        else:
            n_pos = float((y[i] * mi).sum())
            beta = min(max((n_valid - n_pos) / n_pos, 1.0), n_valid) if n_pos > 0 else 1.0
        xi = x[i]
        yi = y[i]
        # log(1 + exp(-x)) written the way the authors do, with a max shift.
        shift = (-xi).clamp(min=0)
        log_term = shift + torch.log(torch.exp(-shift) + torch.exp(-xi - shift))
        entry = (1 - yi) * xi + (1 + (beta - 1) * yi) * log_term
        s = (entry * mi).sum()
        if denominator == "all":
            total = total + s / (k * h * w)
        elif n_valid > 0:
            total = total + s / (k * n_valid)
    return total / b


def random_case(gen, b=3, k=5, h=13, w=11, p_edge=0.1, p_valid=0.8, scale=4.0):
    x = torch.randn(b, k, h, w, generator=gen) * scale
    y = torch.rand(b, k, h, w, generator=gen) < p_edge
    m = torch.rand(b, h, w, generator=gen) < p_valid
    return x, y, m


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("denominator", ["all", "valid"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_float64_reference(per_class, denominator, use_mask):
    gen = torch.Generator().manual_seed(0)
    x, y, m = random_case(gen)
    mask = m if use_mask else None
    got = reweighted_edge_loss(x, y, mask, per_class=per_class, denominator=denominator)
    want = reference_loss(x, y, mask, per_class=per_class, denominator=denominator)
    assert got.dtype == torch.float32 and got.dim() == 0
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_gradient_matches_float64_reference():
    gen = torch.Generator().manual_seed(1)
    x, y, m = random_case(gen, b=2, k=3, h=9, w=7)
    x32 = x.clone().requires_grad_(True)
    reweighted_edge_loss(x32, y, m).backward()
    x64 = x.double().requires_grad_(True)
    reference_loss(x64, y, m).backward()
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-8)


def test_matches_bce_with_pos_weight():
    gen = torch.Generator().manual_seed(2)
    x, y, m = random_case(gen, b=4, k=6, h=10, w=17)
    beta = edge_loss_beta(y, m)
    parts = []
    for i in range(x.shape[0]):
        entry = F.binary_cross_entropy_with_logits(
            x[i], y[i].float(), pos_weight=beta[i].expand(x.shape[1], 1, 1), reduction="none"
        )
        parts.append((entry * m[i][None]).mean())
    want = torch.stack(parts).mean()
    torch.testing.assert_close(reweighted_edge_loss(x, y, m), want, rtol=1e-6, atol=1e-7)


def test_beta_values_by_hand():
    # 1 image, K=2, 4x4 pixels, 12 valid; positives: 3 valid + 1 on an invalid pixel.
    y = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    m = torch.ones(1, 4, 4, dtype=torch.bool)
    m[0, 3, :] = False
    y[0, 0, 0, 0] = y[0, 0, 0, 1] = y[0, 1, 1, 1] = True
    y[0, 1, 3, 2] = True  # invalid pixel: not counted
    beta = edge_loss_beta(y, m)
    assert beta.shape == (1,)
    assert beta.item() == pytest.approx((12 - 3) / 3)
    beta_k = edge_loss_beta(y, m, per_class=True)
    assert beta_k.shape == (1, 2)
    assert beta_k[0].tolist() == pytest.approx([5.0, 11.0])
    # Dense positives: the ratio drops under 1 and is clamped to 1.
    dense = torch.ones(1, 3, 4, 4, dtype=torch.bool)
    assert edge_loss_beta(dense).item() == 1.0


def test_no_positives_and_no_valid_pixels():
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    y = torch.zeros_like(x)
    beta = edge_loss_beta(y)
    assert beta.tolist() == [1.0, 1.0]
    # With no positives the loss is plain BCE against zeros, whatever beta is.
    got = reweighted_edge_loss(x, y)
    torch.testing.assert_close(got, F.binary_cross_entropy_with_logits(x, y))
    # An image with no valid pixel contributes exactly 0 (and no NaN).
    m = torch.ones(2, 5, 5, dtype=torch.bool)
    m[1] = False
    y[:, 0, 2, 2] = 1
    for denominator in ("all", "valid"):
        loss = reweighted_edge_loss(x, y, m, denominator=denominator)
        assert torch.isfinite(loss)
        half = reweighted_edge_loss(x[:1], y[:1], m[:1], denominator=denominator)
        torch.testing.assert_close(loss, half / 2)
    x.requires_grad_(True)
    reweighted_edge_loss(x, y, m).backward()
    assert torch.all(x.grad[1] == 0) and torch.isfinite(x.grad).all()


def test_denominators_differ_by_valid_fraction():
    gen = torch.Generator().manual_seed(4)
    x, y, m = random_case(gen, b=1, k=2, h=8, w=8)
    frac = m.float().mean()
    torch.testing.assert_close(
        reweighted_edge_loss(x, y, m, denominator="all"),
        reweighted_edge_loss(x, y, m, denominator="valid") * frac,
    )


def test_extreme_logits_are_stable():
    x = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4]).view(1, 1, 1, 7)
    for target in (0.0, 1.0):
        y = torch.full_like(x, target)
        y[0, 0, 0, 0] = 1.0 - target  # keep at least one positive and one negative
        loss = reweighted_edge_loss(x, y)
        want = reference_loss(x, y)
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=1e-6)
        xg = x.clone().requires_grad_(True)
        reweighted_edge_loss(xg, y).backward()
        assert torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_computed_in_float32(dtype):
    gen = torch.Generator().manual_seed(5)
    x, y, m = random_case(gen, b=2, k=4, h=12, w=9)
    xl = x.to(dtype)
    got = reweighted_edge_loss(xl, y, m)
    assert got.dtype == torch.float32
    # Same as float32 on the rounded logits: nothing else is done in low precision.
    torch.testing.assert_close(got, reweighted_edge_loss(xl.float(), y, m), rtol=1e-6, atol=1e-7)
    xg = xl.clone().requires_grad_(True)
    reweighted_edge_loss(xg, y, m).backward()
    assert xg.grad.dtype == dtype and torch.isfinite(xg.grad.float()).all()


def test_target_dtypes_agree():
    gen = torch.Generator().manual_seed(6)
    x, y, m = random_case(gen, b=2, k=3, h=6, w=5)
    ref = reweighted_edge_loss(x, y, m)
    for t in (y.float(), y.double(), y.to(torch.uint8), y.half()):
        torch.testing.assert_close(reweighted_edge_loss(x, t, m), ref)


def test_batch_mean_of_per_image_losses():
    gen = torch.Generator().manual_seed(7)
    x, y, m = random_case(gen, b=4, k=3, h=7, w=10)
    per = torch.stack([reweighted_edge_loss(x[i : i + 1], y[i : i + 1], m[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(reweighted_edge_loss(x, y, m), per.mean())


class _Out(NamedTuple):
    side5: torch.Tensor
    fuse: torch.Tensor
    weights: torch.Tensor | None


def test_dff_loss_and_modules():
    gen = torch.Generator().manual_seed(8)
    x1, y, m = random_case(gen, b=2, k=4, h=8, w=8)
    x2 = torch.randn(x1.shape, generator=gen)
    out = _Out(x1, x2, None)
    want = reweighted_edge_loss(x1, y, m) + reweighted_edge_loss(x2, y, m)
    torch.testing.assert_close(dff_loss(out, y, m), want)
    torch.testing.assert_close(DFFLoss()(out, y, m), want)
    weighted = DFFLoss(side5_weight=0.5, fuse_weight=2.0)(out, y, m)
    torch.testing.assert_close(
        weighted, 0.5 * reweighted_edge_loss(x1, y, m) + 2.0 * reweighted_edge_loss(x2, y, m)
    )
    module = ReweightedEdgeLoss(per_class=True, denominator="valid")
    torch.testing.assert_close(
        module(x1, y, m), reweighted_edge_loss(x1, y, m, per_class=True, denominator="valid")
    )
    assert "per_class=True" in repr(module)


def test_bad_inputs_raise():
    x = torch.zeros(2, 3, 4, 5)
    y = torch.zeros(2, 3, 4, 5)
    with pytest.raises(TypeError, match="logits"):
        reweighted_edge_loss(x.numpy(), y)
    with pytest.raises(ValueError, match="logits"):
        reweighted_edge_loss(x[0], y[0])
    with pytest.raises(TypeError, match="logits"):
        reweighted_edge_loss(x.long(), y)
    with pytest.raises(ValueError, match="targets"):
        reweighted_edge_loss(x, y[:, :2])
    with pytest.raises(ValueError, match="valid_mask"):
        reweighted_edge_loss(x, y, torch.ones(2, 1, 4, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="valid_mask"):
        reweighted_edge_loss(x, y, torch.ones(2, 4, 5))
    with pytest.raises(ValueError, match="denominator"):
        reweighted_edge_loss(x, y, denominator="pixels")
    with pytest.raises(TypeError, match="output"):
        dff_loss((x, x), y)


def test_loss_value_is_sane_for_perfect_and_inverted_predictions():
    y = torch.zeros(1, 2, 16, 16)
    y[0, 0, 8, :] = 1
    good = (y * 2 - 1) * 30.0
    assert reweighted_edge_loss(good, y).item() < 1e-6
    bad = -good
    beta = (256 - 16) / 16
    expected = (16 * 30.0 * beta + (2 * 256 - 16) * 30.0) / (2 * 256)
    assert reweighted_edge_loss(bad, y).item() == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(reweighted_edge_loss(bad, y).item())


def test_under_cpu_autocast():
    gen = torch.Generator().manual_seed(9)
    x, y, m = random_case(gen, b=2, k=3, h=8, w=8)
    conv = torch.nn.Conv2d(3, 3, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        loss = reweighted_edge_loss(logits, y, m)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()
    torch.testing.assert_close(loss, reweighted_edge_loss(logits.float(), y, m))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(10)
    x, y, m = random_case(gen, b=3, k=19, h=33, w=47)
    x = x.to(dtype)
    for per_class in (False, True):
        cpu = reweighted_edge_loss(x, y, m, per_class=per_class)
        gpu = reweighted_edge_loss(x.cuda(), y.cuda(), m.cuda(), per_class=per_class)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="valid_mask"):
        reweighted_edge_loss(x.cuda(), y.cuda(), m)
