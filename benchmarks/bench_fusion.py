"""Speed and memory of the fusion op's backends against the plain and the authors' formulations.

Usage:
    python benchmarks/bench_fusion.py                 # CPU: B x H x W in {1x256x256, 2x512x512}
    python benchmarks/bench_fusion.py --device cuda   # GPU: up to 8x640x640, fp32 and bf16
    python benchmarks/bench_fusion.py --quick         # one size, fewer repeats

Rows per size and dtype: "authors" (growing torch.cat over classes, multiply, sum), "plain" (one
torch.cat of side5 with the expanded sides, multiply, sum: the "reference" backend), "torch" (our lean
backend), and on CUDA "compile(plain)" and "triton" where available. Columns: forward, backward and
forward+backward time (median of repeats), peak extra memory of forward+backward (bytes allocated
beyond the inputs, measured: CUDA allocator peak, or on CPU the process's peak resident set after
resetting it), achieved GB/s of forward+backward by the byte model of DESIGN.md section 2, and the
forward+backward speed-up over "plain" and over "authors". A markdown record with the device,
versions and date goes to benchmarks/results/.

On CUDA every time is from ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs): the
median, and as spread the 10th-90th percentile range. The device's copy bandwidth is measured in the
same run (a 1 GiB device-to-device copy, bytes read + written; 128 MiB on CPU), and each row's
byte-model GB/s is also given as a percentage of it, for forward, backward and both. The headline
check at 8x640x640 compares "triton" against the issue's targets. ``--tune`` also times the Triton
kernels alone under several (pixels per program, warps) configs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dynfuse.ops import authors_fuse, dynamic_fuse  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FuseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------
# Measurement helpers
# ----------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of ``fn`` per call (synchronised), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median_and_spread(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds, spread seconds) of ``fn``.

    CUDA with Triton: ``triton.testing.do_bench`` (events, L2 flushed before each run), spread =
    90th - 10th percentile. Otherwise: ``timed`` wall clock over ``repeats``, spread = max - min.
    """
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
        if do_bench is not None:
            # rep/warmup are milliseconds of running; ~``repeats`` x 10 ms covers the slow peers.
            med, lo, hi = do_bench(fn, warmup=25, rep=max(50, 10 * repeats), quantiles=[0.5, 0.1, 0.9])
            return med / 1e3, (hi - lo) / 1e3
    times = timed(fn, device, repeats)
    return statistics.median(times), max(times) - min(times)


def copy_bandwidth(device: torch.device) -> float:
    """Device copy bandwidth in GB/s (bytes read + written) of a large tensor copy, measured now."""
    n = 2**28 if device.type == "cuda" else 2**25  # 1 GiB / 128 MiB of float32
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    med, _ = median_and_spread(lambda: dst.copy_(src), device, 10)
    return 2 * src.numel() * src.element_size() / med / 1e9


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def pin_malloc_mmap_threshold(threshold: int = 1 << 16) -> None:
    """Make glibc serve every allocation above ``threshold`` bytes with mmap and unmap it on free.

    glibc raises its mmap threshold after large frees, after which freed tensors stay in the heap
    and the resident set stops tracking the op's buffers; pinning it keeps the CPU peak honest.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``), so that buffers reusing free
    heap chunks fault their pages in again and show in the resident-set peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak memory ``fn`` allocates beyond what is live when it starts.

    CUDA: the caching allocator's peak. CPU (Linux): the process's peak resident set (VmHWM) after
    resetting it through /proc/self/clear_refs, minus the resident set before the call; large tensors
    are mmapped and returned to the OS when freed, so this tracks the op's own buffers.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        release_free_heap()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _read_status_kib("VmRSS")
        fn()
        return (_read_status_kib("VmHWM") - base) * 1024
    except OSError:
        return None


def bytes_per_pixel(k: int, s: int, elem: int) -> tuple[int, int]:
    """Byte model of DESIGN.md section 2: (forward, backward) bytes per pixel (adaptive weights)."""
    forward = (k + s + k * (s + 1)) + k
    backward = k * (2 * s + 5) + 2 * s
    return forward * elem, backward * elem


# ----------------------------------------------------------------------------------------------------
# The formulations
# ----------------------------------------------------------------------------------------------------
def plain_fuse(side5: torch.Tensor, sides: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One torch.cat of side5 with the expanded sides, multiply, sum (what a user would write)."""
    b, k, h, w = side5.shape
    x = torch.cat([side5.unsqueeze(2), sides.unsqueeze(1).expand(b, k, sides.shape[1], h, w)], dim=2)
    return (x * weights).sum(2)


