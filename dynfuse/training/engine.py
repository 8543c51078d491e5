"""The training loop: setup, epochs, validation, checkpoints and exact resume.

:class:`Trainer` owns one run. It is built from a :class:`TrainConfig`; the model, datasets, loss and
scorer are built from it unless given (tests and users can inject their own). Under ``torchrun`` it
wraps the model in DistributedDataParallel (SyncBatchNorm on CUDA), shards data with a
DistributedSampler and lets rank 0 alone print, log and write checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from dynfuse.atomic import atomic_write_json

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    atomic_torch_save,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
)
from .config import ConfigError, TrainConfig, flag_name, resume_policy
from .data import build_datasets, build_train_loader, build_val_loader, dataset_len, epoch_seed
from .distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    gather_objects,
    init_distributed,
)
from .metrics_log import MetricsLogger
from .optim import PolyLR, build_optimizer, poly_factor

__all__ = ["Trainer", "build_model", "seed_everything"]

LossFn = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
# (preds list of (K,H,W) float arrays in [0,1], gts list of (K,H,W) bool arrays) -> metrics dict
ScoreFn = Callable[[list[np.ndarray], list[np.ndarray]], dict[str, float]]

# Keys the trainer writes itself into a validation record; a scorer may not return them (a
# scorer's "loss" would silently replace the validation loss, its "epoch" the record's epoch).
_RESERVED_METRICS = frozenset(
    {"loss", "seconds", "scored_images", "scoring_error", "kind", "epoch", "iteration", "time"}
)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CKPT_NAME = "checkpoint.pt"
_FINAL_NAME = "final.pt"
_CONFIG_NAME = "config.json"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (legacy global RNG used by transforms)
    torch.manual_seed(seed)


def build_model(config: TrainConfig) -> nn.Module:
    """``dynfuse.create_model`` for the config's model, backbone and classes (started from a
    ``save_pretrained`` folder's weights with ``init_from``)."""
    from dynfuse.models import create_model, init_from_pretrained

    model = create_model(
        config.model,
        backbone=config.backbone,
        num_classes=config.num_classes,
        pretrained_backbone=config.pretrained_backbone,
        **config.model_kwargs,
    )
    return init_from_pretrained(model, config.init_from) if config.init_from else model


def _default_loss() -> LossFn:
    from dynfuse.losses import dff_loss

    return dff_loss


