"""Smoke test of benchmarks/bench_model.py's measurement code (one tiny step per configuration)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_model.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_model", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config", ["authors", "fast+ckpt", "fast+top", "fast+fused"])
def test_child_measures_a_training_step(bench, config):
    saved = torch.get_num_threads()
    try:
        res = bench.run_child(
            {
                "backbone": "tiny",
                "crop": 24,
                "batch": 2,
                "config": config,
                "device": "cpu",
                "steps": 1,
                "warmup": 0,
                "threads": 1,
            }
        )
    finally:
        torch.set_num_threads(saved)
    assert res["status"] == "ok"
    assert res["step_s"] > 0 and res["images_per_s"] == pytest.approx(2 / res["step_s"])
    assert res["fusion_backend"] in ("reference", "torch", "triton")
    assert res["rss_peak_gb"] > 0


def test_headline_targets(bench):
    rows = [
        {
            "model": "DFF-resnet50",
            "crop": 640,
            "batch": 8,
            "config": "fast",
            "status": "ok",
            "speedup": 2.6,
            "mem_ratio": 0.6,
            "peak_gb": 30.0,
        },
        {
            "model": "DFF-resnet101",
            "crop": 640,
            "batch": 8,
            "config": "fast+ckpt",
            "status": "ok",
            "speedup": None,
            "mem_ratio": None,
            "peak_gb": 39.0,
        },
        {
            "model": "DFF-resnet50",
            "crop": 512,
            "batch": 8,
            "config": "fast",
            "status": "ok",
            "speedup": 9.0,
            "mem_ratio": 0.1,
            "peak_gb": 1.0,
        },
    ]
    lines = bench.headline(rows)
    assert len(lines) == 2
    assert lines[0].endswith("MISS") and "x0.60 peak memory" in lines[0]
    assert lines[1].endswith("PASS")
