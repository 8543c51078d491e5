"""Every ```python block of README.md and docs/**/*.md (docs/scripts/ excepted) runs, so none can rot.

How a page runs
    One test per Markdown file (id = its path). Its blocks run in order in ONE namespace, as a reader
    types them: a later block continues the earlier ones. The current directory is a fresh temporary
    folder holding the placeholders below; a failure names ``file:line`` of the failing block and the
    exception (tracebacks point at the Markdown lines: each block is compiled with its file name and
    line offset). A ``torch.Size([...])`` written in a block's comments is the output the block
    documents: it must appear in what the block prints.

Textual substitutions (the only edits made to snippet source before it runs)
    ``"/data/``            -> ``"<tmp>/data/`` (absolute dataset roots become the prepared trees)
    ``"/path/to/dynfuse``  -> ``"<this repository>`` (a local clone, for ``torch.hub.load``)

Placeholders: files a user has (``PLACEHOLDERS``; made only when a page's source names them)
    ``resnet50-19c8e357.pth``          torchvision ResNet-50 state dict (random weights, torchvision
                                       names; the dilated backbone uses the same names)
    ``checkpoint_200.pth.tar``         the authors' DFF checkpoint format (``{"epoch", "state_dict"}``,
                                       keys from :func:`dynfuse.models.to_official_state_dict`), 19 classes
    ``runs/dff-synthetic-pretrained``  a ``save_pretrained`` folder of ``dff_tiny`` with 4 classes
    ``runs/synthetic-dff``             a run folder (``final.pt``, ``checkpoint.pt``, ``metrics.jsonl``)
                                       of a real 1-epoch, 16-scene synthetic training run (the default
                                       ``output_dir``)
    ``data/cityscapes-edges``          a tiny prepared Cityscapes tree (``dynfuse-prepare cityscapes`` on
                                       the generated release of tests/test_data_prepare.py)
    ``data/sbd-edges``                 a tiny prepared SBD tree (``dynfuse-prepare sbd``, same source)

Variables a page assumes its reader already has (``VARIABLES``; injected before the page's first
block only when the page uses the name and never binds it itself)
    ``images``   (2, 3, 64, 96) float tensor, ImageNet-normalised-like
    ``model``    ``dff_tiny`` with 19 classes, eval mode
    ``out``      ``model(images)`` (a ``DFFOutput``: side5, fuse (2, 19, 64, 96), weights (2, 19, 4, 64, 96))
    ``side5``, ``sides``, ``weights``   (2, 19, 24, 32), (2, 3, 24, 32), (2, 19, 4, 24, 32) fusion inputs
    ``probs``    (19, 64, 96) float32 numpy probabilities
    ``preds``, ``gts``   two images' (3, 32, 40) float32 probabilities and bool edges
    ``res``      ``evaluate_edges(preds, gts)`` with the ``dff-cityscapes-thin`` protocol
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import os
import re
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Pages whose blocks build ResNet-50s (README: two forwards at 2x321x480, ~25 s on one CPU thread;
# models.md: three ResNet-50 DFFs and an ONNX export, ~5 s): they run in `make test-all` / CI, not in
# `make test`. Every other page takes under ~2 s once timm is imported.
SLOW_PAGES = {"README.md", "docs/models.md"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")


def collect_blocks(path: Path) -> list[tuple[int, str]]:
    """``[(line of the block's first code line, dedented source), ...]`` of the ```python blocks."""
    blocks: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m["indent"], m["fence"], m["lang"].lower()
        start = i + 1
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""
        ):
            i += 1
        if lang in ("python", "py"):
            body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[start:i]]
            blocks.append((start + 1, "\n".join(body) + "\n"))
        i += 1
    return blocks


def doc_pages() -> list[Path]:
    pages = [ROOT / "README.md"]
    docs = ROOT / "docs"
    pages += sorted(p for p in docs.rglob("*.md") if "scripts" not in p.relative_to(docs).parts)
    return [p for p in pages if collect_blocks(p)]


def substitute(source: str, tmp: Path) -> str:
    """The documented textual substitutions: absolute dataset roots and the clone path."""
    for quote in "\"'":
        source = source.replace(f"{quote}/data/", f"{quote}{tmp.as_posix()}/data/")
    return source.replace('"/path/to/dynfuse', f'"{ROOT.as_posix()}')


# ---- placeholders: files a user has ------------------------------------------------------------


def _resnet50_file(dest: Path) -> None:
    import torchvision

    torch.save(torchvision.models.resnet50().state_dict(), dest)


def _official_checkpoint(dest: Path) -> None:
    from dynfuse.models import create_model, to_official_state_dict

    model = create_model("dff", backbone="resnet50", num_classes=19)
    torch.save({"epoch": 200, "state_dict": to_official_state_dict(model)}, dest)


def _pretrained_folder(dest: Path) -> None:
    from dynfuse.models import create_model

    create_model("dff", backbone="tiny", num_classes=4).save_pretrained(dest)


