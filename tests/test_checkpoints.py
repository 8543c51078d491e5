"""dynfuse.checkpoints: one reader for every checkpoint file, one unwrapper, one checked loader.

Each kind of file that is not a checkpoint gets a message naming the file and what it is instead,
never torch's internals (``KeyError: 101``, an empty ``EOFError``, advice about ``weights_only``).
"""

from __future__ import annotations

import argparse
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from dynfuse.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    extract_model_state,
    load_state_checked,
    read_checkpoint,
    strip_module_prefix,
)

# torch's own words for these files; none may reach the user.
TORCH_INTERNALS = (
    "KeyError",
    "EOFError",
    "101",
    "Weights only load failed",
    "PytorchStreamReader",
    "central directory",
    "add_safe_globals",
    "UnpicklingError",
    "Traceback",
)


def _torch_file(path, obj=None):
    torch.save({"w": torch.arange(2000.0)} if obj is None else obj, path)
    return path


def make_bad_file(kind: str, folder):
    """A file (or folder) that is not a checkpoint, and the words its message must contain."""
    path = folder / f"bad-{kind}.pt"
    if kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
        return path, "text file"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty"
    if kind == "random":
        # seed 3's first byte is neither a zip ('P') nor a pickle (0x80) header
        path.write_bytes(np.random.default_rng(3).bytes(4096))
        return path, "not a torch checkpoint"
    if kind == "folder":
        path.mkdir()
        return path, "is a folder"
    if kind == "truncated":
        data = _torch_file(folder / "good.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "corrupt, truncated or incomplete"
    if kind == "pickle-with-code":
        _torch_file(path, {"args": argparse.Namespace(lr=0.1), "state_dict": {}})
        return path, "argparse.Namespace"
    if kind == "zip-not-torch":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
        return path, "zip archive, but not one written by torch.save"
    raise AssertionError(kind)


BAD_KINDS = ("text", "empty", "random", "folder", "truncated", "pickle-with-code", "zip-not-torch")


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_read_checkpoint_names_the_file_and_what_it_is(tmp_path, kind):
    path, words = make_bad_file(kind, tmp_path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and words in msg, msg
    assert "\n" not in msg
    for internal in TORCH_INTERNALS:
        assert internal not in msg, (internal, msg)


def test_read_checkpoint_missing_and_non_dict(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as err:
        read_checkpoint(tmp_path / "nope.pt")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="holds a Tensor, not a dict"):
        read_checkpoint(tmp_path / "tensor.pt")
    good = _torch_file(tmp_path / "good.pt")
    assert torch.equal(read_checkpoint(good)["w"], torch.arange(2000.0))


def test_legacy_format_and_its_truncation(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(path)["w"], torch.ones(3))
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="pickle that torch cannot read: corrupt, truncated"):
        read_checkpoint(tmp_path / "cut.pt")


class Net(nn.Module):
    def __init__(self, k: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(2, k, 1)
        self.bn = nn.BatchNorm2d(k)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 3, "optimizer": {"state": {}}},
        lambda s: {"format": "dynfuse-train-checkpoint", "model": s, "epoch": 1},
        lambda s: {"model_state_dict": s},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        lambda s: {f"module.{k}": v for k, v in s.items()},
    ],
    ids=["bare", "authors", "dynfuse", "model_state_dict", "ddp-wrapped", "ddp-bare"],
)
def test_extract_model_state_layouts(wrap):
    state = Net().state_dict()
    got = extract_model_state(wrap(state))
    assert list(got) == list(state)
    for key in state:
        assert got[key] is state[key]


def test_extract_model_state_rejects_non_tensors():
    with pytest.raises(CheckpointError, match="not a state dict: entry 'lr' holds float"):
        extract_model_state({"lr": 0.1, "w": torch.ones(1)})


def test_strip_module_prefix_only_when_every_key_has_it():
    assert list(strip_module_prefix({"module.a": 1, "module.b": 2})) == ["a", "b"]
    mixed = {"module.a": 1, "b": 2}  # a child literally named "module": leave it alone
    assert strip_module_prefix(mixed) == mixed
    assert strip_module_prefix({}) == {}


def test_load_state_checked_lists_every_problem_and_copies_nothing():
    src, dst = Net(), Net()
    with torch.no_grad():
        src.conv.weight.fill_(2.0)
    state = dict(src.state_dict())
    del state["bn.running_var"]
    state["conv.bias"] = torch.zeros(5)
    state["extra"] = torch.zeros(1)
    before = dst.conv.weight.clone()
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_checked(dst, state, what="my file", hint=" (hint)")
    msg = str(err.value)
    assert msg.startswith("my file does not fit Net (hint):")
    for needle in (
        "missing keys (1)",
        "bn.running_var",
        "unexpected keys (1)",
        "extra",
        "shape mismatches (1)",
        "conv.bias: my file has (5,), model expects (3,)",
    ):
        assert needle in msg
    assert isinstance(err.value, CheckpointError)
    assert torch.equal(dst.conv.weight, before)  # nothing copied


