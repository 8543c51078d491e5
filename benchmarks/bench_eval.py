"""Speed of dynfuse.eval per image-class at 512x1024 (half-resolution Cityscapes), vs pyedgeeval.

Realistic predictions (dynfuse.eval.synthetic: soft ridges on true and displaced boundaries plus
a low haze, so the maps are dense at low thresholds) and radius-2 ground truth. Times the full
per-image-class work over 99 thresholds (binarise, thin, match, count) for the SEAL settings,
checks that repeated runs give identical counts, times pyedgeeval on the same arrays where it is
installed, and projects Cityscapes val (500 images x 19 classes) on 16 cores.

    .venv/bin/python benchmarks/bench_eval.py [--classes 4] [--peer-classes 1]

Writes benchmarks/results/eval_cpu.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from compare_pyedgeeval import load_pyedgeeval, peer_counts  # noqa: E402

from dynfuse.eval import image_class_counts  # noqa: E402
from dynfuse.eval.synthetic import synthetic_sample  # noqa: E402
from dynfuse.eval.thin import thin  # noqa: E402

SETTINGS = (
    # name, max_dist, thin prediction, thin GT
    ("cityscapes-thin (0.0035)", 0.0035, True, True),
    ("cityscapes-raw (0.0035)", 0.0035, False, False),
    ("thin, 0.02 (SBD tolerance)", 0.02, True, True),
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=(512, 1024))
    ap.add_argument("--classes", type=int, default=4, help="image-classes timed per setting")
    ap.add_argument("--peer-classes", type=int, default=1, help="image-classes for pyedgeeval")
    ap.add_argument(
        "--peer-settings",
        type=int,
        nargs="*",
        default=[0],
        help="indices into SETTINGS timed with pyedgeeval (0 thin, 1 raw, 2 0.02)",
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results", "eval_cpu.md"))
    args = ap.parse_args(argv)
    thr = np.linspace(0.01, 0.99, 99)
    prob, gt, _ = synthetic_sample(tuple(args.size), args.classes, seed=0, num_cells=40)
    dens = [(prob[k] >= t).mean() for k in range(args.classes) for t in (0.01, 0.1, 0.5)]
    print(f"prediction density at t=0.01/0.1/0.5 (class 1): {dens[0]:.2f}/{dens[1]:.3f}/{dens[2]:.3f}")

    rows = []
    for name, md, do_thin, thin_gt in SETTINGS:
        times, same = [], True
        for k in range(args.classes):
            g = thin(gt[k]) if thin_gt else gt[k]
            t0 = time.perf_counter()
            c1 = image_class_counts(prob[k], g, thr, max_dist=md, thin=do_thin)
            times.append(time.perf_counter() - t0)
            c2 = image_class_counts(prob[k], g, thr, max_dist=md, thin=do_thin)
            same &= bool(np.array_equal(c1, c2))
        s = float(np.mean(times))
        proj_h = 500 * 19 * s / 16 / 3600
        rows.append([name, s, proj_h, same])
        print(
            f"{name}: {s:.2f} s/image-class, Cityscapes val on 16 cores ~{proj_h:.2f} h, "
            f"deterministic={same}",
            flush=True,
        )

    pe = load_pyedgeeval()
    peer_rows = []
    if pe is not None:
        for name, md, do_thin, thin_gt in [SETTINGS[i] for i in args.peer_settings]:
            for k in range(args.peer_classes):
                g = thin(gt[k]) if thin_gt else gt[k]
                t0 = time.perf_counter()
                pc = peer_counts(pe, prob[k], g, thr, md, do_thin)
                tp = time.perf_counter() - t0
                t0 = time.perf_counter()
                oc = image_class_counts(prob[k], g, thr, max_dist=md, thin=do_thin)
                to = time.perf_counter() - t0
                dm = int((oc[:, 0] - pc[:, 0]).sum())
                peer_rows.append([name, k + 1, tp, to, tp / to, dm, int(oc[:, 0].sum())])
                print(
                    f"pyedgeeval {name} class {k + 1}: {tp:.1f} s vs ours {to:.2f} s -> {tp / to:.0f}x",
                    flush=True,
                )

    import scipy

    lines = [
        "# dynfuse.eval speed (CPU)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- device: {cpu_name()}, {os.cpu_count()} logical CPUs (one process per image-class)",
        f"- versions: python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}",
        f"- data: {args.size[0]}x{args.size[1]} synthetic image (dynfuse.eval.synthetic, seed 0), "
        f"99 thresholds; prediction density at t = 0.01 / 0.1 / 0.5: "
        f"{dens[0]:.2f} / {dens[1]:.3f} / {dens[2]:.3f}",
        "- command: `.venv/bin/python benchmarks/bench_eval.py`",
        "",
        "| setting | s / image-class (mean of "
        f"{args.classes}) | projected Cityscapes val (500 x 19) on 16 cores | identical on rerun |",
        "|---|---|---|---|",
        *[f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} h | {r[3]} |" for r in rows],
        "",
    ]
    if peer_rows:
        lines += [
            "## vs pyedgeeval (same arrays, same machine, same run)",
            "",
            "| setting | class | pyedgeeval s | ours s | speed-up | matched px ours - peer "
            "(sum over thresholds) | matched px ours |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.0f}x | {r[5]} | {r[6]} |"
                for r in peer_rows
            ],
            "",
        ]
    else:
        lines += ["pyedgeeval not installed: no peer timing.", ""]
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
