"""``--device`` strings to torch devices, for every command (training, prediction).

Lives outside :mod:`dynfuse.training` so that inference does not import the trainer.
"""

from __future__ import annotations

import torch

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(ValueError):
    """A ``--device`` value that names no usable device; ``problem`` is the message without the
    word "device" in front (so a command can prefix it with its own flag name)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"device {problem}")


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """Turn ``--device`` into a torch device.

    Args:
        spec: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` (this process's
            local GPU) or an explicit ``"cuda:N"``.
        local_rank: which GPU ``"auto"``/``"cuda"`` pick under a launcher.

    Raises:
        DeviceError: (a ValueError) an unknown spec, CUDA asked for without CUDA, or a GPU index
            that does not exist.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{spec!r} was requested but CUDA is not available")
        if spec == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        try:
            device = torch.device(spec)
        except RuntimeError as exc:
            raise DeviceError(f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}") from exc
        if device.type != "cuda":
            raise DeviceError(f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
        return device
    raise DeviceError(f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