def peers(device: torch.device, with_compile: bool) -> dict[str, FuseFn]:
    rows: dict[str, FuseFn] = {
        "authors": lambda a, c, w: authors_fuse(a, c, w),
        "plain": plain_fuse,
        "torch": lambda a, c, w: dynamic_fuse(a, c, w, backend="torch"),
    }
    if device.type == "cuda" and with_compile:
        # The backward-only timing re-runs one graph's backward (retain_graph=True), which compiled
        # graphs refuse when they donate saved buffers to the backward.
        import torch._functorch.config

        if hasattr(torch._functorch.config, "donated_buffer"):
            torch._functorch.config.donated_buffer = False
        rows["compile(plain)"] = torch.compile(plain_fuse, dynamic=False)
    if device.type == "cuda":
        try:
            from dynfuse.ops.triton_backend import is_available

            if is_available():
                rows["triton"] = lambda a, c, w: dynamic_fuse(a, c, w, backend="triton")
        except ImportError:
            pass
    return rows


def make_inputs(
    shape: tuple[int, int, int, int, int], dtype: torch.dtype, device: torch.device
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Random (side5, sides, adaptive weights) leaves and an output gradient (never zeros)."""
    b, k, s, h, w = shape
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen).to(device=device, dtype=dtype).requires_grad_()

    inputs = (rnd(b, k, h, w), rnd(b, s, h, w), rnd(b, k, s + 1, h, w))
    return inputs, torch.randn(b, k, h, w, generator=gen).to(device=device, dtype=dtype)


def measure_peak(
    fn: FuseFn, shape: tuple[int, int, int, int, int], dtype: torch.dtype, device: torch.device
) -> float | None:
    """Peak extra MB of one forward+backward."""
    inputs, grad = make_inputs(shape, dtype, device)
    peak = peak_extra_bytes(lambda: torch.autograd.grad(fn(*inputs), inputs, grad), device)
    return None if peak is None else peak / 2**20


def measure(
    name: str,
    fn: FuseFn,
    shape: tuple[int, int, int, int, int],
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
    with_memory: bool = True,
) -> dict[str, object]:
    b, k, s, h, w = shape
    inputs, grad = make_inputs(shape, dtype, device)

    def forward() -> None:
        with torch.no_grad():
            fn(*inputs)

    def forward_backward() -> None:
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, grad)

    out_holder: dict[str, torch.Tensor] = {}

    def backward_only() -> None:
        torch.autograd.grad(out_holder["out"], inputs, grad, retain_graph=True)

    t_fwd, _ = median_and_spread(forward, device, repeats)
    both, spread = median_and_spread(forward_backward, device, repeats)
    out_holder["out"] = fn(*inputs)
    t_bwd, _ = median_and_spread(backward_only, device, repeats)
    del out_holder["out"]
    peak_mb = measure_peak(fn, shape, dtype, device) if with_memory else None
    fwd_b, bwd_b = bytes_per_pixel(k, s, torch.finfo(dtype).bits // 8)
    pixels = b * h * w
    return {
        "backend": name,
        "shape": f"{b}x{h}x{w}",
        "dtype": str(dtype).replace("torch.", ""),
        "fwd_ms": 1e3 * t_fwd,
        "bwd_ms": 1e3 * t_bwd,
        "both_ms": 1e3 * both,
        "spread_ms": 1e3 * spread,
        "peak_mb": peak_mb,
        "fwd_gbps": fwd_b * pixels / t_fwd / 1e9,
        "bwd_gbps": bwd_b * pixels / t_bwd / 1e9,
        "gbps": (fwd_b + bwd_b) * pixels / both / 1e9,
        # What the op must hold at least: its output and the three input gradients.
        "needed_mb": (k + k + s + k * (s + 1)) * pixels * torch.finfo(dtype).bits // 8 / 2**20,
    }


def environment(device: torch.device) -> dict[str, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = (
            f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads"
        )
    env = {
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    return env


def render(rows: list[dict[str, object]], copy_gbps: float) -> str:
    head = (
        "| shape | dtype | backend | fwd ms | bwd ms | fwd+bwd ms | spread ms | peak extra MB | GB/s "
        "| % copy fwd / bwd / both | x plain | x authors |"
    )
    lines = [head, "|" + "---|" * 12]

    def pct(gbps: object) -> str:
        return f"{100 * float(gbps) / copy_gbps:.0f}"

    for r in rows:
        base = next(
            x
            for x in rows
            if x["shape"] == r["shape"] and x["dtype"] == r["dtype"] and x["backend"] == "plain"
        )
        auth = next(
            x
            for x in rows
            if x["shape"] == r["shape"] and x["dtype"] == r["dtype"] and x["backend"] == "authors"
        )
        peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['backend']} | {r['fwd_ms']:.2f} | {r['bwd_ms']:.2f} | "
            f"{r['both_ms']:.2f} | {r['spread_ms']:.2f} | {peak} | {r['gbps']:.1f} | "
            f"{pct(r['fwd_gbps'])} / {pct(r['bwd_gbps'])} / {pct(r['gbps'])} | "
            f"{base['both_ms'] / r['both_ms']:.2f} | {auth['both_ms'] / r['both_ms']:.2f} |"
        )
    return "\n".join(lines)


def headline(rows: list[dict[str, object]], copy_gbps: float, shape: str = "8x640x640") -> str:
    """The issue's targets for "triton" at ``shape`` (forward+backward), one line per dtype."""
    out = []
    for dtype in sorted({str(r["dtype"]) for r in rows if r["shape"] == shape}):
        got = {r["backend"]: r for r in rows if r["shape"] == shape and r["dtype"] == dtype}
        if "triton" not in got:
            continue
        t = float(got["triton"]["both_ms"])
        checks = []
        for peer, target in (("authors", 5.0), ("plain", 2.5), ("compile(plain)", 1.0)):
            if peer in got:
                ratio = float(got[peer]["both_ms"]) / t
                checks.append(
                    f"{ratio:.2f}x {peer} (target >= {target:g}x: {'met' if ratio >= target else 'MISSED'})"
                )
        frac = float(got["triton"]["gbps"]) / copy_gbps
        checks.append(
            f"{100 * frac:.0f}% of copy bandwidth (target >= 80%: {'met' if frac >= 0.8 else 'MISSED'})"
        )
        peak = got["triton"]["peak_mb"]
        if peak is not None:
            need = float(got["triton"]["needed_mb"])
            checks.append(
                f"peak extra {peak:.0f} MB vs outputs+gradients {need:.0f} MB "
                f"({'met' if peak <= need * 1.05 else 'MISSED'})"
            )
        out.append(f"- triton {shape} {dtype} forward+backward: " + "; ".join(checks))
    return "\n".join(out)


def device_slug(device: torch.device) -> str:
    """File-name tag of the device: the GPU's name on CUDA ("nvidia-h100-80gb-hbm3"), else the type."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def tune(
    device: torch.device,
    shape: tuple[int, int, int, int, int],
    dtypes: list[torch.dtype],
    configs: list[tuple[int, int]],
) -> str:
    """Time the Triton forward and backward alone under each (pixels per program, warps) config.

    Uses the backend's ``block_config`` hook; prints and returns a markdown table. The library's
    default config is whatever ``triton_backend.block_config`` returns; this is how it was chosen.
    """
    from dynfuse.ops import triton_backend

    b, k, s, h, w = shape
    default = triton_backend.block_config
    lines = ["| dtype | BLOCK | warps | fwd ms | bwd ms |", "|---|---|---|---|---|"]

    def time_kernels(side5, sides, weights, grad) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        ops = torch.ops.dynfuse
        fwd, _ = median_and_spread(lambda: ops.fusion_forward(side5, sides, weights, False), device, 5)
        bwd, _ = median_and_spread(lambda: ops.fusion_backward(grad, side5, sides, weights, False), device, 5)
        return fwd, bwd

    try:
        for dtype in dtypes:
            gen = torch.Generator(device="cpu").manual_seed(0)
            tensors = [
                torch.randn(*sz, generator=gen).to(device, dtype)
                for sz in ((b, k, h, w), (b, s, h, w), (b, k, s + 1, h, w), (b, k, h, w))
            ]
            for block, warps in configs:
                triton_backend.block_config = lambda *a, _c=(block, warps): _c
                fwd, bwd = time_kernels(*tensors)
                line = f"| {str(dtype)[6:]} | {block} | {warps} | {1e3 * fwd:.3f} | {1e3 * bwd:.3f} |"
                print(line, flush=True)
                lines.append(line)
    finally:
        triton_backend.block_config = default
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="one size, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    parser.add_argument("--out", type=Path, default=None, help="markdown record (default: results/)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="folder for the record under its default name fusion_<device>.md",
    )
    parser.add_argument(
        "--tune", action="store_true", help="CUDA: also time the Triton kernels under several block configs"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    k, s = 19, 3
    if device.type == "cuda":
        sizes = [(8, 640, 640)] if args.quick else [(1, 256, 256), (2, 512, 512), (8, 640, 640)]
        dtypes = [torch.float32, torch.bfloat16]
        repeats = args.repeats or (10 if args.quick else 20)
    else:
        sizes = [(2, 512, 512)] if args.quick else [(1, 256, 256), (2, 512, 512)]
        dtypes = [torch.float32]
        repeats = args.repeats or 5
    copy_gbps = copy_bandwidth(device)
    print(f"  copy bandwidth: {copy_gbps:.0f} GB/s (read + write)", flush=True)
    rows = []
    for b, h, w in sizes:
        for dtype in dtypes:
            for name, fn in peers(device, not args.no_compile).items():
                # On CPU, memory is measured in a second pass: pinning glibc's mmap threshold (needed
                # for an honest resident-set peak) makes every allocation fault its pages in anew,
                # which would slow the timings.
                rows.append(
                    measure(
                        name, fn, (b, k, s, h, w), dtype, device, repeats, with_memory=device.type != "cpu"
                    )
                )
                print(f"  {name:>15} {b}x{h}x{w} {dtype}: {rows[-1]['both_ms']:.2f} ms", flush=True)
    if device.type == "cpu":
        pin_malloc_mmap_threshold()
        fns = peers(device, False)
        for row in rows:
            b, h, w = (int(v) for v in str(row["shape"]).split("x"))
            row["peak_mb"] = measure_peak(fns[str(row["backend"])], (b, k, s, h, w), torch.float32, device)
    tuning = ""
    if args.tune and device.type == "cuda":
        configs = [(512, 4), (1024, 4), (1024, 8), (2048, 8)]
        tuning = tune(device, (*sizes[-1][:1], k, s, *sizes[-1][1:]), dtypes, configs)
    env = environment(device)
    size = "1 GiB" if device.type == "cuda" else "128 MiB"
    env["copy bandwidth"] = f"{copy_gbps:.0f} GB/s (copy of {size}, read + write, this run)"
    table = render(rows, copy_gbps)
    checks = headline(rows, copy_gbps)
    if checks:
        table += "\n\nHeadline targets (issue 3):\n\n" + checks
    if tuning:
        table += "\n\nTriton block configs (forward and backward kernels alone, no softmax):\n\n"
        table += tuning
    header = "\n".join(f"- {key}: {value}" for key, value in env.items())
    timing = (
        "triton.testing.do_bench median, spread = p90 - p10"
        if device.type == "cuda"
        else f"median of {repeats} repeats, spread = max - min"
    )
    text = (
        f"# Fusion op benchmark ({device.type})\n\n{header}\n- K={k}, S={s}, adaptive weights, "
        f"{timing}; command: `python benchmarks/{Path(__file__).name} "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n{table}\n"
    )
    print(text)
    out = args.out or (args.out_dir or RESULTS) / f"fusion_{device_slug(device)}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"recorded in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
