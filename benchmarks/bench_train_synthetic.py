"""Training throughput of examples/train_dff.py on synthetic data, fusion backends side by side.

Usage:
    python benchmarks/bench_train_synthetic.py                       # CUDA: DFF-R50, 256x256, batch 16
    python benchmarks/bench_train_synthetic.py --device cpu          # CPU: the tiny backbone
    python benchmarks/bench_train_synthetic.py --backends auto,reference --epochs 3

Each backend is one run of ``examples/train_dff.py --dataset synthetic`` in its own process, with the
same settings, into its own folder under ``--work-dir`` (``--model-kw fusion_backend=...``; the
default peer is "reference", the authors' literal concatenation). Throughput is the ``images_per_s``
of the run's epoch records in ``metrics.jsonl`` (whole epochs, data loading included); the first
epoch is left out of the median (start-up, cudnn autotuning, Triton compilation). A failed run stops
the benchmark with its output and writes no record. A markdown record with device, versions,
settings and the command goes to benchmarks/results/train_synthetic_<device>.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def run_backend(backend: str, args: argparse.Namespace, work: Path) -> list[float]:
    """images/s of each epoch of one training run with fusion backend ``backend``."""
    out = work / backend
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "train_dff.py"),
        "--dataset", "synthetic",
        "--device", args.device,
        "--backbone", args.backbone,
        "--crop-size", str(args.crop_size),
        "--batch-size", str(args.batch_size),
        "--train-length", str(args.train_length),
        "--val-length", "16",
        "--epochs", str(args.epochs),
        "--val-every", str(args.epochs),
        "--workers", str(args.workers),
        "--amp", args.amp,
        "--model-kw", f'fusion_backend="{backend}"',
        "--output-dir", str(out),
        "--overwrite",
        "--no-progress",
        "--no-tensorboard",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=args.timeout)
    if res.returncode != 0:
        raise RuntimeError(f"training with fusion backend {backend!r} failed:\n{res.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    epochs = [float(r["images_per_s"]) for r in records if r.get("kind") == "epoch"]
    if len(epochs) != args.epochs:
        raise RuntimeError(f"backend {backend!r}: {len(epochs)} epoch records, expected {args.epochs}")
    return epochs


def render(rows: dict[str, list[float]], peer: str) -> str:
    """The table: per-epoch images/s, the median after the first epoch, the ratio to ``peer``."""
    medians = {b: statistics.median(v[1:] if len(v) > 1 else v) for b, v in rows.items()}
    lines = [
        f"| fusion backend | images/s per epoch | median after epoch 1 | x {peer} |",
        "|---|---|---|---|",
    ]
    for backend, values in rows.items():
        per_epoch = ", ".join(f"{v:.1f}" for v in values)
        ratio = medians[backend] / medians[peer] if peer in medians else float("nan")
        lines.append(f"| {backend} | {per_epoch} | {medians[backend]:.1f} | {ratio:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch
    from bench_fusion import device_slug, environment

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--backends", default="auto,reference", help="comma-separated fusion backends")
    p.add_argument("--backbone", default=None, help="default: resnet50 on CUDA, tiny on CPU")
    p.add_argument("--crop-size", type=int, default=None, help="default: 256 on CUDA, 64 on CPU")
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 on CUDA, 4 on CPU")
    p.add_argument("--train-length", type=int, default=None, help="default: 512 on CUDA, 32 on CPU")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="default: 8 on CUDA, 0 on CPU")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default=None, help="default: bf16 on CUDA")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per training run")
    p.add_argument("--work-dir", type=Path, default=None, help="run folders (default: a temporary one)")
    p.add_argument("--out", type=Path, default=None, help="markdown record path")
    p.add_argument("--note", default=None, help="a remark for the record (e.g. machine load)")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is warm-up)")
    gpu = args.device == "cuda"
    args.backbone = args.backbone or ("resnet50" if gpu else "tiny")
    args.crop_size = args.crop_size or (256 if gpu else 64)
    args.batch_size = args.batch_size or (16 if gpu else 4)
    args.train_length = args.train_length or (512 if gpu else 32)
    args.workers = args.workers if args.workers is not None else (8 if gpu else 0)
    args.amp = args.amp or ("bf16" if gpu else "off")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if len(set(backends)) != len(backends) or not backends:
        p.error(f"--backends must name distinct backends, got {args.backends!r}")

    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for backend in backends:
            rows[backend] = run_backend(backend, args, work)
            print(f"  {backend}: " + ", ".join(f"{v:.1f}" for v in rows[backend]) + " images/s", flush=True)
    device = torch.device(args.device)
    env = environment(device)
    command = " ".join(argv if argv is not None else sys.argv[1:])
    header = "\n".join(f"- {key}: {value}" for key, value in env.items())
    text = (
        f"# Synthetic training throughput ({device.type})\n\n{header}\n"
        f"- setting: DFF-{args.backbone}, crop {args.crop_size}, batch {args.batch_size}, "
        f"{args.train_length} images per epoch, {args.epochs} epochs, amp {args.amp}, "
        f"{args.workers} data-loader workers; images/s of whole epochs from metrics.jsonl\n"
        + (f"- note: {args.note}\n" if args.note else "")
        + f"- command: `python benchmarks/bench_train_synthetic.py {command}`\n\n"
        + render(rows, backends[-1])
        + "\n"
    )
    print(text)
    out = args.out or RESULTS / f"train_synthetic_{device_slug(device)}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    from dynfuse.atomic import atomic_write_text

    atomic_write_text(out, text)
    print(f"recorded in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
