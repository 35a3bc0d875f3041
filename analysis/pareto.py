"""The Pareto front of (image similarity, text similarity), both maximised."""

from __future__ import annotations

import numpy as np


def pareto_mask(x, y) -> np.ndarray:
    """True where no other point is at least as good on both axes and strictly better on one.

    Duplicates of a front point are all on the front (neither dominates the other); a point tied
    on one axis and worse on the other is dominated; NaN points are never on the front.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    mask: np.ndarray = np.zeros(len(x), dtype=bool)
    idx = np.flatnonzero(ok)
    if not len(idx):
        return mask
    # sweep by x descending (y descending among equal x): a point is on the front iff its y beats
    # the best y among points with strictly larger x, and is the best y within its own x.
    order = idx[np.lexsort((-y[idx], -x[idx]))]
    best_y_larger_x = -np.inf
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and x[order[j]] == x[order[i]]:
            j += 1
        group = order[i:j]
        top = y[group[0]]  # best y at this x (sorted descending)
        if top > best_y_larger_x:
            mask[group[y[group] == top]] = True
        best_y_larger_x = max(best_y_larger_x, top)
        i = j
    return mask


def pareto_front(x, y) -> np.ndarray:
    """Indices of the front points, ordered by x ascending (the order to draw the front line)."""
    x = np.asarray(x, dtype=float)
    idx = np.flatnonzero(pareto_mask(x, y))
    return idx[np.argsort(x[idx], kind="stable")]


def distance_to_front(x: float, y: float, front_x, front_y) -> float:
    """Signed Euclidean distance from (x, y) to the curve a front draws: its points joined by straight
    segments (as the plot draws it), extended by a horizontal ray to the left of its highest point and a
    vertical ray below its rightmost point. Positive beyond the curve (no point of the curve is at least as
    good on both axes), negative behind it, 0 on it; NaN without a finite front point."""
    fx = np.asarray(front_x, dtype=float)
    fy = np.asarray(front_y, dtype=float)
    ok = np.isfinite(fx) & np.isfinite(fy)
    fx, fy = fx[ok], fy[ok]
    if not len(fx) or not (np.isfinite(x) and np.isfinite(y)):
        return float("nan")
    idx = pareto_front(fx, fy)
    px, py = fx[idx], fy[idx]  # x ascending, y descending
    inf = 1e9
    xs = np.r_[px[0] - inf, px, px[-1]]
    ys = np.r_[py[0], py, py[-1] - inf]
    best = np.inf
    for i in range(len(xs) - 1):
        a = np.array([xs[i], ys[i]])
        b = np.array([xs[i + 1], ys[i + 1]])
        ab = b - a
        length = float(ab @ ab)
        t = 0.0 if length == 0 else min(max(float((np.array([x, y]) - a) @ ab) / length, 0.0), 1.0)
        best = min(best, float(np.hypot(*(np.array([x, y]) - (a + t * ab)))))
    behind = x <= px[-1] and y <= float(np.interp(x, px, py, left=py[0]))
    return -best if behind else best
