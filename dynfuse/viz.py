"""Pictures: class-coloured edge maps, fusion weights per location, PR curves, training curves,
contact sheets.

Edge maps, the bare weight strip (:func:`fusion_weight_panels`) and contact sheets are drawn with
PIL only; the labelled figures (:func:`plot_fusion_weights`, :func:`plot_metrics`,
:func:`plot_pr_curves`) need matplotlib (the ``eval`` extra), imported when called.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: viz imports neither torch nor matplotlib at start-up
    import torch
    from matplotlib.figure import Figure

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
    "plot_fusion_weights",
    "fusion_input_names",
    "class_name",
    "figure_to_rgb",
    "save_figure",
    "MetricsFileError",
    "METRIC_KINDS",
    "METRIC_SCORES",
    "load_metrics",
    "plot_metrics",
    "CONTACT_SHEET_COLUMNS",
    "contact_sheet_row",
    "contact_sheet",
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


def overlay_edges(
    image: np.ndarray, probs: np.ndarray, *, alpha: float = 0.85, dim: float = 0.5
) -> np.ndarray:
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
                f"class_index must be in [0, {w.shape[0]}) for (K, S+1, H, W) weights, got {class_index!r}"
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
    path: str | os.PathLike,
    weights: np.ndarray,
    class_index: int | None = None,
    *,
    labelled: bool = True,
    dpi: float = 100,
    **kwargs,
) -> np.ndarray:
    """Write fusion weights as a PNG (atomically); returns the uint8 (H, W, 3) picture written.

    Args:
        labelled: True: the labelled figure of :func:`plot_fusion_weights` (input names, shared
            colour bar, per-location variation; ``kwargs`` go to it, e.g. ``image=``; needs
            matplotlib). False: the bare strip of :func:`fusion_weight_panels` (PIL only; ``kwargs``
            go to it).
        dpi: resolution of the labelled figure.
    """
    from PIL import Image

    from .atomic import atomic_write

    if labelled:
        return save_figure(path, plot_fusion_weights(weights, class_index, **kwargs), dpi=dpi)
    img = fusion_weight_panels(weights, class_index, **kwargs)
    picture = Image.fromarray(img)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
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
    for entry in entries:
        if "pr" not in entry:
            raise ValueError("result has no PR data (to_dict(include_pr=False)?)")
        c = pal[entry["index"]]
        ax.plot(entry["pr"]["recall"], entry["pr"]["precision"], color=c, lw=1.2, label=pr_curve_label(entry))
        ax.plot([entry["ods_recall"]], [entry["ods_precision"]], "o", color=c, ms=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    s = d["settings"]
    ax.set_title(title or f"MF-ODS {100 * d['mf_ods']:.1f}  mean AP {100 * d['mean_ap']:.1f}")
    fig.text(
        0.01,
        0.01,
        f"max_dist={s['max_dist']} thin={s['thin']} thin_gt={s['thin_gt']} "
        f"margin={s['margin']} instance_sensitive={s['instance_sensitive']}",
        fontsize=7,
    )
    ax.legend(fontsize=6, loc="lower left", ncol=2)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- labelled figures (matplotlib)
def _require_matplotlib(what: str):
    """The matplotlib modules a labelled figure needs, or an ImportError that says how to get them."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{what} needs matplotlib: pip install 'dynfuse[eval]'") from e
    return Figure, FigureCanvasAgg


