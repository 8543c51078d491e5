"""Datasets, samplers and loaders for training, chosen by :class:`~dynfuse.training.TrainConfig`.

Data order is a pure function of ``(seed, epoch, rank)``: the training sampler is a
``DistributedSampler`` (also with one process) re-seeded by ``set_epoch``, and the loader's own
generator, which seeds the worker processes' RNGs, is re-seeded at every epoch. Resuming at an epoch
boundary therefore replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .config import ConfigError, TrainConfig
from .distributed import DistContext

__all__ = [
    "ShardSampler",
    "build_datasets",
    "build_train_loader",
    "build_val_loader",
    "cache_raw_samples",
    "dataset_len",
    "epoch_seed",
]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A well-mixed 63-bit seed for one (run seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(2, np.uint64)[0] >> 1)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order, without padding (exact validation sums)."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _CachedLoad:
    """Replaces an ``EdgeDataset``'s ``load``: returns a shallow copy of a pre-rendered sample."""

    def __init__(self, samples: list[dict[str, Any]]) -> None:
        self.samples = samples

    def __call__(self, index: int) -> dict[str, Any]:
        return dict(self.samples[index])


def _load_range(dataset: Any, start: int, stop: int) -> list[dict[str, Any]]:
    return [dataset.load(i) for i in range(start, stop)]


def cache_raw_samples(dataset: Any, processes: int = 0) -> Any:
    """Render every raw sample of a procedural ``EdgeDataset`` once and keep it in memory.

    The dataset's ``load`` is replaced by a lookup, so augmentation (the ``transform``) and
    normalisation still run per access and results are identical to the uncached dataset.
    ``processes`` > 1 renders in a fork pool (a GPU run's CPU would otherwise starve the GPU).
    """
    n = len(dataset)
    if processes > 1 and n > processes:
        import multiprocessing as mp

        bounds = np.linspace(0, n, processes + 1).astype(int)
        with mp.get_context("fork").Pool(processes) as pool:
            ranges = [(dataset, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            parts = pool.starmap(_load_range, ranges)
        samples = [s for part in parts for s in part]
    else:
        samples = _load_range(dataset, 0, n)
    dataset.load = _CachedLoad(samples)
    return dataset


def dataset_len(dataset: Dataset) -> int:
    """Number of items of a map-style dataset.

    ``torch.utils.data.Dataset`` declares no ``__len__`` (iterable datasets have none), but the
    samplers here need one; a dataset without it fails here with Python's own ``TypeError``.
    """
    return len(cast(Sized, dataset))


def _data_root(config: TrainConfig) -> str:
    # TrainConfig rejects a missing root on construction; a config edited since gets the same error.
    if config.data_root is None:
        raise ConfigError("data_root", f"is required for dataset {config.dataset!r}")
    return config.data_root


def build_datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """Training and validation datasets for ``config.dataset``.

    Items are dicts ``{"image": float32 (3,H,W) normalised, "edges": float32 (K,H,W) in {0,1},
    "valid": bool (H,W), "name": str}``; training items are augmented and cropped to
    ``crop_size`` as the paper does (``dynfuse.data`` holds the transforms).
    """
    from dynfuse.data.transforms import train_transforms, val_transforms

    crop = config.crop_size
    if config.dataset == "synthetic":
        from dynfuse.data.synthetic import Synthetic

        # Scenes are rendered at the crop size; training adds the paper's random mirror.
        kwargs: dict[str, Any] = {"num_classes": config.num_classes, "size": crop, "seed": config.seed}
        train: Dataset = Synthetic(
            length=config.train_length or 320, split="train", transform=train_transforms(crop), **kwargs
        )
        val: Dataset = Synthetic(length=config.val_length or 32, split="val", **kwargs)
        if config.cache:
            cache_raw_samples(train, config.workers)
            cache_raw_samples(val, config.workers)
        return train, val
    if config.dataset == "cityscapes":
        from dynfuse.data import Cityscapes

        root = _data_root(config)
        # Paper: random short side in [0.75, 2] x base size 640, mirror, crop; full-size val.
        short_side = (round(0.75 * crop), 2 * crop)
        train = Cityscapes(
            root,
            "train",
            num_classes=config.num_classes,
            transform=train_transforms(crop, short_side=short_side),
        )
        val = Cityscapes(root, "val", num_classes=config.num_classes)
        return train, val
    if config.dataset == "sbd":
        from dynfuse.data import SBD

        root = _data_root(config)
        # Paper: scales are applied offline (dynfuse-prepare sbd); val padded to 512 x 512.
        train = SBD(root, "train", transform=train_transforms(crop), num_classes=config.num_classes)
        val = SBD(root, "val", transform=val_transforms(512), num_classes=config.num_classes)
        return train, val
    raise ValueError(f"unknown dataset {config.dataset!r}")


def per_rank_batch(config: TrainConfig, ctx: DistContext) -> int:
    """The per-process batch: the global ``batch_size`` split evenly over ranks."""
    if config.batch_size % ctx.world_size != 0:
        raise ConfigError(
            "batch_size",
            f"(global) must be divisible by the number of processes "
            f"{ctx.world_size}, got {config.batch_size}",
        )
    return config.batch_size // ctx.world_size


def build_train_loader(dataset: Dataset, config: TrainConfig, ctx: DistContext) -> DataLoader:
    """Shuffled, drop-last loader of this rank's share of the global batch.

    Call ``loader.sampler.set_epoch(e)`` and ``loader.generator.manual_seed(epoch_seed(...))``
    before each epoch (the trainer does).
    """
    batch = per_rank_batch(config, ctx)
    n = dataset_len(dataset)
    if n < config.batch_size:
        raise ConfigError(
            "batch_size", f"(global) must be at most the training set's {n} items, got {config.batch_size}"
        )
    sampler: DistributedSampler = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=True,
        generator=torch.Generator(),
        # Fresh workers per epoch: their seeds then come from the per-epoch generator seed.
        persistent_workers=False,
    )


def build_val_loader(dataset: Dataset, config: TrainConfig, ctx: DistContext) -> DataLoader:
    """Unshuffled loader of this rank's shard; batch 1 because images may differ in size.

    It has its own generator so that validating draws nothing from the global torch RNG: a run
    that validates (or re-validates after a resume) trains on exactly as if it had not.
    """
    sampler = ShardSampler(dataset_len(dataset), ctx.rank, ctx.world_size)
    return DataLoader(
        dataset,
        batch_size=1,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )
