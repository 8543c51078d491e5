"""The paper's Table 1 ablation on synthetic scenes where the claim is testable, rerunnable in minutes.

Usage:
    python benchmarks/ablation_table1.py                  # default: 6 rows x 3 seeds, tiny backbone, CPU
    python benchmarks/ablation_table1.py --quick          # smoke test budget (seconds)
    python benchmarks/ablation_table1.py --device cuda --backbone resnet50 --crop-size 256 --steps 2000
    python benchmarks/ablation_table1.py --resume         # keep finished (row, seed) runs of the same config

Every row of Table 1 (DFF, Hu et al. IJCAI 2019) is built with :func:`dynfuse.create_table1_model`:

    fixed (CASENet)          "casenet": no normalizer, fixed per-class fusion
    fixed + normalizer       "+normalizer"
    location-invariant       "+location-invariant": per-image weights
    location-adaptive        "+location-adaptive": per-location weights (DFF)
    adaptive + softmax       "+location-adaptive+softmax"
    adaptive, top-res        "+location-adaptive" with learner_resolution="top" (an extra row, not the
                             paper's: the learner at the top level's resolution, weights upsampled)

and trained with the same budget on :class:`dynfuse.data.synthetic_ablation.SyntheticAblation` scenes
(textured vs clean regions, thin bars; see that module and docs/ablation.md): the authors' recipe
(SGD momentum 0.9, weight decay 1e-4, head at 10x the backbone rate, poly 0.9 per step, the DFF loss
on side5 and fuse), full images, no augmentation. For a given seed every row sees the same training
batches in the same order and the same backbone initialisation (the backbone is built first after
seeding), so rows are compared pairwise. The held-out test scenes are scored with ``dynfuse.eval`` in
the DFF paper's protocol: max_dist 0.02 of the diagonal, thinned predictions and thinned GT, 99
thresholds (named "dff-cityscapes-thin" in later versions of the library).

Writes to ``--out-dir`` (default benchmarks/results):
    ablation_table1_<device>[_<tag>].json   every finished (row, seed) run, written after each run
    ablation_table1_<device>[_<tag>].md     the record: mean +/- std over seeds, parameters, time, ...
    ablation_table1_<device>[_<tag>].png    bars with error bars + the adaptive row's weight maps
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from dynfuse.atomic import atomic_write, atomic_write_json, atomic_write_text  # noqa: E402
from dynfuse.data.synthetic_ablation import SyntheticAblation  # noqa: E402
from dynfuse.eval import evaluate_edges  # noqa: E402
from dynfuse.eval.settings import EvalSettings  # noqa: E402
from dynfuse.losses import dff_loss  # noqa: E402
from dynfuse.models import create_table1_model  # noqa: E402

FORMAT = "dynfuse-ablation-table1/1"

# (label, TABLE1 key, extra create_model options, the paper's Cityscapes MF-ODS % or None)
ROWS: list[tuple[str, str, dict[str, Any], float | None]] = [
    ("fixed (CASENet)", "casenet", {}, 78.4),
    ("fixed + normalizer", "+normalizer", {}, 78.7),
    ("location-invariant", "+location-invariant", {}, 79.1),
    ("location-adaptive", "+location-adaptive", {}, 80.4),
    ("adaptive + softmax", "+location-adaptive+softmax", {}, 80.1),
    ("adaptive, top-res learner", "+location-adaptive", {"learner_resolution": "top"}, None),
]
ROW_IDS = ["fixed", "normalizer", "invariant", "adaptive", "softmax", "top"]
ADAPTIVE = "adaptive"  # the row whose weight maps the figure shows

QUICK = {
    "seeds": 1,
    "steps": 3,
    "batch_size": 2,
    "train_scenes": 4,
    "test_scenes": 2,
    "crop_size": 32,
    "thresholds": 9,
}
DEFAULTS = {
    "seeds": 3,
    "steps": 500,
    "batch_size": 8,
    "train_scenes": 1024,
    "test_scenes": 24,
    "crop_size": 64,
    "thresholds": 99,
}
SIDE_NAMES = ["Side5", "Side1", "Side2", "Side3"]  # the fusion's input order (dynamic_fuse)


# ----------------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help=f"smoke-test budget {QUICK}")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds per row (default {DEFAULTS['seeds']})")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="SGD steps per run")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--train-scenes", type=int, default=None, help="size of the fixed training set")
    p.add_argument("--test-scenes", type=int, default=None, help="held-out scenes scored per run")
    p.add_argument("--crop-size", type=int, default=None, help="scene side in pixels (H = W)")
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--thresholds", type=int, default=None, help="evaluation thresholds (paper: 99)")
    p.add_argument("--lr", type=float, default=0.05, help="backbone learning rate (head: 10x)")
    p.add_argument("--backbone", default="tiny", help="tiny, resnet50, resnet101 or timm:<name>")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--rows", default=",".join(ROW_IDS), help=f"comma-separated subset of {ROW_IDS}")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the scene family (train and test)")
    p.add_argument(
        "--no-texture",
        dest="texture",
        action="store_false",
        help="the control family: the same objects and thin bars without the textured region",
    )
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--tag", default="", help="suffix of the output names")
    p.add_argument("--note", default="", help="free text for the record (e.g. 'box shared')")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs of an existing JSON with the same settings",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite the record and figure from the finished runs in the JSON "
        "of the same settings (e.g. of a run that was cut short)",
    )
    a = p.parse_args(argv)
    preset = QUICK if a.quick else DEFAULTS
    for key, value in preset.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    positive = (
        "seeds",
        "steps",
        "batch_size",
        "train_scenes",
        "test_scenes",
        "threads",
        "thresholds",
        "num_classes",
    )
    for key in positive:
        if getattr(a, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(a, key)}")
    if a.first_seed < 0 or a.data_seed < 0:
        p.error("--first-seed and --data-seed must be >= 0")
    if a.batch_size < 2:
        p.error(
            f"--batch-size must be >= 2 (the location-invariant learner's BatchNorm1d), got {a.batch_size}"
        )
    if a.crop_size < 16:
        p.error(f"--crop-size must be >= 16 pixels, got {a.crop_size}")
    if not (a.lr > 0 and math.isfinite(a.lr)):
        p.error(f"--lr must be a positive number, got {a.lr}")
    if a.tag and not all(c.isalnum() or c in "-_" for c in a.tag):
        p.error(f"--tag may hold letters, digits, '-' and '_' only, got {a.tag!r}")
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROW_IDS]
    if unknown or not rows:
        p.error(f"--rows: unknown row(s) {unknown or rows}; choose from {ROW_IDS}")
    a.rows = [r for r in ROW_IDS if r in rows]
    try:
        device = torch.device(a.device)
    except RuntimeError as e:
        p.error(f"--device {a.device!r}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {a.device!r}: CUDA is not available in this torch build / on this machine")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda[:i], got {a.device!r}")
    a.device = str(device)
    return a


def config_of(a: argparse.Namespace) -> dict[str, Any]:
    """Everything that changes a run's numbers (a resumed JSON must match it)."""
    return {
        "format": FORMAT,
        "steps": a.steps,
        "batch_size": a.batch_size,
        "train_scenes": a.train_scenes,
        "test_scenes": a.test_scenes,
        "crop_size": a.crop_size,
        "num_classes": a.num_classes,
        "thresholds": a.thresholds,
        "lr": a.lr,
        "backbone": a.backbone,
        "device": a.device,
        "data_seed": a.data_seed,
        "optimizer": "SGD momentum 0.9, wd 1e-4, head 10x, poly 0.9",
        "eval": settings_of(a).to_dict(),
        # only present for the control family, so records of the textured default stay comparable
        **({} if a.texture else {"scenes": "control: SyntheticAblation(texture=False)"}),
    }


