"""What dynfuse-train guarantees about its options, its output folder and a resumed run.

Issue 10 item 3 (one declaration per option) and issue 9 items 3, 4, 5, 7, 8 and 13: every bad
flag is one ``dynfuse-train: error:`` line; resume refuses changed settings; a used folder needs
--overwrite and is left intact until the new run's first checkpoint; the checkpoint lands before
validation (fault injection: the process is SIGKILLed during validation); a finished run has
nothing to do; replayed metrics are dropped; a non-finite validation is an error.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_training import make_trainer, simple_loss

from dynfuse.training import TrainConfig, load_checkpoint, main, parse_config, read_jsonl
from dynfuse.training.config import DATASET_DEFAULTS, ConfigError, build_parser, flag_name
from dynfuse.training.optim import poly_factor

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
    "3",
    "--no-progress",
    "--no-tensorboard",
    "--no-val-at-start",
]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``dynfuse-train argv`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse errors
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def error_line(stderr: str) -> str:
    """The one ``dynfuse-train: error:`` line (a short usage line may precede it)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dynfuse-train: error: "), stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- one declaration per option
OLD_FLAGS = [
    "--dataset",
    "--data-root",
    "--crop-size",
    "--workers",
    "--train-length",
    "--val-length",
    "--cache",
    "--no-cache",
    "--model",
    "--backbone",
    "--num-classes",
    "--pretrained-backbone",
    "--model-kw",
    "--epochs",
    "--batch-size",
    "--lr",
    "--momentum",
    "--weight-decay",
    "--head-lr-mult",
    "--poly-power",
    "--amp",
    "--sync-bn",
    "--output-dir",
    "--resume",
    "--device",
    "--seed",
    "--log-every",
    "--no-tensorboard",
    "--no-progress",
    "--val-every",
    "--val-max-images",
    "--val-max-dist",
    "--val-thresholds",
    "--val-scale",
    "--val-at-start",
    "--no-val-at-start",
]


def test_parser_is_generated_from_the_fields_and_keeps_every_flag():
    parser = build_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    assert set(OLD_FLAGS) <= flags
    for f in TrainConfig.__dataclass_fields__:
        assert flag_name(f) in flags, f  # a new field is a new flag, nothing else to edit
    help_text = " ".join(parser.format_help().split())
    # the real per-dataset defaults, not "None"
    assert "(default: cityscapes 0.08, sbd 0.05, synthetic 0.1)" in help_text
    assert "(default: 1.0; cityscapes 0.5)" in help_text
    assert "(default: runs/<dataset>-<model>)" in help_text


def test_defaults_are_layered_dataclass_dataset_flags():
    cfg = parse_config(
        [
            "--dataset",
            "cityscapes",
            "--data-root",
            "/x",
            "--lr",
            "0.01",
            "--no-progress",
            "--val-scale",
            "0.25",
        ]
    )
    assert cfg.lr == 0.01 and cfg.val_scale == 0.25 and cfg.progress is False
    assert cfg.batch_size == DATASET_DEFAULTS["cityscapes"]["batch_size"]  # dataset layer
    assert cfg.momentum == TrainConfig().momentum  # dataclass layer
    assert cfg.output_dir == "runs/cityscapes-dff"
    same = TrainConfig.for_dataset("cityscapes", data_root="/x", lr=0.01, progress=False, val_scale=0.25)
    assert same == cfg
    assert parse_config(["--tensorboard"]).tensorboard is True
    assert parse_config(["--no-tensorboard"]).tensorboard is False


def test_model_names_come_from_the_registry():
    from dynfuse.models import registry

    @registry.register_model("test-net")
    def _build(**kwargs):
        return registry._MODELS["dff"](**kwargs)

    try:
        assert parse_config(["--model", "test-net"]).model == "test-net"
        assert TrainConfig(model="test-net").model == "test-net"
    finally:
        del registry._MODELS["test-net"]
    with pytest.raises(ConfigError, match="model must be one of"):
        TrainConfig(model="test-net")


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"num_classes must be an integer, got 2.5"):
        TrainConfig(num_classes=2.5)
    with pytest.raises(ConfigError, match=r"momentum must be in \[0, 1\), got 1.5"):
        TrainConfig(momentum=1.5)
    err = ConfigError("head_lr_mult", "must be > 0, got 0")
    assert err.for_cli() == "argument --head-lr-mult: must be > 0, got 0"


