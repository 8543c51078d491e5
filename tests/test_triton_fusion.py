"""The Triton fusion kernels against the float64 oracle, forward and every gradient.

Two tiers run the same checks:

* ``interpreter``: the real kernels under the CPU interpreter, on CPU tensors (CI, no GPU), small
  shapes. Triton decides the mode once per process, so this tier is its own pytest process:
  ``TRITON_INTERPRET=1 pytest -m interpreter`` (``make test`` runs it after the main suite; the main
  process deselects these tests, see ``tests/conftest.py``).
* ``gpu``: CUDA tensors, float32 / bfloat16 / float16, determinism, large tensors, autocast and
  ``torch.compile(fullgraph=True)``; skipped without CUDA.

Comparisons are element-wise (``torch.testing.assert_close``), so one wrong pixel fails. Every output
the backend allocates is filled with NaN first (``_allocate`` hook), so an element a kernel never
writes fails the comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from fusion_oracle import make_inputs, oracle_fuse, oracle_grads

from dynfuse.ops import dynamic_fuse, resolve_backend, triton_mode

HAS_TRITON = triton_mode.TRITON_INSTALLED
HAS_CUDA = torch.cuda.is_available()

if HAS_TRITON:
    from dynfuse.ops import triton_backend
else:  # pragma: no cover - exercised only where Triton is missing
    triton_backend = None

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not (HAS_TRITON and HAS_CUDA), reason="needs CUDA and triton")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Element-wise tolerances, |got - want| <= atol * scale + rtol * |want| with scale = max(1, max|want|)
# of the tensor: the kernels accumulate in float32 (error relative to the largest terms summed) and
# round once to the output dtype (relative to each value: 1 ulp is 2^-7 for bfloat16, 2^-10 for
# float16, relative; 2 ulps allowed). The oracle runs in float64 on the same rounded inputs.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
}


def _poisoned(shape, dtype=None, device=None, **_):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@pytest.fixture
def poison(monkeypatch):
    """Every tensor the Triton backend allocates starts as NaN."""
    monkeypatch.setattr(triton_backend, "_allocate", _poisoned)


@pytest.fixture
def interpret(poison):
    """The interpreter tier's tests run in a process started with TRITON_INTERPRET=1."""
    assert triton_mode.INTERPRET, "run the interpreter tier as: TRITON_INTERPRET=1 pytest -m interpreter"


def run(side5, sides, weights, grad, activation, backend="triton"):
    leaves = [t.detach().requires_grad_() for t in (side5, sides, weights)]
    out = dynamic_fuse(*leaves, activation=activation, backend=backend)
    grads = torch.autograd.grad(out, leaves, grad)
    return out, grads


def assert_matches(got, want, dtype, name):
    """``got`` equals the float64 ``want`` element-wise within the tolerance of ``dtype`` (above)."""
    want = want.double().cpu()
    tol = TOL[dtype]
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(
        got.detach().double().cpu(), want, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=name
    )


def check_against_oracle(side5, sides, weights, grad, activation):
    out, grads = run(side5, sides, weights, grad, activation)
    assert out.dtype == side5.dtype and out.shape == side5.shape
    cpu = [t.detach().cpu().double() for t in (side5, sides, weights, grad)]
    assert_matches(out, oracle_fuse(*cpu[:3], activation), side5.dtype, "forward")
    wgrads = oracle_grads(*cpu, activation)
    for name, got, wg, inp in zip(
        ("side5", "sides", "weights"), grads, wgrads, (side5, sides, weights), strict=True
    ):
        assert got.shape == inp.shape and got.dtype == inp.dtype, name
        assert_matches(got, wg, inp.dtype, f"d {name}")


# (B, K, S, H, W, form, activation, layout): K=1 and K=19, S=1 and 3, every form, softmax on/off,
# H*W not a multiple of the block, and non-contiguous layouts.
INTERPRETER_CASES = [
    (1, 1, 1, 3, 5, "adaptive", None, "contiguous"),
    (2, 19, 3, 5, 7, "adaptive", "softmax", "sliced"),
    (2, 19, 3, 6, 7, "adaptive", None, "channels_last"),
    (1, 3, 1, 4, 9, "adaptive", "softmax", "transposed"),
    (2, 19, 3, 5, 7, "invariant", None, "contiguous"),
    (2, 3, 1, 7, 5, "invariant", "softmax", "sliced"),
    (2, 1, 3, 5, 5, "fixed", None, "sliced"),
    (3, 19, 3, 4, 7, "fixed", "softmax", "channels_last"),
    (1, 2, 4, 3, 3, "adaptive", "softmax", "contiguous"),  # S+1 = 5: padded tile rows
]


