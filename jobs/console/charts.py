"""A record's score history as a small inline SVG: one line per tag, a point per change the connector applied.

Built as data (points and labels) for the template, which escapes every text; no script, no library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jobs.scoring.changes import Op
from jobs.scoring.history import HistoryEntry

WIDTH, HEIGHT, PAD = 640, 180, 28
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Line:
    tag: str
    colour: str
    points: str  # the polyline's "x,y x,y ..."
    last: int


@dataclass(frozen=True)
class Chart:
    lines: list[Line]
    low: int
    high: int
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD


def scores_over_time(history: Sequence[HistoryEntry]) -> dict[str, list[tuple[float, int]]]:
    """Each tag's score after each change: the score the platform reported where known, else the connector's
    running view (a removal is 0, a tag without a score stays where it was)."""
    series: dict[str, list[tuple[float, int]]] = {}
    current: dict[str, int] = {}
    for entry in history:
        c = entry.change
        tag = c.tag
        if c.after is not None:
            score = c.after
        elif c.op is Op.ADD and c.delta is not None:
            score = current.get(tag, c.before or 0) + c.delta
        elif c.op is Op.UNTAG:
            score = 0
        else:
            score = current.get(tag, 0)
        current[tag] = score
        series.setdefault(tag, []).append((entry.at, score))
    return series


def score_chart(history: Sequence[HistoryEntry]) -> Chart | None:
    series = scores_over_time(history)
    if not series:
        return None
    times = [t for points in series.values() for t, _ in points]
    values = [v for points in series.values() for _, v in points]
    first, last = min(times), max(times)
    low, high = min(0, *values), max(1, *values)

    def x(t: float) -> float:
        return PAD + (WIDTH - 2 * PAD) * ((t - first) / (last - first) if last > first else 0.5)

    def y(v: int) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (v - low) / (high - low)

    lines = []
    for n, (tag, points) in enumerate(sorted(series.items())):
        # A step line: a score holds until the next change.
        coords: list[str] = []
        for i, (t, v) in enumerate(points):
            if i:
                coords.append(f"{x(t):.1f},{y(points[i - 1][1]):.1f}")
            coords.append(f"{x(t):.1f},{y(v):.1f}")
        lines.append(Line(tag, COLOURS[n % len(COLOURS)], " ".join(coords), points[-1][1]))
    return Chart(lines, low, high)
