"""Atomic file writes: a reader (or a rerun after a kill) never sees half a file.

Every tool that writes a result goes through :func:`atomic_write`: the content goes to a temporary
file in the destination folder (so the final ``os.replace`` is a same-filesystem rename, atomic on
POSIX and Windows), is flushed and fsynced, and only then replaces ``path``. On any error the
temporary file is removed and whatever was at ``path`` before is left untouched.

This module imports only the standard library so that torch-free code (``dynfuse.eval``) can use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir"]


def _process_umask() -> int:
    # os.umask can only be read by setting it; do it once, at import, before any thread writes.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates its file with mode 0600; a result file gets what open() would have given it.
_FILE_MODE = 0o666 & ~_process_umask()


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside ``folder`` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[str], object], *, durable: bool = True
) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``.

    Args:
        path: destination file; its folder is created if missing.
        write: writes the whole content to the temporary path it is given (its return value is
            ignored) (e.g. ``np.savez``,
            ``image.save``, ``torch.save``). The temporary name keeps ``path``'s suffix so
            writers that pick a format from the extension still work.
        durable: fsync the file and its folder (off for many small files where a crash may lose
            the newest ones but must never leave a partial one).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write, durable=durable)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, durable: bool = True) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", durable=durable)
