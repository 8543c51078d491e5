"""Training-step speed and peak memory of DFF models: the authors' way vs dynfuse's fast options.

Usage:
    python benchmarks/bench_model.py            # CUDA if available (full GPU preset), else CPU preset
    python benchmarks/bench_model.py --quick    # GPU: DFF-R50/R101 at 640x640, batch 8 (~2 min)
    python benchmarks/bench_model.py --device cpu

One training step = forward, the DFF loss (reweighted BCE on side5 and fuse, dynfuse.losses), backward
and an SGD step (momentum 0.9, weight decay 1e-4, head at 10x lr) on random images and sparse random
edge targets with K = 19 classes (Cityscapes). Configurations:

    authors            "reference" fusion (the literal shared concatenation), fp32, no checkpointing
    auto-fusion        fusion backend "auto" (Triton on CUDA when importable, else the lean torch path)
    auto+bf16          ... plus bf16 autocast
    fast               ... plus channels_last
    fast+ckpt-backbone ... plus activation checkpointing of the backbone stages
    fast+ckpt-learner  ... plus activation checkpointing of the location-adaptive learner
    fast+ckpt          ... plus both
    fast+top           fast, with the learner at the res5 resolution (learner_resolution="top"; a
                       different model from the paper's, listed for its memory)
    fast+fused         fast, with the fused location-adaptive branch (fused_learner=True; the paper's
                       model) on its plain-PyTorch schedule
    fast+fused-triton  ... on its Triton kernel (fusion backend "triton"; CUDA only)

Every configuration runs in its own child process, so one's memory never pollutes another's: on CUDA
the peak is ``torch.cuda.max_memory_allocated`` over the steps (parameters, gradients, optimiser
state and activations); on CPU it is the child's peak resident set (``ru_maxrss``) minus its resident
set just before the first step (process, model and data), i.e. what the training steps added.
Time is the median over the timed steps after warm-up steps (CUDA synchronised). Columns "speed-up"
and "memory" are ratios against the "authors" configuration of the same model, crop and batch.
A markdown record (device, versions, date, command) goes to benchmarks/results/model_<device>.md and
the raw numbers to a .csv next to it.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

NUM_CLASSES = 19

# The fast configurations: Triton fusion (where importable), bf16 autocast, channels_last.
_FAST = dict(
    fusion="auto",
    amp=True,
    channels_last=True,
    ckpt_backbone=False,
    ckpt_learner=False,
    resolution="full",
    fused_learner=False,
)
CONFIGS: dict[str, dict] = {
    "authors": {**_FAST, "fusion": "reference", "amp": False, "channels_last": False},
    "auto-fusion": {**_FAST, "amp": False, "channels_last": False},
    "auto+bf16": {**_FAST, "channels_last": False},
    "fast": _FAST,
    "fast+ckpt-backbone": {**_FAST, "ckpt_backbone": True},
    "fast+ckpt-learner": {**_FAST, "ckpt_learner": True},
    "fast+ckpt": {**_FAST, "ckpt_backbone": True, "ckpt_learner": True},
    "fast+top": {**_FAST, "resolution": "top"},
    # The paper's model with the fused location-adaptive branch (issue 12): its plain-PyTorch
    # passes, and its Triton kernel (CUDA only).
    "fast+fused": {**_FAST, "fused_learner": True},
    "fast+fused-triton": {**_FAST, "fusion": "triton", "fused_learner": True},
}
CUDA_ONLY = {"fast+fused-triton"}
MAIN = ["authors", "fast", "fast+ckpt"]
ALL = [name for name in CONFIGS if name not in CUDA_ONLY]

# (backbone, crop, batch, configs)
PRESETS: dict[str, list[tuple[str, int, int, list[str]]]] = {
    "gpu-quick": [  # the issue's targets: R50 speed/memory vs authors, R101 fits in 40 GB
        ("resnet50", 640, 8, [*MAIN, "fast+fused", "fast+fused-triton"]),
        ("resnet101", 640, 8, ["fast", "fast+ckpt"]),
    ],
    "gpu": [
        ("resnet50", 352, 16, MAIN),
        ("resnet50", 512, 8, MAIN),
        ("resnet50", 640, 8, [*ALL, "fast+fused-triton"]),
        ("resnet101", 352, 16, MAIN),
        ("resnet101", 512, 8, MAIN),
        ("resnet101", 640, 8, MAIN),
    ],
    "cpu": [
        ("tiny", 128, 4, ALL),
        ("resnet50", 96, 2, MAIN),
    ],
    "cpu-quick": [
        ("tiny", 96, 2, MAIN),
    ],
}


# ------------------------------------------------------------------------------------------------
# Child: one configuration, printed as one JSON line
# ------------------------------------------------------------------------------------------------
def _rss_gb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def run_child(spec: dict) -> dict:
    import torch

    from dynfuse.losses import dff_loss
    from dynfuse.models import create_model
    from dynfuse.ops import resolve_backend

    cfg = CONFIGS[spec["config"]]
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    model = create_model(
        "dff",
        backbone=spec["backbone"],
        num_classes=NUM_CLASSES,
        fusion_backend=cfg["fusion"],
        checkpoint_backbone=cfg["ckpt_backbone"],
        checkpoint_learner=cfg["ckpt_learner"],
        learner_resolution=cfg["resolution"],
        channels_last=cfg["channels_last"],
        fused_learner=cfg["fused_learner"],
    ).to(device)  # .to keeps the channels-last strides
    model.train()
    opt = torch.optim.SGD(model.param_groups(0.01), momentum=0.9, weight_decay=1e-4)
    b, c = spec["batch"], spec["crop"]
    g = torch.Generator(device="cpu").manual_seed(1)
    images = torch.randn(b, 3, c, c, generator=g).to(device)
    targets = (torch.rand(b, NUM_CLASSES, c, c, generator=g) < 0.03).to(device)
    valid = torch.ones(b, c, c, dtype=torch.bool, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["amp"])

    def step() -> float:
        with amp:
            out = model(images)
        loss = dff_loss(out, targets, valid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    base_rss = _rss_gb()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    try:
        for i in range(spec["warmup"] + spec["steps"]):
            t0 = time.perf_counter()
            loss = step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        return {"status": "OOM"}
    if not (loss == loss):  # NaN guard: a broken config must not look fast
        return {"status": "NaN loss"}
    med = statistics.median(times)
    result = {
        "status": "ok",
        "step_s": med,
        "images_per_s": b / med,
        "fusion_backend": resolve_backend(cfg["fusion"], device),
    }
    if device.type == "cuda":
        result["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        result["rss_peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        result["base_gb"] = base_rss
        # What the training steps added on top of the process, model and data.
        result["peak_gb"] = result["rss_peak_gb"] - base_rss
    return result


# ------------------------------------------------------------------------------------------------
# Parent: presets, table, record
# ------------------------------------------------------------------------------------------------
def environment(device: str) -> dict[str, str]:
    import torch

    env = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu threads": str(torch.get_num_threads()),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    if device == "cuda":
        env["device"] = torch.cuda.get_device_name(0)
        env["cuda"] = str(torch.version.cuda)
        env["cudnn"] = str(torch.backends.cudnn.version())
        env["gpu memory"] = f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB"
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    try:
        env["commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        env["commit"] = "unknown"
    return env


def run_one(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout ({timeout:.0f} s)"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "OutOfMemory" in proc.stderr or "out of memory" in proc.stderr:
            return {"status": "OOM"}
        return {"status": f"error: {tail[:120]}"}
    return json.loads(lines[-1])


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--quick", action="store_true", help="the short preset of the device")
    p.add_argument("--preset", choices=sorted(PRESETS), help="override the preset")
    p.add_argument("--configs", help="comma-separated subset of configurations")
    p.add_argument("--steps", type=int, help="timed steps per run (default 5; 3 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 2 GPU, 1 CPU)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per child (0: torch default)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    p.add_argument("--out", type=Path, help="markdown record path (default results/model_<dev>.md)")
    p.add_argument("--note", help="a remark for the record (e.g. machine load)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print(json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    preset = args.preset or (("gpu" if device == "cuda" else "cpu") + ("-quick" if args.quick else ""))
    steps = args.steps or (3 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (2 if device == "cuda" else 1)
    only = set(args.configs.split(",")) if args.configs else None
    if only and not only <= set(CONFIGS):
        p.error(f"unknown configs {sorted(only - set(CONFIGS))}; known: {list(CONFIGS)}")
    if device != "cuda" and only and only & CUDA_ONLY:
        p.error(f"configs {sorted(only & CUDA_ONLY)} run the Triton kernel and need --device cuda")

    env = environment(device)
    print(
        f"# bench_model on {env['device']} (torch {env['torch']}, triton {env['triton']}), "
        f"preset {preset}, {warmup} warm-up + {steps} timed steps",
        flush=True,
    )
    rows = []
    for backbone, crop, batch, configs in PRESETS[preset]:
        authors = None
        for name in configs:
            if only and name not in only:
                continue
            spec = {
                "backbone": backbone,
                "crop": crop,
                "batch": batch,
                "config": name,
                "device": device,
                "steps": steps,
                "warmup": warmup,
                "threads": args.threads,
            }
            t0 = time.perf_counter()
            res = run_one(spec, args.timeout)
            row = {"model": f"DFF-{backbone}", "crop": crop, "batch": batch, "config": name, **res}
            if name == "authors":
                authors = res if res.get("status") == "ok" else None
            ok = res.get("status") == "ok"
            row["speedup"] = res["images_per_s"] / authors["images_per_s"] if ok and authors else None
            row["mem_ratio"] = res["peak_gb"] / authors["peak_gb"] if ok and authors else None
            rows.append(row)
            if ok:
                print(
                    f"{row['model']:>15} {crop:4d}x{crop:<4d} b{batch:<3d} {name:>19}: "
                    f"{res['step_s'] * 1e3:9.1f} ms/step {res['images_per_s']:8.2f} img/s "
                    f"peak {res['peak_gb']:7.2f} GB  x{fmt(row['speedup'], '.2f')} speed "
                    f"x{fmt(row['mem_ratio'], '.2f')} mem  [{res['fusion_backend']}] "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
            else:
                print(
                    f"{row['model']:>15} {crop:4d}x{crop:<4d} b{batch:<3d} {name:>19}: {res['status']}",
                    flush=True,
                )

    checks = headline(rows) if device == "cuda" else []
    for line in checks:
        print(line)
    write_record(rows, env, device, preset, steps, warmup, args, checks)
    return 0


def headline(rows: list[dict]) -> list[str]:
    """The issue's targets at 640x640, batch 8: R50 fast >= 2.5x authors' images/s at <= 0.5x its
    peak memory; R101 fast fits in 40 GB."""
    out = []
    for r in rows:
        if r.get("status") != "ok" or r["crop"] != 640 or r["batch"] != 8 or r["config"] == "authors":
            continue
        if r["model"] == "DFF-resnet50" and r["speedup"] is not None:
            ok = r["speedup"] >= 2.5 and r["mem_ratio"] <= 0.5
            out.append(
                f"target R50 640 b8 {r['config']}: x{r['speedup']:.2f} images/s (>= 2.5), "
                f"x{r['mem_ratio']:.2f} peak memory (<= 0.5): {'PASS' if ok else 'MISS'}"
            )
        if r["model"] == "DFF-resnet101":
            ok = r["peak_gb"] <= 40.0
            out.append(
                f"target R101 640 b8 {r['config']}: peak {r['peak_gb']:.1f} GB (<= 40): "
                f"{'PASS' if ok else 'MISS'}"
            )
    return out


def write_record(rows, env, device, preset, steps, warmup, args, checks=()) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "cpu" if device == "cpu" else re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")
    out = args.out or RESULTS / f"model_{tag}{'_quick' if 'quick' in preset else ''}.md"
    mem_col = (
        "peak GB (GPU allocated)"
        if device == "cuda"
        else "step memory GB = peak RSS - RSS before 1st step (peak RSS)"
    )
    lines = [
        f"# DFF training step: authors-like vs fast ({env['device']})",
        "",
        *(f"- {k}: {v}" for k, v in env.items()),
        f"- preset: {preset}; {warmup} warm-up + {steps} timed steps (median); K = {NUM_CLASSES}; "
        f"intra-op threads per run: {args.threads or 'torch default'}",
        *([f"- note: {args.note}"] if args.note else []),
        f"- command: `python benchmarks/bench_model.py {shlex.join(sys.argv[1:])}`",
        "",
        f"| model | crop | batch | config | fusion | ms/step | images/s | {mem_col} | speed-up | "
        "memory vs authors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['model']} | {r['crop']} | {r['batch']} | {r['config']} | - | "
                f"{r['status']} | - | - | - | - |"
            )
            continue
        mem = f"{r['peak_gb']:.3f}"
        if "rss_peak_gb" in r:
            mem += f" ({r['rss_peak_gb']:.2f})"
        lines.append(
            f"| {r['model']} | {r['crop']} | {r['batch']} | {r['config']} | {r['fusion_backend']} | "
            f"{r['step_s'] * 1e3:.1f} | {r['images_per_s']:.2f} | {mem} | "
            f"{fmt(r['speedup'], '.2f')} | {fmt(r['mem_ratio'], '.2f')} |"
        )
    if checks:
        lines += ["", "Targets (issue 4):", "", *(f"- {c}" for c in checks)]
    lines += ["", "Configurations: see the docstring of benchmarks/bench_model.py.", ""]
    out.write_text("\n".join(lines))
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        keys = [
            "model",
            "crop",
            "batch",
            "config",
            "status",
            "fusion_backend",
            "step_s",
            "images_per_s",
            "peak_gb",
            "rss_peak_gb",
            "base_gb",
            "speedup",
            "mem_ratio",
        ]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