def _run_folder(dest: Path) -> None:
    """A real (tiny) synthetic training run: checkpoint.pt, final.pt, metrics.jsonl, config."""
    from dynfuse.training import TrainConfig, Trainer

    cfg = TrainConfig(
        dataset="synthetic",
        epochs=1,
        train_length=16,
        val_length=4,
        output_dir=str(dest),
        tensorboard=False,
        progress=False,
    )
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()


def _prepared(kind: str):
    def make(dest: Path) -> None:
        from test_data_prepare import make_cityscapes, make_sbd

        from dynfuse.data.prepare import main

        release = dest.parent / f"{kind}-release"
        (make_cityscapes if kind == "cityscapes" else make_sbd)(release)
        if main([kind, str(release), str(dest), "--workers", "1", "--quiet"]) != 0:
            raise RuntimeError(f"dynfuse-prepare {kind} failed on the generated release")

    return make


# name as it appears in snippet source -> (path under the page's folder, builder)
PLACEHOLDERS = {
    "resnet50-19c8e357.pth": ("resnet50-19c8e357.pth", _resnet50_file),
    "checkpoint_200.pth.tar": ("checkpoint_200.pth.tar", _official_checkpoint),
    "runs/dff-synthetic-pretrained": ("runs/dff-synthetic-pretrained", _pretrained_folder),
    "runs/synthetic-dff": ("runs/synthetic-dff", _run_folder),
    "/data/cityscapes-edges": ("data/cityscapes-edges", _prepared("cityscapes")),
    "/data/sbd-edges": ("data/sbd-edges", _prepared("sbd")),
}


# ---- variables a reader already has ----------------------------------------------------------


def _tiny_model():
    from dynfuse.models import create_model

    with torch.random.fork_rng():  # the same weights on every call: ``out`` is this ``model(images)``
        torch.manual_seed(0)
        return create_model("dff", backbone="tiny", num_classes=19).eval()


def _images():
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def _out():
    with torch.no_grad():
        return _tiny_model()(_images())


def _pred_and_gt(seed: int):
    rng = np.random.default_rng(seed)
    gt = np.zeros((3, 32, 40), dtype=bool)
    for k in range(3):
        gt[k, int(rng.integers(6, 26)), 4:36] = True
        gt[k, 4:28, int(rng.integers(6, 34))] = True
    noise = rng.random(gt.shape).astype(np.float32)
    return np.clip(0.7 * gt + 0.3 * noise, 0, 1).astype(np.float32), gt


def _preds():
    return [_pred_and_gt(s)[0] for s in range(2)]


def _gts():
    return [_pred_and_gt(s)[1] for s in range(2)]


def _res():
    from dynfuse.eval import PROTOCOLS, evaluate_edges

    return evaluate_edges(_preds(), _gts(), settings=PROTOCOLS["dff-cityscapes-thin"], workers=0)


def _probs():
    return torch.sigmoid(_out().fuse[0]).numpy()


_G = torch.Generator().manual_seed(1)
VARIABLES = {
    "images": _images,
    "model": _tiny_model,
    "out": _out,
    "side5": lambda: torch.randn(2, 19, 24, 32, generator=_G),
    "sides": lambda: torch.randn(2, 3, 24, 32, generator=_G),
    "weights": lambda: torch.randn(2, 19, 4, 24, 32, generator=_G),
    "probs": _probs,
    "preds": _preds,
    "gts": _gts,
    "res": _res,
}


def _names(source: str) -> tuple[set[str], set[str]]:
    """(names the source reads, names it binds: assignments, imports, defs, loop and with targets)."""
    tree = ast.parse(source)
    loads, binds = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else binds).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            binds.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            binds.add(node.name)
    return loads, binds


@pytest.fixture
def page_dir(tmp_path):
    """A fresh current directory for one page (run_page builds the placeholders the page names there)."""
    saved, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(tmp_path)
    torch.set_num_threads(1)
    try:
        yield tmp_path
    finally:
        os.chdir(saved)
        torch.set_num_threads(threads)


_SHAPE = re.compile(r"torch\.Size\(\[[\d, ]*\]\)")


def _documented_shapes(source: str) -> list[str]:
    """``torch.Size([...])`` written in the block's comments: what its prints must show."""
    return [m for line in source.splitlines() if "#" in line for m in _SHAPE.findall(line.split("#", 1)[1])]


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else page.name


# The extras a page may need (pyproject's timm / eval / export / hub): a page that imports one that is
# not installed skips, as the other tests do with importorskip; CI installs them all.
OPTIONAL = ("timm", "matplotlib", "onnx", "onnxruntime", "onnxscript", "huggingface_hub", "tensorboard")


def _missing_optional(e: ImportError) -> str | None:
    for mod in OPTIONAL:
        if importlib.util.find_spec(mod) is None and (mod == (e.name or "").split(".")[0] or mod in str(e)):
            return mod
    return None


def _fail(rel: str, line: int, e: BaseException) -> None:
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
    pytest.fail(f"{rel}:{line}: the block starting here raised {type(e).__name__}: {e}\n{tb}", pytrace=False)


