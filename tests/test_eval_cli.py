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
    argv = [
        "--pred-dir",
        str(tmp_path / "pred"),
        "--gt-dir",
        str(tmp_path / "gt"),
        "--num-classes",
        str(K),
        "--protocol",
        "cityscapes-thin",
        "--max-dist",
        "0.02",
        "--thresholds",
        "19",
        "--workers",
        "0",
        "--out",
        str(out),
        "--no-progress",
        "--resize",
        "none",
    ]
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
    mem = evaluate_edges(
        [np.round(p * 65535).astype(np.uint16) for p, _ in data], [g for _, g in data], settings=s
    )
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
    assert "protocol: cityscapes-thin (= seal-cityscapes-thin)" in printed
    assert "AP: the authors' (collect_eval_bdry.m" in printed
    # Without --protocol: the DFF paper's Cityscapes protocol.
    default = [a for a in argv if a not in ("--protocol", "cityscapes-thin", "--max-dist", "0.02")]
    assert main(default) == 0
    s = json.loads((out / "summary.json").read_text())["settings"]
    assert (s["max_dist"], s["thin"], s["thin_gt"], s["uint16_scale"]) == (0.02, True, True, 65536.0)
    assert "protocol: dff-cityscapes-thin" in capsys.readouterr().out


def test_cli_kill_internal_8bit_and_errors(tmp_path, capsys):
    _make_folder(tmp_path, n=2, bits=8)
    base = [
        "--pred-dir",
        str(tmp_path / "pred"),
        "--gt-dir",
        str(tmp_path / "gt"),
        "--num-classes",
        str(K),
        "--thresholds",
        "9",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert (
        main(
            base
            + [
                "--protocol",
                "sbd",
                "--kill-internal",
                "--seg-dir",
                str(tmp_path / "seg"),
                "--instance-insensitive",
            ]
        )
        == 0
    )
    assert "instance_sensitive=False" in capsys.readouterr().out
    assert main(base + ["--kill-internal"]) == 2
    os.remove(tmp_path / "pred" / "class_002" / "city" / "img1.png")
    assert main(base) == 2
    assert "missing prediction" in capsys.readouterr().err
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "gt" / "city" / "img0.png")
    assert main(base) == 2


