"""dynfuse.predict: per-class 16-bit PNGs in the SEAL layout and coloured overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dynfuse.eval.manifest import ManifestError, check_manifest, read_manifest
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
from dynfuse.training import TrainConfig, Trainer
from dynfuse.training.distributed import DistContext


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        dataset="synthetic",
        backbone="tiny",
        num_classes=3,
        train_length=4,
        val_length=1,
        crop_size=32,
        batch_size=4,
        epochs=1,
        val_every=0,
        output_dir=str(out),
        tensorboard=False,
        progress=False,
        device="cpu",
    )
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
    assert main([str(trained), str(tmp_path / "in"), "-o", str(out), "--device", "cpu", "--no-progress"]) == 0
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
    assert sorted(p.name for p in out.iterdir()) == [
        "class_001",
        "class_002",
        "class_003",
        "manifest.json",
        "overlay",
    ]
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
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, weights)
    _images(tmp_path / "in", [(20, 30)])
    assert main([str(weights), str(tmp_path / "in"), "-o", str(tmp_path / "o")]) == 2
    assert "--model, --backbone, --num-classes" in capsys.readouterr().err
    assert (
        main(
            [
                str(weights),
                str(tmp_path / "in"),
                "-o",
                str(tmp_path / "o"),
                "--model",
                "dff",
                "--backbone",
                "tiny",
                "--num-classes",
                "2",
                "--no-overlay",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (tmp_path / "o" / "class_002" / "img0.png").is_file()
    assert not (tmp_path / "o" / "overlay").exists()
    # wrong class count: a clear mismatch error, exit status 2
    assert (
        main(
            [
                str(weights),
                str(tmp_path / "in"),
                "-o",
                str(tmp_path / "o2"),
                "--model",
                "dff",
                "--backbone",
                "tiny",
                "--num-classes",
                "5",
            ]
        )
        == 2
    )
    assert "does not fit DFF (was it trained with another --model" in capsys.readouterr().err


def test_predict_rejects_corrupt_checkpoint_and_disagreeing_flags(tmp_path, trained, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    _images(tmp_path / "in", [(16, 16)])
    assert main([str(bad), str(tmp_path / "in"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and str(bad) in err and "not a torch checkpoint" in err
    assert main([str(trained), str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--num-classes", "7"]) == 2
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
    assert (
        main(
            [
                str(trained),
                str(tmp_path / "img"),
                "-o",
                str(tmp_path / "pred"),
                "--device",
                "cpu",
                "--no-progress",
                "--no-overlay",
            ]
        )
        == 0
    )
    settings = EvalSettings(max_dist=0.02, thresholds=9, thin=True)
    from_files = evaluate_folder(FolderSpec(str(tmp_path / "pred"), str(tmp_path / "gt"), 3), settings)
    model, _ = load_model_for_inference(trained)
    quantised = [np.rint(predict_probabilities(model, im) * 65535) / 65535 for im in images]
    in_memory = evaluate_edges(quantised, gts, settings=settings)
    assert from_files.mf_ods == pytest.approx(in_memory.mf_ods, abs=1e-12)
    assert 0.0 <= from_files.mf_ods <= 1.0


# ---------------------------------------------------------------- trust the folder (issue 9)
def _run(argv, capsys):
    rc = main([*argv, "--device", "cpu", "--no-progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _pngs(folder):
    """Every visible PNG under ``folder`` -> its bytes (hidden temporaries excluded)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*.png"))
        if not p.name.startswith(".")
    }


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.slow  # starts a fresh Python process (imports torch)
def test_predict_does_not_import_training(tmp_path, trained):
    """A whole prediction (training checkpoint, bare weights) runs without dynfuse.training."""
    import os
    import subprocess
    import sys

    torch.save(create_model("casenet", backbone="tiny", num_classes=2).state_dict(), tmp_path / "w.pt")
    _images(tmp_path / "in", [(16, 16)])
    code = (
        "import sys; from dynfuse.predict import main\n"
        f"assert main([{str(trained)!r}, {str(tmp_path / 'in')!r}, '-o', {str(tmp_path / 'a')!r}, "
        "'--no-progress', '--device', 'cpu']) == 0\n"
        f"assert main([{str(tmp_path / 'w.pt')!r}, {str(tmp_path / 'in')!r}, '-o', "
        f"{str(tmp_path / 'b')!r}, '--model', 'casenet', '--backbone', 'tiny', '--num-classes', '2', "
        "'--no-progress', '--device', 'cpu']) == 0\n"
        "bad = sorted(m for m in sys.modules if m.startswith('dynfuse.training'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_unreadable_image_leaves_the_folder_marked_incomplete(tmp_path, trained, capsys):
    """Item 2: a run that stops at an unreadable image after overwriting part of an older run's
    maps must not leave a folder that passes for complete."""
    _images(tmp_path / "in", [(20, 24), (20, 24), (20, 24)])
    out = tmp_path / "out"
    rc, _, _ = _run([str(trained), str(tmp_path / "in"), "-o", str(out)], capsys)
    assert rc == 0 and check_manifest(out, 3)["images"] == ["img0", "img1", "img2"]
    old = _pngs(out)
    _truncate(tmp_path / "in" / "img1.bmp")  # the second image is now unreadable
    rc, _, err = _run([str(trained), str(tmp_path / "in"), "-o", str(out)], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynfuse-predict: error: cannot read image")
    assert "img1.bmp" in lines[0] and "--skip-unreadable" in lines[0]
    assert read_manifest(out)["complete"] is False
    with pytest.raises(ManifestError, match="did not complete"):
        check_manifest(out, 3)
    assert set(_pngs(out)) == set(old)  # every file still whole (old or new), none partial

    # --skip-unreadable: the run completes, lists the skipped image, and drops its stale maps
    rc, stdout, _ = _run([str(trained), str(tmp_path / "in"), "-o", str(out), "--skip-unreadable"], capsys)
    assert rc == 0
    manifest = check_manifest(out, 3)
    assert manifest["images"] == ["img0", "img2"]
    assert [s["name"] for s in manifest["skipped"]] == ["img1"]
    assert "img1.bmp" in manifest["skipped"][0]["reason"]
    assert "skipped 1 unreadable image(s)" in stdout and "img1.bmp" in stdout
    assert not any("img1" in name for name in _pngs(out))


def test_truncated_png_input(tmp_path, trained, capsys):
    _images(tmp_path / "in", [(24, 24), (24, 24), (24, 24)])
    _truncate(tmp_path / "in" / "img2.png", keep=0.6)  # header fine, pixel data cut short
    rc, _, err = _run([str(trained), str(tmp_path / "in"), "-o", str(tmp_path / "a")], capsys)
    assert rc == 2 and "img2.png" in err and "Traceback" not in err
    rc, stdout, _ = _run(
        [str(trained), str(tmp_path / "in"), "-o", str(tmp_path / "b"), "--skip-unreadable", "--no-overlay"],
        capsys,
    )
    assert rc == 0 and check_manifest(tmp_path / "b", 3)["images"] == ["img0", "img1"]
    rc, _, err = _run(
        [str(trained), str(tmp_path / "in" / "img2.png"), "-o", str(tmp_path / "c"), "--skip-unreadable"],
        capsys,
    )
    assert rc == 2 and "none of the 1 image(s) could be read" in err
    assert read_manifest(tmp_path / "c")["complete"] is False


def test_write_failure_keeps_old_maps_whole(tmp_path, trained, capsys, monkeypatch):
    """A crash in the middle of writing a PNG (disk full) leaves the previous file untouched,
    no partial or temporary file, and the run marked incomplete."""
    from PIL import Image as PILImage

    _images(tmp_path / "in", [(16, 20), (16, 20)])
    out = tmp_path / "out"
    assert _run([str(trained), str(tmp_path / "in"), "-o", str(out), "--no-overlay"], capsys)[0] == 0
    old = _pngs(out)
    real_save = PILImage.Image.save
    calls = {"n": 0}

    def failing_save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the first class map of the second image
            with open(fp, "wb") as f:
                f.write(b"\x89PNG partial")
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", failing_save)
    rc, _, err = _run([str(trained), str(tmp_path / "in"), "-o", str(out), "--no-overlay"], capsys)
    assert rc == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert read_manifest(out)["complete"] is False
    now = _pngs(out)
    assert set(now) == set(old)
    assert now["class_001/img1.png"] == old["class_001/img1.png"]  # the old map, whole
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary left


@pytest.mark.slow  # starts a fresh Python process (imports torch)
def test_killed_run_is_incomplete_and_has_no_partial_png(tmp_path, trained):
    """Fault injection: SIGKILL the predict process once its first maps exist."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    code = "import sys; from dynfuse.predict import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            str(trained),
            str(folder),
            "-o",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "overlay").is_dir() or not any((out / "overlay").iterdir()):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no output appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    manifest = read_manifest(out)
    assert manifest["complete"] is False and "images" not in manifest
    with pytest.raises(ManifestError, match="did not complete"):
        check_manifest(out, 3)
    visible = [p for p in out.rglob("*.png") if not p.name.startswith(".")]
    assert 0 < len(visible) < 400 * 4
    for p in visible:  # every visible map decodes completely
        with Image.open(p) as im:
            im.load()
    # a rerun cleans up any temporary file the kill left and completes the folder
    assert (
        main([str(trained), str(folder / "000.png"), "-o", str(out), "--device", "cpu", "--no-progress"]) == 0
    )
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    assert check_manifest(out, 3)["images"] == ["000"]


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_output_dir_that_is_a_file(tmp_path, trained, capsys, where):
    """Item 16: a one-line error, not a NotADirectoryError traceback."""
    _images(tmp_path / "in", [(16, 16)])
    (tmp_path / "taken").write_text("x")
    out = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "sub"
    rc, _, err = _run([str(trained), str(tmp_path / "in"), "-o", str(out)], capsys)
    assert rc == 2
    assert err.strip().splitlines() == [
        f"dynfuse-predict: error: --output-dir {str(out)!r} is not a folder"
        + ("" if where == "file" else f" (its parent {str(tmp_path / 'taken')!r} is a file)")
    ]
    assert (tmp_path / "taken").read_text() == "x"


@pytest.mark.slow  # a full-size random ResNet-50 checkpoint
def test_authors_checkpoint_goes_through_load_official(tmp_path, capsys):
    """Item 15: the authors' {"epoch", "state_dict", "optimizer"} files (their key names, DDP
    prefix) are recognised; model, depth and classes come from the weights."""
    from test_models_official import authors_keys, random_checkpoint

    from dynfuse.models import load_official_dff

    k = 2
    sd = random_checkpoint(authors_keys("dff", k), seed=4)
    path = tmp_path / "checkpoint_200.pth.tar"
    torch.save(
        {
            "epoch": 200,
            "state_dict": {f"module.{key}": v for key, v in sd.items()},
            "optimizer": {"state": {}, "param_groups": []},
        },
        path,
    )
    _images(tmp_path / "in", [(16, 24)])
    rc, _, err = _run([str(path), str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--no-overlay"], capsys)
    assert rc == 0, err
    manifest = check_manifest(tmp_path / "o", k)
    settings = manifest["producer"]["settings"]
    assert (settings["model"], settings["backbone"], settings["checkpoint_layout"]) == (
        "dff",
        "resnet50",
        "authors",
    )
    net, spec = load_model_for_inference(path)
    assert (spec["model"], spec["backbone"], spec["num_classes"]) == ("dff", "resnet50", k)
    reference = load_official_dff(sd, k).eval()
    image = np.array(Image.open(tmp_path / "in" / "img0.png").convert("RGB"))
    probs = predict_probabilities(reference, image)
    saved = np.asarray(Image.open(tmp_path / "o" / "class_002" / "img0.png")).astype(np.int64)
    assert np.abs(saved - probs[1] * 65535).max() <= 0.5 + 1e-3
    rc, _, err = _run(
        [str(path), str(tmp_path / "in"), "-o", str(tmp_path / "o2"), "--model", "casenet"], capsys
    )
    assert rc == 2 and "--model 'casenet' disagrees" in err and "authors' DFF checkpoint" in err


def test_bad_device_is_one_line(tmp_path, trained, capsys):
    from dynfuse.device import resolve_device

    _images(tmp_path / "in", [(16, 16)])
    rc = main([str(trained), str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--device", "tpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [
        "dynfuse-predict: error: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"
    ]
    assert not (tmp_path / "o").exists()  # nothing created before the arguments are checked
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert resolve_device("cpu") == torch.device("cpu")


# ---------------------------------------------------------------- contact sheet
def test_contact_sheet_image_gt_prediction(tmp_path, trained, capsys):
    from dynfuse.data.codecs import write_edge_png
    from dynfuse.viz import contact_sheet, contact_sheet_row

    arrays = _images(tmp_path / "in", [(37, 50), (24, 24), (20, 30)])
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    rng = np.random.default_rng(1)
    gts = {name: rng.random((3, *arr.shape[:2])) > 0.9 for name, arr in arrays.items()}
    for name in ("img0", "img2"):  # img1 has no label
        write_edge_png(gt_dir / f"{name}.png", gts[name])
    out = tmp_path / "out"
    rc, stdout, _ = _run(
        [
            str(trained),
            str(tmp_path / "in"),
            "-o",
            str(out),
            "--contact-sheet",
            "--sheet-rows",
            "2",
            "--gt-dir",
            str(gt_dir),
            "--sheet-height",
            "16",
        ],
        capsys,
    )
    assert rc == 0 and "contact_sheet.png (2 image(s)); no ground truth for img1" in stdout
    # the sheet is exactly image | GT | prediction of the first two images, from the same pieces
    model, _ = load_model_for_inference(trained)
    rows = [
        (
            name,
            contact_sheet_row(
                arrays[name],
                predict_probabilities(model, arrays[name]),
                gts[name] if name == "img0" else None,
                with_gt=True,
                max_height=16,
            ),
        )
        for name in ("img0", "img1")
    ]
    want = contact_sheet(rows, ("image", "ground truth", "prediction"))
    with Image.open(out / "contact_sheet.png") as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), want)
    assert rows[0][1][0].shape == (13, 17, 3)  # 37x50 shrunk by 3 for --sheet-height 16
    manifest = check_manifest(out, num_classes=3)
    assert manifest["images"] == ["img0", "img1", "img2"]  # the maps of every image, as before
    sheet = manifest["producer"]["settings"]["contact_sheet"]
    assert sheet == {
        "file": "contact_sheet.png",
        "max_rows": 2,
        "max_height": 16,
        "gt_dir": str(gt_dir.resolve()),
        "images": ["img0", "img1"],
        "without_gt": ["img1"],
    }

    # without --gt-dir: image | prediction; a rerun without --contact-sheet removes the old sheet
    rc, _, _ = _run([str(trained), str(tmp_path / "in"), "-o", str(out), "--contact-sheet"], capsys)
    with Image.open(out / "contact_sheet.png") as im:
        width = im.size[0]
    assert rc == 0 and width == 6 + (50 + 6) + (50 + 6)  # two columns as wide as the widest image
    settings = check_manifest(out, 3)["producer"]["settings"]
    assert settings["contact_sheet"]["images"] == ["img0", "img1", "img2"]
    rc, _, _ = _run([str(trained), str(tmp_path / "in"), "-o", str(out)], capsys)
    assert rc == 0 and not (out / "contact_sheet.png").exists()
    assert check_manifest(out, 3)["producer"]["settings"]["contact_sheet"] is None


def test_contact_sheet_bad_ground_truth_fails_before_any_map(tmp_path, trained, capsys):
    from dynfuse.data.codecs import write_edge_png

    _images(tmp_path / "in", [(20, 24), (20, 24)])
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    base = [str(trained), str(tmp_path / "in"), "-o", str(tmp_path / "out")]

    def error(*extra):
        rc, _, err = _run([*base, *extra], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("dynfuse-predict: error: ")
        assert not (tmp_path / "out").exists()  # refused before anything was written
        return lines[0]

    assert "--gt-dir is read for the contact sheet only" in error("--gt-dir", str(gt_dir))
    assert "has none of img0.png, img1.png" in error("--contact-sheet", "--gt-dir", str(gt_dir))
    assert "is not a folder" in error("--contact-sheet", "--gt-dir", str(tmp_path / "nope"))
    write_edge_png(gt_dir / "img1.png", np.zeros((3, 20, 25), bool))
    msg = error("--contact-sheet", "--gt-dir", str(gt_dir))
    assert "img1.png" in msg and "is 20x25, its image 20x24" in msg
    (gt_dir / "img1.png").write_bytes(b"not a png")
    assert "img1.png" in error("--contact-sheet", "--gt-dir", str(gt_dir))
    with pytest.raises(SystemExit):
        main([*base, "--contact-sheet", "--sheet-rows", "0"])
    assert "expected a positive integer" in capsys.readouterr().err
