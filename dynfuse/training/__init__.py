"""Training for DFF / CASENet edge detectors: single process or ``torchrun`` DDP.

The pieces are usable on their own: :func:`build_optimizer` (SGD, head at 10x lr),
:class:`PolyLR` (poly 0.9 per iteration), atomic validated checkpoints, a JSONL/TensorBoard
logger, and :class:`Trainer`, which ties them together; :func:`main` is the ``dynfuse-train``
command (``examples/train_dff.py`` calls it).
"""

from .checkpoint import (
    CheckpointError,
    atomic_torch_save,
    capture_rng_state,
    extract_model_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
)
from .cli import main
from .config import (
    DATASET_DEFAULTS,
    ConfigError,
    TrainConfig,
    build_parser,
    check_runnable,
    parse_config,
)
from .distributed import DistContext, init_distributed
from .engine import Trainer, build_model, seed_everything
from .metrics_log import MetricsLogger, read_jsonl
from .optim import PolyLR, build_optimizer, build_param_groups, poly_factor

__all__ = [
    "DATASET_DEFAULTS",
    "CheckpointError",
    "ConfigError",
    "DistContext",
    "MetricsLogger",
    "PolyLR",
    "TrainConfig",
    "Trainer",
    "atomic_torch_save",
    "build_model",
    "build_optimizer",
    "build_param_groups",
    "build_parser",
    "capture_rng_state",
    "check_runnable",
    "extract_model_state",
    "init_distributed",
    "load_checkpoint",
    "load_model_state",
    "main",
    "parse_config",
    "poly_factor",
    "read_jsonl",
    "restore_rng_state",
    "seed_everything",
]
