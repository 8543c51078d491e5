"""Pictures: class-coloured edge maps, fusion weights per location, PR curves.

Edge maps and weight maps are written with PIL only; PR curves need matplotlib (the ``eval``
extra), imported when called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .data.classes import CITYSCAPES_CLASSES, SBD_CLASSES

__all__ = [
    "CITYSCAPES_PALETTE",
    "SBD_PALETTE",
    "CITYSCAPES_CLASSES",
    "SBD_CLASSES",
    "palette_for",
    "class_palette",
    "colorize_edges",
    "colour_edges",
    "overlay_edges",
    "save_edge_map",
    "fusion_weight_panels",
    "save_fusion_weights",
    "plot_pr_curves",
]

#: Cityscapes' official train-id colours (RGB), 19 classes.
CITYSCAPES_PALETTE = np.array(
    [
        [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
        [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
        [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
        [0, 80, 100], [0, 0, 230], [119, 11, 32],
    ],
    dtype=np.uint8,
)  # fmt: skip



def _voc_palette(n: int) -> np.ndarray:
    """PASCAL VOC colour map (bit-interleaved label ids); entry i is the colour of VOC id i."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


#: SBD / PASCAL VOC colours of the 20 object classes (VOC ids 1..20; background omitted).
SBD_PALETTE = _voc_palette(21)[1:]


def palette_for(num_classes: int) -> np.ndarray:
    """(K, 3) uint8: Cityscapes for 19 classes, SBD for 20, else evenly spaced hues."""
    if num_classes == 19:
        return CITYSCAPES_PALETTE
    if num_classes == 20:
        return SBD_PALETTE
    import colorsys

    return np.array(
        [
            [int(255 * v) for v in colorsys.hsv_to_rgb(k / max(num_classes, 1), 0.85, 0.95)]
            for k in range(num_classes)
        ],
        dtype=np.uint8,
    )


def colorize_edges(
    edges: np.ndarray,
    palette: np.ndarray | None = None,
    *,
    threshold: float | None = None,
    background: Sequence[int] = (255, 255, 255),
) -> np.ndarray:
    """(K, H, W) edge maps -> (H, W, 3) uint8 picture, one colour per class.

    Soft maps (float in [0, 1]) blend each class colour by its strength over the background;
    where several classes are on, the colours are averaged weighted by strength (CASENet-style).
    With ``threshold`` the maps are binarised first. Bool maps are used as they are.
    """
    e = np.asarray(edges)
    if e.ndim != 3:
        raise ValueError(f"edges must be (K, H, W), got shape {e.shape}")
    k = e.shape[0]
    pal = palette_for(k) if palette is None else np.asarray(palette, dtype=np.uint8)
    if pal.shape != (k, 3):
        raise ValueError(f"palette must have shape ({k}, 3), got {pal.shape}")
    w = e.astype(np.float32)
    if threshold is not None:
        w = (w >= threshold).astype(np.float32)
    if w.size and (w.min() < 0 or w.max() > 1 + 1e-6):
        raise ValueError("edges must lie in [0, 1] (probabilities or booleans)")
    colour, strength = _blend_colours(w, pal.astype(np.float32))
    alpha = np.clip(strength, 0, 1)[..., None]
    bg = np.asarray(background, dtype=np.float32)[None, None, :]
    return np.clip(alpha * colour + (1 - alpha) * bg + 0.5, 0, 255).astype(np.uint8)


