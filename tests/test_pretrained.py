"""save_pretrained / from_pretrained folders, the Hub paths (no network) and the model card."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dynfuse
from dynfuse.backbones import FeatureListBackbone, TimmBackbone, dilated_resnet_tiny
from dynfuse.checkpoints import CheckpointError, CheckpointMismatchError, CheckpointNotFoundError
from dynfuse.models import DFF, CASENet, create_model, from_pretrained, load_pretrained_weights
from dynfuse.models.pretrained import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME

pytestmark = pytest.mark.usefixtures("one_thread")

FILES = {"model.safetensors", "config.json", "README.md"}


def _warm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics (so a lost buffer would change the outputs), eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        model.train()
        model(torch.randn(2, 3, 33, 40))
    return model.eval()


def _same_outputs(a: nn.Module, b: nn.Module, size=(29, 35)) -> None:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(7), dtype=_dtype(a))
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    for name, u, v in zip(("side5", "fuse", "weights"), out_a, out_b, strict=True):
        assert u.dtype == v.dtype and torch.equal(u, v), name


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _no_pickle(folder: Path) -> None:
    assert {p.name for p in folder.iterdir()} == FILES
    for p in folder.iterdir():
        head = p.read_bytes()[:4]
        assert not head.startswith(b"PK"), f"{p.name} is a zip (torch.save) archive"
        assert not head.startswith(b"\x80"), f"{p.name} is a pickle"
    # safetensors: an 8-byte little-endian header length, then a JSON header.
    raw = (folder / WEIGHTS_NAME).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + n])["__metadata__"] == {"format": "pt"}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("dff", {}),
        ("dff", {"learner": "invariant", "upsample": "bilinear"}),
        ("dff", {"learner": "fixed"}),
        ("casenet", {}),
    ],
    ids=["dff", "dff-invariant-bilinear", "dff-fixed", "casenet"],
)
def test_round_trip_identical_outputs(tmp_path, name, kwargs):
    model = _warm(create_model(name, backbone="tiny", num_classes=3, **kwargs))
    out = model.save_pretrained(tmp_path / "m", class_names=["road", "car", "person"])
    assert out == tmp_path / "m"
    _no_pickle(out)
    loaded = dynfuse.from_pretrained(out)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.head.options == model.head.options
    assert loaded.class_names == ["road", "car", "person"]
    _same_outputs(model, loaded)
    _same_outputs(model, loaded, size=(64, 48))


def test_round_trip_timm_backbone_with_kwargs(tmp_path):
    pytest.importorskip("timm")
    backbone = TimmBackbone("resnet18", output_stride=8, out_indices=(0, 1, 2, 4))
    assert backbone.build_config == {
        "name": "timm:resnet18",
        "kwargs": {"output_stride": 8, "out_indices": [0, 1, 2, 4]},
    }
    for cls in (DFF, CASENet):
        model = _warm(cls(backbone, 2))
        folder = model.save_pretrained(tmp_path / cls.__name__)
        config = json.loads((folder / CONFIG_NAME).read_text())
        assert config["backbone"] == "timm:resnet18"
        assert config["backbone_kwargs"] == {"output_stride": 8, "out_indices": [0, 1, 2, 4]}
        loaded = cls.from_pretrained(folder)
        assert loaded.backbone.feature_info.reduction() == [2, 4, 8, 8]
        _same_outputs(model, loaded, size=(32, 40))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dff", "casenet"])
def test_round_trip_dilated_resnet50(tmp_path, name):
    model = _warm(create_model(name, backbone="resnet50", num_classes=2))
    loaded = from_pretrained(model.save_pretrained(tmp_path))
    _same_outputs(model, loaded, size=(24, 20))
    _no_pickle(tmp_path)


def test_config_describes_the_model(tmp_path):
    model = create_model(
        "dff", backbone="tiny", num_classes=2, learner_resolution="top", channels_last=True
    ).eval()
    model.save_pretrained(
        tmp_path,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        metrics={"mf_ods": 0.712},
        protocol="cityscapes-thin",
        training={"dataset": "synthetic", "epochs": 8, "lr": 0.1},
    )
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["format"] == "dynfuse-pretrained" and config["format_version"] == FORMAT_VERSION
    assert config["dynfuse_version"] == dynfuse.__version__
    assert (config["model"], config["backbone"], config["num_classes"]) == ("dff", "tiny", 2)
    assert config["head_options"] == model.head.options.to_dict()
    assert config["model_options"] == {
        "channels_last": True,
        "checkpoint_backbone": False,
        "checkpoint_learner": False,
    }
    assert config["input"]["mean"] == [0.5, 0.5, 0.5] and config["input"]["std"] == [0.25] * 3
    assert config["metrics"] == {"mf_ods": 0.712} and config["protocol"] == "cityscapes-thin"
    assert config["class_names"] is None and config["dtype"] == "float32"
    card = (tmp_path / "README.md").read_text()
    for text in (
        "DFF",
        "tiny",
        "cityscapes-thin",
        "0.712",
        "max_dist=0.0035",
        "**epochs**: 8",
        "names were not given",
        "library_name: dynfuse",
    ):
        assert text in card, text
    loaded = from_pretrained(tmp_path)
    assert loaded.channels_last and loaded.head.options.learner_resolution == "top"
    _same_outputs(model, loaded)
    # Saving the loaded model again keeps what it was loaded with.
    loaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / CONFIG_NAME).read_text())
    assert again["input"] == config["input"]


def test_card_without_training_or_score(tmp_path):
    create_model("casenet", backbone="tiny", num_classes=2).save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "No score was given" in card and "Not recorded" in card
    assert 'Table 1 row "casenet"' in card


def test_default_normalisation_is_imagenet(tmp_path):
    create_model("dff", backbone="tiny", num_classes=2).save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["input"]["mean"] == [0.485, 0.456, 0.406]
    assert config["input"]["std"] == [0.229, 0.224, 0.225]


def test_float64_and_tiny_widths_round_trip(tmp_path):
    model = _warm(DFF(dilated_resnet_tiny(widths=(8, 8, 16, 32)), 2)).double()
    loaded = from_pretrained(model.save_pretrained(tmp_path))
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["backbone_kwargs"] == {"widths": [8, 8, 16, 32]}
    assert _dtype(loaded) == torch.float64
    _same_outputs(model, loaded)


# ---------------------------------------------------------------- refusals
def test_module_backbone_cannot_be_saved(tmp_path):
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = body
            self.b = nn.Conv2d(4, 6, 3, stride=2, padding=1)

        def forward(self, x):
            f = self.a(x)
            return [f, self.b(f)]

    model = DFF(FeatureListBackbone(Two(), channels=[4, 6], reductions=[1, 2]), 2)
    with pytest.raises(ValueError, match="passed in as a module"):
        model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="passed in as a module"):
        model.build_config  # noqa: B018
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_custom_norm_layer_cannot_be_saved(tmp_path):
    model = create_model("dff", backbone="tiny", num_classes=2, norm_layer=lambda c: nn.GroupNorm(1, c))
    with pytest.raises(ValueError, match="would not rebuild"):
        model.save_pretrained(tmp_path)


def test_bad_arguments(tmp_path):
    model = create_model("dff", backbone="tiny", num_classes=2)
    with pytest.raises(ValueError, match="protocol"):
        model.save_pretrained(tmp_path, metrics={"mf_ods": 0.7})
    with pytest.raises(ValueError, match="finite number"):
        model.save_pretrained(tmp_path, metrics={"mf_ods": float("nan")}, protocol="sbd")
    with pytest.raises(ValueError, match="class_names has 3 names"):
        model.save_pretrained(tmp_path, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="std must be positive"):
        model.save_pretrained(tmp_path, std=[0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match="JSON"):
        model.save_pretrained(tmp_path, training={"when": object()})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        model.save_pretrained(tmp_path / "file")


def test_folder_errors(tmp_path):
    model = create_model("dff", backbone="tiny", num_classes=2)
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "missing")
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        from_pretrained(tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(tmp_path)
    folder = model.save_pretrained(tmp_path / "m")
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match="upgrade dynfuse"):
        from_pretrained(folder)
    (folder / CONFIG_NAME).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="not a dynfuse model config"):
        from_pretrained(folder)


def test_weights_of_another_save_are_refused(tmp_path):
    """An interrupted overwrite (new weights, old config) or mixed copies never load."""
    a = create_model("dff", backbone="tiny", num_classes=2).save_pretrained(tmp_path / "a")
    b = create_model("dff", backbone="tiny", num_classes=2).save_pretrained(tmp_path / "b")
    (a / WEIGHTS_NAME).write_bytes((b / WEIGHTS_NAME).read_bytes())
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        from_pretrained(a)
    (a / WEIGHTS_NAME).write_bytes((b / WEIGHTS_NAME).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        from_pretrained(a)


def test_overrides(tmp_path):
    model = _warm(create_model("dff", backbone="tiny", num_classes=2, fusion_backend="reference"))
    folder = model.save_pretrained(tmp_path)
    loaded = from_pretrained(folder, fusion_backend="torch", channels_last=True)
    assert loaded.head.options.fusion_backend == "torch" and loaded.channels_last
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).fuse, model(x).fuse, rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointError, match="cannot change \\['learner'\\]"):
        from_pretrained(folder, learner="fixed")


def test_class_methods_and_create_model_alias(tmp_path):
    folder = create_model("casenet", backbone="tiny", num_classes=2).save_pretrained(tmp_path)
    assert isinstance(CASENet.from_pretrained(folder), CASENet)
    assert isinstance(create_model.from_pretrained(folder), CASENet)
    with pytest.raises(TypeError, match="holds a CASENet"):
        DFF.from_pretrained(folder)


def test_load_pretrained_weights_checks_the_fit(tmp_path):
    folder = _warm(create_model("dff", backbone="tiny", num_classes=2)).save_pretrained(tmp_path)
    same = create_model("dff", backbone="tiny", num_classes=2)
    load_pretrained_weights(same, folder)
    _same_outputs(from_pretrained(folder), same.eval())
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_pretrained_weights(create_model("dff", backbone="tiny", num_classes=3), folder)


# ---------------------------------------------------------------- the Hub (no network)
def test_repo_id_downloads_the_snapshot(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    model = _warm(create_model("dff", backbone="tiny", num_classes=2))
    folder = model.save_pretrained(tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(folder)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    loaded = from_pretrained("someone/dff-tiny", revision="v1")
    _same_outputs(model, loaded)
    assert calls == [
        {
            "repo_id": "someone/dff-tiny",
            "revision": "v1",
            "allow_patterns": ["config.json", "model.safetensors", "README.md"],
        }
    ]


def test_repo_id_that_cannot_be_downloaded(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")

    def offline(**kwargs):
        raise OSError("no network")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(CheckpointNotFoundError, match="'runs/dff' is not a local folder, and .* no network"):
        from_pretrained("runs/dff")


def test_repo_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"dynfuse\[hub\]"):
        from_pretrained("someone/dff-tiny")


def test_push_to_hub_uploads_the_folder(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            seen["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
            seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            seen["config"] = json.loads((Path(folder_path) / CONFIG_NAME).read_text())
            return "commit"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    model = create_model("dff", backbone="tiny", num_classes=2)
    assert model.push_to_hub("me/dff", private=True, token="t", class_names=["a", "b"]) == "commit"
    assert seen["repo"] == ("me/dff", True, True) and seen["token"] == "t"
    assert seen["files"] == sorted(FILES) and seen["config"]["class_names"] == ["a", "b"]


# ---------------------------------------------------------------- dynfuse-predict and dynfuse-train
def _image_folder(folder: Path, sizes) -> dict[str, np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir()
    arrays = {}
    for i, (h, w) in enumerate(sizes):
        arrays[f"img{i}"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arrays[f"img{i}"]).save(folder / f"img{i}.png")
    return arrays


def test_predict_reads_a_pretrained_folder(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    from dynfuse.eval.manifest import check_manifest
    from dynfuse.predict import main, predict_probabilities

    model = _warm(create_model("dff", backbone="tiny", num_classes=2))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    folder = model.save_pretrained(tmp_path / "model", mean=mean, std=std, class_names=["x", "y"])
    arrays = _image_folder(tmp_path / "in", [(21, 30)])
    out = tmp_path / "out"
    assert (
        main(
            [
                str(folder),
                str(tmp_path / "in"),
                "-o",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
                "--no-overlay",
            ]
        )
        == 0
    )
    settings = check_manifest(out, num_classes=2)["producer"]["settings"]
    assert settings["checkpoint_layout"] == "pretrained" and settings["mean"] == mean
    assert settings["std"] == std and settings["backbone"] == "tiny"
    # The maps are the saved model's, with the normalisation the folder records.
    probs = predict_probabilities(model, arrays["img0"], mean=mean, std=std)
    with Image.open(out / "class_002" / "img0.png") as im:
        saved = np.asarray(im).astype(np.int64)
    assert np.abs(saved - probs[1] * 65535).max() <= 0.5 + 1e-3
    capsys.readouterr()
    assert main([str(folder), str(tmp_path / "in"), "-o", str(out), "--num-classes", "5"]) == 2
    assert "disagrees with the pretrained folder" in capsys.readouterr().err
    (folder / CONFIG_NAME).unlink()
    assert main([str(folder), str(tmp_path / "in"), "-o", str(out)]) == 2
    assert "is a folder, not a checkpoint file, and not a save_pretrained" in capsys.readouterr().err


def test_train_init_from_a_pretrained_folder(tmp_path):
    pytest.importorskip("PIL")
    from dynfuse.training import Trainer
    from dynfuse.training.config import parse_config
    from dynfuse.training.distributed import DistContext

    torch.manual_seed(5)
    model = _warm(create_model("dff", backbone="tiny", num_classes=3))
    folder = model.save_pretrained(tmp_path / "model")
    argv = [
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--train-length",
        "4",
        "--val-length",
        "1",
        "--crop-size",
        "32",
        "--batch-size",
        "4",
        "--val-every",
        "0",
        "--no-tensorboard",
        "--no-progress",
        "--output-dir",
        str(tmp_path / "run"),
        "--num-classes",
        "3",
        "--init-from",
        str(folder),
    ]
    config = parse_config(argv)
    assert config.init_from == str(folder)
    trainer = Trainer(config, ctx=DistContext())
    try:
        started = trainer.model.state_dict()
        for key, value in model.state_dict().items():
            assert torch.equal(started[key], value), key
    finally:
        trainer.close()
    # Another model than the folder's: refused, naming what differs.
    with pytest.raises(CheckpointError, match="num_classes 3 there, 4 here"):
        Trainer(
            parse_config([*argv[:-4], "--num-classes", "4", "--init-from", str(folder)]), ctx=DistContext()
        )
    with pytest.raises(CheckpointError, match="learner 'adaptive' there, 'invariant' here"):
        Trainer(parse_config([*argv, "--model-kw", "learner=invariant"]), ctx=DistContext())
