"""``dynfuse-train``: parse flags, run a :class:`~dynfuse.training.Trainer`, report errors plainly.

Every error a user can cause ends in one line on stderr, never a traceback:
``dynfuse-train: error: ...`` with exit status 2 for a setting that cannot run (a bad flag value, a
model that cannot be built, a missing folder, a non-empty output folder, a changed setting on
resume, an unusable checkpoint) and 1 for a run that diverged (non-finite loss or weights).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .checkpoint import CheckpointError
from .config import ConfigError, check_runnable, parse_config

__all__ = ["main"]

PROG = "dynfuse-train"


def _error(message: str, status: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Train as the command line says; returns the process exit status.

    Works as a plain process or under ``torchrun --nproc_per_node N`` (DDP over env://).
    Returns 0 on success (or when a resumed run has nothing left to do), 1 when training
    diverged, 2 for an unusable setting or checkpoint, 130 when interrupted.
    """
    config = parse_config(argv, prog=PROG)
    from .engine import Trainer

    trainer = None
    try:
        check_runnable(config)
        trainer = Trainer(config)
        if trainer.finished:
            print(
                f"{PROG}: nothing to do: {trainer.out_dir} finished at epoch {trainer.epoch} "
                f"(give a larger --epochs to train on)"
            )
            return 0
        trainer.fit(validate_first=config.val_at_start and not trainer.epoch)
    except ConfigError as exc:
        return _error(exc.for_cli(), 2)
    except CheckpointError as exc:
        return _error(str(exc), 2)
    except FloatingPointError as exc:
        return _error(str(exc), 1)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the last finished epoch's checkpoint is kept", file=sys.stderr)
        return 130
    finally:
        if trainer is not None:
            trainer.close()
    return 0
