"""Rank-0 metrics sinks: a JSON-lines file and (when installed) TensorBoard scalars.

Every record is one JSON object per line with at least ``kind`` (``"train"``, ``"epoch"``,
``"val"``, ...), ``epoch`` and ``iteration``; the same numeric fields go to TensorBoard as
``<kind>/<field>`` scalars at step ``iteration``. Other ranks get a disabled logger so callers need
no rank checks.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "read_jsonl"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the information readable
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    return value


class MetricsLogger:
    """Append metrics to ``<output_dir>/metrics.jsonl`` and TensorBoard ``<output_dir>/tb``.

    Args:
        output_dir: run folder (created when enabled).
        enabled: False on non-zero ranks: every method becomes a no-op.
        tensorboard: write TensorBoard event files when ``torch.utils.tensorboard`` imports.
        fresh: start ``metrics.jsonl`` empty (a new run); False appends (a resumed run).
    """

    def __init__(self, output_dir: str | os.PathLike, *, enabled: bool = True,
                 tensorboard: bool = True, fresh: bool = False) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = None
        self.tensorboard_error: str | None = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.path.write_text("", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as exc:  # tensorboard missing or broken: metrics still go to JSONL
                self.tensorboard_error = f"{type(exc).__name__}: {exc}"
            else:
                self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tb"))

    def log(self, kind: str, *, epoch: int, iteration: int, **fields: Any) -> None:
        """Append one record and mirror its numeric fields to TensorBoard."""
        if not self.enabled:
            return
        record = {"kind": kind, "epoch": epoch, "iteration": iteration, "time": time.time()}
        record.update({k: _jsonable(v) for k, v in fields.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key in ("kind", "epoch", "iteration", "time"):
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, iteration)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_jsonl(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """Read a metrics file back (optionally only records of one ``kind``)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if kind is None or rec.get("kind") == kind:
                records.append(rec)
    return records
