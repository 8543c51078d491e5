"""onnxruntime latency of an exported DFF: any-size graph (the default) vs one fixed to the size.

The any-size graph crops and then resizes every upsampled side map (a resize to the map's own size
is the identity); this measures what that costs against a graph specialised to the image size.

    python benchmarks/bench_onnx.py --backbone tiny --size 256 384 --threads 1 --repeat 20

Writes a Markdown record to benchmarks/results/onnx_<backbone>_cpu.md (device, versions, threads,
date, load average).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch


def _session(model, size, dynamic, threads):
    import onnxruntime as ort

    from dynfuse.models import export_onnx

    buf = io.BytesIO()
    export_onnx(model, buf, size, dynamic_size=dynamic)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def _median_ms(sess, x, repeat):
    feed = {"images": x}
    sess.run(None, feed)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--size", type=int, nargs=2, default=(256, 384), metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import onnxruntime as ort

    from dynfuse.models import create_model

    torch.manual_seed(0)
    model = create_model("dff", backbone=args.backbone, num_classes=args.num_classes).eval()
    size = tuple(args.size)
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    rows = []
    for dynamic in (False, True):
        sess = _session(model, size, dynamic, args.threads)
        name = "any size" if dynamic else f"fixed {size[0]}x{size[1]}"
        rows.append((name, _median_ms(sess, x, args.repeat)))
    base = rows[0][1]
    lines = [
        f"# onnxruntime: DFF on {args.backbone}, K={args.num_classes}, {size[0]}x{size[1]}, batch 1 "
        f"(median of {args.repeat})",
        "",
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- device: CPU {platform.machine()}, {platform.platform()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}",
        f"- onnxruntime intra-op threads: {args.threads}; CPUs: {os.cpu_count()}, load average at the end: "
        + ", ".join(f"{v:.1f}" for v in os.getloadavg()),
        "",
        "| graph | time (ms) | vs fixed |",
        "|---|---:|---:|",
    ] + [f"| {name} | {ms:.1f} | {ms / base:.2f}x |" for name, ms in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out or Path(__file__).parent / "results" / f"onnx_{args.backbone}_cpu.md")
    out.write_text(text)


if __name__ == "__main__":
    main()
