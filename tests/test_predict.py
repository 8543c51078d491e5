"""dynfuse.predict: per-class 16-bit PNGs in the SEAL layout and coloured overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dynfuse.models import create_model
from dynfuse.predict import (
    class_palette,
    colour_edges,
    list_images,
    load_model_for_inference,
    main,
    overlay_edges,
    predict_probabilities,
    save_probability_maps,
)
from dynfuse.eval.manifest import ManifestError, check_manifest, read_manifest
from dynfuse.training import TrainConfig, Trainer
from dynfuse.training.distributed import DistContext


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(dataset="synthetic", backbone="tiny", num_classes=3, train_length=4,
                      val_length=1, crop_size=32, batch_size=4, epochs=1, val_every=0,
                      output_dir=str(out), tensorboard=False, progress=False, device="cpu")
    trainer = Trainer(cfg, ctx=DistContext())
    trainer.fit()
    return out / "final.pt"


def _images(folder, sizes):
    rng = np.random.default_rng(0)
    folder.mkdir()
    arrays = {}
    for i, (h, w) in enumerate(sizes):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        name = f"img{i}"
        ext = ".png" if i % 2 == 0 else ".bmp"  # lossless, so the test knows the exact pixels
        Image.fromarray(arr).save(folder / f"{name}{ext}")
        arrays[name] = arr
    (folder / "notes.txt").write_text("not an image")
    return arrays


def test_predict_writes_seal_layout_and_overlays(tmp_path, trained):
    arrays = _images(tmp_path / "in", [(37, 50), (24, 24)])
    out = tmp_path / "out"
    assert main([str(trained), str(tmp_path / "in"), "-o", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    model, spec = load_model_for_inference(trained)
    assert spec["num_classes"] == 3 and spec["backbone"] == "tiny"
    for name, arr in arrays.items():
        probs = predict_probabilities(model, arr)
        assert probs.shape == (3, *arr.shape[:2]) and probs.dtype == np.float32
        for k in range(3):
            with Image.open(out / f"class_{k + 1:03d}" / f"{name}.png") as im:
                assert im.mode in ("I;16", "I")  # 16-bit greyscale
                saved = np.asarray(im).astype(np.int64)
            assert saved.shape == arr.shape[:2]
            assert np.abs(saved - probs[k] * 65535).max() <= 0.5 + 1e-3
        with Image.open(out / "overlay" / f"{name}.png") as im:
            assert im.mode == "RGB" and im.size == (arr.shape[1], arr.shape[0])
    assert sorted(p.name for p in out.iterdir()) == ["class_001", "class_002", "class_003",
                                                      "manifest.json", "overlay"]
    manifest = check_manifest(out, num_classes=3)
    assert manifest["images"] == ["img0", "img1"] and manifest["skipped"] == []
    producer = manifest["producer"]
    assert producer["tool"] == "dynfuse-predict" and producer["checkpoint"] == str(trained.resolve())
    assert producer["settings"]["backbone"] == "tiny" and producer["settings"]["overlay"] is True
    assert producer["versions"]["torch"] == torch.__version__


def test_predict_bare_weights_need_a_description(tmp_path, capsys):
    torch.manual_seed(0)
    net = create_model("dff", backbone="tiny", num_classes=2).eval()
    weights = tmp_path / "w.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
               weights)
    _images(tmp_path / "in", [(20, 30)])
    assert main([str(weights), str(tmp_path / "in"), "-o", str(tmp_path / "o")]) == 2
    assert "--model, --backbone, --num-classes" in capsys.readouterr().err
    assert main([str(weights), str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--model", "dff",
                 "--backbone", "tiny", "--num-classes", "2", "--no-overlay", "--no-progress",
                 "--device", "cpu"]) == 0
    assert (tmp_path / "o" / "class_002" / "img0.png").is_file()
    assert not (tmp_path / "o" / "overlay").exists()
    # wrong class count: a clear mismatch error, exit status 2
    assert main([str(weights), str(tmp_path / "in"), "-o", str(tmp_path / "o2"), "--model",
                 "dff", "--backbone", "tiny", "--num-classes", "5"]) == 2
    assert "does not fit DFF (was it trained with another --model" in capsys.readouterr().err


def test_predict_rejects_corrupt_checkpoint_and_disagreeing_flags(tmp_path, trained, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    _images(tmp_path / "in", [(16, 16)])
    assert main([str(bad), str(tmp_path / "in"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and str(bad) in err and "not a torch checkpoint" in err
    assert main([str(trained), str(tmp_path / "in"), "-o", str(tmp_path / "o"),
                 "--num-classes", "7"]) == 2
    assert "disagrees with the checkpoint" in capsys.readouterr().err
    assert main([str(trained), str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2


def test_save_probability_maps_quantises_and_clips(tmp_path):
    probs = np.array([[[0.0, 1.0, 0.5, 2.0]], [[-1.0, 0.25, 1 / 65535, 0.999999]]], np.float32)
    paths = save_probability_maps(probs, tmp_path, "x")
    assert [p.parent.name for p in paths] == ["class_001", "class_002"]
    got = [np.asarray(Image.open(p)).astype(np.int64) for p in paths]
    assert got[0].tolist() == [[0, 65535, 32768, 65535]]
    assert got[1].tolist() == [[0, 16384, 1, 65535]]
    with pytest.raises(ValueError, match="K, H, W"):
        save_probability_maps(probs[0], tmp_path, "y")


def test_colouring_matches_brute_force():
    rng = np.random.default_rng(1)
    probs = rng.random((5, 7, 9)).astype(np.float32)
    pal = class_palette(5)
    colour, strength = colour_edges(probs)
    for y, x in [(0, 0), (3, 4), (6, 8)]:
        p = probs[:, y, x]
        assert np.allclose(colour[y, x], (p[:, None] * pal).sum(0) / p.sum(), atol=1e-6)
        assert strength[y, x] == p.max()
    assert class_palette(19).shape == (19, 3)
    img = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    over = overlay_edges(img, np.zeros_like(probs))
    assert np.abs(over.astype(int) - np.rint(img * 0.5)).max() <= 1  # no edges: dimmed image
    with pytest.raises(ValueError, match="palette"):
        colour_edges(probs, pal[:3])


def test_list_images_rejects_name_clashes(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.bmp")
    with pytest.raises(ValueError, match="share the output name"):
        list_images([tmp_path / "a", tmp_path / "x.bmp"])


def test_predictions_feed_the_folder_evaluator(tmp_path, trained):
    """predict's files are exactly what dynfuse.eval's folder runner reads."""
    from dynfuse.data import Synthetic, write_edge_png
    from dynfuse.eval import EvalSettings, FolderSpec, evaluate_edges, evaluate_folder

    data = Synthetic(num_classes=3, size=40, length=2, split="val")
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    images, gts = [], []
    for i in range(2):
        scene = data.scene(i)
        img = np.rint(scene.image * 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "img" / f"s{i}.png")
        write_edge_png(tmp_path / "gt" / f"s{i}.png", scene.edges)
        images.append(img)
        gts.append(scene.edges)
    assert main([str(trained), str(tmp_path / "img"), "-o", str(tmp_path / "pred"), "--device",
                 "cpu", "--no-progress", "--no-overlay"]) == 0
    settings = EvalSettings(max_dist=0.02, thresholds=9, thin=True)
    from_files = evaluate_folder(FolderSpec(str(tmp_path / "pred"), str(tmp_path / "gt"), 3),
                                 settings)
    model, _ = load_model_for_inference(trained)
    quantised = [np.rint(predict_probabilities(model, im) * 65535) / 65535 for im in images]
    in_memory = evaluate_edges(quantised, gts, settings=settings)
    assert from_files.mf_ods == pytest.approx(in_memory.mf_ods, abs=1e-12)
    assert 0.0 <= from_files.mf_ods <= 1.0