def default_scorer(config: TrainConfig) -> ScoreFn | None:
    """MF-ODS/OIS/AP through ``dynfuse.eval.evaluate_edges``, or None when it is not available."""
    try:
        from dynfuse.eval import evaluate_edges
    except ImportError:
        return None

    def score(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
        # Our ground truth marks both sides of a boundary (radius-2 disc rule), so it is thinned too,
        # as SEAL's benchmark uses thinned GT; thinned predictions against thick GT cap recall.
        result = evaluate_edges(
            preds,
            gts,
            max_dist=config.val_max_dist,
            thresholds=config.val_thresholds,
            thin=True,
            thin_gt=True,
            workers=config.workers if config.workers > 1 else 0,
        )
        out = {}
        # mean over classes of ODS F, of OIS F and of AP (fractions in [0, 1])
        for name in ("mf_ods", "mf_ois", "mean_ap"):
            value = getattr(result, name, None)
            if value is not None:
                out[name] = float(value)
        return out

    return score


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _same_folder(checkpoint: Path, out_dir: Path) -> bool:
    return checkpoint.resolve().parent == out_dir.resolve()


def _records_through(path: Path, iteration: int) -> int | None:
    """How many leading records of a metrics file have ``iteration`` <= the given one."""
    if not path.is_file():
        return None
    n = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if int(rec.get("iteration", 0)) > iteration:
            break
        n += 1
    return n


def _nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names of parameters and floating buffers holding NaN or infinity."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _param_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter's bytes, in name order: equal iff the ranks agree bitwise."""
    h = hashlib.sha256()
    for name, p in sorted(_unwrap(model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", copy=True).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _to_float(output: Any) -> Any:
    # The loss runs in float32 whatever the autocast dtype of the logits.
    if hasattr(output, "_replace") and hasattr(output, "side5") and hasattr(output, "fuse"):
        return output._replace(side5=output.side5.float(), fuse=output.fuse.float())
    return output


def _scoring_maps(
    fuse: torch.Tensor, edges: torch.Tensor, valid: torch.Tensor, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Probability (float16, to keep rank 0's memory small) and GT maps of one image for MF-ODS.

    fuse (K, H, W) logits, edges (K, H, W), valid (H, W). Padding is never an edge. With
    ``scale`` < 1 both are shrunk (probabilities by area averaging, GT by "any edge pixel in the
    area"), like SEAL's half-resolution Cityscapes protocol.
    """
    prob = torch.sigmoid(fuse.float()) * valid
    gt = (edges > 0.5) & valid
    if scale != 1.0:
        h, w = prob.shape[-2:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        prob = torch.nn.functional.interpolate(prob[None], size=size, mode="area")[0]
        gt = torch.nn.functional.interpolate(gt[None].float(), size=size, mode="area")[0] > 0
    return prob.to(torch.float16).cpu().numpy(), gt.cpu().numpy()


class Trainer:
    """One training run.

    Args:
        config: the run's settings.
        model: the network (default: ``build_model(config)``); must have a ``backbone`` attribute
            and return an object with ``side5`` and ``fuse`` logits (B, K, H, W).
        train_set: dataset of dict items (default: ``build_datasets(config)``).
        val_set: dataset of dict items (default: ``build_datasets(config)``).
        loss_fn: ``(output, edges, valid) -> scalar`` (default: ``dynfuse.losses.dff_loss``).
        scorer: validation metrics from probability maps (default: MF-ODS via ``dynfuse.eval``
            when importable; None: validation loss only). Its keys must not be ones the trainer
            writes itself (``loss``, ``seconds``, ``scored_images``, ``scoring_error``, ``kind``,
            ``epoch``, ``iteration``, ``time``): such a result is reported as a scoring failure.
        ctx: process placement (default: ``init_distributed(config.device)``).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: nn.Module | None = None,
        train_set: Dataset | None = None,
        val_set: Dataset | None = None,
        loss_fn: LossFn | None = None,
        scorer: ScoreFn | Literal["default"] | None = "default",
        ctx: DistContext | None = None,
    ) -> None:
        if isinstance(scorer, str) and scorer != "default":
            raise ValueError(f"scorer must be a callable, 'default' or None, got {scorer!r}")
        if scorer is not None and not isinstance(scorer, str) and not callable(scorer):
            raise TypeError(f"scorer must be a callable, 'default' or None, got {type(scorer).__name__}")
        self.config = config
        self._owns_ctx = ctx is None
        self.ctx = ctx if ctx is not None else init_distributed(config.device)
        self.device = self.ctx.device
        self.out_dir = Path(config.output_dir)
        # Continuing the run in this folder, or starting one (from scratch or from a checkpoint
        # elsewhere)? The latter needs an empty folder or --overwrite: checked before any work.
        resume_path = None
        if config.resume:
            resume_path = self.checkpoint_path if config.resume == "auto" else Path(config.resume)
        self._continuing = resume_path is not None and (
            resume_path.is_file() and _same_folder(resume_path, self.out_dir)
        )
        if not self._continuing:
            self._check_output_folder()
        # Same seed everywhere for the model; DDP also broadcasts rank 0's weights.
        seed_everything(config.seed)
        base = model if model is not None else build_model(config)
        if train_set is None or val_set is None:
            try:
                built_train, built_val = build_datasets(config)
            except (OSError, ValueError) as exc:
                where = f" from {config.data_root!r}" if config.data_root else ""
                raise ConfigError(None, f"cannot load the {config.dataset} data{where}: {exc}") from exc
            train_set = train_set if train_set is not None else built_train
            val_set = val_set if val_set is not None else built_val
        self.train_set, self.val_set = train_set, val_set
        # Ranks draw different augmentations (and the main RNGs go on from here).
        seed_everything(config.seed + 1_000_003 * self.ctx.rank)
        self.loss_fn = loss_fn if loss_fn is not None else _default_loss()
        self.scorer: ScoreFn | None = default_scorer(config) if scorer == "default" else scorer

        base = base.to(self.device)
        self.model: nn.Module = base
        if self.ctx.distributed:
            use_sync = config.sync_bn == "on" or (config.sync_bn == "auto" and self.device.type == "cuda")
            if use_sync:
                base = nn.SyncBatchNorm.convert_sync_batchnorm(base)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(base, device_ids=device_ids)
        self.train_loader: DataLoader = build_train_loader(self.train_set, config, self.ctx)
        self.val_loader: DataLoader = build_val_loader(self.val_set, config, self.ctx)
        self.steps_per_epoch = len(self.train_loader)
        self.max_iters = self.steps_per_epoch * config.epochs
        self.optimizer = build_optimizer(
            self.model,
            config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            head_lr_mult=config.head_lr_mult,
        )
        self.scheduler = PolyLR(self.optimizer, self.max_iters, config.poly_power)
        self.amp_dtype = _AMP_DTYPES.get(config.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.epoch = 0  # finished epochs
        self.iteration = 0  # finished optimiser steps
        self.history: list[dict[str, Any]] = []  # every log/val record of this process
        self.finished = False  # resumed from a run that has nothing left to do
        self._val_pending = False  # the resumed epoch's validation was due but not recorded
        self._last_val: dict[str, Any] | None = None
        self._config_changes: list[dict[str, Any]] = []
        self._commit_pending = False  # a new run's files wait for its first checkpoint
        self._config_written: dict[str, Any] | None = None  # what config.json holds
        ckpt = self._resume(config.resume) if config.resume else None
        if self.finished:
            # Touch nothing: the folder describes the finished run.
            self.logger = MetricsLogger(self.out_dir, enabled=False)
            return
        if ckpt is not None and self._continuing:
            # The log goes on from the checkpoint; records of the replayed iterations are dropped.
            keep = ckpt.get("metrics_records")
            if not isinstance(keep, int) and self.ctx.is_main:
                # A checkpoint of an older dynfuse (no record count): keep the records up to its
                # iteration (it was saved after that epoch's validation).
                keep = _records_through(self.out_dir / "metrics.jsonl", self.iteration)
            self.logger = MetricsLogger(
                self.out_dir,
                enabled=self.ctx.is_main,
                tensorboard=config.tensorboard,
                keep_records=keep if isinstance(keep, int) else None,
                purge_step=self.iteration + 1,
            )
            # config.json is rewritten with the next checkpoint (it describes what the folder's
            # checkpoint ran; until then, that is still the resumed one's settings).
        else:
            # Nothing is written until the first checkpoint: killed before it, the folder still
            # holds what it held (nothing, or the old run that --overwrite replaces).
            self._commit_pending = True
            self.logger = MetricsLogger(
                self.out_dir, enabled=self.ctx.is_main, tensorboard=config.tensorboard, deferred=True
            )

    def _check_output_folder(self) -> None:
        """Refuse (on every rank) a new run in a non-empty output folder without ``overwrite``."""
        problem = None
        if self.ctx.is_main and self.out_dir.exists():
            if not self.out_dir.is_dir():
                problem = f"{str(self.out_dir)!r} exists and is not a folder"
            else:
                entries = sorted(p.name for p in self.out_dir.iterdir())
                if entries and not self.config.overwrite:
                    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
                    problem = (
                        f"{str(self.out_dir)!r} is not empty ({shown}); pass --overwrite "
                        "to replace the run in it, --resume auto to continue it, or "
                        "choose another --output-dir"
                    )
                elif entries:
                    self._print(
                        f"note: {self.out_dir} holds a checkpoint of an earlier run or other "
                        "files; --overwrite: its run files are replaced when this run's first "
                        "checkpoint lands (until then the old run stays as it was)"
                        if (self.out_dir / _CKPT_NAME).is_file() or (self.out_dir / _FINAL_NAME).is_file()
                        else f"note: {self.out_dir} is not empty; --overwrite: this run's files "
                        "are written there when its first checkpoint lands"
                    )
        problem = all_gather_objects(self.ctx, problem)[0]
        if problem:
            raise ConfigError("output_dir", problem)

    def _commit_new_run(self) -> None:
        """Rank 0, at a new run's first checkpoint: replace an old run's files, then write this
        run's ``config.json`` and the metrics kept so far. The checkpoint itself lands last."""
        for name in (_FINAL_NAME, _CKPT_NAME, _CONFIG_NAME, "metrics.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                (self.out_dir / name).unlink()
        if (self.out_dir / "tb").is_dir():
            shutil.rmtree(self.out_dir / "tb")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.logger.commit()

    def _write_config(self) -> None:
        """``config.json``: the settings of the run's checkpoint and every change made on a
        resume. Written when a new run commits and after each checkpoint when it changed."""
        data = self.config.to_dict()
        if self._config_changes:
            data["config_changes"] = self._config_changes
        if data != self._config_written:
            atomic_write_json(self.out_dir / _CONFIG_NAME, data)
            self._config_written = data

    # ------------------------------------------------------------------ output helpers
    def _print(self, text: str) -> None:
        if not self.ctx.is_main:
            return
        try:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
        except ImportError:
            print(text, flush=True)

    def _record(self, kind: str, fields: Mapping[str, Any], *, epoch: int | None = None) -> dict[str, Any]:
        # "epoch" is 1-based: the epoch in progress (train) or just finished (epoch, val);
        # 0 for a validation of the untrained model. ``fields`` are the record's values (a
        # mapping, so that none of them can land in the ``epoch`` argument).
        epoch = self.epoch if epoch is None else epoch
        rec = {"kind": kind, "epoch": epoch, "iteration": self.iteration, **fields}
        self.history.append(rec)
        self.logger.log(kind, epoch=epoch, iteration=self.iteration, **fields)
        return rec

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / _CKPT_NAME

    def _resume(self, resume: str) -> dict[str, Any] | None:
        """Load the state of ``resume`` (a path, or "auto": this run's checkpoint if present).

        Returns the checkpoint (with its path under ``"_path"``), or None when "auto" found none.
        Sets :attr:`finished` when the checkpoint's run has nothing left to do.

        Raises:
            CheckpointError: unreadable checkpoint, or another model/backbone/class count.
            ConfigError: settings that differ from the checkpoint's, without
                ``allow_changed_config``.
        """
        path = self.checkpoint_path if resume == "auto" else Path(resume)
        if resume == "auto" and not path.is_file():
            self._print(f"no checkpoint at {path}; starting a new run")
            return None
        ckpt = load_checkpoint(path, map_location="cpu")
        ckpt["_path"] = path
        saved = ckpt["config"]
        for key in (f.name for f in fields(TrainConfig) if resume_policy(f.name) == "weights"):
            if saved.get(key) != getattr(self.config, key):
                raise CheckpointError(
                    f"checkpoint {str(path)!r} was trained with {key}={saved.get(key)!r}, this "
                    f"run has {key}={getattr(self.config, key)!r}"
                )
        done = int(ckpt["epoch"])
        if done >= self.config.epochs and not ckpt.get("val_pending", False):
            self.finished = True
            self.epoch, self.iteration = done, int(ckpt["iteration"])
            return ckpt
        changes = self._changed_settings(saved)
        if changes and not self.config.allow_changed_config:
            lines = "\n".join(
                f"  {flag_name(c['field'])}: {c['old']!r} (checkpoint) -> {c['new']!r} (now)" for c in changes
            )
            raise ConfigError(
                None,
                f"cannot resume from {str(path)!r}: these settings differ from the "
                f"checkpoint's:\n{lines}\nrerun with the checkpoint's values, or pass "
                "--allow-changed-config to continue with the new ones",
            )
        load_model_state(_unwrap(self.model), ckpt["model"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: optimizer/scheduler state does not fit this run: {exc}"
            ) from exc
        self.epoch = done
        self.iteration = int(ckpt["iteration"])
        # The schedule spans the iterations done plus the remaining epochs at this run's batch.
        self.max_iters = self.iteration + (self.config.epochs - self.epoch) * self.steps_per_epoch
        if saved.get("epochs") != self.config.epochs or ckpt.get("max_iters") != self.max_iters:
            # Changing the length of the run re-shapes the poly schedule; allowed, but say so.
            warnings.warn(
                f"resuming with epochs={self.config.epochs} ({self.max_iters} iterations) from a "
                f"run planned for epochs={saved.get('epochs')} ({ckpt.get('max_iters')} "
                "iterations): the learning-rate schedule is re-planned",
                stacklevel=2,
            )
        if changes or self.scheduler.max_iters != self.max_iters:
            self._apply_optimizer_settings()
        self._val_pending = bool(ckpt.get("val_pending", False))
        self._last_val = ckpt.get("last_val")
        self._config_changes = list(ckpt.get("config_changes") or [])
        if changes:
            for c in changes:
                self._config_changes.append({"epoch": self.epoch, "iteration": self.iteration, **c})
            warnings.warn(
                "resuming with changed settings (--allow-changed-config): "
                + ", ".join(f"{c['field']} {c['old']!r} -> {c['new']!r}" for c in changes),
                stacklevel=2,
            )
        rng = ckpt["rng"]
        if isinstance(rng, list) and len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank])
        else:
            n = len(rng) if isinstance(rng, list) else "?"
            warnings.warn(
                f"checkpoint holds RNG states of {n} process(es), this run has "
                f"{self.ctx.world_size}: data order is kept, augmentation randomness is reseeded",
                stacklevel=2,
            )
            seed_everything(epoch_seed(self.config.seed, self.epoch, self.ctx.rank))
        self._print(f"resumed from {path} at epoch {self.epoch}, iteration {self.iteration}")
        return ckpt

    def _changed_settings(self, saved: dict[str, Any]) -> list[dict[str, Any]]:
        """Settings of this run that differ from a checkpoint's and that resume refuses by
        default (policy "fixed"), as ``{"field", "old", "new"}`` dicts."""
        defaults = TrainConfig().to_dict()  # checkpoints of older versions lack newer fields
        changes = []
        for f in fields(TrainConfig):
            if resume_policy(f.name) != "fixed":
                continue
            old = saved.get(f.name, defaults[f.name])
            new = getattr(self.config, f.name)
            if old != new:
                changes.append({"field": f.name, "old": old, "new": new})
        return changes

    def _apply_optimizer_settings(self) -> None:
        """Put this config's lr, multiplier, momentum, weight decay and poly plan into the loaded
        optimizer and scheduler (their state dicts carry the checkpoint's)."""
        cfg = self.config
        base_lrs: list[Any] = []
        for group in self.optimizer.param_groups:
            base = cfg.lr * cfg.head_lr_mult if group.get("name") == "head" else cfg.lr
            group["initial_lr"] = base
            group["momentum"] = cfg.momentum
            group["weight_decay"] = cfg.weight_decay
            base_lrs.append(base)
        self.scheduler.base_lrs = base_lrs
        self.scheduler.power = float(cfg.poly_power)
        self.scheduler.max_iters = self.max_iters
        factor = poly_factor(self.scheduler.last_epoch, self.max_iters, self.scheduler.power)
        for group, base in zip(self.optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _checkpoint_dict(self, rng_states: list[Any], fingerprints: list[str]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "epoch": self.epoch,
            "iteration": self.iteration,
            "max_iters": self.max_iters,
            "rng": rng_states,
            "sampler": {"seed": self.config.seed, "epoch": self.epoch, "world_size": self.ctx.world_size},
            "world_size": self.ctx.world_size,
            "param_fingerprints": fingerprints,
            "config": self.config.to_dict(),
            "config_changes": self._config_changes,
            # Validation of this epoch due but not yet done: a resume runs it first.
            "val_pending": self._val_pending,
            "last_val": self._last_val,
            # metrics.jsonl records up to this state: a resume drops those written after it.
            "metrics_records": self.logger.records,
            "torch_version": str(torch.__version__),
        }

    def save_checkpoint(self, *, final: bool = False) -> Path | None:
        """Write ``checkpoint.pt`` (and ``final.pt`` when ``final``) on rank 0; every rank calls it.

        Collects every rank's RNG state and a fingerprint of its parameters; ranks whose weights
        differ (a DDP bug or nondeterministic reduction) raise instead of saving silently, and
        non-finite weights (a diverged run) raise instead of replacing the last good checkpoint.
        A new run's first checkpoint also writes its ``config.json`` and ``metrics.jsonl``.
        """
        bad = _nonfinite_tensors(_unwrap(self.model))
        if bad:
            raise FloatingPointError(
                f"model weights are not finite after epoch {self.epoch} (iteration "
                f"{self.iteration}; e.g. {bad[:3]}): not saved, {self.checkpoint_path} keeps the "
                "last good epoch; lower --lr or use --amp off/bf16"
            )
        rng_states = all_gather_objects(self.ctx, capture_rng_state())
        fingerprints = all_gather_objects(self.ctx, _param_fingerprint(self.model))
        if len(set(fingerprints)) != 1:
            raise RuntimeError(f"model parameters differ between ranks: {fingerprints}")
        path = None
        if self.ctx.is_main:
            if self._commit_pending:
                self._commit_new_run()
            ckpt = self._checkpoint_dict(rng_states, fingerprints)
            path = atomic_torch_save(ckpt, self.checkpoint_path)
            self._write_config()  # after the checkpoint it describes (a no-op when unchanged)
            if final:
                path = atomic_torch_save(ckpt, self.out_dir / _FINAL_NAME)
        self._commit_pending = False
        barrier(self.ctx)
        return path

    # ------------------------------------------------------------------ loops
    def train_one_epoch(self) -> dict[str, float]:
        """One pass over this rank's shard; returns the epoch's mean loss and images/s."""
        cfg = self.config
        model, loader = self.model, self.train_loader
        loader.sampler.set_epoch(self.epoch)  # type: ignore[attr-defined]
        loader.generator.manual_seed(epoch_seed(cfg.seed, self.epoch, self.ctx.rank))
        model.train()
        bar = None
        if cfg.progress and self.ctx.is_main:
            try:
                from tqdm import tqdm

                bar = tqdm(
                    total=self.steps_per_epoch,
                    desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                    leave=False,
                    dynamic_ncols=True,
                )
            except ImportError:
                bar = None
        # Loss sums stay on the device between log points to avoid a sync per iteration.
        window = torch.zeros(2, dtype=torch.float64, device=self.device)
        epoch_sum = torch.zeros(2, dtype=torch.float64, device=self.device)
        t_epoch = t_window = time.perf_counter()
        images_window = 0
        for step, batch in enumerate(loader, 1):
            images = batch["image"].to(self.device, non_blocking=True)
            edges = batch["edges"].to(self.device, non_blocking=True)
            valid = batch["valid"].to(self.device, non_blocking=True)
            with self._autocast():
                output = model(images)
            loss = self.loss_fn(_to_float(output), edges, valid)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.iteration += 1
            d = loss.detach().to(torch.float64)
            window[0] += d
            window[1] += 1
            images_window += images.shape[0] * self.ctx.world_size
            if bar is not None:
                bar.update(1)
            last = step == self.steps_per_epoch
            if self.iteration % cfg.log_every == 0 or last:
                stats = all_reduce_sum(self.ctx, window.clone())
                mean_loss = float(stats[0] / stats[1])
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(
                        f"training loss is {mean_loss} at iteration {self.iteration} (epoch "
                        f"{self.epoch + 1}); lower --lr or use --amp off/bf16"
                    )
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                now = time.perf_counter()
                ips = images_window / max(now - t_window, 1e-9)
                self._record(
                    "train",
                    {"loss": mean_loss, "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": ips},
                    epoch=self.epoch + 1,
                )
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.1f}")
                epoch_sum += window
                window.zero_()
                images_window = 0
                t_window = now
        if bar is not None:
            bar.close()
        self.epoch += 1
        elapsed = time.perf_counter() - t_epoch
        stats = all_reduce_sum(self.ctx, epoch_sum)
        n_images = self.steps_per_epoch * cfg.batch_size
        summary = {
            "loss": float(stats[0] / max(float(stats[1]), 1.0)),
            "images_per_s": n_images / max(elapsed, 1e-9),
            "seconds": elapsed,
        }
        self._record("epoch", summary)
        return summary

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Validation loss over the whole validation set (sharded over ranks) and, on rank 0,
        MF-ODS / MF-OIS / mean AP of the fused output on the first ``val_max_images`` images.

        Returns:
            ``{"loss": float, "seconds": float}``, and with a scorer on rank 0 its metrics (floats)
            plus ``"scored_images"`` (int); when scoring failed, ``"scoring_error"`` (str) instead of
            the scorer's metrics.
        """
        cfg = self.config
        model = _unwrap(self.model)
        was_training = model.training
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        preds: list[tuple[int, np.ndarray, np.ndarray]] = []
        limit = cfg.val_max_images if cfg.val_max_images is not None else dataset_len(self.val_set)
        indices = self.val_loader.sampler.indices  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        for idx, batch in zip(indices, self.val_loader, strict=True):
            images = batch["image"].to(self.device, non_blocking=True)
            edges = batch["edges"].to(self.device, non_blocking=True)
            valid = batch["valid"].to(self.device, non_blocking=True)
            with self._autocast():
                output = model(images)
            output = _to_float(output)
            sums[0] += self.loss_fn(output, edges, valid).to(torch.float64)
            sums[1] += 1
            if self.scorer is not None and idx < limit:
                prob, gt = _scoring_maps(output.fuse[0], edges[0], valid[0], cfg.val_scale)
                preds.append((idx, prob, gt))
        all_reduce_sum(self.ctx, sums)
        metrics: dict[str, Any] = {"loss": float(sums[0] / max(float(sums[1]), 1.0))}
        if self.scorer is not None:
            gathered = gather_objects(self.ctx, preds)
            if gathered is not None:
                items = sorted((p for part in gathered for p in part), key=lambda t: t[0])
                if items:
                    probs = [p.astype(np.float32) for _, p, _ in items]
                    try:
                        scores = self.scorer(probs, [g for _, _, g in items])
                        clash = sorted(_RESERVED_METRICS.intersection(scores))
                        if clash:
                            raise ValueError(
                                f"the scorer returned the reserved key(s) {clash}, which the "
                                "trainer writes itself; rename them"
                            )
                        metrics.update(scores)
                    except Exception as exc:  # a scoring failure must not end a long run
                        warnings.warn(
                            f"validation scoring failed ({type(exc).__name__}: {exc}); "
                            "reporting the validation loss only",
                            stacklevel=2,
                        )
                        metrics["scoring_error"] = f"{type(exc).__name__}: {exc}"
                    metrics["scored_images"] = len(items)
        metrics["seconds"] = time.perf_counter() - t0
        if was_training:
            model.train()
        self._record("val", metrics)
        if not math.isfinite(metrics["loss"]):
            if not self.epoch:
                raise FloatingPointError(
                    f"validation loss of the untrained model is {metrics['loss']}: check the "
                    "data and --model-kw, or use --amp off"
                )
            raise FloatingPointError(
                f"validation loss is {metrics['loss']} after epoch {self.epoch} (iteration "
                f"{self.iteration}); {self.checkpoint_path} keeps epoch {self.epoch}'s weights, "
                "no final.pt is written; lower --lr or use --amp off/bf16"
            )
        return metrics

    def _describe_val(self, metrics: dict[str, Any]) -> str:
        text = f"val loss {metrics['loss']:.4f}"
        if "mf_ods" in metrics:
            text += (
                f"  MF-ODS {100 * metrics['mf_ods']:.1f}%"
                f" (tolerance {self.config.val_max_dist}, predictions and GT thinned, "
                f"{self.config.val_thresholds} thresholds, {metrics.get('scored_images')} "
                "images)"
            )
            for key, label in (("mf_ois", "MF-OIS"), ("mean_ap", "AP")):
                if key in metrics:
                    text += f"  {label} {100 * metrics[key]:.1f}%"
        return text

    def fit(self, *, validate_first: bool = False, max_epochs: int | None = None) -> dict[str, Any]:
        """Train from the current epoch to ``config.epochs``; returns the last metrics.

        After every epoch the checkpoint is written first and the validation (when due) runs
        after it, then a second save records the validation; ``final.pt`` is written only after
        the last epoch's validation succeeded. A run killed at any moment therefore keeps every
        finished epoch, and a resume re-runs a validation that did not finish.

        Args:
            validate_first: validate the model before training (the untrained baseline).
            max_epochs: stop after this many epochs in this call (a time-sliced job; the
                schedule still spans ``config.epochs``); None trains to the end.

        Raises:
            FloatingPointError: a non-finite training or validation loss, or non-finite weights.
        """
        cfg = self.config
        last: dict[str, Any] = {}
        if self.finished:
            return last
        if validate_first and cfg.val_every > 0:
            metrics = self.validate()
            last["val_initial"] = metrics
            self._print(f"epoch {self.epoch}/{cfg.epochs} (before training)  " + self._describe_val(metrics))
        if self.ctx.is_main:
            self._print(
                f"training {cfg.model}/{cfg.backbone} on {cfg.dataset}: {dataset_len(self.train_set)} "
                f"images, {self.steps_per_epoch} iterations/epoch, {cfg.epochs} epochs, "
                f"global batch {cfg.batch_size} on {self.ctx.world_size} process(es) "
                f"({self.device}), amp={cfg.amp}"
            )
        if self._val_pending:  # the resumed epoch's validation did not finish: run it now
            metrics = self._validate_and_record()
            last["val"] = metrics
            self._print(f"epoch {self.epoch}/{cfg.epochs} (resumed)  " + self._describe_val(metrics))
        stop_at = cfg.epochs if max_epochs is None else min(cfg.epochs, self.epoch + max_epochs)
        while self.epoch < stop_at:
            summary = self.train_one_epoch()
            last["train"] = summary
            line = (
                f"epoch {self.epoch}/{cfg.epochs}  loss {summary['loss']:.4f}  "
                f"{summary['images_per_s']:.1f} img/s"
            )
            due = cfg.val_every > 0 and (self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs)
            self._val_pending = due
            self.save_checkpoint(final=self.epoch == cfg.epochs and not due)
            if due:
                metrics = self._validate_and_record()
                last["val"] = metrics
                line += "  " + self._describe_val(metrics)
            self._print(line)
            self.logger.flush()
        return last

    def _validate_and_record(self) -> dict[str, Any]:
        """Validate the epoch just saved, then save again with the result (and ``final.pt``
        after the last epoch)."""
        metrics = self.validate()
        self._last_val = {
            "epoch": self.epoch,
            "iteration": self.iteration,
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        }
        self._val_pending = False
        self.save_checkpoint(final=self.epoch == self.config.epochs)
        return metrics

    def close(self) -> None:
        """Close log files and the process group this trainer created."""
        self.logger.close()
        if self._owns_ctx:
            cleanup_distributed(self.ctx)
