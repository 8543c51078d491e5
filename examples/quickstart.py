"""Quick start: a DFF head on a small backbone, forward and backward, and the fusion backends' timings.

    python examples/quickstart.py [--size 96 80] [--classes 19] [--device cpu]

Runs on CPU in seconds; prints the output shapes, the learned-weight shapes for each learner and the
forward+backward time of the fusion op per backend at the chosen size.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from dynfuse import DFFHead, dynamic_fuse
from dynfuse.ops import authors_fuse


def small_backbone() -> tuple[nn.Module, list[tuple[int, int]]]:
    """Four feature levels at strides 1, 2, 4, 8 and their (channels, stride)."""

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.levels = nn.ModuleList(
                [
                    nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()),
                    nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU()),
                    nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU()),
                    nn.Sequential(nn.Conv2d(64, 128, 3, stride=2, padding=2, dilation=2), nn.ReLU()),
                ]
            )

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            feats = []
            for level in self.levels:
                x = level(x)
                feats.append(x)
            return feats

    return Backbone(), [(16, 1), (32, 2), (64, 4), (128, 8)]


def time_backends(k: int, size: tuple[int, int], device: torch.device, repeats: int = 3) -> None:
    b, s, (h, w) = 2, 3, size
    args = [
        torch.randn(b, k, h, w, device=device),
        torch.randn(b, s, h, w, device=device),
        torch.randn(b, k, s + 1, h, w, device=device),
    ]
    fns = {"authors": lambda a, c, wt: authors_fuse(a, c, wt)}
    for backend in ("reference", "torch", "auto"):
        fns[backend] = lambda a, c, wt, be=backend: dynamic_fuse(a, c, wt, backend=be)
    print(f"\nfusion op, forward+backward, B={b} K={k} S={s} {h}x{w} float32 on {device}:")
    for name, fn in fns.items():
        leaves = [t.clone().requires_grad_() for t in args]
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(*leaves).sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        print(f"  {name:>9}: {1e3 * best:8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(96, 80), metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device, size = torch.device(args.device), tuple(args.size)
    torch.manual_seed(0)
    backbone, info = small_backbone()
    images = torch.randn(2, 3, *size, device=device)
    for learner in ("adaptive", "invariant", "fixed"):
        head = DFFHead.from_feature_info(info, args.classes, learner=learner)
        model = nn.ModuleDict({"backbone": backbone, "head": head}).to(device)
        out = model["head"](model["backbone"](images), output_size=size)
        (out.side5.mean() + out.fuse.mean()).backward()
        print(
            f"learner={learner:>9}: side5 {tuple(out.side5.shape)}  fuse {tuple(out.fuse.shape)}  "
            f"weights {tuple(out.weights.shape)}"
        )
    time_backends(args.classes, size, device)


if __name__ == "__main__":
    main()