def _case_id(case):
    b, k, s, h, w, form, act, layout = case
    return f"{form}-{act or 'none'}-K{k}-S{s}-{b}x{h}x{w}-{layout}"


@pytest.fixture
def small_blocks(monkeypatch):
    """32-pixel blocks, so the small images above span several blocks and a ragged last one."""
    monkeypatch.setattr(triton_backend, "block_config", lambda *args: (32, 4))


@needs_triton
@pytest.mark.interpreter
@pytest.mark.parametrize("case", INTERPRETER_CASES, ids=_case_id)
def test_interpreter_matches_oracle(case, interpret, small_blocks):
    b, k, s, h, w, form, activation, layout = case
    side5, sides, weights = make_inputs(b, k, s, h, w, form, layout=layout)
    grad = torch.randn(b, k, h, w) + 0.2
    check_against_oracle(side5, sides, weights, grad, activation)


@needs_triton
@pytest.mark.interpreter
@pytest.mark.parametrize("form", ["adaptive", "fixed"])
def test_interpreter_default_blocks_and_odd_gradients(form, interpret):
    """Default block sizes; the stride-0 gradient of ``.sum()`` and a W-strided gradient."""
    b, k, s, h, w = 2, 19, 3, 9, 15
    side5, sides, weights = make_inputs(b, k, s, h, w, form)
    leaves = [t.detach().requires_grad_() for t in (side5, sides, weights)]
    out = dynamic_fuse(*leaves, activation="softmax", backend="triton")
    got = torch.autograd.grad(out.sum(), leaves)
    want = oracle_grads(side5, sides, weights, torch.ones(b, k, h, w), "softmax")
    for name, g_, w_ in zip(("side5", "sides", "weights"), got, want, strict=True):
        assert_matches(g_, w_, torch.float32, f"d {name} of sum()")

    strided = (torch.randn(b, k, h, 2 * w) + 0.2)[..., ::2]
    out = dynamic_fuse(*leaves, backend="triton")
    got = torch.autograd.grad(out, leaves, strided)
    want = oracle_grads(side5, sides, weights, strided, None)
    for name, g_, w_ in zip(("side5", "sides", "weights"), got, want, strict=True):
        assert_matches(g_, w_, torch.float32, f"d {name}, W-strided gradient")


# Sizes around the default block (block_config: 1024 pixels for bfloat16 / float16 with S+1 <= 4,
# and with S+1 = 5..8, where float32 gets 512): one full block plus a ragged tail, and one pixel
# short of a block.
HALF_TAIL_CASES = [
    (torch.bfloat16, 1, 2, 3, 29, 37, "adaptive", "softmax"),  # 1073 = 1024 + 49
    (torch.bfloat16, 2, 3, 4, 31, 33, "adaptive", None),  # S+1 = 5: 1023 = 1024 - 1
    (torch.bfloat16, 1, 2, 4, 25, 43, "invariant", "softmax"),  # 1075 = 1024 + 51
    (torch.float16, 1, 2, 3, 41, 27, "fixed", None),  # 1107 = 1024 + 83
]


@needs_triton
@pytest.mark.interpreter
@pytest.mark.parametrize(
    "case", HALF_TAIL_CASES, ids=lambda c: f"{str(c[0]).split('.')[-1]}-{c[6]}-S{c[3]}-{c[4]}x{c[5]}"
)
def test_interpreter_half_precision_block_tails(case, interpret):
    dtype, b, k, s, h, w, form, activation = case
    block, _ = triton_backend.block_config(1 << s.bit_length(), h * w, 2)
    assert block == 1024 and h * w % block != 0
    side5, sides, weights = make_inputs(b, k, s, h, w, form, dtype=dtype)
    grad = (torch.randn(b, k, h, w) + 0.2).to(dtype)
    check_against_oracle(side5, sides, weights, grad, activation)