def _new_figure(what: str, figsize: tuple[float, float]) -> Figure:
    """A matplotlib Figure on its own Agg canvas: no pyplot state, the same on every backend."""
    Figure, FigureCanvasAgg = _require_matplotlib(what)
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_rgb(fig: Figure, *, dpi: float = 100) -> np.ndarray:
    """Render a matplotlib Figure to uint8 (H, W, 3) RGB pixels (what :func:`save_figure` writes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    before = fig.get_dpi()
    fig.set_dpi(dpi)
    try:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
    finally:
        fig.set_dpi(before)  # the caller's figure keeps its resolution


def save_figure(path: str | os.PathLike, fig: Figure, *, dpi: float = 100) -> np.ndarray:
    """Write a matplotlib Figure as a PNG atomically (a reader never sees half a file); returns
    the uint8 (H, W, 3) pixels written."""
    from PIL import Image

    from .atomic import atomic_write

    rgb = figure_to_rgb(fig, dpi=dpi)
    image = Image.fromarray(rgb)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return rgb


def class_name(num_classes: int | None, index: int) -> str:
    """Display name of class ``index`` (0-based): Cityscapes' names for 19 classes, SBD's for 20,
    else ``"class <index>"``."""
    names = {19: CITYSCAPES_CLASSES, 20: SBD_CLASSES}.get(num_classes or 0)
    return names[index] if names is not None else f"class {index}"


def fusion_input_names(num_inputs: int) -> list[str]:
    """Names of the S+1 fused inputs in the weights' order: ``["Side5", "Side1", ..., "SideS"]``.

    Index 0 is the class's own map from the top level (the paper's Side5, on res5), 1..S the shared
    lower-level maps, lowest first. With S >= 5 lower levels the top one is named ``Side<S+1>``
    so that the names stay distinct.
    """
    if num_inputs < 1:
        raise ValueError(f"expected at least one fused input, got {num_inputs}")
    s = num_inputs - 1
    return [f"Side{max(5, s + 1)}"] + [f"Side{j}" for j in range(1, s + 1)]


def _as_float_array(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return arr


def _as_display_image(image) -> np.ndarray:
    """(H, W, 3) uint8, or float in [0, 1], RGB -> float (H, W, 3) in [0, 1]."""
    img = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    if img.min() < 0 or img.max() > 1:
        raise ValueError(
            "a float image must lie in [0, 1] (un-normalise it first), "
            f"got values in [{img.min():.3g}, {img.max():.3g}]"
        )
    return img


def _weights_for_class(w: np.ndarray, class_index: int | None) -> tuple[np.ndarray, int | None, int | None]:
    """Split the accepted weight forms into (panels, class_index, K).

    Returns (S+1, H, W) maps (adaptive) or the (K, S+1) matrix (invariant / fixed), the class
    shown (None: unknown) and K (None: unknown)."""
    if w.ndim == 4:
        k = w.shape[0]
        if class_index is None and k == 1:
            class_index = 0
        if class_index is None or not 0 <= class_index < k:
            raise ValueError(
                f"class_index must be in [0, {k}) for (K, S+1, H, W) weights, got {class_index!r}"
            )
        return w[class_index], class_index, k
    if w.ndim == 3:
        return w, class_index, None
    if w.ndim == 2:
        k = w.shape[0]
        if class_index is not None and not 0 <= class_index < k:
            raise ValueError(f"class_index must be in [0, {k}) for (K, S+1) weights, got {class_index!r}")
        return w, class_index, k
    if w.ndim == 1:
        return w[None], 0 if class_index is None else class_index, None
    raise ValueError(
        "weights must be one image's (K, S+1, H, W) adaptive weights, (S+1, H, W) for one class, "
        f"or (K, S+1) invariant / fixed weights (drop the batch dimension); got shape {w.shape}"
    )


def plot_fusion_weights(
    weights: np.ndarray | torch.Tensor,
    class_index: int | None = None,
    *,
    image: np.ndarray | torch.Tensor | None = None,
    edges: np.ndarray | torch.Tensor | None = None,
    class_label: str | None = None,
    activation: str | None = None,
    title: str | None = None,
    panel_inches: float = 2.2,
) -> Figure:
    """A labelled figure of DFF fusion weights (needs matplotlib, ``dynfuse[eval]``).

    Location-adaptive weights (one map per fused input) are drawn in two rows:

    * top: the weights themselves, every panel on **one shared colour scale** (viridis, one colour
      bar), each titled with its input (Side5, Side1, ..., SideS) and its mean and standard
      deviation over the image, so panels compare directly;
    * bottom: each map minus its own mean, on one shared **diverging** scale centred on 0 (one
      colour bar), so the per-location variation is visible even where one input's weights dwarf
      another's (the paper's point: the weights change with the location). A shared absolute
      scale alone would flatten that variation; a scale per panel would make panels incomparable.

    Location-invariant and fixed weights, (K, S+1), have no spatial variation: they are drawn as a
    classes x inputs matrix on one colour scale with the values written in, the row of
    ``class_index`` (when given) outlined.

    Args:
        weights: one image's weights (torch or numpy): (K, S+1, H, W) adaptive (``class_index``
            picks the class), (S+1, H, W) adaptive for one class, (K, S+1) invariant / fixed, or
            (S+1,) for one class. Input 0 is the class's Side5 map, inputs 1..S Side1..SideS.
            Drop the batch dimension of a model output (``out.weights[0]``).
        class_index: 0-based class shown; named from :mod:`dynfuse.data.classes` when K is 19
            (Cityscapes) or 20 (SBD), else ``"class k"``.
        image: the input image, (H, W, 3) RGB uint8 or float in [0, 1], shown on the left.
        edges: edge probabilities of the class, (H, W) or (K, H, W) (then ``class_index`` picks),
            in [0, 1], at the image's size; shown under the image (needs ``image``).
        class_label: overrides the class name in the titles.
        activation: ``"softmax"`` applies the head's softmax over the S+1 inputs first (the model
            returns weights before it); None shows them as returned.
        title: figure title; default says which weights and which class.
        panel_inches: width of one panel in inches.

    Returns:
        The figure, a matplotlib ``Figure`` not registered with pyplot (save it with
        ``save_figure`` or ``fig.savefig``).
    """
    w = _as_float_array(weights, "weights")
    panels, class_index, k = _weights_for_class(w, class_index)
    if activation not in (None, "softmax"):
        raise ValueError(f"activation must be None or 'softmax', got {activation!r}")
    axis = 0 if panels.ndim == 3 else 1
    if activation == "softmax":
        e = np.exp(panels - panels.max(axis=axis, keepdims=True))
        panels = e / e.sum(axis=axis, keepdims=True)
    if class_label is None and class_index is not None:
        class_label = class_name(k, class_index)
    img = None if image is None else _as_display_image(image)
    shown = (img, _edge_panel(edges, img, class_index))
    value_label = "fusion weight" + (" (after softmax)" if activation else "")
    if panels.ndim == 3:
        return _plot_adaptive(panels, shown, class_label, value_label, title, panel_inches)
    return _plot_matrix(panels, shown, class_index, class_label, k, value_label, title, panel_inches)


def _edge_panel(edges, image: np.ndarray | None, class_index: int | None) -> np.ndarray | None:
    """The class's (H, W) edge probabilities shown beside the weights (None: not given)."""
    if edges is None:
        return None
    if image is None:
        raise ValueError("edges are shown under the image: pass image= as well")
    e = _as_float_array(edges, "edges")
    if e.ndim == 3:
        if class_index is None or not 0 <= class_index < e.shape[0]:
            raise ValueError(f"class_index must pick one of the {e.shape[0]} edge maps, got {class_index!r}")
        e = e[class_index]
    if e.ndim != 2 or e.shape != image.shape[:2]:
        raise ValueError(f"edges of shape {e.shape} do not match the image's {image.shape[:2]}")
    if e.min() < 0 or e.max() > 1:
        raise ValueError("edges must be probabilities in [0, 1]")
    return e


