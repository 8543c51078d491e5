"""Console entry points. Each command's logic lives in its own module; these load it lazily so that
``dynfuse --help``-style start-up stays fast and optional dependencies are only needed when used."""

from __future__ import annotations

from collections.abc import Sequence


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``dynfuse-eval``: MF-ODS / OIS / AP of a predictions folder against ground truth."""
    from .eval.cli import main

    return main(argv)


def prepare_main(argv: Sequence[str] | None = None) -> int:
    """``dynfuse-prepare cityscapes|sbd ROOT OUT``: edge labels from the datasets' release files."""
    from .data.prepare import main

    return main(argv)


def predict_main(argv: Sequence[str] | None = None) -> int:
    """``dynfuse-predict``: per-class probability PNGs and edge overlays for a folder of images."""
    from .predict import main

    return main(argv)


def plot_main(argv: Sequence[str] | None = None) -> int:
    """``dynfuse-plot metrics RUN_DIR``: training curves from a run's metrics.jsonl."""
    from .plot_cli import main

    return main(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``dynfuse-train``: the training of ``examples/train_dff.py``."""
    from .training.cli import main

    return main(argv)