@needs_triton
@pytest.mark.interpreter
@pytest.mark.parametrize("activation", [None, "softmax"])
def test_interpreter_flat_learner_weights(activation, interpret, small_blocks):
    """Flat (B, K*(S+1), H, W) weights run the kernels like their 5-D view; the gradient is flat."""
    b, k, s, h, w = 2, 3, 3, 5, 7
    side5, sides, weights5 = make_inputs(b, k, s, h, w, "adaptive")
    flat = weights5.reshape(b, k * (s + 1), h, w)
    grad = torch.randn(b, k, h, w) + 0.2
    out, (d5, ds, dflat) = run(side5, sides, flat, grad, activation)
    assert dflat.shape == flat.shape
    wg = oracle_grads(side5, sides, weights5, grad, activation)
    assert_matches(out, oracle_fuse(side5, sides, weights5, activation), torch.float32, "forward")
    for name, got, want in (
        ("side5", d5, wg[0]),
        ("sides", ds, wg[1]),
        ("weights", dflat, wg[2].reshape(flat.shape)),
    ):
        assert_matches(got, want, torch.float32, f"d {name}")


@needs_triton
@pytest.mark.interpreter
def test_interpreter_wide_offsets_path(interpret, small_blocks, monkeypatch):
    """The int64 pixel-offset variant (chosen when a per-pixel offset may pass 2**31) computes the
    same thing; the real large-tensor case runs in the GPU tier."""
    monkeypatch.setattr(triton_backend, "_needs_wide", lambda *tensors: True)
    side5, sides, weights = make_inputs(2, 3, 3, 5, 7, "adaptive", layout="sliced")
    check_against_oracle(side5, sides, weights, torch.randn(2, 3, 5, 7), "softmax")
    side5, sides, weights = make_inputs(2, 3, 3, 5, 7, "invariant")
    check_against_oracle(side5, sides, weights, torch.randn(2, 3, 5, 7), None)


@needs_triton
@pytest.mark.interpreter
@pytest.mark.parametrize("form", ["invariant", "fixed"])
def test_interpreter_broadcast_gradients_are_bitwise_deterministic(form, interpret, small_blocks):
    side5, sides, weights = make_inputs(3, 5, 3, 9, 11, form)
    grad = torch.randn(3, 5, 9, 11)
    first = run(side5, sides, weights, grad, "softmax")[1]
    second = run(side5, sides, weights, grad, "softmax")[1]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@needs_triton
@pytest.mark.interpreter
def test_interpreter_auto_resolves_to_triton_and_float64_runs_lean(interpret, monkeypatch):
    calls = []
    real = triton_backend._launch

    def spy(kernel, grid, **kwargs):
        calls.append(kwargs["side5_ptr"].dtype)
        return real(kernel, grid, **kwargs)

    monkeypatch.setattr(triton_backend, "_launch", spy)
    side5, sides, weights = make_inputs(1, 2, 3, 4, 5, "adaptive")
    assert resolve_backend("auto", side5.device, side5.dtype) == "triton"
    out = dynamic_fuse(side5, sides, weights)  # backend="auto"
    assert_matches(out, oracle_fuse(side5, sides, weights), torch.float32, "forward")
    # float64 resolves to the lean torch path (exact in float64), also when "triton" is asked for.
    d = make_inputs(1, 2, 3, 2, 3, "adaptive", dtype=torch.float64)
    assert resolve_backend("triton", d[0].device, torch.float64) == "torch"
    out64 = dynamic_fuse(*d, activation="softmax", backend="triton")
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, oracle_fuse(*d, "softmax"), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda a, c, w: dynamic_fuse(a, c, w, activation="softmax", backend="triton"),
        [t.requires_grad_() for t in d],
    )
    # Kernels were launched for the float32 call only.
    assert calls == [torch.float32]


@needs_triton
def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr(triton_mode, "INTERPRET", False)
    for dtype in (torch.float32, torch.float64):  # float64 would run "torch", but was asked "triton"
        side5, sides, weights = make_inputs(1, 2, 3, 4, 5, "adaptive", dtype=dtype)
        with pytest.raises(RuntimeError, match="CUDA tensors"):
            dynamic_fuse(side5, sides, weights, backend="triton")


@needs_triton
def test_triton_missing_raises_clear_error(monkeypatch):
    monkeypatch.setattr(triton_mode, "TRITON_INSTALLED", False)
    side5, sides, weights = make_inputs(1, 2, 3, 4, 5, "adaptive")
    with pytest.raises(RuntimeError, match="needs the 'triton' package"):
        dynamic_fuse(side5, sides, weights, backend="triton")
    assert triton_mode.is_available() is False
    assert resolve_backend("auto", torch.device("cuda")) == "torch"


