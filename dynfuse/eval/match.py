"""One-to-one pixel correspondence between a predicted and a ground-truth edge map.

BSDS's ``correspondPixels`` solves a min-cost assignment in which every unmatched pixel costs
100 times the tolerance, so its optimum is first of all a matching of maximum cardinality among
pairs within the tolerance (the distances only break ties, and the C++ solver approximates even
that with randomly sampled outlier edges). We compute that maximum cardinality exactly and
deterministically: a sparse bipartite graph of all (prediction, ground truth) pixel pairs with
squared distance <= (max_dist * diag)^2 -- coincident pixels (distance 0) included -- solved as
a unit-capacity maximum flow with Dinic's algorithm (``scipy.sparse.csgraph.maximum_flow``).

Note on coincident pixels: matching exact overlaps greedily first is *not* always maximum (a
predicted pixel on a ground-truth pixel can be the only partner of two other pixels), so overlaps
are ordinary zero-cost edges of the graph. Every maximum matching gives the same counts
(matched prediction = matched ground truth = its size); which maximum matching the maps show is
decided by the fixed vertex order, so the output is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow
from scipy.spatial import cKDTree

__all__ = [
    "match_edges",
    "match_radius",
    "candidate_pairs",
    "greedy_extend",
    "augment",
    "max_matching",
]


def match_radius(shape: tuple[int, int], max_dist: float) -> float:
    """Tolerance in pixels: ``max_dist * sqrt(H^2 + W^2)`` (BSDS convention)."""
    if not (isinstance(max_dist, (int, float)) and math.isfinite(max_dist) and max_dist > 0):
        raise ValueError(f"max_dist must be a positive finite float, got {max_dist!r}")
    return float(max_dist) * math.hypot(shape[0], shape[1])


def candidate_pairs(
    a_yx: np.ndarray, b_yx: np.ndarray, radius: float, tree_b: cKDTree | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All index pairs ``(i, j)`` with ``|a_yx[i] - b_yx[j]|^2 <= radius^2``, zero distance kept.

    Args:
        a_yx, b_yx: (N, 2) and (M, 2) integer pixel coordinates.
        radius: tolerance in pixels.
        tree_b: optional prebuilt ``cKDTree(b_yx)`` (reused across calls).

    Returns:
        ``(ia, ib, d2)`` int64 arrays sorted by ``ia`` then ``ib``; ``d2`` the squared distances.
    """
    empty = np.zeros(0, dtype=np.int64)
    if len(a_yx) == 0 or len(b_yx) == 0 or radius < 0:
        return empty, empty, empty
    r2 = radius * radius
    ta = cKDTree(a_yx)
    tb = cKDTree(b_yx) if tree_b is None else tree_b
    # output_type="ndarray" keeps explicit zero distances (coincident pixels); the sparse-matrix
    # outputs of this helper may drop them. A small slack, then the exact integer test below.
    res = ta.sparse_distance_matrix(tb, radius + 1e-6, output_type="ndarray")
    ia = res["i"].astype(np.int64)
    ib = res["j"].astype(np.int64)
    d = a_yx[ia].astype(np.int64) - b_yx[ib].astype(np.int64)
    d2 = (d * d).sum(axis=1)
    keep = d2 <= r2
    ia, ib, d2 = ia[keep], ib[keep], d2[keep]
    order = np.lexsort((ib, ia))
    return ia[order], ib[order], d2[order]


def greedy_extend(
    ia: np.ndarray,
    ib: np.ndarray,
    d2: np.ndarray,
    mate_a: np.ndarray,
    mate_b: np.ndarray,
    rounds: int = 6,
) -> None:
    """Grow a matching in place by rounds of nearest-partner proposals (ties: lowest index).

    In each round every free A vertex proposes to its nearest free B neighbour and every B vertex
    accepts its nearest proposer. The result is a valid matching, usually close to maximum; the
    exact maximum is then reached by augmenting paths (:func:`augment`).
    """
    free = (mate_a[ia] < 0) & (mate_b[ib] < 0)
    ia, ib, d2 = ia[free], ib[free], d2[free]
    for _ in range(rounds):
        if ia.size == 0:
            return
        o = np.lexsort((ib, d2, ia))
        first = np.ones(o.size, dtype=bool)
        first[1:] = ia[o[1:]] != ia[o[:-1]]
        pa, pb, pd = ia[o[first]], ib[o[first]], d2[o[first]]
        o = np.lexsort((pa, pd, pb))
        first = np.ones(o.size, dtype=bool)
        first[1:] = pb[o[1:]] != pb[o[:-1]]
        mate_a[pa[o[first]]] = pb[o[first]]
        mate_b[pb[o[first]]] = pa[o[first]]
        free = (mate_a[ia] < 0) & (mate_b[ib] < 0)
        ia, ib, d2 = ia[free], ib[free], d2[free]