def settings_of(a: argparse.Namespace) -> EvalSettings:
    # The DFF paper's protocol (maxDist 0.02, thinned prediction and GT); "dff-cityscapes-thin" later.
    return EvalSettings(max_dist=0.02, thin=True, thin_gt=True, thresholds=a.thresholds)


# ----------------------------------------------------------------------------------------------------
# Data, training, scoring


def make_data(a: argparse.Namespace, *, train: bool = True) -> dict[str, Any]:
    """Pre-rendered tensors: train (N, 3, H, W) normalised images + (N, K, H, W) edges; the test scenes."""
    kw = {"num_classes": a.num_classes, "size": a.crop_size, "seed": a.data_seed, "texture": a.texture}
    test = SyntheticAblation(length=a.test_scenes, split="test", **kw)
    test_items = [test[i] for i in range(len(test))]
    data: dict[str, Any] = {
        "test_images": torch.stack([it["image"] for it in test_items]),
        "test_scenes": [test.scene(i) for i in range(len(test))],
    }
    if train:
        train_ds = SyntheticAblation(length=a.train_scenes, split="train", **kw)
        items = [train_ds[i] for i in range(len(train_ds))]
        data["train_images"] = torch.stack([it["image"] for it in items])
        data["train_edges"] = torch.stack([it["edges"] for it in items])
    return data