def run_page(page: Path, tmp: Path) -> None:
    rel = _rel(page)
    blocks = collect_blocks(page)
    text = "".join(src for _, src in blocks)
    for name, (where, build) in PLACEHOLDERS.items():
        if name in text:
            dest = tmp / where
            dest.parent.mkdir(parents=True, exist_ok=True)
            build(dest)
    loads, binds = set(), set()
    for line, src in blocks:
        try:
            got = _names(src)
        except SyntaxError as e:
            pytest.fail(f"{rel}:{line + (e.lineno or 1) - 1}: SyntaxError: {e.msg}", pytrace=False)
        loads |= got[0]
        binds |= got[1]
    namespace: dict = {"__name__": "__docs__"}
    for name in sorted((loads - binds) & VARIABLES.keys()):
        namespace[name] = VARIABLES[name]()
    for line, src in blocks:
        code = compile("\n" * (line - 1) + substitute(src, tmp), str(page), "exec")
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(code, namespace)
        except ImportError as e:
            missing = _missing_optional(e)
            if missing:
                pytest.skip(f"{rel}:{line} needs the optional {missing!r}, which is not installed")
            _fail(rel, line, e)
        except Exception as e:  # noqa: BLE001  (any failure of a documented snippet is the finding)
            _fail(rel, line, e)
        for shape in _documented_shapes(src):
            if shape not in printed.getvalue():
                pytest.fail(
                    f"{rel}:{line}: the block's comment says it prints {shape}, but it printed:\n"
                    f"{printed.getvalue()}",
                    pytrace=False,
                )


def _param(page: Path):
    rel = page.relative_to(ROOT).as_posix()
    return pytest.param(page, id=rel, marks=[pytest.mark.slow] if rel in SLOW_PAGES else [])


@pytest.mark.parametrize("page", [_param(p) for p in doc_pages()])
def test_page_snippets_run(page, page_dir):
    run_page(page, page_dir)


def test_collector_finds_the_blocks(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n```python\na = 1\n```\n```bash\nls\n```\n- item\n\n    ```py\n    b = a\n    ```\n")
    assert collect_blocks(md) == [(3, "a = 1\n"), (11, "b = a\n")]
    assert ROOT / "README.md" in doc_pages()  # the README has blocks and they are collected


def test_a_failing_block_is_named_by_file_and_line(tmp_path):
    md = tmp_path / "page.md"
    md.write_text("# t\n```python\nx = 1\n```\ntext\n```python\ny = x + 1\nz = y / 0\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"page.md:7: .*ZeroDivisionError") as info:
        run_page(md, tmp_path)
    assert f'{md}", line 8' in str(info.value)  # the traceback points at the Markdown line


def test_assumed_variables_are_injected_only_when_the_page_does_not_bind_them(tmp_path):
    md = tmp_path / "page.md"
    md.write_text(
        "```python\nimages = 'mine'\n```\n```python\nassert images == 'mine'\n"
        "assert side5.shape == (2, 19, 24, 32)\n```\n"
    )
    run_page(md, tmp_path)


@pytest.mark.slow  # a real (1-epoch) training run: ~8 s on one CPU thread
def test_placeholders_are_what_they_claim(tmp_path):
    """The cheap user-file placeholders are real ones: each loads through the public API. (The prepared
    trees are dynfuse-prepare's own output, tested in test_data_prepare; the two ResNet-50 files are
    loaded by the slow README / models.md pages.)"""
    from dynfuse.models import from_pretrained
    from dynfuse.predict import load_model_for_inference

    for name in ("runs/dff-synthetic-pretrained", "runs/synthetic-dff"):
        where, build = PLACEHOLDERS[name]
        build(tmp_path / where)
    assert from_pretrained(tmp_path / "runs/dff-synthetic-pretrained").num_classes == 4
    run = tmp_path / "runs/synthetic-dff"
    assert (run / "metrics.jsonl").read_text().strip()
    model, spec = load_model_for_inference(run / "final.pt")
    assert model.num_classes == 4 and spec["backbone"] == "tiny"


def test_a_documented_shape_that_is_not_printed_fails(tmp_path):
    md = tmp_path / "page.md"
    md.write_text("```python\nimport torch\nprint(torch.zeros(2, 3).shape)   # torch.Size([2, 4])\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"page.md:2: .*prints torch.Size\(\[2, 4\]\)"):
        run_page(md, tmp_path)
    md.write_text("```python\nimport torch\nprint(torch.zeros(2, 3).shape)   # torch.Size([2, 3])\n```\n")
    run_page(md, tmp_path)


def test_a_page_needing_a_missing_extra_skips_and_a_missing_module_fails(tmp_path):
    md = tmp_path / "page.md"
    md.write_text("```python\nimport dynfuse_no_such_module\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"page.md:2: .*ModuleNotFoundError"):
        run_page(md, tmp_path)
    e = ModuleNotFoundError("No module named 'timm'", name="timm")
    assert _missing_optional(e) == (None if importlib.util.find_spec("timm") else "timm")


def test_injected_out_is_the_injected_model_on_the_injected_images():
    with torch.no_grad():
        torch.testing.assert_close(VARIABLES["model"]()(VARIABLES["images"]()).fuse, VARIABLES["out"]().fuse)