def _relabel(idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Used vertex ids (sorted) and each entry's compact id, in O(n + E) (no sort)."""
    used = np.zeros(n, dtype=bool)
    used[idx] = True
    ids = np.flatnonzero(used)
    compact = np.cumsum(used) - 1
    return ids, compact[idx]


def augment(ia: np.ndarray, ib: np.ndarray, mate_a: np.ndarray, mate_b: np.ndarray) -> None:
    """Turn a valid matching into a maximum one, in place, with one max-flow on its residual graph.

    Residual network of the matching: source -> free A, A -> B on unmatched edges, B -> A on
    matched edges, free B -> sink, all of capacity 1. Every vertex carries at most one unit, so a
    maximum flow is a largest set of vertex-disjoint augmenting paths; flipping them (Dinic's
    algorithm, O(E sqrt(V))) gives a maximum matching. Only vertices with an edge take part.
    """
    if ia.size == 0:
        return
    # An augmenting path runs from a free A vertex to a free B vertex: none, nothing to do.
    if not (mate_a[ia] < 0).any() or not (mate_b[ib] < 0).any():
        return
    ua, ca = _relabel(ia, mate_a.size)
    ub, cb = _relabel(ib, mate_b.size)
    na, nb = ua.size, ub.size
    ma = mate_a[ua]
    mb = mate_b[ub]
    free_a = np.flatnonzero(ma < 0)
    free_b = np.flatnonzero(mb < 0)
    if free_a.size == 0 or free_b.size == 0:
        return
    matched_edge = mate_a[ia] == ib
    src, snk = na + nb, na + nb + 1
    a_off, b_off = 0, na
    rows = np.concatenate(
        (
            np.full(free_a.size, src),
            ca[~matched_edge] + a_off,
            cb[matched_edge] + b_off,
            free_b + b_off,
        )
    )
    cols = np.concatenate(
        (
            free_a + a_off,
            cb[~matched_edge] + b_off,
            ca[matched_edge] + a_off,
            np.full(free_b.size, snk),
        )
    )
    n = na + nb + 2
    graph = csr_matrix(
        (np.ones(rows.size, dtype=np.int32), (rows.astype(np.int32), cols.astype(np.int32))),
        shape=(n, n),
    )
    res = maximum_flow(graph, src, snk, method="dinic")
    if res.flow_value == 0:
        return
    flow = res.flow.tocoo()
    pos = flow.data > 0
    fr, fc = flow.row[pos].astype(np.int64), flow.col[pos].astype(np.int64)
    # B -> A arcs with flow: matched pairs the augmenting paths break.
    brk = (fr >= b_off) & (fr < b_off + nb) & (fc < na)
    mate_a[ua[fc[brk]]] = -1
    mate_b[ub[fr[brk] - b_off]] = -1
    # A -> B arcs with flow: new pairs.
    new = (fr < na) & (fc >= b_off) & (fc < b_off + nb)
    a = ua[fr[new]]
    b = ub[fc[new] - b_off]
    mate_a[a] = b
    mate_b[b] = a


def max_matching(
    ia: np.ndarray, ib: np.ndarray, d2: np.ndarray, n_a: int, n_b: int
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-cardinality matching of a bipartite graph given as an edge list.

    Args:
        ia, ib: (E,) int64 edge endpoints; d2: (E,) squared lengths (prefer short edges first).
        n_a, n_b: vertex counts of the two sides.

    Returns:
        ``(mate_a, mate_b)``: (n_a,) and (n_b,) int64, the partner index or -1.
    """
    mate_a = np.full(n_a, -1, dtype=np.int64)
    mate_b = np.full(n_b, -1, dtype=np.int64)
    greedy_extend(ia, ib, d2, mate_a, mate_b)
    augment(ia, ib, mate_a, mate_b)
    return mate_a, mate_b


def _check_map(name: str, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{name} must be boolean or numeric, got dtype {arr.dtype}")
        arr = arr != 0
    return arr


def match_edges(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """Match predicted edge pixels to ground-truth edge pixels one-to-one within a tolerance.

    Args:
        pred: (H, W) bool (or numeric, nonzero = edge) prediction.
        gt: (H, W) bool (or numeric) ground truth, same shape.
        max_dist: tolerance as a fraction of the image diagonal; pixels ``p`` and ``g`` may match
            when ``|p - g|^2 <= (max_dist * sqrt(H^2 + W^2))^2``.

    Returns:
        ``(pred_matched, gt_matched)``: (H, W) bool maps of the pixels in a maximum-cardinality
        matching (``pred_matched.sum() == gt_matched.sum()``); deterministic.
    """
    p = _check_map("pred", pred)
    g = _check_map("gt", gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    radius = match_radius(p.shape, max_dist)
    p_yx = np.argwhere(p)
    g_yx = np.argwhere(g)
    ia, ib, d2 = candidate_pairs(p_yx, g_yx, radius)
    mate_p, mate_g = max_matching(ia, ib, d2, len(p_yx), len(g_yx))
    pm = np.zeros(p.shape, dtype=bool)
    gm = np.zeros(g.shape, dtype=bool)
    sel = p_yx[mate_p >= 0]
    pm[sel[:, 0], sel[:, 1]] = True
    sel = g_yx[mate_g >= 0]
    gm[sel[:, 0], sel[:, 1]] = True
    return pm, gm
