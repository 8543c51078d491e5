"""Process-group setup for single-process and ``torchrun`` (env://) training.

One :class:`DistContext` describes where this process runs: its global rank, the world size, the
local rank (which GPU it drives) and the torch device. ``torchrun`` (or any launcher that sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) selects the
distributed path; without those variables training runs as a single process and nothing is
initialised, so the same code runs in a notebook, a test and on a cluster.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..device import DeviceError
from ..device import resolve_device as _resolve_device
from .config import ConfigError

__all__ = [
    "DistContext",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "cleanup_distributed",
    "gather_objects",
    "init_distributed",
    "resolve_device",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process runs.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this node; selects ``cuda:<local_rank>`` on GPUs.
        device: the torch device the model and batches live on.
        distributed: whether a process group is initialised.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that logs, validates scores and writes checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """:func:`dynfuse.device.resolve_device` with its error as a :class:`ConfigError` on ``--device``."""
    try:
        return _resolve_device(spec, local_rank)
    except DeviceError as exc:
        raise ConfigError("device", exc.problem) from exc


def init_distributed(device: str = "auto", *, timeout_s: float = 1800.0) -> DistContext:
    """Initialise the process group from the environment when a launcher set it up.

    ``WORLD_SIZE`` > 1 (as set by ``torchrun``) selects env:// initialisation with NCCL for CUDA
    devices and gloo for CPU; otherwise a single-process context is returned and no process group
    is created. Calling it when a group already exists reuses that group.

    Args:
        device: ``--device`` value, see :func:`resolve_device`.
        timeout_s: collective timeout; long, because rank 0 validates while others wait.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid launcher environment: RANK={rank}, WORLD_SIZE={world_size}")
    torch_device = resolve_device(device, local_rank)
    if world_size == 1:
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        return DistContext(0, 1, 0, torch_device, False)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = torch_device
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            timeout=datetime.timedelta(seconds=timeout_s),
            **kwargs,
        )
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, torch_device, True)


def cleanup_distributed(ctx: DistContext) -> None:
    """Destroy the process group created by :func:`init_distributed` (no-op when single)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op when single)."""
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Sum a float64/float32 tensor over ranks in place and return it (no-op when single)."""
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Gather one picklable object from every rank, ordered by rank (``[obj]`` when single)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_objects(ctx: DistContext, obj: Any, dst: int = 0) -> list[Any] | None:
    """Gather one picklable object from every rank onto rank ``dst`` (ordered by rank).

    Returns the list on ``dst`` and None elsewhere (``[obj]`` when single); unlike
    :func:`all_gather_objects` the other ranks never hold everybody's data.
    """
    if not ctx.distributed:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out