def build(row: str, a: argparse.Namespace) -> torch.nn.Module:
    _, key, extra, _ = ROWS[ROW_IDS.index(row)]
    return create_table1_model(key, backbone=a.backbone, num_classes=a.num_classes, **extra)


def train_run(
    row: str, seed: int, data: dict[str, Any], a: argparse.Namespace
) -> tuple[torch.nn.Module, dict]:
    """Train one row with one seed; returns the model (eval mode) and timing / loss facts."""
    torch.manual_seed(seed)
    model = build(row, a).to(a.device)
    groups = model.param_groups(a.lr, 10.0)
    opt = torch.optim.SGD(groups, lr=a.lr, momentum=0.9, weight_decay=1e-4)
    base_lrs = [g["lr"] for g in opt.param_groups]
    # The batch order depends on the seed only, so every row of a seed sees the same batches.
    gen = torch.Generator().manual_seed(10_000 + seed)
    n = data["train_images"].shape[0]
    epochs = math.ceil(a.steps * a.batch_size / n)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])
    model.train()
    losses = []
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for step in range(a.steps):
        factor = (1 - step / a.steps) ** 0.9
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr * factor
        idx = order[step * a.batch_size : (step + 1) * a.batch_size]
        x = data["train_images"][idx].to(a.device, non_blocking=True)
        y = data["train_edges"][idx].to(a.device, non_blocking=True)
        loss = dff_loss(model(x), y)
        if not torch.isfinite(loss):
            raise RuntimeError(
                f"row {row!r} seed {seed}: loss became {loss.item()} at step {step}; lower --lr"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    sync()
    train_s = time.perf_counter() - t0
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return model, {"train_s": train_s, "final_loss": float(np.mean(tail))}


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, a: argparse.Namespace):
    """Fused edge probabilities (N, K, H, W) float32 numpy and the effective fusion weights (cpu)."""
    probs, weights = [], []
    for i in range(0, images.shape[0], a.batch_size):
        out = model(images[i : i + a.batch_size].to(a.device))
        probs.append(torch.sigmoid(out.fuse).float().cpu())
        w = out.weights.detach().float()  # the fixed learners' weights are parameters
        if getattr(model.head, "activation", None) == "softmax":
            w = torch.softmax(w, dim=2)  # DFFOutput holds them before the activation
        weights.append(w.cpu())
    fixed = weights[0].dim() == 2  # (K, S+1) for the fixed learners: the same for every batch
    return torch.cat(probs).numpy(), (weights[0] if fixed else torch.cat(weights))


def weight_stats(weights: torch.Tensor, scenes: list) -> dict[str, Any]:
    """Diagnostics of the learned weights: the mean Side1-3 weight (over classes and sides) in places.

    Adaptive (N, K, S+1, H, W): over pure texture (no class, no GT edge), clean-region GT edges and
    thin-bar pixels. Invariant (N, K, S+1): its correlation with the scenes' textured fraction.
    """
    if weights.dim() == 5:
        low = weights[:, :, 1:].mean(dim=(1, 2)).numpy()  # (N, H, W)
        side5 = weights[:, :, 0].mean(dim=1).numpy()
        places: dict[str, list] = {"texture": [], "clean_edges": [], "thin": []}
        for i, s in enumerate(scenes):
            edge = s.edges.any(0)
            masks = {
                "texture": s.texture & (s.labels < 0) & ~edge,
                "clean_edges": ~s.texture & edge,
                "thin": s.thin,
            }
            for name, m in masks.items():
                if m.any():
                    places[name].append((low[i][m].mean(), side5[i][m].mean()))
        out: dict[str, Any] = {"kind": "adaptive"}
        for name, vals in places.items():
            if vals:
                arr = np.array(vals)
                out[f"low_{name}"] = float(arr[:, 0].mean())
                out[f"side5_{name}"] = float(arr[:, 1].mean())
        return out
    if weights.dim() == 3:
        low = weights[:, :, 1:].mean(dim=(1, 2)).numpy()
        frac = np.array([s.fraction for s in scenes])
        corr = float(np.corrcoef(frac, low)[0, 1]) if low.std() > 0 and frac.std() > 0 else float("nan")
        return {
            "kind": "invariant",
            "low_mean": float(low.mean()),
            "low_std": float(low.std()),
            "corr_low_vs_texture_fraction": corr,
        }
    return {
        "kind": "fixed",
        "low_mean": float(weights[:, 1:].mean()),
        "side5_mean": float(weights[:, 0].mean()),
    }