def _blend_colours(w: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The colouring rule shared by every edge picture: per pixel, the strength-weighted mean of
    the class colours (CASENet-style), and the strongest class's strength.

    Args:
        w: float32 (K, H, W) class strengths in [0, 1].
        palette: float32 (K, 3) colours (in whatever units the caller wants back).

    Returns:
        ``(colour, strength)``: float32 (H, W, 3) and float32 (H, W) ``max_k w_k``.
    """
    total = w.sum(axis=0)
    colour = np.einsum("khw,kc->hwc", w, palette) / np.maximum(total, 1e-6)[..., None]
    return colour, w.max(axis=0)


def class_palette(num_classes: int) -> np.ndarray:
    """float32 (K, 3) RGB colours in [0, 1]: :func:`palette_for` scaled (Cityscapes' colours for
    19 classes, PASCAL VOC's for 20, evenly spaced hues otherwise)."""
    return palette_for(num_classes).astype(np.float32) / 255.0


def colour_edges(probs: np.ndarray, palette: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Blend per-class probabilities into one colour edge map.

    Args:
        probs: float (K, H, W) probabilities (clipped to [0, 1]).
        palette: float (K, 3) colours in [0, 1]; default :func:`class_palette`.

    Returns:
        ``(colour, strength)``: float32 (H, W, 3) probability-weighted mean class colour in [0, 1]
        and float32 (H, W) edge strength ``max_k p_k``.
    """
    k = probs.shape[0]
    palette = class_palette(k) if palette is None else np.asarray(palette, dtype=np.float32)
    if palette.shape != (k, 3):
        raise ValueError(f"palette: expected ({k}, 3), got {palette.shape}")
    return _blend_colours(np.clip(probs.astype(np.float32), 0.0, 1.0), palette)


def overlay_edges(image: np.ndarray, probs: np.ndarray, *, alpha: float = 0.85,
                  dim: float = 0.5) -> np.ndarray:
    """The image, dimmed by ``dim``, with class-coloured edges on top (what ``dynfuse-predict``
    writes to ``overlay/``).

    Args:
        image: uint8 (H, W, 3) RGB.
        probs: float (K, H, W) edge probabilities of that image.
        alpha: opacity of a probability-1 edge.

    Returns:
        uint8 (H, W, 3).
    """
    colour, strength = colour_edges(probs)
    base = image.astype(np.float32) / 255.0 * dim
    a = (alpha * strength)[..., None]
    return np.rint(255.0 * ((1 - a) * base + a * colour)).clip(0, 255).astype(np.uint8)


def save_edge_map(path: str | os.PathLike, edges: np.ndarray, **kwargs) -> np.ndarray:
    """Write :func:`colorize_edges` of ``edges`` as a PNG; returns the picture."""
    from PIL import Image

    img = colorize_edges(edges, **kwargs)
    Image.fromarray(img).save(path)
    return img


def _viridis_like(x: np.ndarray) -> np.ndarray:
    """Perceptually ordered colour ramp (dark blue -> green -> yellow) without matplotlib."""
    stops = np.array(
        [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
        dtype=np.float32,
    )
    t = np.clip(x, 0, 1) * (len(stops) - 1)
    i = np.minimum(t.astype(np.int64), len(stops) - 2)
    f = (t - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f + 0.5).astype(np.uint8)


def fusion_weight_panels(
    weights: np.ndarray,
    class_index: int | None = None,
    *,
    vrange: tuple[float, float] | None = None,
    gap: int = 4,
) -> np.ndarray:
    """One panel per fused input (side5_k, side1, ..., sideS) side by side, as an RGB picture.

    Args:
        weights: (K, S+1, H, W) location-adaptive weights of one image (pick ``class_index``),
            or (S+1, H, W) for one class. Torch tensors are accepted.
        class_index: the class for a (K, S+1, H, W) input.
        vrange: value range mapped to the colour ramp; default: min/max over all panels,
            so panels are comparable.
        gap: white pixels between panels.

    Returns:
        (H, (S+1) * W + S * gap, 3) uint8.
    """
    w = weights
    if hasattr(w, "detach"):
        w = w.detach().float().cpu().numpy()
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 4:
        if class_index is None or not 0 <= class_index < w.shape[0]:
            raise ValueError(
                f"class_index must be in [0, {w.shape[0]}) for (K, S+1, H, W) weights, "
                f"got {class_index!r}"
            )
        w = w[class_index]
    if w.ndim != 3:
        raise ValueError(f"weights must be (K, S+1, H, W) or (S+1, H, W), got shape {w.shape}")
    lo, hi = vrange if vrange is not None else (float(w.min()), float(w.max()))
    scaled = (w - lo) / (hi - lo) if hi > lo else np.zeros_like(w)
    n, h, wd = w.shape
    out = np.full((h, n * wd + (n - 1) * gap, 3), 255, dtype=np.uint8)
    for j in range(n):
        x0 = j * (wd + gap)
        out[:, x0 : x0 + wd] = _viridis_like(scaled[j])
    return out


def save_fusion_weights(
    path: str | os.PathLike, weights: np.ndarray, class_index: int | None = None, **kwargs
) -> np.ndarray:
    """Write :func:`fusion_weight_panels` as a PNG; returns the picture."""
    from PIL import Image

    img = fusion_weight_panels(weights, class_index, **kwargs)
    Image.fromarray(img).save(path)
    return img


def pr_curve_label(entry: dict) -> str:
    """Legend text of one class of ``EvalResult.to_dict()["classes"]``: ODS and the authors' AP
    (``collect_eval_bdry.m``; not pyEdgeEval's max-precision AP), in %."""
    return f"{entry['name']} ODS={100 * entry['ods']:.1f} AP={100 * entry['ap']:.1f}"


def plot_pr_curves(
    path: str | os.PathLike,
    result,
    classes: Sequence[int] | None = None,
    *,
    title: str | None = None,
) -> None:
    """PR curves per class of an :class:`dynfuse.eval.EvalResult` (or its ``to_dict()``),
    with the ODS point marked and the settings in the caption, written as a PNG.

    Needs matplotlib (``pip install dynfuse[eval]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plot_pr_curves needs matplotlib: pip install 'dynfuse[eval]'") from e
    d = result.to_dict() if hasattr(result, "to_dict") else result
    entries = d["classes"]
    if classes is not None:
        entries = [entries[i] for i in classes]
    pal = palette_for(len(d["classes"])) / 255.0
    fig, ax = plt.subplots(figsize=(6, 6))
    for e in entries:
        if "pr" not in e:
            raise ValueError("result has no PR data (to_dict(include_pr=False)?)")
        c = pal[e["index"]]
        ax.plot(e["pr"]["recall"], e["pr"]["precision"], color=c, lw=1.2, label=pr_curve_label(e))
        ax.plot([e["ods_recall"]], [e["ods_precision"]], "o", color=c, ms=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    s = d["settings"]
    ax.set_title(title or f"MF-ODS {100 * d['mf_ods']:.1f}  mean AP {100 * d['mean_ap']:.1f}")
    fig.text(0.01, 0.01, f"max_dist={s['max_dist']} thin={s['thin']} thin_gt={s['thin_gt']} "
             f"margin={s['margin']} instance_sensitive={s['instance_sensitive']}", fontsize=7)
    ax.legend(fontsize=6, loc="lower left", ncol=2)
    fig.savefig(path, dpi=120)
    plt.close(fig)
