"""benchmarks/bench_train_synthetic.py: two real (tiny) training runs give a record with both
backends and their ratio; a failed run stops it without a record."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_synthetic.py"
SMALL = ["--device", "cpu", "--crop-size", "32", "--batch-size", "2", "--train-length", "4", "--epochs", "2"]

pytestmark = pytest.mark.slow


def _run(args, tmp_path):
    return subprocess.run(
        [sys.executable, str(BENCH), *SMALL, "--work-dir", str(tmp_path / "runs"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def test_record_has_each_backend_and_the_ratio(tmp_path):
    out = tmp_path / "record.md"
    res = _run(["--backends", "torch,reference", "--out", str(out), "--note", "test"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    text = out.read_text()
    assert "| torch |" in text and "| reference |" in text and "x reference" in text
    ref_row = next(line for line in text.splitlines() if line.startswith("| reference |"))
    assert ref_row.rstrip().endswith("| 1.00 |")
    assert "- note: test" in text and "- device: CPU" in text
    for backend in ("torch", "reference"):  # each backend trained in its own folder
        assert (tmp_path / "runs" / backend / "metrics.jsonl").is_file()


def test_failed_run_writes_no_record(tmp_path):
    out = tmp_path / "record.md"
    res = _run(["--backends", "torch,nosuchbackend", "--out", str(out)], tmp_path)
    assert res.returncode != 0
    assert "nosuchbackend" in res.stderr
    assert not out.exists()


def test_bad_arguments_are_refused(tmp_path):
    res = _run(["--epochs", "1"], tmp_path)
    assert res.returncode == 2 and "at least 2" in res.stderr
    res = _run(["--backends", "torch,torch"], tmp_path)
    assert res.returncode == 2 and "distinct" in res.stderr