def test_load_state_checked_tolerates_old_files_and_casts():
    src, dst = Net(), Net()
    with torch.no_grad():
        src.conv.weight.normal_()
    state = {k: v.double() for k, v in src.state_dict().items() if "num_batches" not in k}
    report = load_state_checked(dst, state)
    assert report.missing_optional == ["bn.num_batches_tracked"]
    assert dst.conv.weight.dtype == torch.float32
    torch.testing.assert_close(dst.conv.weight, src.conv.weight, rtol=0, atol=0)
    report = load_state_checked(
        dst, {**src.state_dict(), "fc.w": torch.ones(1)}, ignore=lambda k: k.startswith("fc.")
    )
    assert report.ignored == ["fc.w"]


def test_old_names_are_the_new_functions():
    from dynfuse.backbones import CheckpointMismatchError as OldMismatch
    from dynfuse.backbones import load_state_dict_checked
    from dynfuse.training.checkpoint import CheckpointError as OldError

    assert OldMismatch is CheckpointMismatchError and OldError is CheckpointError
    assert load_state_dict_checked is load_state_checked


# ---------------------------------------------------------------- every entry point (issue 9, item 14)
def _via_create_model(path, tmp_path, capsys):
    from dynfuse.models import create_model

    create_model("dff", backbone="tiny", num_classes=2, pretrained_backbone=path)


def _via_create_model_resnet(path, tmp_path, capsys):
    from dynfuse.models import create_model

    create_model("casenet", backbone="resnet50", num_classes=2, pretrained_backbone=path)


def _via_timm_backbone(path, tmp_path, capsys):
    pytest.importorskip("timm")
    from dynfuse.models import create_model

    create_model("dff", backbone="timm:resnet18", num_classes=2, pretrained_backbone=path)


def _via_load_official_dff(path, tmp_path, capsys):
    from dynfuse.models import load_official_dff

    load_official_dff(path)


def _via_train_resume(path, tmp_path, capsys):
    from dynfuse.training.cli import main

    rc = main(
        [
            "--dataset",
            "synthetic",
            "--backbone",
            "tiny",
            "--num-classes",
            "2",
            "--train-length",
            "2",
            "--val-length",
            "1",
            "--crop-size",
            "16",
            "--batch-size",
            "2",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-tensorboard",
            "--no-progress",
            "--output-dir",
            str(tmp_path / "run"),
            "--resume",
            str(path),
        ]
    )
    return rc, capsys.readouterr().err


def _via_predict(path, tmp_path, capsys):
    from PIL import Image

    from dynfuse.predict import main

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    rc = main([str(path), str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--no-progress"])
    return rc, capsys.readouterr().err


ENTRY_POINTS = {
    "create_model(pretrained_backbone=) tiny": _via_create_model,
    "create_model(pretrained_backbone=) resnet50": _via_create_model_resnet,
    "create_model(pretrained_backbone=) timm": _via_timm_backbone,
    "load_official_dff": _via_load_official_dff,
    "dynfuse-train --resume": _via_train_resume,
    "dynfuse-predict": _via_predict,
}
CLI_PROGS = {"dynfuse-train --resume": "dynfuse-train", "dynfuse-predict": "dynfuse-predict"}


@pytest.mark.parametrize("kind", ["text", "empty", "random", "folder", "truncated", "pickle-with-code"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_says_what_the_file_is(tmp_path, capsys, entry, kind):
    """One message from one place (read_checkpoint), whichever way a bad file comes in."""
    path, words = make_bad_file(kind, tmp_path)
    expected = str(CheckpointError(f"cannot read checkpoint {str(path)!r}"))
    if entry in CLI_PROGS:
        rc, err = ENTRY_POINTS[entry](path, tmp_path, capsys)
        assert rc == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        msg = lines[0]
        assert msg.startswith(f"{CLI_PROGS[entry]}: error: {expected}"), msg
    else:
        with pytest.raises(CheckpointError) as err:
            ENTRY_POINTS[entry](path, tmp_path, capsys)
        msg = str(err.value)
        assert msg.startswith(expected), msg
    assert words in msg
    for internal in TORCH_INTERNALS:
        assert internal not in msg, (internal, msg)


def test_training_format_constant_matches():
    from dynfuse.checkpoints import TRAINING_CHECKPOINT_FORMAT
    from dynfuse.training.checkpoint import CHECKPOINT_FORMAT

    assert TRAINING_CHECKPOINT_FORMAT == CHECKPOINT_FORMAT


@pytest.mark.parametrize("model", ["dff", "casenet"])
@pytest.mark.parametrize("depth", ["resnet50", "resnet101"])
def test_describe_official_state_dict(model, depth):
    """How dynfuse-predict recognises the authors' files: their key names, not ours."""
    from test_models_official import R50, R101, authors_keys

    from dynfuse.models import create_model, describe_official_state_dict

    keys = authors_keys(model, 7, R50 if depth == "resnet50" else R101)
    # only the names and side5's class count matter: stand-in tensors keep this fast
    state = {k: torch.zeros(shape) if k == "side5.0.weight" else torch.empty(0) for k, shape in keys.items()}
    assert describe_official_state_dict(state) == {"model": model, "backbone": depth, "num_classes": 7}
    ours = create_model(model, backbone="tiny", num_classes=3).state_dict()
    assert describe_official_state_dict(ours) is None
    assert (
        describe_official_state_dict(
            {k: v for k, v in state.items() if not k.startswith(("ada_learner.", "fuse."))}
        )
        is None
    )
