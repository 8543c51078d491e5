"""Speed of edge ground-truth generation and of the label codecs on a Cityscapes-sized map.

Usage:
    python benchmarks/bench_edges.py            # 1024 x 2048, 19 classes, radius 2
    python benchmarks/bench_edges.py --quick    # 512 x 1024, fewer repeats

Rows:
  "plain (per class)"   the authors' algorithm structure in numpy: a candidate pass, then for each
                        class a pass over the disc offsets comparing seg_k maps (K x offsets passes)
  "mask_to_edges"       ours: one pass over the offsets accumulating class bits (offsets passes)
  "encode_edge_png" / "decode_edge_png"   the bit-packed PNG codec, no file I/O
  "write+read PNG"      PIL encode + decode of the edge PNG through a temporary file
Median of repeats (wall clock, one process). The plain row is checked equal to ours first. A
markdown record with the CPU, versions and date goes to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dynfuse.data import (  # noqa: E402
    decode_edge_png,
    disc_offsets,
    encode_edge_png,
    mask_to_edges,
    read_edge_png,
    write_edge_png,
)

RESULTS = Path(__file__).resolve().parent / "results"


def plain_edges(labels, num_classes, radius, ignored, instances):
    """The authors' structure: candidates once, then per class a seg_k shift-and-compare."""
    h, w = labels.shape
    offsets = disc_offsets(radius)

    def pairs(dy, dx):
        c = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
        n = (slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
        return c, n

    ident = labels * (int(instances.max()) + 1) + instances
    candidate = np.zeros((h, w), dtype=bool)
    for dy, dx in offsets:
        c, n = pairs(dy, dx)
        candidate[c] |= (ident[c] != ident[n]) & ~ignored[c] & ~ignored[n]
    out = np.zeros((num_classes, h, w), dtype=bool)
    for k in range(num_classes):
        seg = np.where(labels == k, instances + 1, 0)  # +1: instance 0 is an instance
        edge = np.zeros((h, w), dtype=bool)
        for dy, dx in offsets:
            c, n = pairs(dy, dx)
            edge[c] |= seg[c] != seg[n]
        out[k] = edge & candidate
    return out


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cityscapes_like(h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cell = 16
    labels = np.kron(rng.integers(0, 20, size=(h // cell, w // cell)), np.ones((cell, cell), int))
    labels[labels == 19] = 255  # void
    instances = np.kron(rng.integers(0, 4, size=(h // cell, w // cell)), np.ones((cell, cell), int))
    ignored = np.zeros((h, w), dtype=bool)
    ignored[:, : w // 32] = True  # an out-of-roi strip
    return labels, instances, ignored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    h, w = (512, 1024) if args.quick else (1024, 2048)
    repeats = 2 if args.quick else 5
    k, radius = 19, 2.0
    labels, instances, ignored = cityscapes_like(h, w)

    ours = mask_to_edges(labels, k, radius=radius, ignore=ignored, instance_map=instances)
    plain = plain_edges(labels, k, radius, ignored, instances)
    if not np.array_equal(ours, plain):
        raise SystemExit("plain and mask_to_edges disagree")

    rows = []
    t_plain = median_time(lambda: plain_edges(labels, k, radius, ignored, instances), repeats)
    t_ours = median_time(
        lambda: mask_to_edges(labels, k, radius=radius, ignore=ignored, instance_map=instances),
        repeats,
    )
    rows.append(("plain (per class)", t_plain, 1.0))
    rows.append(("mask_to_edges", t_ours, t_plain / t_ours))
    rgb = encode_edge_png(ours)
    rows.append(("encode_edge_png", median_time(lambda: encode_edge_png(ours), repeats), None))
    rows.append(("decode_edge_png", median_time(lambda: decode_edge_png(rgb, k), repeats), None))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "e.png"

        def png_round_trip() -> None:
            write_edge_png(path, ours)
            read_edge_png(path, k)

        rows.append(("write+read PNG", median_time(png_round_trip, repeats), None))

    header = f"Edge GT on a {h}x{w} map, K={k}, radius {radius:g} (median of {repeats})"
    lines = [
        f"# {header}",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
        f"- device: CPU {platform.processor() or platform.machine()}, {platform.platform()}",
        f"- python {platform.python_version()}, numpy {np.__version__}",
        f"- CPUs: {os.cpu_count()}, load average at the end: "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "",
        "| step | time (ms) | speed-up vs plain |",
        "|---|---:|---:|",
    ]
    for name, t, ratio in rows:
        lines.append(f"| {name} | {t * 1e3:.1f} | {'' if ratio is None else f'{ratio:.1f}x'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"edges-cpu-{stamp}.md"
    out.write_text(text, encoding="utf-8")
    print(f"written {out}")


if __name__ == "__main__":
    main()