def _python(code: str, interpret: bool | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter on this checkout, TRITON_INTERPRET unset (or set to 1)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_package_imports_and_reports_without_triton():
    """With Triton unimportable, dynfuse imports, triton_available() is False and backend="triton"
    names the missing package (run in a fresh interpreter where ``triton`` is blocked)."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, dynfuse\n"
        "from dynfuse.ops import dynamic_fuse, triton_available\n"
        "assert triton_available() is False\n"
        "a, c, w = torch.ones(1, 2, 3, 3), torch.ones(1, 1, 3, 3), torch.ones(2, 2)\n"
        "assert dynamic_fuse(a, c, w).shape == (1, 2, 3, 3)\n"  # auto -> torch
        "try:\n"
        "    dynamic_fuse(a, c, w, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert \"needs the 'triton' package\" in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]


@needs_triton
def test_changing_triton_interpret_after_import_is_refused():
    """The Triton mode is decided once per process: flipping TRITON_INTERPRET between ``import
    dynfuse`` and the first Triton call gives an error that says so, not a confusing failure."""
    code = (
        "import os, dynfuse\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "try:\n"
        "    import dynfuse.ops.triton_backend\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET changed after dynfuse was imported' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]


@needs_triton
def test_first_triton_call_inside_torch_compile_registers_ops_without_graph_break():
    """The Triton backend is imported on first use; when that first use is inside a
    ``torch.compile(fullgraph=True)`` trace, Dynamo runs the import and the op lands in the one graph.
    Traced on CPU tensors (a capturing compiler backend stops before anything runs), in a fresh
    interpreter so that the backend is not imported yet."""
    code = (
        "import sys, torch\n"
        "from dynfuse.ops import dynamic_fuse\n"
        "assert 'dynfuse.ops.triton_backend' not in sys.modules\n"
        "graphs = []\n"
        "class Captured(Exception): pass\n"
        "def capture(gm, example_inputs):\n"
        "    graphs.append(gm.code)\n"
        "    raise Captured\n"
        "def f(a, c, w):\n"
        "    return dynamic_fuse(a, c, w, activation='softmax', backend='triton')\n"
        "a, c, w = torch.randn(2, 3, 4, 5), torch.randn(2, 2, 4, 5), torch.randn(2, 9, 4, 5)\n"
        "try:\n"
        "    torch.compile(f, fullgraph=True, backend=capture)(a, c, w)\n"
        "except Exception as e:\n"
        "    assert 'Captured' in repr(e) or isinstance(e.__cause__, Captured), repr(e)[-3000:]\n"
        "assert 'dynfuse.ops.triton_backend' in sys.modules\n"
        "assert len(graphs) == 1 and 'torch.ops.dynfuse.fusion_forward' in graphs[0], graphs\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ------------------------------------------------------------------------------------------------
# GPU tier
# ------------------------------------------------------------------------------------------------
GPU_CASES = [
    (2, 19, 3, 37, 45, "adaptive", None, "contiguous"),
    (2, 19, 3, 37, 45, "adaptive", "softmax", "sliced"),
    (2, 1, 1, 33, 31, "adaptive", "softmax", "channels_last"),
    (2, 19, 3, 21, 40, "invariant", "softmax", "transposed"),
    (3, 19, 3, 50, 47, "invariant", None, "contiguous"),
    (2, 5, 1, 33, 65, "fixed", None, "sliced"),
    (2, 19, 3, 64, 64, "fixed", "softmax", "contiguous"),
    (1, 4, 4, 30, 31, "adaptive", "softmax", "contiguous"),
]


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOL), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", GPU_CASES, ids=_case_id)
def test_gpu_matches_oracle(case, dtype, poison):
    b, k, s, h, w, form, activation, layout = case
    side5, sides, weights = make_inputs(b, k, s, h, w, form, layout=layout, device="cuda", dtype=dtype)
    grad = (torch.randn(b, k, h, w, device="cuda") + 0.2).to(dtype)
    check_against_oracle(side5, sides, weights, grad, activation)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("form", ["adaptive", "invariant", "fixed"])
def test_gpu_gradients_bitwise_deterministic(form):
    side5, sides, weights = make_inputs(4, 19, 3, 96, 80, form, device="cuda")
    grad = torch.randn(4, 19, 96, 80, device="cuda")
    first = run(side5, sides, weights, grad, "softmax")
    second = run(side5, sides, weights, grad, "softmax")
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1], strict=True):
        assert torch.equal(a, b)


@needs_cuda
@pytest.mark.gpu
def test_gpu_autocast_runs_in_autocast_dtype():
    side5, sides, weights = make_inputs(2, 19, 3, 20, 24, "adaptive", device="cuda")
    grad = torch.randn(2, 19, 20, 24, device="cuda")
    leaves = [t.detach().requires_grad_() for t in (side5, sides, weights)]
    with torch.autocast("cuda", dtype=torch.float16):
        out = dynamic_fuse(*leaves, activation="softmax", backend="triton")
    assert out.dtype == torch.float16
    got = torch.autograd.grad(out, leaves, grad.half())
    # The kernels saw the inputs rounded to float16: the oracle takes the same rounded values.
    cpu = [t.detach().half().cpu().double() for t in (side5, sides, weights)]
    assert_matches(out, oracle_fuse(*cpu, "softmax"), torch.float16, "forward")
    wgrads = oracle_grads(*cpu, grad.half().cpu().double(), "softmax")
    for name, g_, inp, w_ in zip(("side5", "sides", "weights"), got, leaves, wgrads, strict=True):
        assert g_.dtype == inp.dtype  # the cast's backward returns the leaves' dtype
        assert_matches(g_, w_, torch.float16, f"d {name}")


@needs_cuda
@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_more_than_2_31_elements():
    """side5 holds more than 2**31 elements per image, stored channels_last so that even the
    per-pixel offsets pass 2**31 (the int64 kernel variant); the gradient is a stride-0 expand."""
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs 40 GB of GPU memory")
    b, k, s, h, w = 1, 1100, 1, 1024, 2048  # 2.3e9 elements per (B, K, H, W) tensor, bfloat16
    dev, dt = "cuda", torch.bfloat16
    side5 = torch.randn(b, k, h, w, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
    sides = torch.randn(b, s, h, w, device=dev, dtype=dt)
    weights = torch.randn(k, s + 1, device=dev, dtype=dt, requires_grad=True)
    side5.requires_grad_()

    def want(c):
        return weights[c, 0].float() * side5[0, c].float() + weights[c, 1].float() * sides[0, 0].float()

    out = dynamic_fuse(side5, sides, weights, backend="triton")
    for c in (0, 7, k - 1):
        assert_matches(out[0, c], want(c), torch.bfloat16, f"class {c}")
    del out
    grad = torch.ones(1, 1, 1, 1, device=dev, dtype=dt).expand(b, k, h, w)
    d5, dw = torch.autograd.grad(
        dynamic_fuse(side5, sides, weights, backend="triton"), (side5, weights), grad
    )
    for c in (0, k - 1):
        assert torch.all(d5[0, c] == weights[c, 0].detach()), c
        want_dw = side5[0, c].double().sum().item()
        assert abs(dw[c, 0].double().item() - want_dw) <= 1e-2 * (abs(want_dw) + (h * w) ** 0.5), c


class _TinyHead(torch.nn.Module):
    """1x1 convolutions producing side5, sides and adaptive weights, then the fused op."""

    def __init__(self, k: int, s: int, activation):
        super().__init__()
        self.k, self.s, self.activation = k, s, activation
        self.side5 = torch.nn.Conv2d(8, k, 1)
        self.sides = torch.nn.Conv2d(8, s, 1)
        self.weights = torch.nn.Conv2d(8, k * (s + 1), 1)

    def forward(self, x):
        b, _, h, w = x.shape
        weights = self.weights(x).view(b, self.k, self.s + 1, h, w)
        return dynamic_fuse(
            self.side5(x), self.sides(x), weights, activation=self.activation, backend="triton"
        )


@needs_cuda
@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph(monkeypatch):
    # TF32 convolutions differ between eager (cuDNN) and compiled (possibly matmul) lowerings.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    head = _TinyHead(19, 3, "softmax").cuda()
    x = torch.randn(2, 8, 40, 36, device="cuda")

    def step(model, inp):
        out = model(inp)
        loss = (out.float() ** 2).mean()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return out, grads

    eager_out, eager_grads = step(head, x)
    torch._dynamo.reset()
    compiled = torch.compile(head, fullgraph=True)
    out, grads = step(compiled, x)
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