def _draw_inputs(
    fig, cells, image: np.ndarray | None, edges: np.ndarray | None, class_label: str | None
) -> None:
    """The image (and under it the class's edge probabilities) in the figure's first column."""
    if image is None:
        return
    top, bottom, both = cells
    ax = fig.add_subplot(both if edges is None else top)
    ax.imshow(image, interpolation="nearest")
    ax.set_title("image", fontsize=9)
    ax.set_axis_off()
    if edges is not None:
        ax = fig.add_subplot(bottom)
        ax.imshow(edges, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"'{class_label}' edge probability" if class_label else "edge probability", fontsize=9)
        ax.set_axis_off()


def _plot_adaptive(
    panels: np.ndarray,
    shown: tuple[np.ndarray | None, np.ndarray | None],
    class_label: str | None,
    value_label: str,
    title: str | None,
    panel_inches: float,
) -> Figure:
    image, edges = shown
    n, h, wd = panels.shape
    names = fusion_input_names(n)
    cols = n + (image is not None)
    ph = panel_inches * h / wd
    fig = _new_figure("plot_fusion_weights", (panel_inches * cols + 1.2, 2 * ph + 1.3))
    grid = fig.add_gridspec(2, cols + 1, width_ratios=[1.0] * cols + [0.06])
    means = panels.mean(axis=(1, 2))
    dev = panels - means[:, None, None]
    lo, hi = float(panels.min()), float(panels.max())
    spread = float(np.abs(dev).max())
    first = cols - n
    _draw_inputs(fig, (grid[0, 0], grid[1, 0], grid[:, 0]), image, edges, class_label)
    top, bottom = [], []  # the panels' images; one colour bar per row (all share its scale)
    for j in range(n):
        ax = fig.add_subplot(grid[0, first + j])
        top.append(
            ax.imshow(
                panels[j], cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-6, interpolation="nearest"
            )
        )
        what = f"{names[j]} ({class_label})" if j == 0 and class_label else names[j]
        ax.set_title(f"{what}\nmean {means[j]:.3g}, sd {panels[j].std():.2g}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax2 = fig.add_subplot(grid[1, first + j])
        bottom.append(
            ax2.imshow(
                dev[j],
                cmap="RdBu_r",
                vmin=-spread if spread > 0 else -1e-6,
                vmax=spread if spread > 0 else 1e-6,
                interpolation="nearest",
            )
        )
        ax2.set_xticks([])
        ax2.set_yticks([])
        ax2.set_xlabel(f"{names[j]} - its mean", fontsize=8)
    fig.colorbar(top[0], cax=fig.add_subplot(grid[0, cols]), label=value_label)
    fig.colorbar(bottom[0], cax=fig.add_subplot(grid[1, cols]), label="weight - panel mean")
    fig.suptitle(
        title or ("Location-adaptive fusion weights" + (f" for '{class_label}'" if class_label else "")),
        fontsize=11,
    )
    return fig


def _plot_matrix(
    matrix: np.ndarray,
    shown: tuple[np.ndarray | None, np.ndarray | None],
    class_index: int | None,
    class_label: str | None,
    k: int | None,
    value_label: str,
    title: str | None,
    panel_inches: float,
) -> Figure:
    image, edges = shown
    rows, n = matrix.shape
    names = fusion_input_names(n)
    if k is None:
        labels = [class_label or "class"]
    else:
        labels = [class_name(k, i) for i in range(rows)]
        if class_index is not None and class_label:
            labels[class_index] = class_label
    mh = max(1.2, 0.28 * rows + 0.8)
    cols = 1 + (image is not None)
    size = (panel_inches * (cols - 1) + max(2.5, 0.7 * n + 2.2) + 0.6, max(mh, panel_inches) + 0.8)
    fig = _new_figure("plot_fusion_weights", size)
    grid = fig.add_gridspec(2, cols + 1, width_ratios=[1.0] * (cols - 1) + [max(1.0, 0.3 * n), 0.08])
    _draw_inputs(fig, (grid[0, 0], grid[1, 0], grid[:, 0]), image, edges, class_label)
    ax = fig.add_subplot(grid[:, cols - 1])
    im = ax.imshow(matrix, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n), names, fontsize=9)
    ax.set_yticks(range(rows), labels, fontsize=8 if rows > 6 else 9)
    if rows * n <= 200:
        mid = (float(matrix.min()) + float(matrix.max())) / 2
        for r in range(rows):
            for c in range(n):
                ax.text(
                    c,
                    r,
                    f"{matrix[r, c]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if matrix[r, c] > mid else "white",
                )
    if class_index is not None and rows > 1:
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((-0.5, class_index - 0.5), n, 1, fill=False, ec="red", lw=2))
    fig.colorbar(im, cax=fig.add_subplot(grid[:, cols]), label=value_label)
    default = "Fusion weights per class and input (the same at every location)"
    if class_index is not None and rows > 1:
        default += f"; outlined: '{labels[class_index]}'"
    fig.suptitle(title or default, fontsize=10)
    return fig


