"""Labels that do not overlap: a greedy repel in display space (no extra dependency)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.path import Path
from matplotlib.text import Text
from matplotlib.transforms import Bbox


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0) * max(h, 0)


def agg_renderer(fig: Any) -> Any:
    """The renderer of a figure drawn on an Agg canvas (plots.new_figure), for measuring text."""
    return cast(FigureCanvasAgg, fig.canvas).get_renderer()


def text_box(t: Text, renderer: Any) -> Bbox:
    return t.get_window_extent(renderer)


def repel_labels(
    ax: Axes,
    xy: Sequence[tuple[float, float]],
    texts: Sequence[str],
    obstacles: Sequence[tuple[float, float]],
    segments: Sequence[tuple[float, float, float, float]] = (),
    required: int | None = None,
) -> list[Text]:
    """Greedy label placement: try offsets around each point, growing outwards, and keep the first one
    that overlaps no placed label, no marker (`obstacles`, points) and no interval (`segments`, x0, y0, x1, y1
    in data), stays inside the axes and, when it is far enough to need a leader line, whose line crosses no
    other leader and no label (else the least costly place). The labels after the first `required` (default:
    all required) are left out when every place would overlap a label, leave the axes or cross a line. Call
    after the layout is final: offsets are measured in display space. Returns the Text artists placed."""
    fig = ax.figure
    renderer = agg_renderer(fig)
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
    placed: list[Bbox] = []
    leaders: list[Path] = []  # display coordinates
    artists = []
    for n, ((x, y), text) in enumerate(zip(xy, texts)):
        px, py = ax.transData.transform((x, y))
        best: _Place | None = None
        for radius in RADII:
            for dx, dy in DIRECTIONS:
                place = _try(ax, text, (px, py), (dx, dy), radius * pt, renderer)
                place.cost = _cost(place, placed, markers, leaders, ax_box)
                if best is None or place.cost < best.cost:
                    if best is not None:
                        best.text.remove()
                    best = place
                else:
                    place.text.remove()
                if place.cost == 0:
                    break
            if best is not None and best.cost == 0:
                break
        assert best is not None  # RADII and DIRECTIONS are not empty
        if best.cost >= COLLIDES and n >= (len(texts) if required is None else required):
            best.text.remove()
            continue
        if best.leader is not None:  # a leader line back to the point when the label had to move away
            ax.annotate(
                "",
                (x, y),
                tuple(to_data.transform(best.anchor)),
                arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5", shrinkA=1, shrinkB=2.5),
                zorder=4,
            )
            leaders.append(best.leader)
        placed.append(best.box)
        artists.append(best.text)
    return artists


RADII = (
    4,
    9,
    15,
    22,
    30,
    40,
)  # offsets tried, in points, nearest first; beyond the first a leader line is drawn
DIRECTIONS = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
# Costs beyond any overlap with marks (areas in pixels): a label outside the axes; a label on another label, a
# leader line crossing another or a label. A place costing COLLIDES or more is one a label may be left out of.
OUTSIDE, CROSSING = 1e9, 1e7
COLLIDES = CROSSING


@dataclass
class _Place:
    text: Text
    box: Bbox
    anchor: tuple[float, float]  # display coordinates of the label's anchor
    leader: (
        Path | None
    )  # the leader line from the point to the anchor (display), None when the label is close
    cost: float = 0.0


def _try(
    ax: Axes, text: str, point: tuple[float, float], direction: tuple[int, int], offset: float, renderer: Any
) -> _Place:
    (px, py), (dx, dy) = point, direction
    ha = "left" if dx > 0 else "right" if dx < 0 else "center"
    va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
    anchor = (px + dx * offset, py + dy * offset)
    tx, ty = ax.transData.inverted().transform(anchor)
    t = ax.text(tx, ty, text, ha=ha, va=va, fontsize=6, zorder=5)
    leader = Path([point, anchor]) if offset > RADII[0] * ax.figure.dpi / 72 else None
    return _Place(t, t.get_window_extent(renderer), anchor, leader)


def _cost(place: _Place, placed: list[Bbox], markers: list[Bbox], leaders: list[Path], ax_box: Bbox) -> float:
    """Overlap (display area) with marks; a label on a placed label, outside the axes, a leader line crossing
    another leader or a placed label, or a label on a placed leader line cost more than any overlap."""
    b = place.box
    cost = sum(_overlap(b, o) for o in markers) + CROSSING * sum(_overlap(b, o) > 0 for o in placed)
    if not (ax_box.x0 <= b.x0 and b.x1 <= ax_box.x1 and ax_box.y0 <= b.y0 and b.y1 <= ax_box.y1):
        cost += OUTSIDE
    cost += CROSSING * sum(line.intersects_bbox(b, filled=False) for line in leaders)
    if place.leader is not None:
        cost += CROSSING * sum(place.leader.intersects_path(line) for line in leaders)
        cost += CROSSING * sum(place.leader.intersects_bbox(o, filled=False) for o in placed)
    return cost
