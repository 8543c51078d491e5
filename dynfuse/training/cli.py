"""``dynfuse-train``: parse flags, run a :class:`~dynfuse.training.Trainer`, report errors plainly."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .checkpoint import CheckpointError
from .config import parse_config

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Train as the command line says; returns the process exit status.

    Works as a plain process or under ``torchrun --nproc_per_node N`` (DDP over env://).
    Returns 0 on success, 2 for an unusable checkpoint, 130 when interrupted.
    """
    config = parse_config(argv)
    from .engine import Trainer

    trainer = None
    try:
        trainer = Trainer(config)
        trainer.fit(validate_first=config.val_at_start and not trainer.epoch)
    except CheckpointError as exc:
        print(f"dynfuse-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynfuse-train: interrupted; the last finished epoch's checkpoint is kept",
              file=sys.stderr)
        return 130
    finally:
        if trainer is not None:
            trainer.close()
    return 0