# ---------------------------------------------------------------- training curves
class MetricsFileError(ValueError):
    """A ``metrics.jsonl`` that is missing, unreadable or not made of training records (the message
    names the file and line)."""


#: Record kinds :func:`plot_metrics` reads and the fields it reads from each (others are ignored):
#: ``train`` (every ``log_every`` iterations): ``epoch``, ``iteration``, ``loss``, ``images_per_s``;
#: ``epoch`` (end of an epoch): ``epoch``, ``iteration``, ``loss``, ``images_per_s``;
#: ``val``: ``epoch``, ``iteration``, ``loss`` and the scores of :data:`METRIC_SCORES`.
METRIC_KINDS = ("train", "epoch", "val")

#: Validation scores plotted, by their key in the records, with their legend label. Plotted as
#: written (fractions in [0, 1] shown in %); a key a run did not record is left out.
METRIC_SCORES = (("mf_ods", "MF-ODS"), ("mf_ois", "MF-OIS"), ("ap", "AP"), ("mean_ap", "mean_ap"))


def _metrics_path(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise MetricsFileError(
            f"no metrics file {str(path)!r} (a dynfuse-train run folder holds metrics.jsonl)"
        )
    return path


def _parse_records(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise MetricsFileError(f"cannot read {str(path)!r}: {exc}") from exc
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) and not line.endswith("\n"):  # a run killed while writing its last line
                warnings.warn(f"{path}: ignoring the unfinished last line {i}", stacklevel=3)
                continue
            raise MetricsFileError(f"{path}, line {i}: not a JSON record ({exc.msg})") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("kind"), str):
            raise MetricsFileError(
                f"{path}, line {i}: expected a JSON object with a 'kind' field, got {line.strip()[:60]!r}"
            )
        records.append(rec)
    return records


