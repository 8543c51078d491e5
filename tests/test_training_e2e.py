"""End-to-end training runs with the real tiny DFF and the real Synthetic dataset (CPU)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynfuse.training import TrainConfig, Trainer, load_checkpoint, main, read_jsonl
from dynfuse.training.distributed import DistContext
from dynfuse.training.engine import _param_fingerprint

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--dataset",
    "synthetic",
    "--backbone",
    "tiny",
    "--num-classes",
    "3",
    "--train-length",
    "8",
    "--val-length",
    "2",
    "--crop-size",
    "32",
    "--batch-size",
    "4",
    "--val-thresholds",
    "5",
    "--no-progress",
]


def _has_eval() -> bool:
    try:
        from dynfuse.eval import evaluate_edges  # noqa: F401
    except ImportError:
        return False
    return True


def test_synthetic_two_epochs_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main([*TINY, "--epochs", "2", "--val-every", "1", "--output-dir", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "(before training)" in text and "epoch 2/2" in text and "val loss" in text
    epochs = read_jsonl(out / "metrics.jsonl", kind="epoch")
    vals = read_jsonl(out / "metrics.jsonl", kind="val")
    trains = read_jsonl(out / "metrics.jsonl", kind="train")
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert len(vals) == 3  # untrained, after epoch 1, after epoch 2
    assert [r["iteration"] for r in trains][-1] == 4  # 8 images / batch 4 x 2 epochs
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in trains)
    if _has_eval():
        assert "MF-ODS" in text
        assert all(0.0 <= r["mf_ods"] <= 1.0 for r in vals)
    final = load_checkpoint(out / "final.pt")
    last = load_checkpoint(out / "checkpoint.pt")
    assert final["epoch"] == last["epoch"] == 2 and final["iteration"] == 4
    assert final["config"]["num_classes"] == 3
    assert (out / "config.json").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def _config(out: Path, **kw) -> TrainConfig:
    base = dict(
        dataset="synthetic",
        backbone="tiny",
        num_classes=3,
        train_length=12,
        val_length=2,
        crop_size=32,
        batch_size=4,
        epochs=2,
        log_every=1,
        val_every=1,
        val_thresholds=5,
        output_dir=str(out),
        tensorboard=False,
        progress=False,
        device="cpu",
        seed=5,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_resume_matches_uninterrupted_run_real_model(tmp_path):
    straight = Trainer(_config(tmp_path / "a"), ctx=DistContext())
    straight.fit()
    half = Trainer(_config(tmp_path / "b"), ctx=DistContext())
    half.fit(max_epochs=1)
    rest = Trainer(_config(tmp_path / "b", resume=str(tmp_path / "b" / "checkpoint.pt")), ctx=DistContext())
    assert (rest.epoch, rest.iteration) == (1, 3)
    rest.fit()
    want = [(r["iteration"], r["loss"]) for r in read_jsonl(tmp_path / "a" / "metrics.jsonl", "train")]
    got = [(r["iteration"], r["loss"]) for r in read_jsonl(tmp_path / "b" / "metrics.jsonl", "train")]
    assert len(want) == 6
    assert got == want  # bitwise: same batches, augmentations, weights and momentum
    assert _param_fingerprint(straight.model) == _param_fingerprint(rest.model)
    for name, buf in straight.model.named_buffers():
        assert torch.equal(buf, dict(rest.model.named_buffers())[name]), name


def test_two_process_gloo_ddp(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    # --standalone: a private rendezvous on a free local port (env:// init in each rank)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "examples" / "train_dff.py"),
        *TINY,
        "--epochs",
        "2",
        "--val-every",
        "2",
        "--log-every",
        "1",
        "--output-dir",
        str(out),
        "--no-tensorboard",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ck = load_checkpoint(out / "final.pt")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2
    # each rank fingerprinted its own parameters at save time: they agree bitwise
    fp = ck["param_fingerprints"]
    assert len(fp) == 2 and fp[0] == fp[1]
    # ... and match the weights rank 0 saved
    from dynfuse.models import create_model

    net = create_model("dff", backbone="tiny", num_classes=3)
    net.load_state_dict(ck["model"])
    assert _param_fingerprint(net) == fp[0]
    trains = read_jsonl(out / "metrics.jsonl", kind="train")
    # 8 images, global batch 4 over 2 ranks: 2 iterations per epoch, logged once (by rank 0)
    assert [r["iteration"] for r in trains] == [1, 2, 3, 4]
    assert proc.stdout.count("epoch 2/2") == 1  # only rank 0 prints


def test_resume_refuses_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    rc = main([*TINY, "--epochs", "1", "--output-dir", str(tmp_path), "--resume", str(bad)])
    assert rc == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_runs_on_cpu(tmp_path, amp):
    trainer = Trainer(
        _config(tmp_path / amp, amp=amp, epochs=1, train_length=4, val_every=0), ctx=DistContext()
    )
    trainer.fit()
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    assert all(math.isfinite(r["loss"]) for r in trainer.history if r["kind"] == "train")
    ck = load_checkpoint(trainer.checkpoint_path)
    assert bool(ck["scaler"]) == (amp == "fp16")


def _fake_prepared_root(root: Path, num_classes: int, sizes: dict[str, list[tuple[int, int]]]):
    """A dynfuse-prepare style tree: images, bit-packed edge PNGs and <split>.txt lists."""
    import numpy as np
    from PIL import Image

    from dynfuse.data import write_edge_png

    rng = np.random.default_rng(0)
    for split, shapes in sizes.items():
        lines = []
        for i, (h, w) in enumerate(shapes):
            img = f"images/{split}_{i}.png"
            edg = f"edges/{split}_{i}.png"
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "edges").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / img)
            write_edge_png(root / edg, rng.random((num_classes, h, w)) > 0.9)
            lines.append(f"{img} {edg}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("dataset,k", [("cityscapes", 19), ("sbd", 20)])
def test_prepared_datasets_train(tmp_path, dataset, k):
    root = tmp_path / "data"
    # SBD validation pads to 512 x 512 as the paper does; one small image keeps it quick
    _fake_prepared_root(root, k, {"train": [(30, 44), (41, 36)], "val": [(27, 35)]})
    out = tmp_path / "run"
    rc = main(
        [
            "--dataset",
            dataset,
            "--data-root",
            str(root),
            "--backbone",
            "tiny",
            "--crop-size",
            "24",
            "--batch-size",
            "2",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--val-thresholds",
            "3",
            "--output-dir",
            str(out),
            "--no-progress",
            "--no-tensorboard",
        ]
    )
    assert rc == 0
    ck = load_checkpoint(out / "final.pt")
    assert ck["config"]["num_classes"] == k and ck["config"]["lr"] == (
        0.08 if dataset == "cityscapes" else 0.05
    )
    assert len(read_jsonl(out / "metrics.jsonl", kind="val")) == 1
