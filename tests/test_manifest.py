"""The atomic writer and the prediction-folder manifest (dynfuse.atomic, dynfuse.eval.manifest)."""

import json

import pytest

from dynfuse.atomic import atomic_write, atomic_write_json
from dynfuse.eval.manifest import (
    ManifestError,
    begin_manifest,
    check_manifest,
    finish_manifest,
    read_manifest,
)


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"v": 1})

    def broken(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write('{"v": ')  # half a file, then the "kill"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_atomic_write_keeps_suffix_for_format_sniffing_writers(tmp_path):
    seen = []
    atomic_write(tmp_path / "x.png", lambda tmp: (seen.append(tmp), open(tmp, "wb").close()))
    assert seen[0].endswith(".png")


def test_manifest_lifecycle(tmp_path):
    assert read_manifest(tmp_path) is None
    assert check_manifest(tmp_path) is None
    begin_manifest(tmp_path, {"tool": "test"})
    with pytest.raises(ManifestError, match="did not complete"):
        check_manifest(tmp_path)
    finish_manifest(tmp_path, images=["b", "a"], num_classes=3, producer={"tool": "test"})
    record = check_manifest(tmp_path, num_classes=3)
    assert record["images"] == ["a", "b"] and record["skipped"] == []
    with pytest.raises(ManifestError, match="3 classes, but 4"):
        check_manifest(tmp_path, num_classes=4)
    begin_manifest(tmp_path, {"tool": "rerun"})  # a rerun invalidates the finished one first
    with pytest.raises(ManifestError, match="did not complete"):
        check_manifest(tmp_path)


@pytest.mark.parametrize("content", ["", "not json", "[]", '{"format": "other"}'])
def test_manifest_rejects_foreign_files(tmp_path, content):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match="manifest.json"):
        read_manifest(tmp_path)


def test_atomic_write_gives_files_the_usual_permissions(tmp_path):
    """mkstemp's 0600 must not survive the rename: a result file is readable like any other."""
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    path = atomic_write_json(tmp_path / "r.json", {"v": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
