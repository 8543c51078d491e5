"""dynfuse-prepare on tiny fake Cityscapes and SBD trees, and the datasets that read its output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dynfuse.data import SBD, Cityscapes, mask_to_edges, read_edge_png, train_transforms
from dynfuse.data.codecs import EdgeLabelError
from dynfuse.data.prepare import cityscapes_train_ids, main

H, W = 24, 34


def _cityscapes_maps(seed):
    """labelIds and instanceIds of a small street: road, sky, two touching cars, out-of-roi."""
    rng = np.random.default_rng(seed)
    label_ids = np.full((H, W), 23, dtype=np.uint8)  # sky
    label_ids[12:, :] = 7  # road
    label_ids[:, :3] = 3  # out of roi on the left
    label_ids[20:, :] = 1  # ego vehicle at the bottom (void, not ignored)
    instance_ids = label_ids.astype(np.uint16).copy()
    top = int(rng.integers(6, 10))
    label_ids[top:16, 8:16] = 26
    instance_ids[top:16, 8:16] = 26000
    label_ids[top:16, 16:24] = 26
    instance_ids[top:16, 16:24] = 26001
    return label_ids, instance_ids


def make_cityscapes(root, splits=(("train", ("aachen", 2)), ("val", ("lindau", 1)))):
    expected = {}
    for split, (city, count) in splits:
        for i in range(count):
            stem = f"{city}_{i:06d}_000019"
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(i)
            image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
            Image.fromarray(image).save(img_dir / f"{stem}_leftImg8bit.png")
            label_ids, instance_ids = _cityscapes_maps(i)
            Image.fromarray(label_ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(instance_ids).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
            expected[(split, city, stem)] = (image, label_ids, instance_ids)
    return expected


def test_cityscapes_train_id_table():
    ids = np.arange(34, dtype=np.uint8).reshape(1, -1)
    train = cityscapes_train_ids(ids)[0]
    assert train[7] == 0 and train[33] == 18 and train[26] == 13 and train[24] == 11
    assert (train < 19).sum() == 19
    assert train[0] == train[2] == train[3] == train[9] == 255


def test_prepare_cityscapes_end_to_end(tmp_path, capsys):
    root, out = tmp_path / "cs", tmp_path / "out"
    expected = make_cityscapes(root)
    assert main(["cityscapes", str(root), str(out), "--workers", "2", "--quiet"]) == 0
    train_lines = (out / "train.txt").read_text().splitlines()
    assert train_lines == [
        f"leftImg8bit/train/aachen/aachen_{i:06d}_000019_leftImg8bit.png "
        f"gtFine/train/aachen/aachen_{i:06d}_000019_gtFine_edge.png"
        for i in range(2)
    ]
    assert len((out / "val.txt").read_text().splitlines()) == 1
    settings = json.loads((out / "dynfuse_prepare.json").read_text())
    assert settings["instance_sensitive"] is True and settings["num_classes"] == 19

    for (split, city, stem), (image, label_ids, instance_ids) in expected.items():
        edge_path = out / "gtFine" / split / city / f"{stem}_gtFine_edge.png"
        edges = read_edge_png(edge_path, 19)
        train_ids = cityscapes_train_ids(label_ids)
        want = mask_to_edges(
            train_ids, 19, radius=2, ignore=np.isin(label_ids, [2, 3]), instance_map=instance_ids
        )
        np.testing.assert_array_equal(edges, want)
        car, road, sky = edges[13], edges[0], edges[10]
        assert car[11, 14:18].all()  # between the two touching cars (instance-sensitive)
        assert not road[13:18, :3].any() and not sky[:10, :3].any()  # out-of-roi: ignored
        assert road[10:14, 30].all() and sky[10:14, 30].all()  # sky / road boundary, both sides
        # Road against the ego vehicle (void, not ignored): road edges on both sides, 2 px each.
        assert road[18:22, 5].all() and not edges[:, 22:, 5].any()
        copied = out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
        copied = np.asarray(Image.open(copied))
        np.testing.assert_array_equal(copied, image)

    ds = Cityscapes(out, "train")
    assert len(ds) == 2 and ds.num_classes == 19
    item = ds[1]
    assert item["image"].shape == (3, H, W) and item["edges"].shape == (19, H, W)
    assert item["name"] == "aachen_000001_000019_leftImg8bit"
    edges1 = read_edge_png(out / "gtFine/train/aachen/aachen_000001_000019_gtFine_edge.png", 19)
    assert torch.equal(item["edges"].bool(), torch.from_numpy(edges1))
    cropped = Cityscapes(out, "train", transform=train_transforms(16, short_side=(20, 40)))
    batch = next(iter(DataLoader(cropped, batch_size=2)))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["valid"].dtype == torch.bool

    # Instance-insensitive: no edge between the two cars.
    out2 = tmp_path / "out_noinst"
    assert main(["cityscapes", str(root), str(out2), "--no-instance", "--quiet"]) == 0
    flat = read_edge_png(out2 / "gtFine/train/aachen/aachen_000000_000019_gtFine_edge.png", 19)
    assert not flat[13][11, 14:18].any()


def test_prepare_is_resumable_and_reports_bad_files(tmp_path, capsys):
    root, out = tmp_path / "cs", tmp_path / "out"
    make_cityscapes(root)
    args = ["cityscapes", str(root), str(out), "--workers", "1", "--quiet"]
    assert main(args) == 0
    edge = out / "gtFine/train/aachen/aachen_000000_000019_gtFine_edge.png"
    other = out / "gtFine/train/aachen/aachen_000001_000019_gtFine_edge.png"
    os.utime(edge, (1, 1))
    os.utime(other, (1, 1))
    other.unlink()
    assert main(args) == 0
    assert edge.stat().st_mtime == 1  # finished output skipped
    assert other.exists()  # missing output redone
    assert main(args + ["--overwrite"]) == 0
    assert edge.stat().st_mtime != 1
    assert not list(out.rglob("*.tmp"))

    # A corrupt label file: reported by name, the list of that split is not written.
    bad = root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    bad.write_bytes(b"not a png")
    (out / "val.txt").unlink()
    (out / "gtFine/val/lindau/lindau_000000_000019_gtFine_edge.png").unlink()
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "lindau_000000_000019_gtFine_labelIds.png" in err and "cannot read" in err
    assert not (out / "val.txt").exists() and (out / "train.txt").exists()

    # Other settings into the same OUT are refused; a missing ROOT is a clear error.
    assert main(args + ["--radius", "1"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["cityscapes", str(tmp_path / "nope"), str(out), "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err


def make_sbd(root, names=("2008_000002", "2008_000003", "2008_000007")):
    (root / "img").mkdir(parents=True)
    (root / "cls").mkdir()
    (root / "inst").mkdir()
    expected = {}
    for n, name in enumerate(names):
        h, w = 21 + n, 27
        rng = np.random.default_rng(n)
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "img" / f"{name}.jpg", quality=95)
        cls = np.zeros((h, w), dtype=np.uint8)
        inst = np.zeros((h, w), dtype=np.uint8)
        cls[4:15, 3:12] = 15  # two touching persons (class 15 -> index 14)
        inst[4:15, 3:12] = 1
        cls[4:15, 12:20] = 15
        inst[4:15, 12:20] = 2
        cls[14:, 20:] = 7  # a car (class 7 -> index 6)
        inst[14:, 20:] = 3
        scipy.io.savemat(
            root / "cls" / f"{name}.mat",
            {"GTcls": {"Segmentation": cls, "CategoriesPresent": np.array([[7], [15]])}},
        )
        scipy.io.savemat(
            root / "inst" / f"{name}.mat",
            {"GTinst": {"Segmentation": inst, "Categories": np.array([[15], [15], [7]])}},
        )
        expected[name] = (image, cls, inst)
    (root / "train.txt").write_text("\n".join(names[:2]) + "\n")
    (root / "val.txt").write_text(names[2] + "\n")
    return expected


def test_prepare_sbd_end_to_end(tmp_path):
    root, out = tmp_path / "sbd", tmp_path / "out"
    expected = make_sbd(root)
    args = ["sbd", str(root), str(out), "--scales", "0.5,1", "--workers", "2", "--quiet"]
    assert main(args) == 0
    train = (out / "train.txt").read_text().splitlines()
    assert len(train) == 4 and train[0].startswith("image/train/scale_0.5/2008_000002.png ")
    assert (out / "val.txt").read_text().splitlines() == [
        "image/val/scale_1/2008_000007.jpg edge/val/scale_1/2008_000007.png"
    ]
    name = "2008_000003"
    _, cls, inst = expected[name]
    labels = cls.astype(np.int64) - 1
    edges = read_edge_png(out / "edge/train/scale_1" / f"{name}.png", 20)
    np.testing.assert_array_equal(edges, mask_to_edges(labels, 20, radius=2, instance_map=inst))
    assert edges[14][8, 10:14].all()  # between the two persons
    assert edges[6][12:16, 25].all() and not edges[:, 2, 0].any()
    # Scale 0.5: the segmentation is resized first (ceil size, nearest), then edges computed.
    half = read_edge_png(out / "edge/train/scale_0.5" / f"{name}.png", 20)
    assert half.shape == (20, 11, 14)
    img_half = Image.open(out / "image/train/scale_0.5" / f"{name}.png")
    assert img_half.size == (14, 11)

    ds = SBD(out, "train")
    assert len(ds) == 4 and ds.num_classes == 20
    shapes = sorted(tuple(ds[i]["edges"].shape) for i in range(4))
    assert shapes == [(20, 11, 14), (20, 11, 14), (20, 21, 27), (20, 22, 27)]
    val = SBD(out, "val")
    assert val[0]["name"] == "2008_000007" and val[0]["image"].shape == (3, 23, 27)

    out2 = tmp_path / "out_cls"
    assert main(["sbd", str(root), str(out2), "--scales", "1", "--no-instance", "--quiet"]) == 0
    flat = read_edge_png(out2 / "edge/train/scale_1" / f"{name}.png", 20)
    np.testing.assert_array_equal(flat, mask_to_edges(labels, 20, radius=2))
    assert not flat[14][8, 10:14].any()


def test_prepare_sbd_names_a_broken_mat(tmp_path, capsys):
    root, out = tmp_path / "sbd", tmp_path / "out"
    make_sbd(root)
    (root / "inst" / "2008_000003.mat").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["sbd", str(root), str(out), "--scales", "1", "--quiet", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "2008_000003.mat" in err
    assert not (out / "train.txt").exists() and (out / "val.txt").exists()


def test_datasets_report_missing_and_mismatched_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        Cityscapes(tmp_path / "absent")
    (tmp_path / "val.txt").write_text("a.png b.png\n")
    with pytest.raises(FileNotFoundError, match="train"):
        Cityscapes(tmp_path, "train")
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    ds = Cityscapes(tmp_path, "val")
    with pytest.raises(EdgeLabelError, match="b.png"):
        ds[0]
    (tmp_path / "test.txt").write_text("/a.png\n")  # authors' style leading slash, no label
    item = Cityscapes(tmp_path, "test")[0]
    assert item["edges"].shape == (19, 4, 5) and not item["edges"].any()
    (tmp_path / "bad.txt").write_text("a b c\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        SBD(tmp_path, "bad")


def test_prepare_names_bad_images(tmp_path, capsys):
    root, out = tmp_path / "cs", tmp_path / "out"
    make_cityscapes(root)
    bad = root / "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png"
    bad.write_bytes(b"broken")
    small = root / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"
    Image.fromarray(np.zeros((H, W - 1, 3), dtype=np.uint8)).save(small)
    capsys.readouterr()
    assert main(["cityscapes", str(root), str(out), "--quiet", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "aachen_000001_000019_leftImg8bit.png: cannot read image" in err
    assert f"lindau_000000_000019_leftImg8bit.png: image size ({H}, {W - 1}) differs" in err
    assert not (out / "train.txt").exists() and not (out / "val.txt").exists()

    sroot, sout = tmp_path / "sbd", tmp_path / "sout"
    make_sbd(sroot)
    (sroot / "img" / "2008_000002.jpg").write_bytes(b"broken")
    args = ["sbd", str(sroot), str(sout), "--scales", "0.5,1", "--quiet", "--workers", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("2008_000002.jpg: cannot read image") == 1  # reported once, not per scale


def test_prepare_reports_a_truncated_image(tmp_path, capsys):
    """Issue 9 item 6: a PNG whose header reads but whose data is cut is reported (rc 1)."""
    root, out = tmp_path / "cs", tmp_path / "out"
    make_cityscapes(root)
    cut = root / "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with Image.open(cut) as img:  # the header alone still looks fine
        assert img.size == (W, H)
    capsys.readouterr()
    assert main(["cityscapes", str(root), str(out), "--quiet", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "aachen_000001_000019_leftImg8bit.png: cannot read image" in err
    assert "truncated" in err
    assert not (out / "train.txt").exists() and (out / "val.txt").exists()
    assert not (out / "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png").exists()


def test_no_instance_candidates_come_from_instance_ids(tmp_path):
    """Issue 14 item 5a: a car pixel whose only other-class neighbours are ignored (out of roi)
    but with another car instance within radius 2 is an edge in the authors' instance-insensitive
    GT (candidates from instanceIds); train-id candidates missed it."""
    root, out = tmp_path / "cs", tmp_path / "out"
    make_cityscapes(root, splits=(("train", ("aachen", 1)),))
    label_ids = np.full((5, 8), 26, dtype=np.uint8)
    label_ids[:, :2] = 3  # out of roi: columns 0-1
    instance_ids = label_ids.astype(np.uint16)
    instance_ids[:, 2:5] = 26000  # car A: columns 2-4
    instance_ids[:, 5:] = 26001  # car B: columns 5-7
    stem = "aachen_000000_000019"
    Image.fromarray(np.zeros((5, 8, 3), dtype=np.uint8)).save(
        root / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png"
    )
    Image.fromarray(label_ids).save(root / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png")
    Image.fromarray(instance_ids).save(root / f"gtFine/train/aachen/{stem}_gtFine_instanceIds.png")
    args = ["cityscapes", str(root), str(out), "--splits", "train", "--quiet", "--workers", "1"]
    assert main(args + ["--no-instance"]) == 0
    edges = read_edge_png(out / f"gtFine/train/aachen/{stem}_gtFine_edge.png", 19)
    want = np.zeros((5, 8), dtype=bool)
    want[:, 3] = True  # column 3: column 1 (ignored) is not car; car B (column 5) makes it a candidate
    np.testing.assert_array_equal(edges[13], want)
    assert not np.delete(edges, 13, axis=0).any()
    settings = json.loads((out / "dynfuse_prepare.json").read_text())
    assert settings["candidates"] == "instanceIds"
    # Instance-sensitive: columns 3-6 around the A / B boundary (column 2 is no candidate).
    out2 = tmp_path / "out_inst"
    assert main(["cityscapes", str(root), str(out2), "--splits", "train", "--quiet"]) == 0
    inst = read_edge_png(out2 / f"gtFine/train/aachen/{stem}_gtFine_edge.png", 19)
    want[:, 3:7] = True
    np.testing.assert_array_equal(inst[13], want)


def test_sbd_scales_resize_labels_as_matlab(tmp_path):
    """Issue 14 item 5b: labels at scale 0.75 / 1.5 are sampled with MATLAB's nearest mapping."""
    from dynfuse.data.resize import matlab_resize_nearest

    root, out = tmp_path / "sbd", tmp_path / "out"
    expected = make_sbd(root)
    args = ["sbd", str(root), str(out), "--scales", "0.75,1.5", "--splits", "train", "--quiet"]
    assert main(args + ["--workers", "1"]) == 0
    differs = 0
    for name in ("2008_000002", "2008_000003"):
        _, cls, inst = expected[name]
        labels = cls.astype(np.int64) - 1
        for scale in (0.75, 1.5):
            got = read_edge_png(out / f"edge/train/scale_{scale:g}/{name}.png", 20)
            small_labels = matlab_resize_nearest(labels, scale)
            small_inst = matlab_resize_nearest(inst, scale)
            np.testing.assert_array_equal(
                got, mask_to_edges(small_labels, 20, radius=2, instance_map=small_inst)
            )
            h, w = small_labels.shape
            img = Image.open(out / f"image/train/scale_{scale:g}/{name}.png")
            assert img.size == (w, h)  # image and labels share MATLAB's ceil(s * size)
            # PIL's nearest resize to the same size picks other rows / columns here.
            pil = np.asarray(Image.fromarray(labels.astype(np.int32), mode="I").resize((w, h), 0))
            differs += int((pil != small_labels).any())
    assert differs > 0


def test_codecs_atomic_write_is_the_shared_one():
    from dynfuse import atomic
    from dynfuse.data import codecs

    assert codecs.atomic_write is atomic.atomic_write