def figure_scene(scenes: list) -> tuple[int, int]:
    """(test index, class) to show: the first mixed scene with a thin bar; the bar's class."""
    for i, s in enumerate(scenes):
        if 0.3 <= s.fraction <= 0.7 and (s.thin & (s.labels >= 0)).any():
            cls = np.bincount(s.labels[s.thin & (s.labels >= 0)]).argmax()
            return i, int(cls)
    s = scenes[0]
    present = s.labels[s.labels >= 0]
    return 0, int(np.bincount(present).argmax()) if present.size else 0


def score(
    model: torch.nn.Module, data: dict[str, Any], a: argparse.Namespace, *, figure: bool
) -> dict[str, Any]:
    t0 = time.perf_counter()
    probs, weights = predict(model, data["test_images"], a)
    scenes = data["test_scenes"]
    res = evaluate_edges(list(probs), [s.edges for s in scenes], settings=settings_of(a))
    out = {
        "mf_ods": res.mf_ods,
        "mf_ois": res.mf_ois,
        "ap": res.mean_ap,
        "ods_per_class": res.ods.tolist(),
        "weights": weight_stats(weights, scenes),
        "eval_s": time.perf_counter() - t0,
    }
    if figure and weights.dim() == 5:
        i, k = figure_scene(scenes)
        out["figure"] = {
            "scene": i,
            "class": k,
            # (S+1, H, W); float64 before rounding so the JSON holds short decimals
            "maps": np.round(weights[i, k].double().numpy(), 4).tolist(),
        }
    return out


# ----------------------------------------------------------------------------------------------------
# Results file, record and figure


def out_paths(a: argparse.Namespace) -> dict[str, Path]:
    dev = a.device.split(":")[0]
    stem = f"ablation_table1_{dev}" + (f"_{a.tag}" if a.tag else "")
    d = Path(a.out_dir)
    return {k: d / f"{stem}.{k}" for k in ("json", "md", "png")}


def load_runs(path: Path, config: dict[str, Any]) -> list[dict]:
    """Finished runs of an earlier invocation with the same config (or an error that says why not)."""
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(
            f"--resume: {path} is not valid JSON ({e}); delete it or run without --resume"
        ) from e
    if old.get("config") != config:
        diff = sorted(
            k
            for k in set(config) | set(old.get("config", {}))
            if config.get(k) != old.get("config", {}).get(k)
        )
        raise SystemExit(
            f"--resume: {path} was written with other settings (differ: {diff}); "
            "run without --resume to start over, or with --tag to keep both"
        )
    return list(old.get("runs", []))


def environment(a: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    dev = a.device
    if dev.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(dev))
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores visible)"
    return {
        "device": name,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python benchmarks/ablation_table1.py", *argv]),
    }


def summarise(runs: list[dict], rows: list[str]) -> dict[str, dict]:
    table = {}
    for row in rows:
        rs = sorted((r for r in runs if r["row"] == row), key=lambda r: r["seed"])
        if not rs:
            continue
        entry = {"n": len(rs), "seeds": [r["seed"] for r in rs], "params": rs[0]["params"]}
        for m in ("mf_ods", "mf_ois", "ap", "train_s", "eval_s", "final_loss"):
            v = np.array([r[m] for r in rs], dtype=np.float64)
            entry[m] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), v.tolist())
        table[row] = entry
    return table


def pm(mean_std: tuple, scale: float = 100.0, digits: int = 1) -> str:
    m, s = mean_std[0], mean_std[1]
    return f"{scale * m:.{digits}f}" + ("" if math.isnan(s) else f" ± {scale * s:.{digits}f}")


