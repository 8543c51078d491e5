"""examples/reproduce_paper.py: the recipe's commands, its table, and (slow) the whole path on a
full-size (1024 x 2048) Cityscapes-format tree."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynfuse.eval.settings import PROTOCOLS

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reproduce_paper.py"


def _load():
    spec = importlib.util.spec_from_file_location("reproduce_paper", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


rp = _load()


def _protocol(dataset: str) -> str:
    """The DFF paper's protocol; helper "eval" adds it to dynfuse.eval.settings in parallel, so on a
    tree without it the recipe is exercised with SEAL's protocol of the same GT variant instead."""
    name = f"dff-{dataset}-thin"
    return name if name in PROTOCOLS else ("cityscapes-thin" if dataset == "cityscapes" else "sbd")


def test_dry_run_prints_each_stage_with_the_papers_settings(tmp_path, capsys):
    from dynfuse.training import DATASET_DEFAULTS

    protocol = _protocol("cityscapes")
    argv = [
        "cityscapes",
        "--root",
        "/data/cs",
        "--work-dir",
        str(tmp_path / "w"),
        "--nproc",
        "4",
        "--pretrained-backbone",
        "r50.pth",
        "--protocol",
        protocol,
        "--dry-run",
    ]
    assert rp.main(argv) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if not ln.startswith("#")]
    assert len(lines) == 5
    w = tmp_path / "w"
    assert lines[0] == f"dynfuse-prepare cityscapes /data/cs {w}/data --workers 8"
    assert lines[1] == f"dynfuse-prepare cityscapes /data/cs {w}/data --eval-gt --workers 8"
    train = shlex.split(lines[2])
    assert train[:4] == ["torchrun", "--standalone", "--nproc_per_node", "4"]
    assert train[4].endswith("examples/train_dff.py")
    d = DATASET_DEFAULTS["cityscapes"]
    flags = dict(zip(train[5::2], train[6::2], strict=False))
    assert flags["--crop-size"] == str(d["crop_size"]) == "640"
    assert flags["--batch-size"] == str(d["batch_size"]) == "8"
    assert flags["--epochs"] == "200" and flags["--lr"] == "0.08"
    assert flags["--resume"] == "auto" and flags["--pretrained-backbone"] == "r50.pth"
    # The val city folders as a shell glob (dynfuse-predict takes folders, not recursively).
    assert lines[3].startswith(f"dynfuse-predict {w}/train/final.pt {w}/data/leftImg8bit/val/*/ -o")
    assert f"--gt-dir {w}/data/gt_eval/gt_thin/inst/val" in lines[4]
    assert f"--protocol {protocol}" in lines[4]
    # Nothing ran.
    assert not (tmp_path / "w").exists()


def test_sbd_plan_and_overrides(tmp_path, capsys):
    argv = [
        "sbd",
        "--root",
        "/d",
        "--work-dir",
        "w",
        "--protocol",
        _protocol("sbd"),
        "--dry-run",
        "--train-args",
        "--epochs 1 --crop-size 64",
        "--checkpoint",
        "given.pt",
    ]
    assert rp.main(argv) == 0
    out = capsys.readouterr().out
    assert "train_dff.py" not in out  # --checkpoint: no training stage
    assert "dynfuse-predict given.pt w/data/image/val/scale_1 -o" in out
    assert "gt_eval/gt_orig_thin/inst/val" in out and "--num-classes 20" in out


def test_missing_protocol_and_failed_stage_are_named(tmp_path, capsys):
    assert rp.main(["sbd", "--root", "/d", "--work-dir", "w", "--protocol", "nope", "--dry-run"]) == 1
    assert "protocol(s) ['nope'] are not defined" in capsys.readouterr().err
    argv = [
        "cityscapes",
        "--root",
        str(tmp_path / "absent"),
        "--work-dir",
        str(tmp_path / "w"),
        "--protocol",
        _protocol("cityscapes"),
        "--workers",
        "1",
    ]
    assert rp.main(argv) == 1
    err = capsys.readouterr().err
    assert "absent" in err and "stage 'prepare training labels' failed with exit status 2" in err


def test_gt_variant_of_each_protocol():
    assert rp.gt_variant("dff-cityscapes-thin", "cityscapes") == "gt_thin"
    assert rp.gt_variant("dff-cityscapes-raw", "cityscapes") == "gt_raw"
    assert rp.gt_variant("dff-sbd-thin", "sbd") == "gt_orig_thin"
    assert rp.gt_variant("dff-sbd-raw", "sbd") == "gt_orig_raw"
    assert rp.gt_variant("cityscapes-raw", "cityscapes") == "gt_raw"
    assert rp.gt_variant("sbd", "sbd") == "gt_orig_thin"


