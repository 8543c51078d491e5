"""Reproduce the DFF paper's table: official data -> labels and evaluation GT -> train -> predict -> score.

One recipe, five stages, each an existing dynfuse command (run in this process through its Python
entry point, training as its own process, under ``torchrun`` for several GPUs):

1. ``dynfuse-prepare DATASET ROOT WORK/data``            training labels (resumable)
2. ``dynfuse-prepare DATASET ROOT WORK/data --eval-gt``  the authors' evaluation GT
3. ``torchrun --nproc_per_node N examples/train_dff.py --dataset DATASET ...``
   with the paper's crop, batch, learning rate and schedule (dynfuse.training.DATASET_DEFAULTS),
   ``--resume auto`` so a rerun continues a killed run
4. ``dynfuse-predict WORK/train/final.pt <val images> -o WORK/pred``
5. ``dynfuse-eval --pred-dir WORK/pred --gt-dir WORK/data/gt_eval/<variant>/inst/val
   --protocol PROTOCOL`` for each protocol, then a table laid out like the paper's (per-class
   MF-ODS and the mean, in %) with the paper's numbers in the row above ours.

Examples::

    # Cityscapes, 4 GPUs, ImageNet ResNet-50 weights (the paper's Table 2 row "ResNet50 640")
    python examples/reproduce_paper.py cityscapes --root /data/cityscapes --work-dir runs/repro-cs \\
        --nproc 4 --pretrained-backbone resnet50.pth

    # SBD (Table 4)
    python examples/reproduce_paper.py sbd --root /data/benchmark_RELEASE/dataset \\
        --work-dir runs/repro-sbd --nproc 4 --pretrained-backbone resnet50.pth

    # Print the commands only
    python examples/reproduce_paper.py cityscapes --root /data/cityscapes --work-dir w --dry-run

    # Score an existing checkpoint (no training)
    python examples/reproduce_paper.py cityscapes --root ... --work-dir ... --checkpoint final.pt

See docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

TRAIN_SCRIPT = Path(__file__).resolve().with_name("train_dff.py")

# The paper's per-class MF-ODS (%), DFF rows. Cityscapes: Table 2 (by backbone and crop size;
# Table 3's DFF row is ResNet101 / 512). SBD: Table 4. Column abbreviations as in the paper.
PAPER_COLUMNS = {
    "cityscapes": ("road", "side.", "buil.", "wall", "fence", "pole", "light", "sign", "vege.",
                   "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "mot.",
                   "bike"),
    "sbd": ("aer.", "bike", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table",
            "dog", "horse", "mot.", "per.", "pot.", "sheep", "sofa", "train", "tv"),
}  # fmt: skip
PAPER_ROWS: dict[tuple[str, str, int], tuple[str, tuple[float, ...], float]] = {
    ("cityscapes", "resnet50", 640): (
        "DFF-R50 crop 640, paper Table 2",
        (93.3, 86.5, 89.5, 58.2, 64.3, 85.2, 85.5, 84.3, 92.2, 72.0, 92.6, 91.2, 82.6, 94.9, 60.0,
         77.2, 56.9, 74.5, 86.3),
        80.4,
    ),
    ("cityscapes", "resnet50", 512): (
        "DFF-R50 crop 512, paper Table 2",
        (93.1, 86.5, 89.0, 58.8, 63.5, 84.8, 83.7, 83.0, 91.8, 71.9, 92.2, 90.7, 81.3, 94.7, 58.5,
         72.7, 50.8, 71.7, 86.6),
        79.2,
    ),
    ("cityscapes", "resnet101", 512): (
        "DFF-R101 crop 512, paper Tables 2-3",
        (93.2, 86.3, 89.7, 60.0, 64.3, 86.0, 85.2, 83.7, 92.0, 71.3, 92.3, 91.1, 83.4, 94.8, 64.5,
         77.4, 59.9, 72.1, 86.9),
        80.7,
    ),
    ("sbd", "resnet50", 352): (
        "DFF, paper Table 4",
        (86.5, 79.5, 85.5, 69.0, 73.9, 86.1, 80.3, 85.3, 58.5, 80.1, 47.3, 82.5, 85.7, 78.5, 83.4,
         57.9, 81.2, 53.0, 81.4, 71.6),
        75.4,
    ),
}  # fmt: skip

# Which evaluation-GT folder each of the DFF paper's protocols scores against.
PROTOCOL_GT_VARIANT = {
    "dff-cityscapes-thin": "gt_thin",
    "dff-cityscapes-raw": "gt_raw",
    "dff-sbd-thin": "gt_orig_thin",
    "dff-sbd-raw": "gt_orig_raw",
}
NUM_CLASSES = {"cityscapes": 19, "sbd": 20}


class RecipeError(RuntimeError):
    """A stage that failed or a setting that cannot work; the message says which."""


@dataclass
class Step:
    """One stage: the command a user would type, and how this script runs it."""

    name: str
    shown: list[str]  # the command as printed (console-script names, torchrun)
    run: Callable[[], int]

    def shell(self) -> str:
        """``shown`` as one shell line; a token ending in ``/*/`` stays an unquoted glob."""
        return " ".join(t if t.endswith("/*/") and " " not in t else shlex.quote(t) for t in self.shown)


