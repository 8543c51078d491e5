"""The manifest of a prediction folder: what a *completed* prediction run wrote.

``dynfuse-predict`` (or any producer) calls :func:`begin_manifest` before it writes its first map
and :func:`finish_manifest` after its last one. In between, ``manifest.json`` says
``"complete": false``, so a killed or failed run, or one that overwrote part of an older run's
maps, is never mistaken for a finished one. ``dynfuse-eval`` reads it with :func:`read_manifest`
and :func:`check_manifest`.

Layout of ``<pred_dir>/manifest.json`` (format version 1)::

    {
      "format": "dynfuse-predictions", "version": 1,
      "complete": true,                 # false while a run is writing (or after it died)
      "num_classes": 19,                # K: class_001 ... class_019
      "images": ["frankfurt/frankfurt_000000_000294", ...],   # names written, sorted
      "skipped": [{"name": "...", "reason": "..."}],           # inputs that were skipped
      "producer": {...}                 # who made it: tool, checkpoint, settings, versions
    }
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "ManifestError",
    "begin_manifest",
    "check_manifest",
    "finish_manifest",
    "read_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "dynfuse-predictions"
MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """A prediction folder's manifest is unreadable, incomplete, or does not fit the request."""


def _record(complete: bool, producer: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "complete": complete,
        "producer": producer,
        **fields,
    }


def begin_manifest(pred_dir: str | os.PathLike[str], producer: dict[str, Any]) -> Path:
    """Mark ``pred_dir`` as being written (``"complete": false``) before any map is (over)written."""
    return atomic_write_json(Path(pred_dir) / MANIFEST_NAME, _record(False, producer))


def finish_manifest(
    pred_dir: str | os.PathLike[str],
    *,
    images: list[str],
    num_classes: int,
    producer: dict[str, Any],
    skipped: list[dict[str, str]] | None = None,
) -> Path:
    """Mark ``pred_dir`` complete, listing the ``images`` written and the inputs ``skipped``."""
    record = _record(
        True,
        producer,
        num_classes=int(num_classes),
        images=sorted(images),
        skipped=list(skipped or []),
    )
    return atomic_write_json(Path(pred_dir) / MANIFEST_NAME, record)


def read_manifest(pred_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of ``pred_dir``, or None when the folder has none (made by another tool).

    Raises:
        ManifestError: the file exists but is not a dynfuse prediction manifest.
    """
    path = Path(pred_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read the prediction manifest ({e})") from e
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(record, dict) or record.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    if record.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest version {record.get('version')!r} is not {MANIFEST_VERSION}")
    return record


def check_manifest(pred_dir: str | os.PathLike[str], num_classes: int | None = None) -> dict[str, Any] | None:
    """Read the manifest and refuse a folder that a prediction run did not finish.

    Returns:
        The manifest, or None when the folder has none (the caller decides whether to warn).

    Raises:
        ManifestError: the run that wrote the folder did not complete (killed, failed, or still
            running), or its class count differs from ``num_classes``.
    """
    record = read_manifest(pred_dir)
    if record is None:
        return None
    path = Path(pred_dir) / MANIFEST_NAME
    if not record.get("complete"):
        raise ManifestError(
            f"{path}: the prediction run that writes this folder did not complete (killed, failed or "
            "still running); its maps may mix two runs. Rerun the prediction."
        )
    if num_classes is not None and record.get("num_classes") != num_classes:
        raise ManifestError(
            f"{path}: predictions have {record.get('num_classes')} classes, but {num_classes} were asked for"
        )
    return record
