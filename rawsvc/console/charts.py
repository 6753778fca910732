"""
The console's charts, drawn by the server as inline SVG (no library, no
script): jobs per minute (done and failed) and the ack latency (p50, p99)
of one L{rawsvc.rates.JobRates.series}.  The elements are
C{twisted.web.template} tags, so every text in them is escaped.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.web.template import Tag

#: The ranges: name -> (minutes, minutes a point).
RANGES = {"hour": (60, 1), "day": (1440, 10)}

WIDTH, HEIGHT = 600, 160
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 10, 22


def _svg(name: str, **attrs: Any) -> Tag:
    return Tag(name, attributes={k.rstrip("_").replace("_", "-"): str(v) for k, v in attrs.items()})


def _nice(top: float) -> float:
    """A round axis maximum at or above C{top}."""
    if top <= 0:
        return 1.0
    step = 10 ** len(str(int(top))) / 10 if top >= 1 else 0.1
    while step < top / 5:
        step *= 2 if str(step)[0] == "1" else 2.5
    nice = step
    while nice < top:
        nice += step
    return nice


def _clock(t: float) -> str:
    return time.strftime("%H:%M", time.localtime(t))


def line_chart(series_id: str, title: str, points: list[dict[str, Any]], lines: list[tuple[str, str, str]],
               unit: str, scale: float = 1.0) -> Tag:
    """
    An C{<svg>} of C{points} (each with C{t} and the keys of C{lines}, a list
    of (key, label, class)), values multiplied by C{scale}; gaps (None) are
    left out.
    """
    n = max(1, len(points) - 1)
    values = [p[key] * scale for p in points for key, _, _ in lines if p.get(key) is not None]
    top = _nice(max(values, default=0.0))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + inner_w * i / n

    def y(v: float) -> float:
        return TOP + inner_h * (1 - v / top)

    svg = _svg("svg", xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {WIDTH} {HEIGHT}", width=WIDTH,
               height=HEIGHT, class_="chart", id=series_id, role="img")
    svg(Tag("title")(title))
    for frac in (0, 0.5, 1):
        gy = y(top * frac)
        svg(_svg("line", x1=LEFT, x2=WIDTH - RIGHT, y1=f"{gy:.1f}", y2=f"{gy:.1f}", class_="grid"))
        svg(_svg("text", x=LEFT - 4, y=f"{gy + 4:.1f}", text_anchor="end", class_="axis")(f"{top * frac:g}"))
    if points:
        for i in (0, len(points) // 2, len(points) - 1):
            anchor = "start" if i == 0 else "end" if i == len(points) - 1 else "middle"
            svg(_svg("text", x=f"{x(i):.1f}", y=HEIGHT - 6, text_anchor=anchor, class_="axis")(_clock(points[i]["t"])))
    for key, label, cls in lines:
        segments: list[list[str]] = [[]]
        for i, p in enumerate(points):
            v = p.get(key)
            if v is None:
                segments.append([])
            else:
                segments[-1].append(f"{x(i):.1f},{y(v * scale):.1f}")
        for seg in segments:
            if len(seg) == 1:  # one point: a dot
                cx, cy = seg[0].split(",")
                svg(_svg("circle", cx=cx, cy=cy, r=2, class_=cls))
            elif seg:
                svg(_svg("polyline", points=" ".join(seg), class_=cls, fill="none"))
    legend = _svg("text", x=LEFT + 4, y=TOP + 10, class_="legend")
    for key, label, cls in lines:
        legend(_svg("tspan", class_=cls)(f"\u25a0 {label}  "))
    legend(f"({unit})")
    svg(legend)
    return svg


def charts(series: dict[str, Any], range_name: str) -> Tag:
    """The two charts of C{series} (one range) in a C{<div>}."""
    points = series["points"]
    totals = series["totals"]
    per = "per minute" if series["bucket_minutes"] == 1 else f"per minute, {series['bucket_minutes']}-minute average"
    p50, p99 = totals["ack_p50"], totals["ack_p99"]
    summary = (f"last {range_name}: {totals['done']} done, {totals['failed']} failed; ack latency "
               + (f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {totals['acked']} jobs"
                  if p50 is not None and p99 is not None else "none recorded"))
    return Tag("div", attributes={"class": "charts", "id": f"charts-{range_name}"})(
        Tag("p", attributes={"class": "chart-summary"})(summary),
        line_chart(f"chart-jobs-{range_name}", f"Jobs {per}, last {range_name}", points,
                   [("done", "done", "done"), ("failed", "failed", "failed")], "jobs/min"),
        line_chart(f"chart-ack-{range_name}", f"Ack latency, last {range_name}", points,
                   [("ack_p50", "p50", "p50"), ("ack_p99", "p99", "p99")], "ms", 1000.0),
    )
