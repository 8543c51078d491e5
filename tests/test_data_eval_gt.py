"""The authors' evaluation GT (demoGenGT.m) and ``dynfuse-prepare ... --eval-gt``.

Hand cases follow my reading of data/cityscapes-preprocess/code/demoGenGT.m and
data/sbd-preprocess/code/demoGenGT.m: Cityscapes gt_thin = resize labelIds / instanceIds to half
(MATLAB nearest: rows and columns 1, 3, 5, ... 0-based), radius-1 edges, thin; gt_raw = radius-2
edges at full size, then half-size nearest. SBD gt_orig_thin = the released boundaries (cls as is,
inst per-class union thinned); gt_orig_raw = radius-2 seg2edge of the segmentations.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from dynfuse.data import read_edge_png
from dynfuse.data.eval_gt import cityscapes_eval_gt, sbd_eval_gt_raw, sbd_eval_gt_thin
from dynfuse.data.prepare import eval_gt_dir, main

CAR, ROAD, SKY = 13, 0, 10  # train ids


def _street():
    """8 x 8 labelIds: road (7) in rows 0-3, sky (23) in rows 4-7."""
    label_ids = np.full((8, 8), 7, dtype=np.uint8)
    label_ids[4:] = 23
    return label_ids, label_ids.astype(np.uint16)  # stuff classes: instanceId = labelId


def test_cityscapes_thin_and_raw_hand_case():
    maps = cityscapes_eval_gt(*_street())
    assert set(maps) == {(v, k) for v in ("gt_thin", "gt_raw") for k in ("cls", "inst")}
    for m in maps.values():
        assert m.shape == (19, 4, 4) and m.dtype == bool
    # gt_thin: half size reads rows 1, 3 (road) and 5, 7 (sky). Radius 1 marks both sides of
    # the boundary for both classes: half rows 1-2. Thinning that 2-row band deletes the top row
    # in the first subiteration (every pixel there has X_H = 1, min(n1, n2) >= 2 and G3 holds:
    # x1 = E is set but x2 = NE, x3 = N and not x8 = not SE are all 0). So does row 2's right
    # end (2, 3): x1 = E is outside (0) so G3 holds, X_H = 1, n1 = n2 = 2. Row 2's other pixels
    # have x1 = E and x2 = NE set (G3 fails); afterwards the line is stable.
    thin_band = np.zeros((4, 4), dtype=bool)
    thin_band[2, :3] = True
    # gt_raw: radius 2 at full size marks rows 2-5; half size reads rows 3 and 5: rows 1-2.
    raw_band = np.zeros((4, 4), dtype=bool)
    raw_band[1:3] = True
    for kind in ("cls", "inst"):
        for k in (ROAD, SKY):
            np.testing.assert_array_equal(maps[("gt_thin", kind)][k], thin_band)
            np.testing.assert_array_equal(maps[("gt_raw", kind)][k], raw_band)
        assert not np.delete(maps[("gt_thin", kind)], [ROAD, SKY], axis=0).any()
        assert not np.delete(maps[("gt_raw", kind)], [ROAD, SKY], axis=0).any()


def _block_street():
    """8 x 8 labelIds: a car in the top-left 4 x 4 block, road elsewhere."""
    label_ids = np.full((8, 8), 7, dtype=np.uint8)
    label_ids[:4, :4] = 26
    instance_ids = label_ids.astype(np.uint16)
    instance_ids[:4, :4] = 26000
    return label_ids, instance_ids


def _ignored_strip():
    """5 x 8: out-of-roi (labelId 3) columns 0-1, car A columns 2-4, car B columns 5-7."""
    label_ids = np.full((5, 8), 26, dtype=np.uint8)
    label_ids[:, :2] = 3
    instance_ids = label_ids.astype(np.uint16)
    instance_ids[:, 2:5] = 26000
    instance_ids[:, 5:] = 26001
    return label_ids, instance_ids


def test_cityscapes_cls_candidates_come_from_instance_ids():
    """Column 3 of car A: its only other-class neighbour (column 1) is ignored, car B (column 5)
    is within radius 2. The authors' instance-insensitive GT marks it (candidate from instanceIds,
    then class-only rule); class-only candidates would not."""
    label_ids, instance_ids = _ignored_strip()
    maps = cityscapes_eval_gt(label_ids, instance_ids, variants=("gt_raw",))
    # Full size: cls car edges = column 3 only; inst car edges = columns 3-6 (A / B boundary).
    # Half size reads columns 1, 3, 5, 7 -> half columns 1 (cls) and 1, 2 (inst).
    want_cls = np.zeros((3, 4), dtype=bool)
    want_cls[:, 1] = True
    want_inst = want_cls.copy()
    want_inst[:, 2] = True
    np.testing.assert_array_equal(maps[("gt_raw", "cls")][CAR], want_cls)
    np.testing.assert_array_equal(maps[("gt_raw", "inst")][CAR], want_inst)


def _sbd_mats(root, name="2008_000001"):
    """6 x 6 image: class 1 (aeroplane) in rows 0-2; instances 1 and 2 of class 15 (person)
    with released boundaries: an L (to thin) and a 2-pixel-thick bar (instance 2)."""
    h = w = 6
    cls = np.zeros((h, w), dtype=np.uint8)
    cls[:3] = 1
    inst = np.zeros((h, w), dtype=np.uint8)
    inst[:3, :3] = 1  # one aeroplane instance (class 1)
    inst[:3, 3:] = 2  # a second aeroplane instance
    categories = np.array([[1], [1]])
    cls_bound = np.empty((20, 1), dtype=object)
    for k in range(20):
        cls_bound[k, 0] = scipy.sparse.csc_matrix((h, w), dtype=np.uint8)
    band = np.zeros((h, w), dtype=np.uint8)
    band[2:4] = 1  # a released 2-pixel band: gt_orig_thin keeps cls as is
    cls_bound[0, 0] = scipy.sparse.csc_matrix(band)
    inst_bound = np.empty((2, 1), dtype=object)
    ell = np.zeros((h, w), dtype=np.uint8)
    ell[0, 1] = ell[1, 0] = ell[1, 1] = 1
    bar = np.zeros((h, w), dtype=np.uint8)
    bar[4, 3:5] = 1
    inst_bound[0, 0] = scipy.sparse.csc_matrix(ell)
    inst_bound[1, 0] = scipy.sparse.csc_matrix(bar)
    (root / "cls").mkdir(parents=True, exist_ok=True)
    (root / "inst").mkdir(exist_ok=True)
    scipy.io.savemat(
        root / "cls" / f"{name}.mat",
        {"GTcls": {"Segmentation": cls, "Boundaries": cls_bound, "CategoriesPresent": np.array([[1]])}},
    )
    scipy.io.savemat(
        root / "inst" / f"{name}.mat",
        {"GTinst": {"Segmentation": inst, "Boundaries": inst_bound, "Categories": categories}},
    )
    return cls, inst, categories, band, ell, bar


def test_sbd_thin_and_raw_hand_case(tmp_path):
    cls, inst, categories, band, ell, bar = _sbd_mats(tmp_path)
    thin_maps = sbd_eval_gt_thin(
        [scipy.sparse.csc_matrix(band if k == 0 else np.zeros((6, 6))) for k in range(20)],
        [scipy.sparse.csc_matrix(ell), bar],
        categories,
    )
    np.testing.assert_array_equal(thin_maps["cls"][0], band.astype(bool))  # not thinned
    want = np.zeros((6, 6), dtype=bool)
    want[0, 1] = want[1, 0] = True  # the L's corner thinned away
    want[4, 3:5] = True  # a 2-pixel bar is already thin
    np.testing.assert_array_equal(thin_maps["inst"][0], want)
    assert not thin_maps["inst"][1:].any()

    raw = sbd_eval_gt_raw(cls, inst, categories)
    # cls: rows 1-4 (class side rows 1-2, background side rows 3-4: seg2edge marks both).
    want_cls = np.zeros((6, 6), dtype=bool)
    want_cls[1:5] = True
    np.testing.assert_array_equal(raw["cls"][0], want_cls)
    # inst adds the boundary between the two instances: columns 1-4 of rows 0-2.
    want_inst = want_cls.copy()
    want_inst[:3, 1:5] = True
    np.testing.assert_array_equal(raw["inst"][0], want_inst)
    with pytest.raises(ValueError, match="20 class maps"):
        sbd_eval_gt_thin([band], [ell], [1])


def test_prepare_sbd_eval_gt_cli(tmp_path, capsys):
    root, out = tmp_path / "sbd", tmp_path / "out"
    _sbd_mats(root, "2008_000001")
    _sbd_mats(root, "2008_000002")
    (root / "val.txt").write_text("2008_000001\n2008_000002\n")
    assert main(["sbd", str(root), str(out), "--eval-gt", "--quiet", "--workers", "2"]) == 0
    assert (out / "gt_eval" / "val.txt").read_text().splitlines() == ["2008_000001", "2008_000002"]
    settings = json.loads((out / "gt_eval" / "dynfuse_prepare.json").read_text())
    assert settings["eval_gt"]["variants"] == ["gt_orig_thin", "gt_orig_raw"]
    cls, inst, categories, band, ell, bar = _sbd_mats(tmp_path / "again")
    for variant, fn in (("gt_orig_thin", None), ("gt_orig_raw", sbd_eval_gt_raw)):
        for kind in ("cls", "inst"):
            got = read_edge_png(eval_gt_dir(out, variant, kind, "val") / "2008_000002.png", 20)
            if fn is not None:
                np.testing.assert_array_equal(got, fn(cls, inst, categories)[kind])
    got = read_edge_png(eval_gt_dir(out, "gt_orig_thin", "cls", "val") / "2008_000001.png", 20)
    np.testing.assert_array_equal(got[0], band.astype(bool))

    # A .mat without released boundaries: named, the list is not written, rc 1.
    scipy.io.savemat(root / "cls" / "2008_000002.mat", {"GTcls": {"Segmentation": cls}})
    assert main(["sbd", str(root), str(out), "--eval-gt", "--quiet", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "2008_000002.mat" in err and "'Boundaries'" in err
    assert not (out / "gt_eval" / "val.txt").exists()


def _write_cityscapes(root, split, city, stem, label_ids, instance_ids):
    img_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    h, w = label_ids.shape
    Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(img_dir / f"{stem}_leftImg8bit.png")
    Image.fromarray(label_ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")
    Image.fromarray(instance_ids).save(gt_dir / f"{stem}_gtFine_instanceIds.png")


def test_prepare_cityscapes_eval_gt_cli(tmp_path, capsys):
    root, out = tmp_path / "cs", tmp_path / "out"
    _write_cityscapes(root, "val", "lindau", "lindau_000000_000019", *_block_street())
    _write_cityscapes(root, "val", "munster", "munster_000001_000019", *_block_street())
    args = ["cityscapes", str(root), str(out), "--eval-gt", "--quiet", "--workers", "1"]
    assert main(args) == 0
    names = ["lindau_000000_000019_leftImg8bit", "munster_000001_000019_leftImg8bit"]
    assert (out / "gt_eval" / "val.txt").read_text().splitlines() == names
    want = cityscapes_eval_gt(*_block_street())
    for (variant, kind), maps in want.items():
        folder = eval_gt_dir(out, variant, kind, "val")
        assert sorted(p.name for p in folder.iterdir()) == [f"{n}.png" for n in names]
        np.testing.assert_array_equal(read_edge_png(folder / f"{names[0]}.png", 19), maps)
    assert not (out / "train.txt").exists() and not (out / "leftImg8bit").exists()

    # Resumable: a finished map is skipped, a missing one redone.
    done = eval_gt_dir(out, "gt_thin", "inst", "val") / f"{names[0]}.png"
    gone = eval_gt_dir(out, "gt_raw", "cls", "val") / f"{names[1]}.png"
    done.write_bytes(done.read_bytes())
    mtime = done.stat().st_mtime_ns
    gone.unlink()
    assert main(args) == 0
    assert done.stat().st_mtime_ns == mtime and gone.exists()

    # The recipe is fixed: flags that would change it are refused by name.
    capsys.readouterr()
    assert main(args + ["--radius", "1"]) == 2
    assert "--radius cannot be used with --eval-gt" in capsys.readouterr().err
    assert main(args + ["--no-instance", "--copy-images"]) == 2
    assert "--no-instance, --copy-images" in capsys.readouterr().err

    # Training labels and evaluation GT share one OUT without settings conflicts.
    assert main(["cityscapes", str(root), str(out), "--splits", "val", "--quiet"]) == 0
    assert (out / "val.txt").exists() and (out / "gt_eval" / "val.txt").exists()


def test_eval_gt_feeds_the_folder_evaluator(tmp_path):
    """dynfuse-eval --gt-dir reads the folder as written: a prediction equal to the GT scores 1."""
    from dynfuse.eval.io import class_dir_name
    from dynfuse.eval.runner import FolderSpec, evaluate_folder
    from dynfuse.eval.settings import EvalSettings

    root, out, pred = tmp_path / "cs", tmp_path / "out", tmp_path / "pred"
    _write_cityscapes(root, "val", "lindau", "lindau_000000_000019", *_block_street())
    assert main(["cityscapes", str(root), str(out), "--eval-gt", "--quiet", "--workers", "1"]) == 0
    gt_dir = eval_gt_dir(out, "gt_thin", "inst", "val")
    gt = read_edge_png(gt_dir / "lindau_000000_000019_leftImg8bit.png", 19)
    for k in range(19):
        (pred / class_dir_name(k)).mkdir(parents=True)
        Image.fromarray((gt[k] * 255).astype(np.uint8)).save(
            pred / class_dir_name(k) / "lindau_000000_000019_leftImg8bit.png"
        )
    result = evaluate_folder(
        FolderSpec(pred_dir=str(pred), gt_dir=str(gt_dir), num_classes=19),
        EvalSettings(max_dist=0.02, thresholds=5),
        workers=0,
        progress=False,
    )
    assert result.ods[[CAR, ROAD]].tolist() == [1.0, 1.0]


def test_sbd_single_instance_mat_is_read(tmp_path):
    """loadmat(squeeze_me=True) turns a 1-instance GTinst.Boundaries cell and Categories into bare
    values; the thin GT still unions and thins them (many SBD images have one object)."""
    root, out = tmp_path / "sbd", tmp_path / "out"
    cls, inst, _, band, ell, _ = _sbd_mats(root, "2008_000009")
    one = np.empty((1, 1), dtype=object)
    one[0, 0] = scipy.sparse.csc_matrix(ell)
    scipy.io.savemat(
        root / "inst" / "2008_000009.mat",
        {
            "GTinst": {
                "Segmentation": (inst == 1).astype(np.uint8),
                "Boundaries": one,
                "Categories": np.array([[7]]),
            }
        },
    )
    (root / "val.txt").write_text("2008_000009\n")
    assert main(["sbd", str(root), str(out), "--eval-gt", "--quiet", "--workers", "1"]) == 0
    got = read_edge_png(eval_gt_dir(out, "gt_orig_thin", "inst", "val") / "2008_000009.png", 20)
    want = np.zeros((6, 6), dtype=bool)
    want[0, 1] = want[1, 0] = True
    np.testing.assert_array_equal(got[6], want)  # class 7 (car) -> index 6
    assert not np.delete(got, 6, axis=0).any()
