"""A DFF head on timm backbone families: which levels, which strides, how big, how fast on CPU.

The list of families lives here once; ``tests/test_timm_families.py`` builds a DFF on each one
(forward and backward, random init, small input) and this script writes the table shown in
``docs/backbones.md`` and recorded in ``benchmarks/results/timm_families_cpu.md``.

    python benchmarks/timm_families.py [--threads 2] [--size 192 256] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Family:
    """One timm family: a small member, extra ``timm.create_model`` arguments, and whether
    ``output_stride=8`` (the authors' dilated geometry) is supported by timm for it."""

    family: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    output_stride_8: bool = False
    needs_img_size: bool = False  # models with position embeddings / windows fixed at build time
    size_multiple: int = 1  # input sizes the backbone itself accepts (HRNet's fusions, MaxViT's grids)


FAMILIES: tuple[Family, ...] = (
    Family("ResNet", "resnet10t", output_stride_8=True),
    Family("ResNeXt", "resnext26ts", output_stride_8=True),
    Family("RegNet", "regnetx_002", output_stride_8=True),
    Family("EfficientNet", "efficientnet_b0", output_stride_8=True),
    Family("MobileNetV3", "mobilenetv3_small_050", output_stride_8=True),
    Family("ConvNeXt", "convnext_atto", output_stride_8=True),
    Family("HRNet", "hrnet_w18_small", size_multiple=32),
    Family("DenseNet", "densenet121"),
    Family("VGG", "vgg11"),
    Family("RepVGG", "repvgg_a0"),
    Family("CSPDarkNet", "cspdarknet53"),
    Family("PVTv2 (transformer)", "pvt_v2_b0"),
    Family("Swin (transformer)", "swin_tiny_patch4_window7_224", {"window_size": 4}, needs_img_size=True),
    Family("MaxViT (transformer)", "maxvit_nano_rw_256", needs_img_size=True, size_multiple=32),
    Family("EfficientViT", "efficientvit_b0"),
    # MobileViT unfolds 2x2 patches and pads odd-sized maps up, so its levels round up past the
    # stride rule unless every level is even (input a multiple of 64).
    Family("MobileViTv2", "mobilevitv2_050", size_multiple=64),
)


def build(family: Family, num_classes: int, size: tuple[int, int], output_stride: int | None = None):
    """DFF (location-adaptive head) on ``family``'s timm backbone, random init, nothing downloaded."""
    from dynfuse import create_model
    from dynfuse.backbones import TimmBackbone

    kwargs = dict(family.kwargs)
    if family.needs_img_size:
        kwargs["img_size"] = size
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    backbone = TimmBackbone(family.model, **kwargs)
    return create_model("dff", backbone=backbone, num_classes=num_classes)


def measure(family: Family, size: tuple[int, int], output_stride: int | None, repeats: int) -> dict[str, Any]:
    model = build(family, num_classes=19, size=size, output_stride=output_stride).eval()
    info = model.backbone.feature_info
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        model(x)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return {
        "family": family.family,
        "model": family.model + (f", output_stride={output_stride}" if output_stride else ""),
        "levels": list(info.module_name()),
        "channels": list(info.channels()),
        "strides": list(info.reduction()),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "forward_ms": 1e3 * sorted(times)[len(times) // 2],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(192, 256), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--note", default="", help="machine state to record (e.g. idle, shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import timm

    size = tuple(args.size)
    rows = []
    for fam in FAMILIES:
        for os_ in (None, 8) if fam.output_stride_8 else (None,):
            rows.append(measure(fam, size, os_, args.repeats))
            r = rows[-1]
            print(
                f"{r['family']:<22} {r['model']:<44} strides {r['strides']} {r['params_m']:.1f} M "
                f"{r['forward_ms']:.0f} ms",
                flush=True,
            )
    lines = [
        "# DFF on timm backbone families (CPU)",
        "",
        f"Date {datetime.date.today()}; {platform.processor() or platform.machine()}, "
        f"{args.threads} threads (torch.set_num_threads), {os.cpu_count()} logical CPUs"
        f"{'; ' + args.note if args.note else ''}; Python "
        f"{platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}.",
        f"Command: `python benchmarks/timm_families.py --threads {args.threads} --size {size[0]} {size[1]}`.",
        f"DFF head (location-adaptive, K=19), random init, one {size[0]}x{size[1]} image, eval mode,",
        f"median of {args.repeats} forward passes. Levels: the timm feature modules the head uses",
        "(three lowest + top, the DFF default); strides as timm's feature_info reports them.",
        "",
        "| family | timm model | levels used | channels | strides | parameters | forward |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | `{r['model']}` | {', '.join(r['levels'])} | "
            f"{'/'.join(map(str, r['channels']))} | {'/'.join(map(str, r['strides']))} | "
            f"{r['params_m']:.1f} M | {r['forward_ms']:.0f} ms |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "timm_families_cpu.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
