"""Make the figures of the docs (``docs/figures/*.png``) from the synthetic data and a short run.

    PYTHONPATH=. python docs/scripts/make_figures.py [--out docs/figures] [--epochs 8]

Trains the tiny DFF on the procedural ``Synthetic`` scenes on CPU (8 epochs of 160 scenes; 463 s
wall, 166 s CPU on a shared, busy 2-core machine), then draws with :mod:`dynfuse.viz`:

* ``edge_maps.png``: validation scenes | ground truth | prediction (the contact sheet
  ``dynfuse-predict --contact-sheet`` writes);
* ``fusion_weights.png``: the trained model's location-adaptive fusion weights for one class of
  one scene (:func:`dynfuse.viz.plot_fusion_weights`);
* ``pr_curves.png``: per-class PR curves of the validation predictions
  (:func:`dynfuse.eval.evaluate_edges` + :func:`dynfuse.viz.plot_pr_curves`);
* ``training_curves.png``: the run's ``metrics.jsonl`` (:func:`dynfuse.viz.plot_metrics`);
* ``bench_fusion_cpu.png``: forward+backward time and peak extra memory per fusion backend, read
  from ``benchmarks/results/fusion_cpu.md`` (the record, not a new measurement).

Needs the ``train`` and ``eval`` extras (matplotlib). Everything is seeded; the pictures change
only when the code or the libraries do.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dynfuse.data.synthetic import Synthetic  # noqa: E402
from dynfuse.eval import evaluate_edges  # noqa: E402
from dynfuse.predict import load_model_for_inference, predict_probabilities  # noqa: E402
from dynfuse.viz import (  # noqa: E402
    contact_sheet,
    contact_sheet_row,
    plot_fusion_weights,
    plot_metrics,
    plot_pr_curves,
    save_figure,
)

NUM_CLASSES = 4
SCENE = 128  # figures use scenes twice the training crop: the model is fully convolutional


def train(run_dir: Path, epochs: int) -> Path:
    """The tiny DFF on synthetic scenes (the quick-start settings, a shorter run); final.pt."""
    from dynfuse.training import TrainConfig, Trainer
    from dynfuse.training.distributed import DistContext

    cfg = TrainConfig(
        dataset="synthetic",
        backbone="tiny",
        num_classes=NUM_CLASSES,
        epochs=epochs,
        train_length=160,
        val_length=12,
        crop_size=64,
        batch_size=8,
        lr=0.1,
        val_every=2,
        val_at_start=True,
        log_every=6,
        output_dir=str(run_dir),
        tensorboard=False,
        progress=False,
        device="cpu",
        seed=0,
    )
    trainer = Trainer(cfg, ctx=DistContext())
    try:
        trainer.fit(validate_first=True)
    finally:
        trainer.close()
    return run_dir / "final.pt"


def scenes(count: int) -> list:
    """Unseen validation scenes at the figure size: (image uint8 (H, W, 3), edges (K, H, W) bool)."""
    data = Synthetic(num_classes=NUM_CLASSES, size=SCENE, length=count, split="test", seed=0)
    out = []
    for i in range(count):
        s = data.scene(i)
        out.append((np.clip(np.rint(s.image * 255), 0, 255).astype(np.uint8), s.edges))
    return out


def fusion_weights_figure(model, image: np.ndarray, gt: np.ndarray, probs: np.ndarray, out: Path) -> None:
    import torch

    from dynfuse.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        weights = model(x[None]).weights[0]  # (K, S+1, H, W): location-adaptive
    k = int(np.argmax(gt.sum(axis=(1, 2))))  # the class with the most boundary in this scene
    fig = plot_fusion_weights(weights, k, image=image, edges=probs)
    save_figure(out, fig, dpi=110)


def bench_figure(record: Path, out: Path) -> None:
    """Grouped bars of fwd+bwd ms and peak extra MB per backend and shape from the record's table."""
    text = record.read_text(encoding="utf-8")
    header = None
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or re.match(r"^\|[-| ]+\|$", line):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
            continue
        rows.append(dict(zip(header, cells, strict=True)))
    needed = {"shape", "backend", "fwd+bwd ms", "peak extra MB"}
    if header is None or not needed <= set(header):
        raise SystemExit(f"{record}: no table with columns {sorted(needed)}")
    device = re.search(r"^- device: (.*)$", text, re.M)
    dtype = rows[0].get("dtype", "")
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / len(backends)
    for ax, column, label in (
        (axes[0], "fwd+bwd ms", "forward + backward (ms)"),
        (axes[1], "peak extra MB", "peak extra memory (MB)"),
    ):
        for b, backend in enumerate(backends):
            values = [
                next(float(r[column]) for r in rows if r["shape"] == s and r["backend"] == backend)
                for s in shapes
            ]
            bars = ax.bar(
                np.arange(len(shapes)) + (b - (len(backends) - 1) / 2) * width, values, width, label=backend
            )
            ax.bar_label(bars, fmt="%.0f" if max(values) >= 20 else "%.1f", fontsize=7)
        ax.set_xticks(range(len(shapes)), [f"B x H x W = {s}" for s in shapes])
        ax.set_ylabel(label)
        if column == "fwd+bwd ms":  # the shapes' times differ ~30x: log scale, plain numbers
            from matplotlib.ticker import ScalarFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, title="backend", title_fontsize=8)
    fig.suptitle(
        f"Fusion op, K=19, S=3, adaptive weights, {dtype} "
        f"({device.group(1) if device else 'CPU'}; {record.relative_to(ROOT)})",
        fontsize=10,
    )
    save_figure(out, fig, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--run-dir", default=None, help="keep the training run here (default: a temporary folder)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        checkpoint = train(run_dir, args.epochs)
        print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
        model, _ = load_model_for_inference(checkpoint)
        data = scenes(12)
        probs = [predict_probabilities(model, image) for image, _ in data]
        rows = [
            (f"test scene {i}", contact_sheet_row(image, p, gt, with_gt=True))
            for i, ((image, gt), p) in enumerate(zip(data[:3], probs[:3], strict=True))
        ]
        from PIL import Image

        sheet = contact_sheet(rows, ("image", "ground truth", "prediction"))
        Image.fromarray(sheet).save(out / "edge_maps.png")
        fusion_weights_figure(model, data[0][0], data[0][1], probs[0], out / "fusion_weights.png")
        result = evaluate_edges(probs, [gt for _, gt in data], max_dist=0.02, thresholds=33, thin_gt=True)
        title = (
            f"tiny DFF, {len(data)} unseen {SCENE}x{SCENE} synthetic scenes: "
            f"MF-ODS {100 * result.mf_ods:.1f}%"
        )
        plot_pr_curves(out / "pr_curves.png", result, title=title)
        plot_metrics(run_dir, out / "training_curves.png", title="tiny DFF on synthetic scenes (CPU)")
    bench_figure(ROOT / "benchmarks" / "results" / "fusion_cpu.md", out / "bench_fusion_cpu.png")
    print(
        f"wrote {', '.join(sorted(p.name for p in out.glob('*.png')))} to {out} "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