def _position(rec: dict[str, Any]) -> float:
    # Where a record sits in the schedule: a train record inside its epoch, the epoch summary
    # after it, the validation of that epoch last.
    return float(rec["epoch"]) + {"train": -0.5, "epoch": -0.25}.get(rec["kind"], 0.0)


def load_metrics(run_dir: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """The ``train``, ``epoch`` and ``val`` records of a run's ``metrics.jsonl``, in order.

    A resumed run appends to the file; the records its killed predecessor wrote past the
    checkpoint it resumed from are dropped (a record whose ``iteration`` goes back marks the
    resume; records at or after its place in the schedule are replaced). An unfinished last line
    (a run killed mid-write) is skipped with a warning.

    Args:
        run_dir: a run folder (holding ``metrics.jsonl``) or the file itself.

    Returns:
        The record dicts as written, by kind (keys ``train``, ``epoch`` and ``val``).

    Raises:
        MetricsFileError: no such file, a line that is not a JSON object with a ``kind``, or no
            record with an integer ``epoch`` of the three kinds.
    """
    path = _metrics_path(run_dir)
    kept: list[dict[str, Any]] = []
    last_iteration = -1
    for rec in _parse_records(path):
        if rec["kind"] not in METRIC_KINDS or not isinstance(rec.get("epoch"), int):
            continue
        it = rec.get("iteration")
        if isinstance(it, int):
            if it < last_iteration:  # resumed: drop what the killed attempt wrote from here on
                kept = [r for r in kept if _position(r) < _position(rec)]
            last_iteration = it
        kept.append(rec)
    if not kept:
        raise MetricsFileError(
            f"{path} holds no training records (kinds {', '.join(METRIC_KINDS)} with an 'epoch')"
        )
    return {kind: [r for r in kept if r["kind"] == kind] for kind in METRIC_KINDS}


def _number(value: Any) -> float | None:
    """A record's numeric field as float (``"nan"``/``"inf"`` strings included); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def _series(records: list[dict[str, Any]], key: str, x=None) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        y = _number(r.get(key))
        if y is not None:
            xs.append(float(r["epoch"]) if x is None else x(r))
            ys.append(y)
    return xs, ys


def _train_position(metrics: dict[str, list[dict[str, Any]]]):
    """x (in epochs) of a train record: its iteration over the iterations per epoch (from the
    epoch summaries); without summaries, spread evenly inside its epoch."""
    ends = {r["epoch"]: r["iteration"] for r in metrics["epoch"] if isinstance(r.get("iteration"), int)}
    steps = [ends[e] // e for e in ends if e > 0 and ends[e] > 0]
    if steps:
        per_epoch = float(np.median(steps))
        return lambda r: r["iteration"] / per_epoch if isinstance(r.get("iteration"), int) else r["epoch"]
    count: dict[int, int] = {}
    for r in metrics["train"]:
        count[r["epoch"]] = count.get(r["epoch"], 0) + 1
    rank: dict[int, int] = {}

    def spread(r: dict[str, Any]) -> float:
        rank[r["epoch"]] = rank.get(r["epoch"], 0) + 1
        return r["epoch"] - 1 + rank[r["epoch"]] / count[r["epoch"]]

    return spread


def plot_metrics(
    run_dir: str | os.PathLike, path: str | os.PathLike | None = None, *, title: str | None = None
) -> Figure:
    """Training curves of a ``dynfuse-train`` run from its ``metrics.jsonl`` (needs matplotlib).

    Three panels against the epoch: the loss (train loss between log points, its mean per epoch,
    the validation loss), the validation scores of :data:`METRIC_SCORES` in % (as many as the run
    recorded), and the throughput (``images_per_s`` per epoch, start-up included, and between log
    points). Fields a run did not record are left out; the panel says so when it is empty.

    Args:
        run_dir: the run folder or its ``metrics.jsonl`` (see :func:`load_metrics`).
        path: also write the figure there as a PNG (atomically).
        title: default: the run folder's name.

    Returns:
        The figure, a matplotlib ``Figure`` not registered with pyplot.
    """
    metrics = load_metrics(run_dir)
    fig = _new_figure("plot_metrics", (13.0, 3.8))
    ax_loss, ax_score, ax_speed = fig.subplots(1, 3)
    at = _train_position(metrics)
    _draw(
        ax_loss,
        [
            (metrics["train"], "loss", at, "train (between log points)", dict(lw=0.8, alpha=0.5)),
            (metrics["epoch"], "loss", None, "train (epoch mean)", dict(marker="o", ms=3)),
            (metrics["val"], "loss", None, "validation", dict(marker="s", ms=3)),
        ],
        "loss",
        "no loss recorded",
    )
    scores = [
        (metrics["val"], key, None, label, dict(marker="o", ms=3, scale=100.0))
        for key, label in METRIC_SCORES
    ]
    _draw(ax_score, scores, "validation score (%)", "no validation scores recorded")
    _draw(
        ax_speed,
        [
            (metrics["train"], "images_per_s", at, "between log points", dict(lw=0.8, alpha=0.5)),
            (metrics["epoch"], "images_per_s", None, "per epoch (start-up included)", dict(marker="o", ms=3)),
        ],
        "images / s",
        "no throughput recorded",
    )
    source = _metrics_path(run_dir)
    fig.suptitle(title or f"training curves: {source.parent.name}", fontsize=11)
    if path is not None:
        save_figure(path, fig)
    return fig


def _draw(ax, series, ylabel: str, empty: str) -> None:
    drawn = 0
    for records, key, x, label, style in series:
        style = dict(style)
        scale = style.pop("scale", 1.0)
        xs, ys = _series(records, key, x)
        if xs:
            ax.plot(xs, [scale * y for y in ys], label=label, **style)
            drawn += 1
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="grey")


# ---------------------------------------------------------------- contact sheets (PIL only)
#: Column titles of :func:`contact_sheet_row`'s tiles.
CONTACT_SHEET_COLUMNS = ("image", "ground truth", "prediction")


def _max_pool(maps: np.ndarray, factor: int) -> np.ndarray:
    """(K, H, W) -> (K, ceil(H/f), ceil(W/f)) block maxima: thin edges survive the shrinking."""
    if factor == 1:
        return maps
    k, h, w = maps.shape
    hp, wp = -(-h // factor), -(-w // factor)
    padded = np.zeros((k, hp * factor, wp * factor), dtype=maps.dtype)
    padded[:, :h, :w] = maps
    return padded.reshape(k, hp, factor, wp, factor).max(axis=(2, 4))


def contact_sheet_row(
    image: np.ndarray,
    probs: np.ndarray,
    gt: np.ndarray | None = None,
    *,
    with_gt: bool = False,
    max_height: int = 256,
) -> list[np.ndarray | None]:
    """The tiles of one contact-sheet row: image | ground truth | prediction.

    Edge maps are class-coloured on white (:func:`colorize_edges`, the same palette for both),
    shrunk to at most ``max_height`` by an integer factor with block maxima so that thin edges stay
    visible; the image is shrunk to the same size.

    Args:
        image: uint8 (H, W, 3) RGB.
        probs: float (K, H, W) edge probabilities in [0, 1].
        gt: bool (K, H, W) ground truth, or None.
        with_gt: include the ground-truth column (a None tile, drawn as "no ground truth", when
            ``gt`` is None).

    Returns:
        uint8 (h, w, 3) tiles (None for a missing ground truth), 2 or 3 of them.
    """
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if probs.ndim != 3 or probs.shape[1:] != (h, w):
        raise ValueError(f"probs must be (K, {h}, {w}) for this image, got {probs.shape}")
    if gt is not None and gt.shape != probs.shape:
        raise ValueError(f"ground truth of shape {gt.shape} does not match the prediction's {probs.shape}")
    factor = max(1, -(-h // max_height))
    pred = colorize_edges(_max_pool(np.clip(probs, 0, 1).astype(np.float32), factor))
    size = (pred.shape[1], pred.shape[0])
    small = image if factor == 1 else np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    tiles: list[np.ndarray | None] = [small]
    if with_gt:
        tiles.append(
            None
            if gt is None
            else colorize_edges(_max_pool(gt.astype(bool), factor), palette_for(gt.shape[0]))
        )
    tiles.append(pred)
    return tiles


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[np.ndarray | None]]],
    columns: Sequence[str] = ("image", "prediction"),
    *,
    gap: int = 6,
    font_size: int = 14,
) -> np.ndarray:
    """Lay rows of tiles out as one labelled picture (PIL only).

    A header line holds the column titles; each row is headed by its name. Tiles of a row share
    their height (:func:`contact_sheet_row` makes them so); a None tile is drawn grey with
    "no <column>", as large as its row's widest tile. Columns are as wide as their widest tile.

    Args:
        rows: ``(name, tiles)`` per row, each tile uint8 (h, w, 3) or None.
        columns: the column titles, one per tile.

    Returns:
        uint8 (H, W, 3) RGB.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    n = len(columns)
    for name, tiles in rows:
        if len(tiles) != n:
            raise ValueError(f"row {name!r} has {len(tiles)} tiles for {n} columns {list(columns)}")
    for name, tiles in rows:
        if all(t is None for t in tiles):
            raise ValueError(f"row {name!r} has no tile")
    heights = [max(t.shape[0] for t in tiles if t is not None) for _, tiles in rows]
    # a missing tile takes the size of its row's widest one
    row_widths = [max(t.shape[1] for t in tiles if t is not None) for _, tiles in rows]
    widths = [
        max(
            t.shape[1] if t is not None else rw
            for (_, tiles), rw in zip(rows, row_widths, strict=True)
            for t in [tiles[c]]
        )
        for c in range(n)
    ]
    line = font_size + 6
    total_w = sum(widths) + gap * (n + 1)
    total_h = line + sum(h + line + gap for h in heights) + gap
    sheet = Image.new("RGB", (total_w, total_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(font_size)
    xs = [gap + sum(widths[:c]) + gap * c for c in range(n)]
    for c, title in enumerate(columns):
        draw.text((xs[c], 2), title, fill=(0, 0, 0), font=font)
    y = line
    for (name, tiles), h, rw in zip(rows, heights, row_widths, strict=True):
        draw.text((gap, y + 2), name, fill=(60, 60, 60), font=font)
        y += line
        for c, tile in enumerate(tiles):
            if tile is None:
                draw.rectangle([xs[c], y, xs[c] + rw - 1, y + h - 1], fill=(200, 200, 200))
                draw.text((xs[c] + 4, y + 4), f"no {columns[c]}", fill=(0, 0, 0), font=font)
            else:
                sheet.paste(Image.fromarray(np.ascontiguousarray(tile)), (xs[c], y))
        y += h + gap
    return np.asarray(sheet)