def paired(runs: list[dict], a_row: str, b_row: str, metric: str = "mf_ods") -> tuple | None:
    """Mean and std over shared seeds of (b - a), and how many seeds b beat a."""
    sa = {r["seed"]: r[metric] for r in runs if r["row"] == a_row}
    sb = {r["seed"]: r[metric] for r in runs if r["row"] == b_row}
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        return None
    d = np.array([sb[s] - sa[s] for s in seeds])
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else float("nan"), int((d > 0).sum()), len(d)


COMPARISONS = [  # (a, b, the paper's claim "b > a" or "b < a")
    ("fixed", "normalizer", ">"),
    ("normalizer", "invariant", ">"),
    ("invariant", "adaptive", ">"),
    ("adaptive", "softmax", "<"),
    ("fixed", "adaptive", ">"),
    ("adaptive", "top", "?"),
]


def write_record(
    path: Path,
    a: argparse.Namespace,
    env: dict,
    config: dict,
    runs: list[dict],
    expected: int,
    wall_s: float,
    png: Path,
    wall_label: str = "wall time of this invocation",
) -> str:
    table = summarise(runs, a.rows)
    done = len(runs)
    lines = [
        "# Table 1 ablation on synthetic scenes (dynfuse)",
        "",
        f"- status: {'complete' if done >= expected else f'PARTIAL: {done} of {expected} runs finished'}"
        f" ({done} runs: {len(a.rows)} rows x {a.seeds} seeds requested)",
        f"- device: {env['device']}; torch {env['torch']}, numpy {env['numpy']}, python {env['python']}",
        f"- threads: torch.set_num_threads({env['threads']}); platform {env['platform']}",
        f"- date: {env['date']} (start); {wall_label} {wall_s / 60:.1f} min",
        f"- command: `{env['command']}`",
    ]
    if a.note:
        lines.append(f"- note: {a.note}")
    lines += [
        f"- data: SyntheticAblation ({'textured vs clean regions' if a.texture else 'CONTROL: no texture'}, "
        f"thin bars), K={a.num_classes}, "
        f"{a.crop_size}x{a.crop_size}, {a.train_scenes} training scenes, {a.test_scenes} held-out test "
        f"scenes, data seed {a.data_seed}",
        f"- training: backbone {a.backbone} from scratch, {a.steps} steps x batch {a.batch_size}, "
        f"{config['optimizer']}, lr {a.lr} (head {10 * a.lr:g}), DFF loss (side5 + fuse), full images",
        f"- scoring: dynfuse.eval, max_dist 0.02, thinned prediction and GT, {a.thresholds} thresholds "
        "(the DFF paper's protocol, 'dff-cityscapes-thin'); fused output; MF = mean over classes",
        "- mean ± sample std over seeds; seed s = same backbone init and same batches in every row",
        "",
        "| row | Table 1 key | params | MF-ODS % | MF-OIS % | AP % | paper MF-ODS % | train s/run "
        "| eval s/run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in a.rows:
        label, key, extra, paper = ROWS[ROW_IDS.index(row)]
        if row not in table:
            lines.append(f"| {label} | `{key}` | | not run | | | {paper if paper else '-'} | | |")
            continue
        e = table[row]
        keyx = f"`{key}`" + (f" + `{extra}`" if extra else "")
        lines.append(
            f"| {label} | {keyx} | {e['params']:,} | {pm(e['mf_ods'])} | {pm(e['mf_ois'])} | {pm(e['ap'])} | "
            f"{paper if paper is not None else '-'} | {e['train_s'][0]:.0f} | {e['eval_s'][0]:.0f} |"
        )
    lines += ["", "Per seed MF-ODS %:", ""]
    for row in a.rows:
        if row in table:
            pairs = zip(table[row]["seeds"], table[row]["mf_ods"][2], strict=True)
            vals = ", ".join(f"s{s}: {100 * v:.1f}" for s, v in pairs)
            lines.append(f"- {ROWS[ROW_IDS.index(row)][0]}: {vals}")
    lines += [
        "",
        "Paired differences of MF-ODS (points, b - a over shared seeds; the paper's claim in brackets):",
        "",
    ]
    for ra, rb, claim in COMPARISONS:
        if ra not in a.rows or rb not in a.rows:
            continue
        d = paired(runs, ra, rb)
        if d is None:
            continue
        mean, std, wins, n = d
        std_s = "" if math.isnan(std) else f" ± {100 * std:.1f}"
        claim_s = {">": f"paper: {rb} > {ra}", "<": f"paper: {rb} < {ra}", "?": "not in the paper"}[claim]
        lines.append(
            f"- {rb} - {ra}: {100 * mean:+.1f}{std_s} ({rb} higher in {wins} of {n} seeds) [{claim_s}]"
        )
    lines += [
        "",
        "Learned weights (a diagnostic: the first seed's model on the test scenes; mean Side1-3 "
        "weight over classes and sides, and the Side5 weight; softmax row after the softmax):",
        "",
    ]
    for row in a.rows:
        rs = [r for r in runs if r["row"] == row]
        if not rs:
            continue
        w = min(rs, key=lambda r: r["seed"])["weights"]
        label = ROWS[ROW_IDS.index(row)][0]
        if w["kind"] == "adaptive":
            parts = [
                f"{place}: Side1-3 {w[f'low_{place}']:+.2f}, Side5 {w[f'side5_{place}']:+.2f}"
                for place in ("texture", "clean_edges", "thin")
                if f"low_{place}" in w
            ]
            lines.append(f"- {label}: " + "; ".join(parts))
        elif w["kind"] == "invariant":
            lines.append(
                f"- {label}: Side1-3 {w['low_mean']:+.2f} (std over images {w['low_std']:.2f}); "
                f"correlation with the textured fraction {w['corr_low_vs_texture_fraction']:+.2f}"
            )
        else:
            lines.append(f"- {label}: Side1-3 {w['low_mean']:+.2f}, Side5 {w['side5_mean']:+.2f} (fixed)")
    lines += [
        "",
        f"Figure: `{png.name}` (bars: mean ± std over seeds, dots: seeds; bottom: the "
        "location-adaptive row's weight maps on one held-out scene, first seed). Raw runs: "
        f"`{path.with_suffix('.json').name}`.",
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(path, text)
    return text


def draw_figure(path: Path, a: argparse.Namespace, runs: list[dict], data: dict[str, Any]) -> bool:
    """Bars with error bars per metric and row, and the adaptive row's weight maps (False: no runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynfuse.viz import palette_for

    table = summarise(runs, a.rows)
    if not table:
        return False
    fig_run = min(
        (r for r in runs if r["row"] == ADAPTIVE and "figure" in r), key=lambda r: r["seed"], default=None
    )
    fig = plt.figure(figsize=(13, 7.5 if fig_run else 4))
    gs = fig.add_gridspec(2 if fig_run else 1, 6, height_ratios=[1.1, 1] if fig_run else [1])
    ax = fig.add_subplot(gs[0, :])
    metrics = [("mf_ods", "MF-ODS"), ("mf_ois", "MF-OIS"), ("ap", "AP")]
    rows = [r for r in a.rows if r in table]
    width = 0.8 / len(rows)
    colours = plt.get_cmap("tab10")
    for j, row in enumerate(rows):
        e = table[row]
        xs = np.arange(len(metrics)) + (j - (len(rows) - 1) / 2) * width
        means = [100 * e[m][0] for m, _ in metrics]
        stds = [0.0 if math.isnan(e[m][1]) else 100 * e[m][1] for m, _ in metrics]
        ax.bar(xs, means, width, yerr=stds, capsize=3, color=colours(j), label=ROWS[ROW_IDS.index(row)][0])
        for x, (m, _) in zip(xs, metrics, strict=True):
            ax.plot([x] * len(e[m][2]), [100 * v for v in e[m][2]], "k.", ms=3)
    allv = [100 * v for row in rows for m, _ in metrics for v in table[row][m][2]]
    lo, hi = min(allv), max(allv)
    ax.set_ylim(max(0.0, lo - 0.25 * (hi - lo + 1)), min(100.0, hi + 0.15 * (hi - lo + 1)))
    ax.set_xticks(np.arange(len(metrics)), [n for _, n in metrics])
    ax.set_ylabel("% (held-out scenes)")
    n_seeds = max(table[r]["n"] for r in rows)
    ax.set_title(
        f"Table 1 rows on SyntheticAblation: mean ± std over {n_seeds} seed(s), {a.backbone} "
        f"backbone, {a.steps} steps; max_dist 0.02, thinned"
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    if fig_run:
        f = fig_run["figure"]
        scene = data["test_scenes"][f["scene"]]
        k = f["class"]
        maps = np.array(f["maps"], dtype=np.float32)  # (S+1, H, W): Side5, Side1, Side2, Side3
        ax_img = fig.add_subplot(gs[1, 0])
        ax_img.imshow(scene.image)
        if 0 < scene.texture.mean() < 1:
            ax_img.contour(scene.texture, levels=[0.5], colors="white", linewidths=1.0, linestyles="dashed")
        ax_img.set_title(f"image, test scene {f['scene']}\n(dashed: textured region)", fontsize=9)
        pal = np.concatenate([np.zeros((1, 3), np.uint8), palette_for(a.num_classes)])
        ax_cls = fig.add_subplot(gs[1, 1])
        ax_cls.imshow(pal[scene.labels + 1])
        ax_cls.contour(scene.labels == k, levels=[0.5], colors="white", linewidths=0.8)
        ax_cls.set_title(f"classes\n(class {k} outlined)", fontsize=9)
        vmax = float(np.abs(maps).max()) or 1.0
        im = None
        for j in range(maps.shape[0]):
            axw = fig.add_subplot(gs[1, 2 + j])
            im = axw.imshow(maps[j], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            axw.set_title(
                f"{SIDE_NAMES[j] if j < len(SIDE_NAMES) else f'side {j}'} weight\nclass {k}", fontsize=9
            )
        for axx in fig.axes[1:]:
            axx.set_xticks([])
            axx.set_yticks([])
        fig.colorbar(im, ax=fig.axes[3:], fraction=0.02, pad=0.01, label="fusion weight (one scale)")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    paths = out_paths(a)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    config = config_of(a)
    if a.report_only and not paths["json"].exists():
        raise SystemExit(f"--report-only: no runs to report, {paths['json']} does not exist")
    runs = load_runs(paths["json"], config) if (a.resume or a.report_only) else []
    env = environment(a, list(sys.argv[1:] if argv is None else argv))
    if a.report_only and runs:
        env = json.loads(paths["json"].read_text()).get("environment", env)  # the run's, not this call's
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    todo = [(s, r) for s in seeds for r in a.rows if not any(x["row"] == r and x["seed"] == s for x in runs)]
    if a.report_only:
        todo = []
    runs = [x for x in runs if x["row"] in a.rows and x["seed"] in seeds]
    t_start = time.perf_counter()
    print(
        f"rendering {0 if a.report_only else a.train_scenes} train + {a.test_scenes} test scenes "
        f"({a.crop_size}px)",
        flush=True,
    )
    data = make_data(a, train=not a.report_only)
    for seed, row in todo:  # seeds outer: a cut-short run still has every row for the first seeds
        model, facts = train_run(row, seed, data, a)
        res = score(model, data, a, figure=row == ADAPTIVE and seed == seeds[0])
        run = {"row": row, "seed": seed, "params": sum(p.numel() for p in model.parameters()), **facts, **res}
        runs.append(run)
        print(
            f"{ROWS[ROW_IDS.index(row)][0]:>26} seed {seed}: MF-ODS {100 * res['mf_ods']:.1f} "
            f"MF-OIS {100 * res['mf_ois']:.1f} AP {100 * res['ap']:.1f}  train {facts['train_s']:.0f}s "
            f"eval {res['eval_s']:.0f}s loss {facts['final_loss']:.3f}",
            flush=True,
        )
        atomic_write_json(paths["json"], {"config": config, "environment": env, "runs": runs})
    wall = time.perf_counter() - t_start
    if not a.report_only:  # a report never rewrites the runs (a training run may still be writing them)
        atomic_write_json(paths["json"], {"config": config, "environment": env, "runs": runs})
    else:
        wall = sum(r["train_s"] + r["eval_s"] for r in runs)  # training + scoring time of the runs
    label = "sum of the runs' training + scoring time" if a.report_only else "wall time of this invocation"
    expected = len(seeds) * len(a.rows)
    text = write_record(paths["md"], a, env, config, runs, expected, wall, paths["png"], label)
    draw_figure(paths["png"], a, runs, data)
    print(text)
    print(f"wrote {paths['md']}, {paths['png']}, {paths['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