def gt_variant(protocol: str, dataset: str) -> str:
    """The evaluation-GT variant a protocol scores against (``*-raw`` -> raw, else thin)."""
    if protocol in PROTOCOL_GT_VARIANT:
        return PROTOCOL_GT_VARIANT[protocol]
    raw = protocol.endswith("-raw")
    if dataset == "cityscapes":
        return "gt_raw" if raw else "gt_thin"
    return "gt_orig_raw" if raw else "gt_orig_thin"


def _check_protocols(protocols: Sequence[str]) -> None:
    from dynfuse.eval.settings import PROTOCOLS

    missing = [p for p in protocols if p not in PROTOCOLS]
    if missing:
        raise RecipeError(
            f"protocol(s) {missing} are not defined by this dynfuse (dynfuse.eval.settings.PROTOCOLS "
            f"has {sorted(PROTOCOLS)})"
        )


def _val_image_dirs(data: Path, dataset: str, dry_run: bool) -> list[Path]:
    if dataset == "sbd":
        return [data / "image" / "val" / "scale_1"]
    val = data / "leftImg8bit" / "val"
    if dry_run:
        return [Path(f"{val}/*/")]  # every city folder (a shell glob)
    cities = sorted(p for p in val.iterdir() if p.is_dir()) if val.is_dir() else []
    if not cities:
        raise RecipeError(f"{val}: no city folders (did the prepare stage finish?)")
    return cities


def _in_process(func: Callable[[list[str]], int], argv: list[str]) -> Callable[[], int]:
    return lambda: func(argv)


def _subprocess(cmd: list[str]) -> Callable[[], int]:
    return lambda: subprocess.run(cmd, check=False).returncode


def train_command(args: argparse.Namespace, data: Path, out: Path) -> tuple[list[str], list[str]]:
    """(shown, run) command lines of the training stage with the paper's settings made explicit."""
    from dynfuse.training import DATASET_DEFAULTS

    d = DATASET_DEFAULTS[args.dataset]
    flags = [
        "--dataset", args.dataset, "--data-root", str(data), "--output-dir", str(out),
        "--backbone", args.backbone, "--crop-size", str(d["crop_size"]),
        "--batch-size", str(d["batch_size"]), "--epochs", str(d["epochs"]), "--lr", str(d["lr"]),
        "--resume", "auto",
    ]  # fmt: skip
    if args.pretrained_backbone:
        flags += ["--pretrained-backbone", args.pretrained_backbone]
    flags += shlex.split(args.train_args)  # last wins: the user's overrides
    script = str(TRAIN_SCRIPT)
    if args.nproc > 1:
        launch = ["--standalone", "--nproc_per_node", str(args.nproc), script]
        return ["torchrun", *launch, *flags], [sys.executable, "-m", "torch.distributed.run", *launch, *flags]
    return ["python", script, *flags], [sys.executable, script, *flags]