# ---------------------------------------------------------------- issue 9.13: one-line errors
BAD_FLAGS = {
    "crop-size": (["--crop-size", "7"], "argument --crop-size: must be >= 8, got 7"),
    "cuda": (["--device", "cuda"], "argument --device: 'cuda' was requested but CUDA is not"),
    "backbone": (["--backbone", "resnet18"], "unknown backbone 'resnet18'"),
    "timm-backbone": (["--backbone", "timm:no_such_net"], "Unknown model (no_such_net)"),
    "learner": (["--model-kw", "learner=bogus"], "learner must be one of"),
    "model-kw-key": (["--model-kw", "bogus=1"], "unknown option(s) ['bogus']"),
    "model-kw-form": (["--model-kw", "learner"], "argument --model-kw: expects KEY=VALUE"),
    "big-batch": (
        ["--batch-size", "16"],
        "argument --batch-size: (global) must be at most the training set's 8 items, got 16",
    ),
    "momentum": (["--momentum", "-0.5"], "argument --momentum: must be in [0, 1), got -0.5"),
    "weight-decay": (["--weight-decay", "-1"], "argument --weight-decay: must be >= 0, got -1.0"),
    "poly-power": (["--poly-power", "-1"], "argument --poly-power: must be >= 0, got -1.0"),
    "head-lr-mult": (["--head-lr-mult", "0"], "argument --head-lr-mult: must be > 0, got 0.0"),
    "no-data-root": (["--dataset", "cityscapes"], "argument --data-root: is required"),
    "missing-data-root": (
        ["--dataset", "sbd", "--data-root", "/nonexistent/sbd"],
        "argument --data-root: '/nonexistent/sbd' is not a directory",
    ),
    "lr-inf": (["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
    "lr-nan": (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    "pretrained": (
        ["--pretrained-backbone", "/nonexistent/w.pth"],
        "argument --pretrained-backbone: no file at",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flag_is_one_error_line(tmp_path, case):
    extra, expected = BAD_FLAGS[case]
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    rc, _, err = run_cli([*TINY, "--epochs", "1", "--output-dir", str(tmp_path / "run"), *extra])
    assert rc == 2, err
    assert expected in error_line(err)
    assert not (tmp_path / "run").exists()  # nothing was written


@pytest.mark.slow
def test_console_entry_point_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "train_dff.py"),
            "--backbone",
            "resnet18",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown backbone 'resnet18'" in error_line(proc.stderr)


# ---------------------------------------------------------------- issue 9.3: changed settings
def test_resume_refuses_a_changed_setting_with_a_diff(tmp_path):
    make_trainer(tmp_path, "run").fit(max_epochs=1)
    before = snapshot(tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        make_trainer(tmp_path, "run", resume="auto", lr=0.05, weight_decay=0.0)
    text = str(info.value)
    assert "--lr: 0.01 (checkpoint) -> 0.05 (now)" in text
    assert "--weight-decay: 0.0001 (checkpoint) -> 0.0 (now)" in text
    assert "--allow-changed-config" in text
    assert snapshot(tmp_path / "run") == before  # config.json still says what ran
    # settings that only say where and how the run executes may change freely
    make_trainer(tmp_path, "run", resume="auto", log_every=3, workers=0, progress=False)


def test_allowed_change_is_applied_and_recorded(tmp_path):
    first = make_trainer(tmp_path, "run")
    first.fit(max_epochs=1)
    steps = first.steps_per_epoch
    config_before = (tmp_path / "run" / "config.json").read_bytes()
    with pytest.warns(UserWarning, match="lr 0.01 -> 0.05"):
        resumed = make_trainer(
            tmp_path, "run", resume="auto", lr=0.05, momentum=0.5, allow_changed_config=True
        )
    # until the next checkpoint lands, config.json describes the checkpoint in the folder
    assert (tmp_path / "run" / "config.json").read_bytes() == config_before
    backbone, head = resumed.optimizer.param_groups
    factor = poly_factor(steps, resumed.max_iters)
    assert backbone["lr"] == pytest.approx(0.05 * factor)
    assert head["lr"] == pytest.approx(0.5 * factor)
    assert backbone["momentum"] == head["momentum"] == 0.5
    resumed.fit()
    log = read_jsonl(tmp_path / "run" / "metrics.jsonl", kind="train")
    for rec in log:  # the learning rate logged after each step follows the plan in force
        base = 0.01 if rec["iteration"] <= steps else 0.05
        assert rec["lr"] == pytest.approx(base * poly_factor(rec["iteration"], resumed.max_iters))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["lr"] == 0.05 and config["momentum"] == 0.5
    assert {(c["field"], c["old"], c["new"], c["epoch"]) for c in config["config_changes"]} == {
        ("lr", 0.01, 0.05, 1),
        ("momentum", 0.9, 0.5, 1),
    }
    ck = load_checkpoint(tmp_path / "run" / "final.pt")
    assert ck["config"]["lr"] == 0.05 and len(ck["config_changes"]) == 2


def test_cli_resume_takes_the_checkpoints_settings_for_flags_not_given(tmp_path):
    out = tmp_path / "run"
    assert run_cli([*TINY, "--epochs", "1", "--lr", "0.05", "--output-dir", str(out)])[0] == 0
    with pytest.warns(UserWarning, match="re-planned"):
        rc, stdout, err = run_cli(
            ["--resume", "auto", "--output-dir", str(out), "--epochs", "2", "--no-progress"]
        )
    assert rc == 0, err
    assert "resumed from" in stdout and "epoch 2/2" in stdout
    ck = load_checkpoint(out / "final.pt")
    assert (ck["config"]["lr"], ck["config"]["num_classes"], ck["config"]["crop_size"]) == (0.05, 3, 32)
    # a flag given with another value is still a change
    rc, _, err = run_cli(["--resume", "auto", "--output-dir", str(out), "--epochs", "3", "--lr", "0.1"])
    assert rc == 2 and "--lr: 0.05 (checkpoint) -> 0.1 (now)" in err


# ---------------------------------------------------------------- issue 9.4: a used folder
def test_used_folder_needs_overwrite_and_survives_an_early_kill(tmp_path):
    make_trainer(tmp_path, "run", epochs=1).fit()
    old = snapshot(tmp_path / "run")
    assert {"final.pt", "checkpoint.pt", "config.json", "metrics.jsonl"} <= set(old)
    with pytest.raises(ConfigError, match="is not empty .*--overwrite"):
        make_trainer(tmp_path, "run", epochs=1, lr=0.02)
    # --overwrite, killed before its first checkpoint: the old run is untouched
    doomed = make_trainer(tmp_path, "run", epochs=1, lr=0.02, overwrite=True)

    calls = {"n": 0}

    def dying_loss(out, edges, valid):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return simple_loss(out, edges, valid)

    doomed.loss_fn = dying_loss
    with pytest.raises(KeyboardInterrupt):
        doomed.fit()
    assert snapshot(tmp_path / "run") == old
    # ... and once its first checkpoint lands the folder holds the new run only
    new = make_trainer(tmp_path, "run", epochs=1, lr=0.02, overwrite=True)
    new.fit()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 0.02
    log = read_jsonl(tmp_path / "run" / "metrics.jsonl", kind="train")
    assert [r["iteration"] for r in log] == list(range(1, new.steps_per_epoch + 1))
    assert load_checkpoint(tmp_path / "run" / "final.pt")["config"]["lr"] == 0.02


# ---------------------------------------------------------------- issue 9.5: kill during validation
_KILL_IN_VALIDATION = textwrap.dedent("""
    import os, signal, sys
    import torch
    from dynfuse.training import Trainer, main
    torch.set_num_threads(int(os.environ["THREADS"]))  # the test process's: bitwise-equal runs
    real = Trainer.validate
    def validate(self):
        if self.epoch == int(os.environ["KILL_AT_EPOCH"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self)
    Trainer.validate = validate
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_sigkill_during_validation_keeps_the_epoch(tmp_path):
    args = [*TINY, "--epochs", "2", "--val-every", "1", "--log-every", "1"]
    straight = tmp_path / "straight"
    assert run_cli([*args, "--output-dir", str(straight)])[0] == 0
    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_IN_VALIDATION, *args, "--output-dir", str(killed)],
        env=dict(os.environ, PYTHONPATH=str(ROOT), KILL_AT_EPOCH="1", THREADS=str(torch.get_num_threads())),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    ck = load_checkpoint(killed / "checkpoint.pt")
    assert (ck["epoch"], ck["iteration"], ck["val_pending"]) == (1, 2, True)
    assert not (killed / "final.pt").exists()
    rc, out, _ = run_cli([*args, "--output-dir", str(killed), "--resume", "auto"])
    assert rc == 0 and "epoch 1/2 (resumed)  val loss" in out
    want = read_jsonl(straight / "metrics.jsonl")
    got = read_jsonl(killed / "metrics.jsonl")
    key = ("kind", "epoch", "iteration", "loss")
    assert [tuple(r[k] for k in key) for r in got] == [tuple(r[k] for k in key) for r in want]
    a, b = load_checkpoint(straight / "final.pt"), load_checkpoint(killed / "final.pt")
    assert a["param_fingerprints"] == b["param_fingerprints"]
    assert b["last_val"]["epoch"] == 2 and b["val_pending"] is False


# ---------------------------------------------------------------- issue 9.7: finished runs, replays
def test_resume_of_a_finished_run_says_nothing_to_do(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--epochs", "1", "--output-dir", str(out)]
    assert run_cli(args)[0] == 0
    before = snapshot(out)
    rc, stdout, stderr = run_cli([*args, "--resume", "auto"])
    assert rc == 0 and stderr == ""
    assert (
        stdout.strip() == f"dynfuse-train: nothing to do: {out} finished at epoch 1 "
        "(give a larger --epochs to train on)"
    )
    assert snapshot(out) == before


def test_resume_drops_the_records_of_replayed_iterations(tmp_path):
    straight = make_trainer(tmp_path, "straight")
    straight.fit()
    killed = make_trainer(tmp_path, "killed")
    steps = killed.steps_per_epoch
    calls = {"n": 0}

    def dying_loss(out, edges, valid):
        calls["n"] += torch.is_grad_enabled()
        if calls["n"] == steps + 3:  # iterations steps+1 and steps+2 are logged, then the kill
            raise KeyboardInterrupt
        return simple_loss(out, edges, valid)

    killed.loss_fn = dying_loss
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    metrics = tmp_path / "killed" / "metrics.jsonl"
    assert [r["iteration"] for r in read_jsonl(metrics, "train")][-2:] == [steps + 1, steps + 2]
    with open(metrics, "a") as f:
        f.write('{"kind": "train", "epo')  # and a record torn by the kill
    make_trainer(tmp_path, "killed", resume="auto").fit()

    def rows(path):
        return [(r["kind"], r["epoch"], r["iteration"], r.get("loss")) for r in read_jsonl(path)]

    assert rows(metrics) == rows(tmp_path / "straight" / "metrics.jsonl")


def test_resume_from_a_checkpoint_without_a_record_count(tmp_path):
    straight = make_trainer(tmp_path, "straight")
    straight.fit()
    first = make_trainer(tmp_path, "old")
    first.fit(max_epochs=1)
    path = tmp_path / "old" / "checkpoint.pt"
    ck = load_checkpoint(path)
    for key in ("metrics_records", "val_pending", "last_val", "config_changes"):
        del ck[key]  # as an older dynfuse wrote it
    torch.save(ck, path)
    with open(tmp_path / "old" / "metrics.jsonl", "a") as f:  # records of a replayed iteration
        f.write(json.dumps({"kind": "train", "epoch": 2, "iteration": ck["iteration"] + 1}) + "\n")
    make_trainer(tmp_path, "old", resume="auto").fit()

    def rows(path):
        return [(r["kind"], r["epoch"], r["iteration"], r.get("loss")) for r in read_jsonl(path)]

    assert rows(tmp_path / "old" / "metrics.jsonl") == rows(tmp_path / "straight" / "metrics.jsonl")


# ---------------------------------------------------------------- issue 9.8: non-finite validation
def test_nonfinite_validation_loss_is_an_error(tmp_path):
    trainer = make_trainer(tmp_path, "run", epochs=1)

    def nan_in_eval(out, edges, valid):
        loss = simple_loss(out, edges, valid)
        return loss if torch.is_grad_enabled() else loss * float("nan")

    trainer.loss_fn = nan_in_eval
    with pytest.raises(FloatingPointError, match="validation loss is nan after epoch 1"):
        trainer.fit()
    assert not (tmp_path / "run" / "final.pt").exists()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["val_pending"] is True


def test_huge_lr_fails_without_a_final_checkpoint(tmp_path):
    out = tmp_path / "run"
    rc, _, err = run_cli([*TINY, "--epochs", "1", "--lr", "1e6", "--output-dir", str(out)])
    assert rc == 1
    line = error_line(err)
    assert "not finite" in line or "is nan" in line
    assert not (out / "final.pt").exists()


def test_nonfinite_weights_are_not_saved(tmp_path):
    trainer = make_trainer(tmp_path, "run", epochs=2, val_every=0)
    trainer.fit(max_epochs=1)
    good = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="weights are not finite"):
        trainer.save_checkpoint()
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == good
