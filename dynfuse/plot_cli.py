"""``dynfuse-plot``: pictures from files a run left behind.

``dynfuse-plot metrics RUN_DIR [-o curves.png]`` draws the training curves of a ``dynfuse-train``
run from its ``metrics.jsonl`` (:func:`dynfuse.viz.plot_metrics`; needs matplotlib, the ``eval``
extra). Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

_PROG = "dynfuse-plot"


def build_parser(prog: str = _PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Pictures from the files a dynfuse run wrote.")
    sub = p.add_subparsers(dest="what", required=True, metavar="{metrics}")
    m = sub.add_parser(
        "metrics",
        help="training curves (loss, MF-ODS/OIS/AP, images/s) from metrics.jsonl",
        description="Training curves of a dynfuse-train run from its metrics.jsonl: loss, "
        "validation scores and throughput per epoch.",
    )
    m.add_argument("run_dir", help="the run folder (holding metrics.jsonl) or the metrics.jsonl file")
    m.add_argument("--output", "-o", default=None, help="PNG to write (default: <run folder>/curves.png)")
    m.add_argument("--title", default=None, help="figure title (default: the run folder's name)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dynfuse-plot``; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    from .viz import MetricsFileError, plot_metrics

    source = Path(args.run_dir)
    out = Path(args.output) if args.output else (source if source.is_dir() else source.parent) / "curves.png"
    try:
        plot_metrics(source, out, title=args.title)
    except (MetricsFileError, OSError, ImportError) as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
