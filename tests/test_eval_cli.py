"""dynfuse-eval on a small folder: layout, resume cache, outputs, bad input."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from dynfuse.eval import decode_bitpacked
from dynfuse.eval.cli import main
from dynfuse.eval.synthetic import synthetic_sample

K = 3


def _encode(edges):
    code = np.zeros(edges.shape[1:], dtype=np.uint32)
    for k in range(edges.shape[0]):
        code |= edges[k].astype(np.uint32) << k
    return np.stack([(code >> 16) & 255, (code >> 8) & 255, code & 255], -1).astype(np.uint8)


def _make_folder(root, n=3, bits=16):
    data = []
    for i in range(n):
        prob, gt, labels = synthetic_sample((40, 52), K, seed=100 + i, num_cells=6)
        name = f"city/img{i}"
        os.makedirs(root / "gt" / "city", exist_ok=True)
        Image.fromarray(_encode(gt)).save(root / "gt" / f"{name}.png")
        os.makedirs(root / "seg" / "city", exist_ok=True)
        Image.fromarray(labels.astype(np.uint8)).save(root / "seg" / f"{name}.png")
        for k in range(K):
            d = root / "pred" / f"class_{k + 1:03d}" / "city"
            os.makedirs(d, exist_ok=True)
            if bits == 16:
                arr = np.round(prob[k] * 65535).astype(np.uint16)
            else:
                arr = np.round(prob[k] * 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"img{i}.png")
        data.append((prob, gt))
    return data


def test_decode_bitpacked_roundtrip():
    rng = np.random.default_rng(0)
    e = rng.random((20, 5, 7)) < 0.3
    assert np.array_equal(decode_bitpacked(_encode(e), 20), e)
    with pytest.raises(ValueError, match="H, W, 3"):
        decode_bitpacked(np.zeros((4, 4), np.uint8), 3)


def test_bit_layout_agrees_with_dynfuse_data():
    codecs = pytest.importorskip("dynfuse.data.codecs")
    rng = np.random.default_rng(1)
    e = rng.random((19, 6, 9)) < 0.3
    rgb = codecs.encode_edge_png(e)
    assert np.array_equal(rgb, _encode(e))
    assert np.array_equal(decode_bitpacked(rgb, 19), codecs.decode_edge_png(rgb, 19))


def test_cli_runs_resumes_and_matches_in_memory(tmp_path, capsys):
    data = _make_folder(tmp_path)
    out = tmp_path / "out"
    argv = ["--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt"),
            "--num-classes", str(K), "--protocol", "cityscapes-thin", "--max-dist", "0.02",
            "--thresholds", "19", "--workers", "0", "--out", str(out), "--no-progress",
            "--resize", "none"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["max_dist"] == 0.02 and summary["settings"]["thin_gt"] is True
    assert summary["num_images"] == 3 and len(summary["classes"]) == K
    csv = np.loadtxt(out / "pr_class_001.csv", delimiter=",", skiprows=1)
    assert csv.shape == (19, 4)
    cache = sorted(p.name for p in (out / "cache" / "city").iterdir())
    assert cache == ["img0.npz", "img1.npz", "img2.npz"]
    # The in-memory API on the same arrays gives the same scores (16-bit quantisation aside).
    from dynfuse.eval import PROTOCOLS, evaluate_edges

    s = PROTOCOLS["cityscapes-thin"].replace(max_dist=0.02, thresholds=19)
    mem = evaluate_edges([np.round(p * 65535).astype(np.uint16) for p, _ in data],
                         [g for _, g in data], settings=s)
    assert summary["mf_ods"] == pytest.approx(mem.mf_ods)
    # Resume: a cached entry is used (tamper with it and the summary reflects the cache).
    z = dict(np.load(out / "cache" / "city" / "img0.npz"))
    z["counts"] = np.zeros_like(z["counts"])
    np.savez(out / "cache" / "city" / "img0.npz", **z)
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["mf_ods"] != summary["mf_ods"]
    # Other settings do not reuse the cache.
    assert main(argv[:-2] + ["--max-dist", "0.03", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "max_dist=" in printed and "mean" in printed


def test_cli_kill_internal_8bit_and_errors(tmp_path, capsys):
    _make_folder(tmp_path, n=2, bits=8)
    base = ["--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt"),
            "--num-classes", str(K), "--thresholds", "9", "--workers", "0", "--no-progress"]
    assert main(base + ["--protocol", "sbd", "--kill-internal", "--seg-dir", str(tmp_path / "seg"),
                        "--instance-insensitive"]) == 0
    assert "instance_sensitive=False" in capsys.readouterr().out
    assert main(base + ["--kill-internal"]) == 2
    os.remove(tmp_path / "pred" / "class_002" / "city" / "img1.png")
    assert main(base) == 2
    assert "missing prediction" in capsys.readouterr().err
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "gt" / "city" / "img0.png")
    assert main(base) == 2


def test_cli_parallel_workers_equal_serial(tmp_path):
    _make_folder(tmp_path, n=2)
    base = ["--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt"),
            "--num-classes", str(K), "--thresholds", "7", "--no-progress",
            "--protocol", "cityscapes-raw"]
    assert main(base + ["--workers", "0", "--out", str(tmp_path / "a")]) == 0
    assert main(base + ["--workers", "2", "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert a == b