def test_table_is_laid_out_like_the_papers():
    classes = [{"name": n, "ods": 0.5 + 0.01 * k} for k, n in enumerate(rp.PAPER_COLUMNS["cityscapes"])]
    summary = {"mf_ods": 0.59, "num_images": 500, "classes": classes}
    text = rp.format_table("cityscapes", "resnet50", 640, "dff-cityscapes-thin", summary)
    lines = text.splitlines()
    assert lines[1].split() == ["method", *rp.PAPER_COLUMNS["cityscapes"], "mean"]
    paper = lines[2].split()
    assert paper[-20:] == [
        "93.3",
        "86.5",
        "89.5",
        "58.2",
        "64.3",
        "85.2",
        "85.5",
        "84.3",
        "92.2",
        "72.0",
        "92.6",
        "91.2",
        "82.6",
        "94.9",
        "60.0",
        "77.2",
        "56.9",
        "74.5",
        "86.3",
        "80.4",
    ]
    assert "Table 2" in lines[2]
    ours = lines[3].split()
    assert ours[-20:-1] == [f"{50 + k:.1f}" for k in range(19)] and ours[-1] == "59.0"
    # Another setting: the headline row, labelled as such; SBD: Table 4, 75.4.
    assert "(other setting)" in rp.format_table("cityscapes", "tiny", 64, "p", summary)
    sbd = {"mf_ods": 0.1, "classes": [{"ods": 0.1}] * 20}
    assert rp.format_table("sbd", "resnet50", 352, "p", sbd).splitlines()[2].split()[-1] == "75.4"
    with pytest.raises(rp.RecipeError, match="19"):
        rp.format_table("cityscapes", "resnet50", 640, "p", sbd)


# --------------------------------------------------------------------------------------------
# The whole path on full-size Cityscapes files


def _full_size_city(root: Path, split: str, city: str, index: int) -> None:
    """One 1024 x 2048 image with gtFine labelIds / instanceIds: sky, building, road, two touching
    cars, an ego vehicle, a rectification border and an out-of-roi margin."""
    h, w = 1024, 2048
    label = np.full((h, w), 23, dtype=np.uint8)  # sky
    label[300:520, 1200:] = 11  # building
    label[520:, :] = 7  # road
    label[:4, :] = 2  # rectification border
    label[:, :6] = 3  # out of roi
    label[900:, :] = 1  # ego vehicle
    inst = label.astype(np.uint16)
    top = 430 + 20 * index
    label[top:700, 300:700] = 26
    inst[top:700, 300:700] = 26000
    label[top:700, 700:1000] = 26
    inst[top:700, 700:1000] = 26001
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[[23, 11, 7, 26, 1, 2, 3]] = [
        [70, 130, 180],
        [70, 70, 70],
        [128, 64, 128],
        [0, 0, 142],
        [20, 20, 20],
        [0, 0, 0],
        [0, 0, 0],
    ]
    ramp = (np.arange(w) // 64).astype(np.uint8)[None, :, None]
    image = colours[label] + ramp
    stem = f"{city}_{index:06d}_000019"
    img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(img_dir / f"{stem}_leftImg8bit.png", compress_level=1)
    Image.fromarray(label).save(gt_dir / f"{stem}_gtFine_labelIds.png")
    Image.fromarray(inst).save(gt_dir / f"{stem}_gtFine_instanceIds.png")


@pytest.mark.slow
def test_reproduce_cityscapes_end_to_end_full_size(tmp_path, capsys):
    root, work = tmp_path / "cityscapes", tmp_path / "work"
    _full_size_city(root, "train", "aachen", 0)
    _full_size_city(root, "train", "aachen", 1)
    _full_size_city(root, "val", "lindau", 0)
    protocol = _protocol("cityscapes")
    train_args = (
        "--epochs 1 --batch-size 1 --crop-size 64 --val-every 0 --workers 0 "
        "--device cpu --no-tensorboard --no-progress --log-every 1"
    )
    argv = [
        "cityscapes",
        "--root",
        str(root),
        "--work-dir",
        str(work),
        "--backbone",
        "tiny",
        "--protocol",
        protocol,
        "--workers",
        "2",
        "--device",
        "cpu",
        "--train-args",
        train_args,
        "--eval-args",
        "--thresholds 3",
    ]
    assert rp.main(argv) == 0
    out = capsys.readouterr().out

    data = work / "data"
    assert len((data / "train.txt").read_text().splitlines()) == 2
    edge = Image.open(data / "gtFine/train/aachen/aachen_000000_000019_gtFine_edge.png")
    assert edge.size == (2048, 1024) and edge.mode == "RGB"
    name = "lindau_000000_000019_leftImg8bit"
    for variant in ("gt_thin", "gt_raw"):
        for kind in ("cls", "inst"):
            gt = Image.open(data / "gt_eval" / variant / kind / "val" / f"{name}.png")
            assert gt.size == (1024, 512)  # half resolution
    # Two training iterations (2 images, batch 1, 1 epoch), then final.pt.
    records = [json.loads(ln) for ln in (work / "train/metrics.jsonl").read_text().splitlines()]
    iters = {r.get("iteration") for r in records if r.get("iteration") is not None}
    assert max(iters) == 2
    assert (work / "train/final.pt").is_file()
    pred = Image.open(work / "pred/class_001" / f"{name}.png")
    assert pred.size == (2048, 1024)  # full size, resized to the GT by the evaluator
    summary = json.loads((work / "eval" / protocol / "summary.json").read_text())
    assert summary["num_images"] == 1 and len(summary["classes"]) == 19
    table = (work / "table.txt").read_text()
    assert table in out
    lines = table.splitlines()
    assert lines[1].split()[1:] == [*rp.PAPER_COLUMNS["cityscapes"], "mean"]
    assert lines[2].split()[-1] == "80.4" and "this run" in lines[3]
    assert lines[3].split()[-1] == f"{100 * summary['mf_ods']:.1f}"