def build_plan(args: argparse.Namespace) -> tuple[list[Step], dict[str, Path]]:
    """The stages in order and, per protocol, the folder its ``summary.json`` lands in."""
    from dynfuse.cli import eval_main, predict_main, prepare_main

    work = Path(args.work_dir)
    data, train_dir, pred = work / "data", work / "train", work / "pred"
    workers = ["--workers", str(args.workers)]
    steps: list[Step] = []
    if not args.skip_prepare:
        argv = [args.dataset, str(args.root), str(data), *workers]
        steps.append(
            Step("prepare training labels", ["dynfuse-prepare", *argv], _in_process(prepare_main, argv))
        )
    argv = [args.dataset, str(args.root), str(data), "--eval-gt", *workers]
    steps.append(Step("prepare evaluation GT", ["dynfuse-prepare", *argv], _in_process(prepare_main, argv)))
    checkpoint = args.checkpoint
    if checkpoint is None:
        shown, cmd = train_command(args, data, train_dir)
        steps.append(Step("train", shown, _subprocess(cmd)))
        checkpoint = str(train_dir / "final.pt")

    def predict() -> int:
        dirs = [str(p) for p in _val_image_dirs(data, args.dataset, False)]
        return predict_main([checkpoint, *dirs, *predict_flags])

    predict_flags = ["-o", str(pred), "--no-overlay", "--device", args.device, "--no-progress"]
    shown_dirs = [
        str(p) + ("/" if args.dataset == "cityscapes" else "")
        for p in _val_image_dirs(data, args.dataset, True)
    ]
    steps.append(Step("predict val", ["dynfuse-predict", checkpoint, *shown_dirs, *predict_flags], predict))
    summaries: dict[str, Path] = {}
    for protocol in args.protocol:
        out = work / "eval" / protocol
        argv = [
            "--pred-dir", str(pred),
            "--gt-dir", str(data / "gt_eval" / gt_variant(protocol, args.dataset) / "inst" / "val"),
            "--num-classes", str(NUM_CLASSES[args.dataset]), "--protocol", protocol,
            "--out", str(out), "--workers", str(args.workers), "--no-progress",
            *shlex.split(args.eval_args),
        ]  # fmt: skip
        steps.append(Step(f"score ({protocol})", ["dynfuse-eval", *argv], _in_process(eval_main, argv)))
        summaries[protocol] = out / "summary.json"
    return steps, summaries


HEADLINE = {"cityscapes": ("resnet50", 640), "sbd": ("resnet50", 352)}


def paper_row(dataset: str, backbone: str, crop: int) -> tuple[str, tuple[float, ...], float]:
    """The paper's row for this backbone and crop, else its headline DFF-R50 row (so labelled)."""
    row = PAPER_ROWS.get((dataset, backbone, crop))
    if row is not None:
        return row
    label, values, mean = PAPER_ROWS[(dataset, *HEADLINE[dataset])]
    return f"{label} (other setting)", values, mean


