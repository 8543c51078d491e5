"""The fusion op: every backend against an independent float64 oracle, forward and backward."""

from __future__ import annotations

import pytest
import torch
from fusion_oracle import FORMS, LAYOUTS, make_inputs, oracle_fuse, oracle_grads
from hypothesis import given, settings
from hypothesis import strategies as st

from dynfuse.ops import authors_fuse, dynamic_fuse, resolve_backend, shared_concat

BACKENDS = ["reference", "torch"]


def run_backend(backend, side5, sides, weights, grad, activation):
    leaves = [t.detach().clone().requires_grad_() for t in (side5, sides, weights)]
    out = dynamic_fuse(*leaves, activation=activation, backend=backend)
    out.backward(grad.to(out.dtype))
    return out, [t.grad for t in leaves]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("activation", [None, "softmax"])
@pytest.mark.parametrize("shape", [(2, 19, 3, 5, 7), (1, 1, 1, 1, 1), (3, 2, 1, 4, 1), (1, 3, 4, 1, 6)])
def test_matches_oracle_float32(backend, form, activation, shape):
    b, k, s, h, w = shape
    side5, sides, weights = make_inputs(b, k, s, h, w, form)
    grad = torch.randn(b, k, h, w) + 0.25
    out, grads = run_backend(backend, side5, sides, weights, grad, activation)
    assert out.dtype == torch.float32 and out.shape == (b, k, h, w)
    torch.testing.assert_close(
        out.double(), oracle_fuse(side5, sides, weights, activation), rtol=1e-5, atol=1e-5
    )
    for got, want, name in zip(
        grads,
        oracle_grads(side5, sides, weights, grad, activation),
        ("side5", "sides", "weights"),
        strict=True,
    ):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("activation", [None, "softmax"])