def test_cli_parallel_workers_equal_serial(tmp_path):
    _make_folder(tmp_path, n=2)
    base = [
        "--pred-dir",
        str(tmp_path / "pred"),
        "--gt-dir",
        str(tmp_path / "gt"),
        "--num-classes",
        str(K),
        "--thresholds",
        "7",
        "--no-progress",
        "--protocol",
        "cityscapes-raw",
    ]
    assert main(base + ["--workers", "0", "--out", str(tmp_path / "a")]) == 0
    assert main(base + ["--workers", "2", "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert a == b


def _argv(tmp_path, *extra, k=K):
    return [
        "--pred-dir",
        str(tmp_path / "pred"),
        "--gt-dir",
        str(tmp_path / "gt"),
        "--num-classes",
        str(k),
        "--thresholds",
        "7",
        "--workers",
        "0",
        "--no-progress",
        "--protocol",
        "dff-cityscapes-raw",
        *extra,
    ]


def test_cache_is_keyed_by_content_replaced_predictions_are_rescored(tmp_path, capsys):
    _make_folder(tmp_path, n=2)
    argv = _argv(tmp_path, "--out", str(tmp_path / "out"))
    assert main(argv) == 0
    first = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert first["mf_ods"] > 0.3
    # Replace every prediction map of one image by zeros (same names, same folder).
    for k in range(K):
        zeros = Image.fromarray(np.zeros((40, 52), np.uint16))
        zeros.save(tmp_path / "pred" / f"class_{k + 1:03d}" / "city" / "img0.png")
    assert main(argv) == 0
    second = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert second["mf_ods"] < first["mf_ods"]
    fresh = tmp_path / "fresh"
    assert main(_argv(tmp_path, "--out", str(fresh))) == 0
    assert json.loads((fresh / "summary.json").read_text()) == second
    # All of them zero: every score is 0, as from a fresh --out.
    for i in range(2):
        for k in range(K):
            Image.fromarray(np.zeros((40, 52), np.uint16)).save(
                tmp_path / "pred" / f"class_{k + 1:03d}" / "city" / f"img{i}.png"
            )
    assert main(argv) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["mf_ods"] == 0.0
    # The untouched GT and settings alone never make a hit: the key names each input file.
    from dynfuse.eval import PROTOCOLS
    from dynfuse.eval.runner import FolderSpec, cache_key

    spec = FolderSpec(str(tmp_path / "pred"), str(tmp_path / "gt"), K)
    s = PROTOCOLS["dff-cityscapes-raw"]
    key = cache_key(spec, "city/img1", s)
    assert cache_key(spec, "city/img1", s) == key
    assert cache_key(FolderSpec(spec.pred_dir, spec.gt_dir, K - 1), "city/img1", s) != key
    assert cache_key(spec, "city/img1", s.replace(max_dist=0.03)) != key
    os.utime(tmp_path / "gt" / "city" / "img1.png", ns=(1, 1))
    assert cache_key(spec, "city/img1", s) != key


def _write_manifest(tmp_path, *, complete=True, num_classes=K, images=("city/img0", "city/img1")):
    from dynfuse.eval.manifest import begin_manifest, finish_manifest

    if complete:
        finish_manifest(
            tmp_path / "pred", images=list(images), num_classes=num_classes, producer={"tool": "test"}
        )
    else:
        begin_manifest(tmp_path / "pred", producer={"tool": "test"})


def test_manifest_refuses_incomplete_or_mismatched_folders(tmp_path, capsys):
    _make_folder(tmp_path, n=2)
    argv = _argv(tmp_path, "--out", str(tmp_path / "out"))
    # No manifest: scored, with a loud warning (stderr and summary.json).
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "dynfuse-eval: warning:" in err and "no manifest.json" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any("manifest.json" in w for w in summary["warnings"])
    # A run that did not finish: refused, one line, exit 2; the earlier summary is gone.
    _write_manifest(tmp_path, complete=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynfuse-eval: error:") and "did not complete" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "summary.json").exists()  # the earlier result is not left behind
    # Complete but for another class count.
    _write_manifest(tmp_path, num_classes=K + 1)
    assert main(argv) == 2
    assert f"{K + 1} classes" in capsys.readouterr().err
    # Complete, but an image being scored is not among those the run wrote.
    _write_manifest(tmp_path, images=("city/img0",))
    assert main(argv) == 2
    assert "city/img1" in capsys.readouterr().err
    # Complete and matching: no warning.
    _write_manifest(tmp_path)
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err
    # The manifest names maps (file name without extension): with --pred-suffix those carry it.
    for k in range(K):
        d = tmp_path / "pred" / f"class_{k + 1:03d}" / "city"
        for i in range(2):
            os.replace(d / f"img{i}.png", d / f"img{i}_leftImg8bit.png")
    _write_manifest(tmp_path, images=("city/img0_leftImg8bit", "city/img1_leftImg8bit"))
    assert main(argv + ["--pred-suffix", "_leftImg8bit.png"]) == 0


def test_fewer_classes_than_the_data_warns_with_the_count(tmp_path, capsys):
    _make_folder(tmp_path, n=2)
    assert main(_argv(tmp_path, k=2)) == 0
    err = capsys.readouterr().err
    assert f"ground-truth PNGs hold edges of classes up to {K}" in err and "--num-classes is 2" in err
    assert "class_003" in err  # the prediction folders


def test_outputs_atomic_and_no_stale_files(tmp_path, monkeypatch):
    _make_folder(tmp_path, n=2)
    out = tmp_path / "out"
    assert main(_argv(tmp_path, "--out", str(out))) == 0
    assert (out / "pr_class_003.csv").exists()
    import dynfuse.atomic as atomic

    written = []
    real = atomic.atomic_write

    def spy(path, write, **kw):
        written.append(os.path.basename(path))
        return real(path, write, **kw)

    monkeypatch.setattr("dynfuse.eval.runner.atomic_write", spy)
    monkeypatch.setattr("dynfuse.atomic.atomic_write", spy)
    assert main(_argv(tmp_path, "--out", str(out), "--max-dist", "0.03", k=2)) == 0
    assert {"summary.json", "pr_class_001.csv", "pr_class_002.csv", "img0.npz", "img1.npz"} <= set(written)
    assert not (out / "pr_class_003.csv").exists()  # the earlier run's third class is gone
    assert not [p for p in out.rglob(".*")]  # no temporary files left
