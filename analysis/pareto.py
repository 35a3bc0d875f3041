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
