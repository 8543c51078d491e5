"""Unit tests of dynfuse.training: schedule, parameter groups, checkpoints and exact resume.

Small stand-in modules keep these fast; tests/test_training_e2e.py runs the real model and data.
"""

from __future__ import annotations

import math
import os
import random
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from dynfuse.training import (
    CheckpointError,
    PolyLR,
    TrainConfig,
    Trainer,
    atomic_torch_save,
    build_optimizer,
    build_param_groups,
    capture_rng_state,
    extract_model_state,
    load_checkpoint,
    load_model_state,
    parse_config,
    poly_factor,
    read_jsonl,
    restore_rng_state,
)
from dynfuse.training.distributed import DistContext


class Out(NamedTuple):
    side5: torch.Tensor
    fuse: torch.Tensor
    weights: torch.Tensor


class StandInNet(nn.Module):
    """Backbone + head with BatchNorm, returning (side5, fuse) logits like a DFF model."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.ModuleDict(
            {
                "side5": nn.Conv2d(6, k, 1),
                "fuse": nn.Conv2d(6 + k, k, 3, padding=1),
                "drop": nn.Dropout2d(0.2),  # consumes torch RNG: resume must restore it
            }
        )

    def forward(self, x: torch.Tensor) -> Out:
        f = self.head["drop"](self.backbone(x))
        s5 = self.head["side5"](f)
        return Out(s5, self.head["fuse"](torch.cat([f, s5], 1)), s5.new_zeros(()))


class StandInData(torch.utils.data.Dataset):
    """Random-rectangle edge scenes with a random flip drawn from the global torch RNG."""

    def __init__(self, n: int, k: int = 3, size: int = 12, seed: int = 0, augment: bool = True):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.edges = (torch.rand(n, k, size, size, generator=g) > 0.8).float()
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        img, edg = self.images[i], self.edges[i]
        valid = torch.ones(img.shape[1:], dtype=torch.bool)
        if self.augment and torch.rand(()) < 0.5:
            img, edg = img.flip(-1), edg.flip(-1)
        if self.augment:
            img = img + 0.05 * torch.randn_like(img)
        return {"image": img, "edges": edg, "valid": valid, "name": f"s{i}"}


def simple_loss(out, edges, valid):
    w = valid[:, None].float()
    bce = nn.functional.binary_cross_entropy_with_logits
    return bce(out.side5, edges, weight=w) + bce(out.fuse, edges, weight=w)


def make_trainer(tmp_path, name: str, *, score: bool = False, **overrides) -> Trainer:
    cfg = dict(
        dataset="synthetic",
        backbone="standin",
        num_classes=3,
        epochs=2,
        batch_size=4,
        crop_size=12,
        lr=0.01,
        output_dir=str(tmp_path / name),
        log_every=1,
        val_every=1,
        tensorboard=False,
        progress=False,
        device="cpu",
        seed=3,
    )
    cfg.update(overrides)
    config = TrainConfig(**cfg)

    def scorer(preds, gts):
        return {"mf_ods": float(np.mean([(p > 0.5).mean() for p in preds]))}

    torch.manual_seed(0)  # the stand-in is built here, before the trainer seeds
    return Trainer(
        config,
        model=StandInNet(),
        train_set=StandInData(20, seed=1),
        val_set=StandInData(5, seed=2, augment=False),
        loss_fn=simple_loss,
        scorer=scorer if score else None,
        ctx=DistContext(),
    )


# ---------------------------------------------------------------- schedule and param groups
def test_poly_schedule_values_and_state_dict():
    net = StandInNet()
    opt = build_optimizer(net, 0.1)
    sched = PolyLR(opt, max_iters=7, power=0.9)
    seen = []
    for _ in range(9):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for i, lrs in enumerate(seen):
        f = max(0.0, 1 - i / 7) ** 0.9
        assert lrs == pytest.approx([0.1 * f, 1.0 * f], rel=1e-12, abs=1e-15)
    assert seen[7] == [0.0, 0.0] and seen[8] == [0.0, 0.0]
    assert poly_factor(3, 10, 0.9) == pytest.approx(0.7**0.9)
    # state_dict round trip continues the same sequence
    opt2 = build_optimizer(StandInNet(), 0.1)
    s1 = PolyLR(build_optimizer(StandInNet(), 0.1), 7)
    for _ in range(3):
        s1.optimizer.step()
        s1.step()
    s2 = PolyLR(opt2, 7)
    s2.load_state_dict(s1.state_dict())
    opt2.load_state_dict(s1.optimizer.state_dict())
    opt2.step()
    s2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 4 / 7) ** 0.9)
    with pytest.raises(ValueError, match="max_iters"):
        PolyLR(opt, 0)


def test_param_groups_backbone_base_lr_head_ten_times():
    net = StandInNet()
    groups = build_param_groups(net, 0.05, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == 0.05 and groups[1]["lr"] == pytest.approx(0.5)
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in net.backbone.parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.head.parameters()}
    opt = build_optimizer(net, 0.05)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 for g in opt.param_groups)
    # A wrapper exposing .module (as DDP does) is unwrapped.
    wrapper = nn.Module()
    wrapper.module = net
    assert len(build_param_groups(wrapper, 0.05)[1]["params"]) == len(list(net.head.parameters()))
    with pytest.raises(TypeError, match="backbone"):
        build_param_groups(nn.Linear(2, 2), 0.1)
    with pytest.raises(ValueError, match="lr"):
        build_param_groups(net, 0.0)


# ---------------------------------------------------------------- config
def test_dataset_defaults_reproduce_paper():
    cs = parse_config(["--dataset", "cityscapes", "--data-root", "/x"])
    assert (cs.lr, cs.batch_size, cs.crop_size, cs.epochs, cs.num_classes) == (0.08, 8, 640, 200, 19)
    sbd = parse_config(["--dataset", "sbd", "--data-root", "/x"])
    assert (sbd.lr, sbd.batch_size, sbd.crop_size, sbd.epochs, sbd.num_classes) == (0.05, 16, 352, 10, 20)
    for c in (cs, sbd):
        assert (c.momentum, c.weight_decay, c.head_lr_mult, c.poly_power) == (0.9, 1e-4, 10.0, 0.9)
    syn = parse_config(["--lr", "0.02", "--model-kw", "learner=invariant", "--model-kw", "x=3"])
    assert syn.backbone == "tiny" and syn.lr == 0.02
    assert syn.model_kwargs == {"learner": "invariant", "x": 3}
    with pytest.raises(SystemExit):
        parse_config(["--dataset", "cityscapes"])  # needs --data-root
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")


# ---------------------------------------------------------------- checkpoint files
def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "checkpoint.pt"
    atomic_torch_save({"a": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(3))
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")  # the crash happens mid-write
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"a": torch.arange(5)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(3))
    assert os.listdir(path.parent) == ["checkpoint.pt"]  # no temp file left behind
    atomic_torch_save({"a": torch.arange(5)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(5))
    assert os.listdir(path.parent) == ["checkpoint.pt"]


def test_load_checkpoint_rejects_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    trainer = make_trainer(tmp_path, "ok", epochs=1)
    trainer.fit()
    good = trainer.checkpoint_path
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(garbage)
    bare = tmp_path / "bare.pt"
    torch.save(StandInNet().state_dict(), bare)
    with pytest.raises(CheckpointError, match="bare model weights"):
        load_checkpoint(bare)
    ck = load_checkpoint(good)
    del ck["rng"]
    torch.save(ck, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lacks required entries"):
        load_checkpoint(tmp_path / "partial.pt")
    ck = load_checkpoint(good)
    ck["version"] = 99
    torch.save(ck, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(tmp_path / "future.pt")
    # weights of another model: a readable error naming the mismatch
    state = extract_model_state(load_checkpoint(good))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_model_state(StandInNet(k=5), state)
    state_missing = {k: v for k, v in state.items() if not k.startswith("head.fuse")}
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model_state(StandInNet(), state_missing)
    # resuming a run with other classes is refused before anything is loaded
    with pytest.raises(CheckpointError, match="num_classes"):
        make_trainer(tmp_path, "other", num_classes=5, resume=str(good))


def test_extract_model_state_strips_module_prefix():
    net = StandInNet()
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    state = extract_model_state(wrapped)
    assert set(state) == set(net.state_dict())
    load_model_state(StandInNet(), state)


def test_rng_state_round_trip():
    state = capture_rng_state()
    a = (np.random.rand(3), torch.rand(3), random.random())  # noqa: NPY002 (global state)
    restore_rng_state(state)
    b = (np.random.rand(3), torch.rand(3), random.random())  # noqa: NPY002
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


# ---------------------------------------------------------------- training runs
def test_resume_continues_exactly(tmp_path):
    straight = make_trainer(tmp_path, "straight", score=True)
    straight.fit()
    straight.close()

    first = make_trainer(tmp_path, "split", score=True)
    first.fit(max_epochs=1)
    first.close()
    assert first.epoch == 1 and first.checkpoint_path.is_file()
    assert not (tmp_path / "split" / "final.pt").exists()
    second = make_trainer(tmp_path, "split", score=True, resume="auto")
    assert second.epoch == 1 and second.iteration == first.iteration
    second.fit()
    second.close()

    def losses(records, kind):
        return [(r["iteration"], r["loss"]) for r in records if r["kind"] == kind]

    want = losses(straight.history, "train")
    got = losses(first.history, "train") + losses(second.history, "train")
    assert len(want) == 2 * straight.steps_per_epoch == len(got)
    assert got == want  # bitwise identical per-iteration losses
    assert losses(second.history, "val") == losses(straight.history, "val")[1:]
    for (n, p), q in zip(
        straight.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), n
    # the JSONL log of the split run holds both halves, in order
    log = read_jsonl(tmp_path / "split" / "metrics.jsonl", kind="train")
    assert [(r["iteration"], r["loss"]) for r in log] == want
    ck = load_checkpoint(tmp_path / "split" / "final.pt")
    assert ck["epoch"] == 2 and ck["iteration"] == 2 * straight.steps_per_epoch
    assert len(ck["param_fingerprints"]) == 1


def test_loss_decreases_and_lr_follows_poly(tmp_path):
    trainer = make_trainer(tmp_path, "run", epochs=3, val_every=0)
    trainer.fit()
    recs = [r for r in trainer.history if r["kind"] == "train"]
    assert len(recs) == 3 * trainer.steps_per_epoch
    for r in recs:
        # logged after the step: the lr about to be used for the next iteration
        assert r["lr"] == pytest.approx(0.01 * poly_factor(r["iteration"], trainer.max_iters))
    assert all(math.isfinite(r["loss"]) for r in recs)
    first = np.mean([r["loss"] for r in recs[:3]])
    last = np.mean([r["loss"] for r in recs[-3:]])
    assert last < first


def test_nonfinite_loss_is_reported(tmp_path):
    trainer = make_trainer(tmp_path, "nan", epochs=1, val_every=0)
    trainer.loss_fn = lambda out, e, v: out.fuse.mean() * float("nan")
    with pytest.raises(FloatingPointError, match="lower --lr"):
        trainer.fit()


def test_new_run_in_used_folder_starts_a_fresh_log(tmp_path, capsys):
    make_trainer(tmp_path, "same", epochs=1, val_every=0).fit()
    # the folder holds a finished run: a new one needs --overwrite (test_output_folder_rules)
    again = make_trainer(tmp_path, "same", epochs=1, val_every=0, overwrite=True)
    assert "holds a checkpoint of an earlier run" in capsys.readouterr().out
    again.fit()
    log = read_jsonl(tmp_path / "same" / "metrics.jsonl", kind="train")
    assert [r["iteration"] for r in log] == list(range(1, again.steps_per_epoch + 1))


def test_scoring_maps_half_resolution_matches_block_reference():
    from dynfuse.training.engine import _scoring_maps

    g = torch.Generator().manual_seed(4)
    fuse = torch.randn(3, 6, 10, generator=g)
    edges = (torch.rand(3, 6, 10, generator=g) > 0.85).float()
    valid = torch.ones(6, 10, dtype=torch.bool)
    valid[:, 8:] = False  # padding on the right
    prob, gt = _scoring_maps(fuse, edges, valid, 1.0)
    p_ref = torch.sigmoid(fuse) * valid
    assert prob.dtype == np.float16 and np.allclose(prob, p_ref.numpy(), atol=1e-3)
    assert np.array_equal(gt, ((edges > 0.5) & valid).numpy())
    prob, gt = _scoring_maps(fuse, edges, valid, 0.5)
    assert prob.shape == gt.shape == (3, 3, 5)
    for k in range(3):
        for y in range(3):
            for x in range(5):
                block = p_ref[k, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2]
                assert abs(float(prob[k, y, x]) - float(block.mean())) < 1e-3
                eb = (edges[k, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2] > 0.5) & valid[
                    2 * y : 2 * y + 2, 2 * x : 2 * x + 2
                ]
                assert bool(gt[k, y, x]) == bool(eb.any())
    with pytest.raises(ValueError, match="val_scale"):
        TrainConfig(val_scale=0.0)


def test_run_killed_mid_epoch_loses_only_that_epoch(tmp_path):
    straight = make_trainer(tmp_path, "straight")
    straight.fit()
    killed = make_trainer(tmp_path, "killed")
    steps = killed.steps_per_epoch
    calls = {"n": 0}

    def dying_loss(out, edges, valid):
        calls["n"] += torch.is_grad_enabled()  # count training steps, not validation
        if calls["n"] == steps + 2:  # in the middle of the second epoch
            raise KeyboardInterrupt
        return simple_loss(out, edges, valid)

    killed.loss_fn = dying_loss
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    ck = load_checkpoint(killed.checkpoint_path)
    assert (ck["epoch"], ck["iteration"]) == (1, steps)
    resumed = make_trainer(tmp_path, "killed", resume="auto")
    resumed.fit()
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_scoring_failure_warns_and_keeps_the_loss(tmp_path):
    trainer = make_trainer(tmp_path, "score", epochs=1)

    def broken(preds, gts):
        raise RuntimeError("matcher exploded")

    trainer.scorer = broken
    with pytest.warns(UserWarning, match="matcher exploded"):
        metrics = trainer.validate()
    assert math.isfinite(metrics["loss"]) and "mf_ods" not in metrics
    assert metrics["scoring_error"] == "RuntimeError: matcher exploded"


def test_scorer_returning_reserved_keys_cannot_replace_the_loss(tmp_path):
    # A scorer's "loss" used to overwrite the validation loss and its "epoch" the record's epoch.
    trainer = make_trainer(tmp_path, "reserved", epochs=1)

    def clashing(preds, gts):
        return {"loss": 0.0, "epoch": 99.0, "mf_ods": 0.5}

    trainer.scorer = None
    reference = trainer.validate()["loss"]
    trainer.scorer = clashing
    with pytest.warns(UserWarning, match=r"reserved key\(s\) \['epoch', 'loss'\]"):
        metrics = trainer.validate()
    assert metrics["loss"] == reference and reference != 0.0 and "mf_ods" not in metrics
    assert trainer.history[-1]["epoch"] == 0 and trainer.history[-1]["loss"] == reference


@pytest.mark.parametrize("scorer, error", [("mf_ods", ValueError), (3, TypeError)])
def test_scorer_argument_must_be_callable_default_or_none(tmp_path, scorer, error):
    config = TrainConfig(
        dataset="synthetic",
        backbone="standin",
        num_classes=3,
        crop_size=12,
        output_dir=str(tmp_path / "bad"),
        tensorboard=False,
        device="cpu",
    )
    with pytest.raises(error, match="scorer must be a callable, 'default' or None"):
        Trainer(
            config,
            model=StandInNet(),
            train_set=StandInData(20, seed=1),
            val_set=StandInData(5, seed=2, augment=False),
            scorer=scorer,
            ctx=DistContext(),
        )


def test_metrics_logger_without_tensorboard(tmp_path, monkeypatch):
    import sys

    from dynfuse.training import MetricsLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    log = MetricsLogger(tmp_path, tensorboard=True)
    assert log.tensorboard_error is not None
    log.log("val", epoch=1, iteration=7, loss=0.5, mf_ods=float("nan"), note="x")
    log.close()
    (rec,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert (rec["kind"], rec["epoch"], rec["iteration"], rec["loss"]) == ("val", 1, 7, 0.5)
    assert rec["mf_ods"] == "nan" and rec["note"] == "x"  # JSON has no NaN literal
    off = MetricsLogger(tmp_path / "rank1", enabled=False)
    off.log("train", epoch=1, iteration=1, loss=1.0)
    assert not (tmp_path / "rank1").exists()