def format_table(dataset: str, backbone: str, crop: int, protocol: str, summary: dict) -> str:
    """The paper's table layout: one row per method, per-class MF-ODS then the mean, in %."""
    columns = PAPER_COLUMNS[dataset]
    classes = summary["classes"]
    if len(classes) != len(columns):
        raise RecipeError(f"summary has {len(classes)} classes, the paper's table {len(columns)}")
    width = max(len(c) for c in columns) + 1
    paper = paper_row(dataset, backbone, crop)
    ours_label = f"dynfuse {backbone} crop {crop} (this run)"
    label_w = max(len(paper[0]), len(ours_label)) + 2

    def row(label: str, values: Sequence[float], mean: float) -> str:
        cells = "".join(f"{v:>{width}.1f}" for v in values)
        return f"{label:<{label_w}}{cells}{mean:>{width + 1}.1f}"

    ours = [100 * c["ods"] for c in classes]
    return "\n".join(
        [
            f"MF-ODS (%) on {dataset} val ({summary.get('num_images', '?')} images), protocol {protocol}",
            f"{'method':<{label_w}}" + "".join(f"{c:>{width}}" for c in columns) + f"{'mean':>{width + 1}}",
            row(*paper),
            row(ours_label, ours, 100 * summary["mf_ods"]),
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reproduce_paper.py",
        description="Prepare, train, predict and score as the DFF paper, and print its table beside ours.",
    )
    p.add_argument("dataset", choices=("cityscapes", "sbd"))
    p.add_argument("--root", required=True, help="the dataset's release folder (as dynfuse-prepare ROOT)")
    p.add_argument("--work-dir", required=True, help="all outputs: data/, train/, pred/, eval/, table.txt")
    p.add_argument("--nproc", type=int, default=1, help="training processes (GPUs); > 1 uses torchrun")
    p.add_argument("--backbone", default="resnet50", help="resnet50 (paper), resnet101 or tiny")
    p.add_argument("--pretrained-backbone", default=None, help="ImageNet weights file for the backbone")
    p.add_argument("--checkpoint", default=None, help="score this checkpoint instead of training")
    p.add_argument(
        "--protocol",
        action="append",
        default=None,
        help="evaluation protocol, repeatable (default: dff-<dataset>-thin)",
    )
    p.add_argument("--workers", type=int, default=8, help="CPU processes for prepare and eval")
    p.add_argument("--device", default="auto", help="prediction device")
    p.add_argument("--train-args", default="", help="extra dynfuse-train flags (one quoted string)")
    p.add_argument("--eval-args", default="", help="extra dynfuse-eval flags (one quoted string)")
    p.add_argument(
        "--skip-prepare",
        action="store_true",
        help="the training labels are already in WORK/data (the evaluation GT is still made)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def _train_crop(args: argparse.Namespace) -> int:
    """The crop the training stage uses (a --crop-size in --train-args wins)."""
    from dynfuse.training import DATASET_DEFAULTS

    extra = shlex.split(args.train_args)
    for i, tok in enumerate(extra):
        if tok == "--crop-size" and i + 1 < len(extra):
            return int(extra[i + 1])
        if tok.startswith("--crop-size="):
            return int(tok.split("=", 1)[1])
    return int(DATASET_DEFAULTS[args.dataset]["crop_size"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or with --dry-run print) the recipe; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.protocol = args.protocol or [f"dff-{args.dataset}-thin"]
    if args.nproc < 1 or args.workers < 1:
        print("reproduce_paper.py: error: --nproc and --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        _check_protocols(args.protocol)
        steps, summaries = build_plan(args)
        if args.dry_run:
            for i, step in enumerate(steps, 1):
                print(f"# {i}. {step.name}\n{step.shell()}")
            return 0
        for i, step in enumerate(steps, 1):
            print(f"\n=== {i}/{len(steps)} {step.name}: {step.shell()}", flush=True)
            start = time.monotonic()
            rc = step.run()
            print(f"=== {step.name}: exit status {rc} after {time.monotonic() - start:.0f} s", flush=True)
            if rc != 0:
                raise RecipeError(
                    f"stage '{step.name}' failed with exit status {rc}; fix it and "
                    "rerun (finished work is kept and skipped)"
                )
        tables = []
        crop = _train_crop(args)
        for protocol, path in summaries.items():
            summary = json.loads(path.read_text(encoding="utf-8"))
            tables.append(format_table(args.dataset, args.backbone, crop, protocol, summary))
        text = "\n\n".join(tables)
        print("\n" + text)
        (Path(args.work_dir) / "table.txt").write_text(text + "\n", encoding="utf-8")
    except RecipeError as exc:
        print(f"reproduce_paper.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
