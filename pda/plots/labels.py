"""Point labels that avoid each other, the markers and the error bars; plain-number log axes."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter


def label_points(ax: Axes, x: np.ndarray, y: np.ndarray, yerr: np.ndarray, labels: Sequence[str],
                  front: list[int], fontsize: float = 7.5) -> None:
    """Label each point, greedily choosing among offsets the first whose text box hits no earlier label,
    marker, error bar or front segment (least overlap otherwise); far offsets get a leader line.
    Call after the layout is final (``fig.draw_without_rendering()``); labels stay out of the layout."""
    fig = ax.get_figure()
    scale = fig.dpi / 72  # display pixels per point
    to_px = ax.transData.transform
    pts = to_px(np.column_stack([x, y]))
    lo, hi = to_px(np.column_stack([x, y - yerr])), to_px(np.column_stack([x, y + yerr]))
    boxes = [(px - 5 * scale, py - 5 * scale, px + 5 * scale, py + 5 * scale) for px, py in pts]
    boxes += [(a[0] - scale, a[1], a[0] + scale, b[1]) for a, b in zip(lo, hi)]
    fp = to_px(np.column_stack([x[front], y[front]]))
    for (x0, y0), (x1, y1) in zip(fp[:-1], fp[1:]):  # the 'post' step: across, then up
        boxes += [(x0, y0 - scale, x1, y0 + scale), (x1 - scale, y0, x1 + scale, y1)]
    frame = ax.bbox.extents
    offsets = [(dx * r, dy * r) for r in (7, 14, 24, 36)
               for dx, dy in ((1, 0), (-1, 0), (1, 1), (-1, 1), (1, -1), (-1, -1), (0, 1), (0, -1))]

    def overlap(a: Sequence[float], b: Sequence[float]) -> float:
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    for i in sorted(range(len(x)), key=lambda i: (i not in front, -y[i])):
        tw, th = 0.62 * fontsize * len(labels[i]) * scale, 1.3 * fontsize * scale
        best, best_cost, best_box = offsets[0], math.inf, boxes[0]
        for dx, dy in offsets:
            x0 = pts[i][0] + dx * scale - (tw if dx < 0 else tw / 2 if dx == 0 else 0)
            y0 = pts[i][1] + dy * scale - (th if dy < 0 else th / 2 if dy == 0 else 0)
            box = (x0, y0, x0 + tw, y0 + th)
            outside = sum(max(0.0, v) for v in (frame[0] - box[0], box[2] - frame[2], frame[1] - box[1], box[3] - frame[3]))
            cost = sum(overlap(box, b) for b in boxes) + 100 * outside * th
            centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
            dist = np.hypot(*(pts - centre).T)
            if np.any(np.delete(dist, i) < dist[i]):  # the label would sit nearer another point: ambiguous
                cost += 0.5 * tw * th
            if cost < best_cost:
                best, best_cost, best_box = (dx, dy), cost, box
            if cost == 0:
                break
        boxes.append(best_box)
        dx, dy = best
        text = ax.annotate(labels[i], (x[i], y[i]), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                    ha="left" if dx > 0 else "right" if dx < 0 else "center",
                    va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                    fontweight="bold" if i in front else "normal", zorder=4,
                    arrowprops={"arrowstyle": "-", "color": "#777777", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4}
                    if max(abs(dx), abs(dy)) > 10 else None)
        text.set_in_layout(False)


def plain_log_axis(ax: Axes) -> None:
    """Log x axis labelled with plain numbers (1, 2, 3, 5 x 10^k)."""
    fmt = FuncFormatter(lambda v, _: f"{v:g}" if v > 0 and f"{v:e}"[0] in "1235" else "")
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(fmt)
