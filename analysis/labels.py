"""Labels that do not overlap: a greedy repel in display space (no extra dependency)."""

from __future__ import annotations

import numpy as np
from matplotlib.transforms import Bbox


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0) * max(h, 0)


def text_box(t, renderer):
    return t.get_window_extent(renderer)


def repel_labels(
    ax,
    xy: list[tuple[float, float]],
    texts: list[str],
    obstacles: list[tuple[float, float]],
    segments: list[tuple[float, float, float, float]] = (),
):
    """Greedy label placement: try offsets around each point, growing outwards, and keep the first one
    that overlaps no placed label, no marker (`obstacles`, points) and no error bar (`segments`,
    x0, y0, x1, y1 in data) and stays inside the axes (else the least overlap). Call after the layout
    is final: offsets are measured in display space. Returns the Text artists."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    ax_box = ax.get_window_extent(renderer)
    pt = fig.dpi / 72
    to_data = ax.transData.inverted()
    markers = [
        Bbox.from_extents(px - 3 * pt, py - 3 * pt, px + 3 * pt, py + 3 * pt)
        for px, py in ax.transData.transform(np.asarray(obstacles, dtype=float).reshape(-1, 2))
    ]
    for x0, y0, x1, y1 in segments:
        (a, b), (c, d) = ax.transData.transform([(x0, y0), (x1, y1)])
        markers.append(Bbox.from_extents(min(a, c) - pt, min(b, d) - pt, max(a, c) + pt, max(b, d) + pt))
    placed: list = []
    artists = []
    dirs = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    for (x, y), text in zip(xy, texts):
        px, py = ax.transData.transform((x, y))
        best = None
        for radius in (4, 9, 15, 22, 30, 40):
            for dx, dy in dirs:
                ha = "left" if dx > 0 else "right" if dx < 0 else "center"
                va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
                tx, ty = to_data.transform((px + dx * radius * pt, py + dy * radius * pt))
                t = ax.text(tx, ty, text, ha=ha, va=va, fontsize=6, zorder=5)
                box = t.get_window_extent(renderer)
                cost = sum(_overlap(box, b) for b in placed + markers)
                inside = (
                    ax_box.x0 <= box.x0
                    and box.x1 <= ax_box.x1
                    and ax_box.y0 <= box.y0
                    and box.y1 <= ax_box.y1
                )
                cost += 0 if inside else 1e6
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, t, box, radius, (tx, ty))
                else:
                    t.remove()
                if cost == 0:
                    break
            if best[0] == 0:
                break
        cost, t, box, radius, (tx, ty) = best
        if radius > 4:  # a leader line back to the point when the label had to move away
            ax.annotate(
                "",
                (x, y),
                (tx, ty),
                arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5", shrinkA=1, shrinkB=2.5),
                zorder=4,
            )
        placed.append(box)
        artists.append(t)
    return artists
