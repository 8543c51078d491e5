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
import warnings
from pathlib import Path
from typing import Any

from dynfuse.atomic import atomic_write_text

__all__ = ["MetricsLogger", "read_jsonl"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the information readable
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    return value


class MetricsLogger:
    """Append metrics to ``<output_dir>/metrics.jsonl`` and TensorBoard ``<output_dir>/tb``.

    Each record is one line written with a single ``write`` call; a process killed mid-write can
    leave at most a torn last line, which :func:`read_jsonl` skips with a warning and a resume
    cuts off (``keep_records``).

    Args:
        output_dir: run folder (created when enabled).
        enabled: False on non-zero ranks: every method becomes a no-op.
        tensorboard: write TensorBoard event files when ``torch.utils.tensorboard`` imports.
        fresh: start ``metrics.jsonl`` empty (a new run); False appends (a resumed run).
        keep_records: when appending, first cut ``metrics.jsonl`` back to its first
            ``keep_records`` records (those a checkpoint counted: a resumed run replays what came
            after). None keeps everything.
        deferred: keep records in memory and touch no file until :meth:`commit` (a new run writes
            its files only when its first checkpoint lands).
        purge_step: TensorBoard hides the events at and after this step that an earlier process
            wrote (a resumed run replays them).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        fresh: bool = False,
        keep_records: int | None = None,
        deferred: bool = False,
        purge_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb: Any = None  # a SummaryWriter once opened
        self._tb_wanted = tensorboard
        self._purge_step = purge_step
        self.tensorboard_error: str | None = None
        self.records = 0  # records written to (or waiting for) metrics.jsonl
        self.deferred = deferred
        self._pending: list[dict[str, Any]] = []
        if not enabled or deferred:
            return
        self._open(fresh=fresh, keep_records=keep_records)

    def _open(self, *, fresh: bool, keep_records: int | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            atomic_write_text(self.path, "")
        elif self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            lines = [ln for ln in text.splitlines(keepends=True) if ln.strip()]
            if lines and not lines[-1].endswith("\n"):
                lines = lines[:-1]  # a torn last line of a killed process
            if keep_records is not None and len(lines) < keep_records:
                warnings.warn(
                    f"{self.path} holds {len(lines)} records, fewer than the "
                    f"{keep_records} the checkpoint counted; keeping them",
                    stacklevel=3,
                )
            keep = len(lines) if keep_records is None else min(keep_records, len(lines))
            if keep != len(lines) or (text and not text.endswith("\n")):
                atomic_write_text(self.path, "".join(lines[:keep]))
            self.records = keep
        if self._tb_wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as exc:  # tensorboard missing or broken: metrics still go to JSONL
                self.tensorboard_error = f"{type(exc).__name__}: {exc}"
            else:
                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tb"), purge_step=self._purge_step)

    def commit(self) -> None:
        """Deferred mode: write ``metrics.jsonl`` (atomically) and TensorBoard from the records
        kept so far, then log straight to the files."""
        if not self.enabled or not self.deferred:
            return
        self.deferred = False
        pending, self._pending = self._pending, []
        self.records = 0
        self._open(fresh=True, keep_records=None)
        text = "".join(json.dumps(rec) + "\n" for rec in pending)
        atomic_write_text(self.path, text)
        self.records = len(pending)
        for rec in pending:
            self._to_tensorboard(rec)

    def log(self, kind: str, *, epoch: int, iteration: int, **fields: Any) -> None:
        """Append one record and mirror its numeric fields to TensorBoard."""
        if not self.enabled:
            return
        record = {"kind": kind, "epoch": epoch, "iteration": iteration, "time": time.time()}
        record.update({k: _jsonable(v) for k, v in fields.items()})
        self.records += 1
        if self.deferred:
            self._pending.append(record)
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
        self._to_tensorboard(record)

    def _to_tensorboard(self, record: dict[str, Any]) -> None:
        if self._tb is None:
            return
        for key, value in record.items():
            if key in ("kind", "epoch", "iteration", "time"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{record['kind']}/{key}", value, record["iteration"])

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
        text = f.read()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not text.endswith("\n"):
                warnings.warn(
                    f"{path}: skipping a torn last line (a process was killed while writing it)", stacklevel=2
                )
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}") from None
        if kind is None or rec.get("kind") == kind:
            records.append(rec)
    return records
