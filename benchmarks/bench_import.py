"""What ``import dynfuse`` costs beyond ``import torch``, measured in fresh interpreters.

Usage:
    python benchmarks/bench_import.py                  # this checkout; record in results/
    python benchmarks/bench_import.py --ref 5070bb1    # also a git revision of this repository

Each run is a new ``python -c`` process (so nothing is cached in ``sys.modules``) with
OMP_NUM_THREADS=MKL_NUM_THREADS=1 and TRITON_INTERPRET unset; it times ``import torch`` and then
``import dynfuse`` with ``time.perf_counter`` and lists which heavy modules (Triton, torch._inductor,
torch._dynamo, ...) the dynfuse import pulled in. The record gives the median and the min-max over
the runs. The first run of each checkout is an untimed warm-up (it fills the OS file cache and
writes __pycache__), so the numbers are warm-cache imports, what a user sees from the second start.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEAVY = (
    "triton",
    "torch._inductor",
    "torch._dynamo",
    "torchvision",
    "timm",
    "scipy",
    "PIL",
    "matplotlib",
    "onnx",
    "onnxruntime",
)

PROBE = f"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
before = set(sys.modules)
import dynfuse
t2 = time.perf_counter()
heavy = [m for m in {HEAVY!r} if m in sys.modules and m not in before]
print(json.dumps({{"torch": t1 - t0, "dynfuse": t2 - t1, "heavy": heavy, "file": dynfuse.__file__}}))
"""


def probe(checkout: Path) -> dict:
    """One fresh interpreter importing torch, then dynfuse from ``checkout``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(checkout))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(result["file"]).resolve().is_relative_to(checkout.resolve()):
        raise RuntimeError(f"imported {result['file']}, not the checkout {checkout}")
    return result


def measure(checkout: Path, runs: int) -> dict:
    probe(checkout)  # warm-up: file cache and __pycache__
    samples = [probe(checkout) for _ in range(runs)]
    torch_s = [s["torch"] for s in samples]
    dyn_s = [s["dynfuse"] for s in samples]
    return {
        "torch": (statistics.median(torch_s), min(torch_s), max(torch_s)),
        "dynfuse": (statistics.median(dyn_s), min(dyn_s), max(dyn_s)),
        "heavy": sorted({m for s in samples for m in s["heavy"]}),
    }


def export_revision(rev: str, into: Path) -> Path:
    """The tree of git revision ``rev`` of this repository, extracted under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed fresh interpreters per checkout")
    parser.add_argument(
        "--ref", action="append", default=[], help="also measure this git revision (repeatable)"
    )
    parser.add_argument("--note", default="", help="a line about the machine's load, for the record")
    parser.add_argument("--out", type=Path, default=RESULTS / "import_cpu.md")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkouts = [("this checkout", ROOT)]
        for rev in args.ref:
            sha = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            target = Path(tmp) / sha
            target.mkdir()
            checkouts.append((f"revision {sha}", export_revision(rev, target)))
        for name, path in checkouts:
            m = measure(path, args.runs)
            rows.append((name, m))
            print(
                f"{name}: import torch {m['torch'][0]:.3f} s, import dynfuse beyond torch "
                f"{m['dynfuse'][0]:.3f} s (min {m['dynfuse'][1]:.3f}, max {m['dynfuse'][2]:.3f}); "
                f"heavy modules: {', '.join(m['heavy']) or 'none'}"
            )

    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    import torch  # only for its version in the record

    lines = [
        "# Import cost of dynfuse (CPU)",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores; OMP_NUM_THREADS=MKL_NUM_THREADS=1"
        + (f"; {args.note}" if args.note else ""),
        f"- torch: {torch.__version__}; python: {platform.python_version()}",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; checkout HEAD {head}",
        f"- {args.runs} fresh interpreters per row after one warm-up; median (min-max) seconds",
        "- command: `python benchmarks/bench_import.py" + "".join(f" --ref {r}" for r in args.ref) + "`",
        "",
        "| code | import torch s | import dynfuse beyond torch s | heavy modules pulled in by dynfuse |",
        "|---|---|---|---|",
    ]
    for name, m in rows:
        t, d = m["torch"], m["dynfuse"]
        lines.append(
            f"| {name} | {t[0]:.3f} ({t[1]:.3f}-{t[2]:.3f}) | {d[0]:.3f} ({d[1]:.3f}-{d[2]:.3f}) "
            f"| {', '.join(m['heavy']) or 'none'} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
