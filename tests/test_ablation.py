"""Smoke and fault tests of benchmarks/ablation_table1.py (the Table 1 ablation) on its --quick budget.

The smoke run (six tiny models, three steps each, scoring and the figure) takes about 7 s on a
loaded 2-core machine; the resume and report-only tests add further runs and are marked slow
(``make test`` still runs them). The argument checks are fast.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_table1.py"


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation_table1", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def quick_run(ablation, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    threads = torch.get_num_threads()
    try:
        assert ablation.main(["--quick", "--threads", "1", "--out-dir", str(out), "--note", "smoke"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_quick_run_writes_record_figure_and_runs(ablation, quick_run):
    md = (quick_run / "ablation_table1_cpu.md").read_text()
    assert "status: complete (6 runs: 6 rows x 1 seeds requested)" in md
    for label, key, _, _ in ablation.ROWS:
        assert f"| {label} | `{key}`" in md
    for field in (
        "device:",
        "torch",
        "threads: torch.set_num_threads(1)",
        "date:",
        "command:",
        "note: smoke",
        "max_dist 0.02, thinned prediction and GT",
    ):
        assert field in md
    runs = json.loads((quick_run / "ablation_table1_cpu.json").read_text())["runs"]
    assert sorted(r["row"] for r in runs) == sorted(ablation.ROW_IDS)
    for r in runs:
        for m in ("mf_ods", "mf_ois", "ap"):
            assert 0.0 <= r[m] <= 1.0 and math.isfinite(r[m])
        assert r["params"] > 0 and r["train_s"] > 0
    adaptive = next(r for r in runs if r["row"] == "adaptive")
    maps = adaptive["figure"]["maps"]
    assert len(maps) == 4 and len(maps[0]) == 32 and len(maps[0][0]) == 32  # Side5, Side1-3 at 32x32
    assert adaptive["weights"]["kind"] == "adaptive"
    assert next(r for r in runs if r["row"] == "invariant")["weights"]["kind"] == "invariant"
    # the same seed gives every row the same backbone initialisation: the rows differ in the head only
    params = {r["row"]: r["params"] for r in runs}
    assert params["invariant"] == params["adaptive"] > params["normalizer"] > params["fixed"]
    with Image.open(quick_run / "ablation_table1_cpu.png") as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400


@pytest.mark.slow
def test_resume_keeps_finished_runs_and_refuses_other_settings(ablation, quick_run, capsys):
    path = quick_run / "ablation_table1_cpu.json"
    before = json.loads(path.read_text())["runs"]
    assert ablation.main(["--quick", "--threads", "1", "--out-dir", str(quick_run), "--resume"]) == 0
    after = json.loads(path.read_text())["runs"]
    assert after == before  # nothing retrained
    with pytest.raises(SystemExit, match=r"other settings \(differ: \['steps'\]\)"):
        ablation.main(["--quick", "--steps", "4", "--out-dir", str(quick_run), "--resume"])


@pytest.mark.slow
def test_report_only_marks_a_cut_short_run_partial(ablation, tmp_path):
    args = ["--quick", "--threads", "1", "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="no runs to report"):
        ablation.main([*args, "--report-only"])
    assert ablation.main([*args, "--rows", "fixed,adaptive"]) == 0
    md = tmp_path / "ablation_table1_cpu.md"
    md.unlink()
    # as if a 2-seed run had been killed after its first seed
    assert ablation.main([*args, "--rows", "fixed,adaptive", "--seeds", "2", "--report-only"]) == 0
    text = md.read_text()
    assert "PARTIAL: 2 of 4 runs finished" in text
    assert (tmp_path / "ablation_table1_cpu.png").exists()


def test_truncated_json_gives_a_clear_error(ablation, tmp_path):
    (tmp_path / "ablation_table1_cpu.json").write_text('{"config": {"for')
    with pytest.raises(SystemExit, match="not valid JSON"):
        ablation.main(["--quick", "--out-dir", str(tmp_path), "--resume"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--steps", "-3"], "--steps must be >= 1"),
        (["--batch-size", "1"], "--batch-size must be >= 2"),
        (["--crop-size", "8"], "--crop-size must be >= 16"),
        (["--lr", "0"], "--lr must be a positive number"),
        (["--rows", "fixed,bogus"], "unknown row"),
        (["--tag", "a/b"], "--tag may hold"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(ablation, args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ablation.parse_args(["--quick", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_refused(ablation, capsys):
    with pytest.raises(SystemExit):
        ablation.parse_args(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_control_family_is_part_of_the_settings(ablation):
    textured = ablation.config_of(ablation.parse_args(["--quick"]))
    control = ablation.config_of(ablation.parse_args(["--quick", "--no-texture"]))
    assert "scenes" not in textured  # records of the textured default keep their settings
    assert control["scenes"].startswith("control") and control != textured
    data = ablation.make_data(ablation.parse_args(["--quick", "--no-texture"]), train=False)
    assert not any(s.texture.any() for s in data["test_scenes"])