def test_gradcheck_torch_backend(form, activation):
    side5, sides, weights = make_inputs(2, 2, 2, 2, 3, form, dtype=torch.float64)
    leaves = tuple(t.requires_grad_() for t in (side5, sides, weights))
    assert torch.autograd.gradcheck(
        lambda a, c, w: dynamic_fuse(a, c, w, activation=activation, backend="torch"), leaves
    )
    assert torch.autograd.gradgradcheck(
        lambda a, c, w: dynamic_fuse(a, c, w, activation=activation, backend="reference"), leaves
    )


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    k=st.integers(1, 5),
    s=st.integers(1, 4),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    form=st.sampled_from(FORMS),
    activation=st.sampled_from([None, "softmax"]),
    layout=st.sampled_from(LAYOUTS),
    backend=st.sampled_from(BACKENDS),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes(b, k, s, h, w, form, activation, layout, backend, seed):
    side5, sides, weights = make_inputs(b, k, s, h, w, form, layout=layout, seed=seed)
    grad = torch.randn(b, k, h, w, generator=torch.Generator().manual_seed(seed)) + 0.25
    out, grads = run_backend(backend, side5, sides, weights, grad, activation)
    torch.testing.assert_close(
        out.double(), oracle_fuse(side5, sides, weights, activation), rtol=1e-5, atol=1e-5
    )
    for got, want in zip(grads, oracle_grads(side5, sides, weights, grad, activation), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_non_contiguous_gradient_of_sum():
    # The gradient of .sum() is a stride-0 expand: backends must not assume contiguous gradients.
    side5, sides, weights = make_inputs(2, 3, 3, 4, 5, "adaptive")
    for backend in BACKENDS:
        leaves = [t.clone().requires_grad_() for t in (side5, sides, weights)]
        dynamic_fuse(*leaves, backend=backend).sum().backward()
        want = oracle_grads(side5, sides, weights, torch.ones(2, 3, 4, 5))
        for got, ref in zip((t.grad for t in leaves), want, strict=True):
            torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


# Half types: inputs rounded to the dtype, the oracle run on those rounded values in float64; what is
# left is the output rounding (one ulp: 2^-8 for bf16, 2^-11 for fp16, relative) since accumulation is
# float32.
HALF_TOL = {torch.bfloat16: dict(rtol=1.6e-2, atol=2e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", FORMS)
def test_half_precision(dtype, backend, form):
    side5, sides, weights = make_inputs(2, 4, 3, 6, 5, form, dtype=dtype)
    grad = (torch.randn(2, 4, 6, 5) + 0.25).to(dtype)
    out, grads = run_backend(backend, side5, sides, weights, grad, None)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    torch.testing.assert_close(out.double(), oracle_fuse(side5, sides, weights), **HALF_TOL[dtype])
    # Broadcast-weight gradients sum over pixels: scale the tolerance with the number of terms.
    terms = {"adaptive": 1, "invariant": 30, "fixed": 60}[form]
    for got, want in zip(grads, oracle_grads(side5, sides, weights, grad.double()), strict=True):
        tol = {k: v * (terms if got.shape == weights.shape else 4) for k, v in HALF_TOL[dtype].items()}
        torch.testing.assert_close(got.double(), want, **tol)


def test_half_accumulates_in_float32():
    # 4 terms whose float16 running sum would lose the small ones: 2048 + 1 + 1 + 1 = 2051 exactly
    # representable only if the accumulation is wider than fp16 (fp16 spacing at 2048 is 2).
    side5 = torch.full((1, 1, 1, 1), 2048.0, dtype=torch.float16)
    sides = torch.ones(1, 3, 1, 1, dtype=torch.float16)
    weights = torch.ones(1, 1, 4, 1, 1, dtype=torch.float16)
    for backend in BACKENDS:
        out = dynamic_fuse(side5, sides, weights, backend=backend)
        # 2051 rounds to 2052 in fp16 (round-half-even); a fp16 accumulation would give 2048.
        assert out.item() == 2052.0, backend


def test_authors_formulation_agrees():
    side5, sides, weights = make_inputs(2, 5, 3, 4, 6, "adaptive")
    torch.testing.assert_close(
        authors_fuse(side5, sides, weights).double(), oracle_fuse(side5, sides, weights), rtol=1e-5, atol=1e-5
    )


def test_shared_concat_channel_order():
    side5 = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    sides = -torch.arange(1, 2 * 2 * 2 * 2 + 1, dtype=torch.float32).view(2, 2, 2, 2)
    cat = shared_concat(side5, sides)
    assert cat.shape == (2, 9, 2, 2)
    for k in range(3):
        torch.testing.assert_close(cat[:, 3 * k], side5[:, k])
        torch.testing.assert_close(cat[:, 3 * k + 1], sides[:, 0])
        torch.testing.assert_close(cat[:, 3 * k + 2], sides[:, 1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", [None, "softmax"])
def test_flat_learner_weights_match_the_5d_form(backend, activation):
    """Flat (B, K*(S+1), H, W) weights (a learner's natural output, channel k*(S+1) + j = input j of
    class k) give the same output as their (B, K, S+1, H, W) view, and a flat gradient."""
    b, k, s, h, w = 2, 3, 3, 4, 5
    side5, sides, weights5 = make_inputs(b, k, s, h, w, "adaptive")
    flat = weights5.reshape(b, k * (s + 1), h, w)
    grad = torch.randn(b, k, h, w) + 0.25
    out, (d5, ds, dflat) = run_backend(backend, side5, sides, flat, grad, activation)
    want_out, (w5, ws, ww) = run_backend(backend, side5, sides, weights5, grad, activation)
    assert dflat.shape == flat.shape
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    for got, want in ((d5, w5), (ds, ws), (dflat, ww.reshape(flat.shape))):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # And against the literal concatenation read channel by channel.
    cat = shared_concat(side5, sides)
    if activation is None:
        want = (cat * flat).view(b, k, s + 1, h, w).sum(2)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    # A channels_last learner output (what a conv gives under channels_last) works too.
    flat_cl = flat.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(run_backend(backend, side5, sides, flat_cl, grad, activation)[0], out)


def test_autocast_casts_inputs_to_autocast_dtype():
    side5, sides, weights = make_inputs(1, 2, 3, 4, 4, "adaptive")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dynamic_fuse(side5, sides.bfloat16(), weights, backend="torch")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), oracle_fuse(side5, sides, weights), **HALF_TOL[torch.bfloat16])


def test_backend_resolution():
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    assert resolve_backend("reference", torch.device("cpu")) == "reference"
    assert resolve_backend("auto", torch.device("cpu")) in {"torch", "triton"}
    # float64 never runs the float32 kernels: the backend reported is the one that runs.
    for device in ("cpu", "cuda"):
        for backend in ("auto", "triton"):
            assert resolve_backend(backend, torch.device(device), torch.float64) == "torch"
        assert resolve_backend("reference", torch.device(device), torch.float64) == "reference"
    assert resolve_backend("triton", torch.device("cuda"), torch.bfloat16) == "triton"


@pytest.mark.parametrize(
    "mutate, exc, words",
    [
        (lambda a, c, w: (a[0], c, w), ValueError, ["side5", "4-D"]),
        (lambda a, c, w: (a, c[:, :, :-1], w), ValueError, ["sides", "H=4"]),
        (lambda a, c, w: (a, c[:1], w), ValueError, ["sides", "B=2"]),
        (lambda a, c, w: (a, c, w[:, :2]), ValueError, ["adaptive weights", "(2, 3, 4, 4, 5)"]),
        (lambda a, c, w: (a, c, w[:, :, :3]), ValueError, ["S+1=4"]),
        (lambda a, c, w: (a, c, w[..., :-1]), ValueError, ["weights"]),
        (lambda a, c, w: (a, c, w[:, :, :, 0, 0][:, :2]), ValueError, ["invariant weights", "(2, 3, 4)"]),
        (lambda a, c, w: (a, c, w[0, :, :3, 0, 0]), ValueError, ["fixed weights", "(3, 4)"]),
        (lambda a, c, w: (a, c, w[..., 0]), ValueError, ["weights", "4-D"]),
        (lambda a, c, w: (a, c, w.flatten(1, 2)[:, :-1]), ValueError, ["flat (4-D)", "(2, 12, 4, 5)"]),
        (lambda a, c, w: (a, c.double(), w), TypeError, ["sides", "float64", "float32"]),
        (lambda a, c, w: (a, c, w.half()), TypeError, ["weights", "float16"]),
        (lambda a, c, w: (a.long(), c, w), TypeError, ["side5", "floating", "int64"]),
        (lambda a, c, w: (a, c.bool(), w), TypeError, ["sides", "bool"]),
        (lambda a, c, w: (a.numpy(), c, w), TypeError, ["side5", "ndarray"]),
        (lambda a, c, w: (a, c[:, :0], w[:, :, :1]), ValueError, ["S >= 1"]),
    ],
)
def test_bad_inputs_name_the_problem(mutate, exc, words):
    side5, sides, weights = make_inputs(2, 3, 3, 4, 5, "adaptive")
    args = mutate(side5, sides, weights)
    for backend in ("auto", "torch", "reference"):
        with pytest.raises(exc) as info:
            dynamic_fuse(*args, backend=backend)
        for word in words:
            assert word in str(info.value), (word, str(info.value))


def test_mixed_devices_named():
    side5, sides, weights = make_inputs(1, 2, 3, 4, 4, "adaptive")
    with pytest.raises(ValueError, match="weights is on meta but side5 is on cpu"):
        dynamic_fuse(side5, sides, weights.to("meta"))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(backend="cuda"), ["backend", "'cuda'"]),
        (dict(activation="sigmoid"), ["activation", "'sigmoid'"]),
    ],
)
def test_unknown_backend_or_activation(kwargs, words):
    side5, sides, weights = make_inputs(1, 2, 3, 4, 4, "adaptive")
    with pytest.raises(ValueError) as info:
        dynamic_fuse(side5, sides, weights, **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("weights_shape", ["flat", "adaptive", "invariant", "fixed"])
def test_compile_fullgraph_lean_path(weights_shape):
    """backend="auto" on CPU (the lean path, with its einops reshapes) traces into one graph, forward
    and backward; "aot_eager" gives the same no-graph-break guarantee as inductor, fast."""
    torch._dynamo.reset()
    b, k, s, h, w = 2, 3, 2, 4, 5
    form = "adaptive" if weights_shape == "flat" else weights_shape
    side5, sides, weights = make_inputs(b, k, s, h, w, form)
    if weights_shape == "flat":
        weights = weights.reshape(b, k * (s + 1), h, w)

    def fuse(a, c, wt):
        return dynamic_fuse(a, c, wt, activation="softmax")

    compiled = torch.compile(fuse, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (compiled, fuse):
        leaves = [t.clone().requires_grad_() for t in (side5, sides, weights)]
        out = fn(*leaves)
        (out**2).sum().backward()  # the backward graph AOT autograd compiled with the forward
        results.append([out] + [t.grad for t in leaves])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


def test_import_dynfuse_does_not_load_triton_or_the_compiler():
    """``import dynfuse`` stays cheap: Triton, torch._inductor and torch._dynamo (about 2 s on CPU) are
    loaded on the first Triton call, or by ``load_triton_ops()``, which registers the custom ops.
    Timing lives in benchmarks/bench_import.py; this checks the cause, in a fresh interpreter."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import dynfuse, dynfuse.ops, dynfuse.layers, dynfuse.heads, dynfuse.models\n"
        "heavy = ('triton', 'torch._inductor', 'torch._dynamo')\n"
        "loaded = [m for m in heavy if m in sys.modules and m not in before]\n"
        "assert not loaded, f'import dynfuse loaded {loaded}'\n"
        "from dynfuse.ops import load_triton_ops, triton_available\n"
        "triton_available()\n"
        "assert 'triton' not in sys.modules\n"
        "if dynfuse.ops.triton_mode.TRITON_INSTALLED:\n"
        "    load_triton_ops()\n"
        "    assert callable(torch.ops.dynfuse.fusion_forward)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_lean_path_does_not_import_the_oracle_module():
    """The fast path and the oracle it is tested against stay independent: ops/lean.py takes its
    shared helpers from ops/utils.py, never from ops/reference.py."""
    import ast
    from pathlib import Path

    import dynfuse.ops.lean as lean

    tree = ast.parse(Path(lean.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "reference" not in imported and "dynfuse.ops.reference" not in imported, imported
    assert "utils" in imported
