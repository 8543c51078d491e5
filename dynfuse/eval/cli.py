"""``dynfuse-eval``: score a folder of per-class prediction PNGs against bit-packed GT PNGs."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from .api import EvalWarning
from .runner import FolderSpec, evaluate_folder
from .settings import DEFAULT_PROTOCOL, PROTOCOL_ALIASES, PROTOCOLS, protocol_settings

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dynfuse-eval",
        description=(
            "Semantic edge evaluation (MF-ODS / OIS / AP as the DFF authors' MATLAB). Predictions: "
            "<pred-dir>/class_XXX/<name>.png (8- or 16-bit); ground truth: <gt-dir>/<name>.png "
            "bit-packed RGB (class c = bit c of R<<16|G<<8|B)."
        ),
    )
    ap.add_argument("--pred-dir", required=True, help="folder with class_001/, class_002/, ...")
    ap.add_argument("--gt-dir", required=True, help="folder with bit-packed GT PNGs")
    ap.add_argument("--num-classes", type=int, required=True, help="K (19 Cityscapes, 20 SBD)")
    ap.add_argument("--out", default=None, help="output folder (summary.json, PR CSVs, cache)")
    ap.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default=DEFAULT_PROTOCOL,
        help="the authors' settings (docs/evaluation.md has the table): dff-cityscapes-thin/-raw "
        "(0.02, GT at half resolution; default), dff-sbd-thin/-raw (0.02, margin 5), "
        "seal-cityscapes-thin/-raw (0.0035), seal-sbd (0.02, margin 5), dff-evaluation-default "
        "(0.0075); sbd, cityscapes-thin, cityscapes-raw are the seal-* ones",
    )
    ap.add_argument("--max-dist", type=float, default=None, help="override the tolerance")
    ap.add_argument("--thresholds", type=int, default=None, help="number of thresholds (99)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="CPU processes")
    thin = ap.add_mutually_exclusive_group()
    thin.add_argument("--thin", dest="thin", action="store_true", default=None)
    thin.add_argument("--no-thin", dest="thin", action="store_false")
    thin_gt = ap.add_mutually_exclusive_group()
    thin_gt.add_argument("--thin-gt", dest="thin_gt", action="store_true", default=None)
    thin_gt.add_argument("--no-thin-gt", dest="thin_gt", action="store_false")
    ap.add_argument("--nms", action="store_true", default=None, help="NMS before thresholding")
    ap.add_argument(
        "--kill-internal",
        action="store_true",
        default=None,
        help="drop predictions inside the class region (needs --seg-dir)",
    )
    ap.add_argument("--seg-dir", default=None, help="class-index PNGs for --kill-internal")
    ap.add_argument("--seg-suffix", default=".png")
    ap.add_argument("--margin", type=int, default=None, help="crop this many pixels per side")
    ap.add_argument(
        "--gt-scale",
        type=float,
        default=None,
        help="nearest-resample the GT by this factor first (0.5: half resolution)",
    )
    ap.add_argument(
        "--pred-scale",
        type=float,
        default=None,
        help="divide predictions by this (default: 255 for 8-bit; 16-bit by the "
        "protocol's uint16_scale, 65536 as the authors' MATLAB)",
    )
    ap.add_argument(
        "--resize",
        choices=["nearest", "bilinear", "bicubic", "none"],
        default=None,
        help="resize predictions to the GT size (default bicubic, as MATLAB)",
    )
    inst = ap.add_mutually_exclusive_group()
    inst.add_argument(
        "--instance-sensitive",
        dest="instance_sensitive",
        action="store_true",
        default=None,
        help="record that the GT is instance-sensitive",
    )
    inst.add_argument("--instance-insensitive", dest="instance_sensitive", action="store_false")
    ap.add_argument("--gt-suffix", default=".png")
    ap.add_argument("--pred-suffix", default=".png")
    ap.add_argument("--class-names", default=None, help="comma-separated names for the report")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"dynfuse-eval: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 2 bad input).

    Warnings about the inputs (no manifest, more classes in the data than ``--num-classes``,
    resized predictions) are printed as ``dynfuse-eval: warning: ...`` lines on stderr and kept
    in ``summary.json``.
    """
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", EvalWarning)
        warnings.showwarning = _print_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = protocol_settings(
            args.protocol,
            max_dist=args.max_dist,
            thresholds=args.thresholds,
            thin=args.thin,
            thin_gt=args.thin_gt,
            nms=args.nms,
            kill_internal=args.kill_internal,
            margin=args.margin,
            pred_scale=args.pred_scale,
            resize=args.resize,
            gt_scale=args.gt_scale,
            instance_sensitive=args.instance_sensitive,
        )
        names = None
        if args.class_names:
            names = [n.strip() for n in args.class_names.split(",")]
        spec = FolderSpec(
            pred_dir=args.pred_dir,
            gt_dir=args.gt_dir,
            num_classes=args.num_classes,
            gt_suffix=args.gt_suffix,
            pred_suffix=args.pred_suffix,
            seg_dir=args.seg_dir,
            seg_suffix=args.seg_suffix,
        )
        result = evaluate_folder(
            spec,
            settings,
            out_dir=args.out,
            workers=max(args.workers, 0),
            progress=not args.no_progress,
            class_names=names,
        )
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"dynfuse-eval: error: {e}", file=sys.stderr)
        return 2
    alias = PROTOCOL_ALIASES.get(args.protocol)
    print(f"protocol: {args.protocol}" + (f" (= {alias})" if alias else ""))
    print(result.table())
    if args.out:
        print(f"wrote {os.path.join(args.out, 'summary.json')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
