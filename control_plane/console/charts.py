"""Server-rendered SVG charts: axes, labels, and a <title> on every bar for the hover. No
script, so they pass the strict CSP; every text is escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 78, 12, 14, 40  # room for "$0.000005"


@dataclass(frozen=True)
class Series:
    name: str
    css: str  # the bar class: "bar" or "bar err"
    values: Sequence[float]


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 × 10^n at or above ``value`` (an axis maximum people read)."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 <= value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale


def tick_format(top: float, *, prefix: str = "", min_decimals: int = 0) -> str:
    """A format for the axis's ticks (quarters of ``top``) that tells them apart."""
    step = top / 4
    decimals = 0 if step >= 1 else math.ceil(-math.log10(step))
    return prefix + "{:,." + str(max(decimals, min_decimals)) + "f}"


SERIES_CSS = ("bar s1", "bar s2", "bar s3", "bar s4", "bar s5")  # app.css, in this order


def bar_chart(title: str, labels: Sequence[str], series: Sequence[Series], *,
              unit: str = "", prefix: str = "", counts: bool = False, stacked: bool = False,
              testid: str = "chart") -> Markup:
    """Grouped bars (``stacked``: one bar of stacked segments), one group per label, with a
    y axis of four ticks and every second x label (all when there are few). ``counts``:
    whole numbers, so the axis goes to 4 at least and its ticks are whole."""
    def value_at(s: Series, i: int) -> float:
        return s.values[i] if i < len(s.values) else 0.0

    if stacked:
        highest = max((sum(value_at(s, i) for s in series) for i in range(len(labels))),
                      default=0.0)
    else:
        highest = max((v for s in series for v in s.values), default=0.0)
    top = nice_ceiling(highest)
    if counts:
        top = max(4.0, math.ceil(top / 4) * 4)
    fmt = tick_format(top, prefix=prefix, min_decimals=0 if counts else 2)
    bar_fmt = "{:,.0f}" if counts else prefix + "{:,.6f}"
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group = plot_w / max(len(labels), 1)
    bar_w = max(group * 0.8 / (1 if stacked else max(len(series), 1)), 1.0)
    parts = [f'<svg class="svgchart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(title)}" data-testid="{escape(testid)}">',
             f"<title>{escape(title)}</title>"]
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{escape(fmt.format(value))}{escape(unit)}</text>")
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" '
                 f'y2="{TOP + plot_h}"/>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" '
                 f'y2="{TOP + plot_h}"/>')
    every = 1 if len(labels) <= 10 else 2
    for i, label in enumerate(labels):
        x0 = LEFT + group * i + group * 0.1
        base = 0.0  # the height of the segments below, when stacked
        for j, s in enumerate(series):
            value = value_at(s, i)
            h = plot_h * value / top
            x = x0 if stacked else x0 + bar_w * j
            y = TOP + plot_h - h - base
            if stacked:
                base += h
            parts.append(f'<rect class="{escape(s.css)}" x="{x:.1f}" y="{y:.1f}" '
                         f'width="{bar_w:.1f}" height="{h:.1f}"><title>{escape(label)}: '
                         f"{escape(s.name)} {escape(bar_fmt.format(value))}{escape(unit)}"
                         "</title></rect>")
        if i % every == 0:
            parts.append(f'<text x="{LEFT + group * (i + 0.5):.1f}" y="{TOP + plot_h + 16}" '
                         f'text-anchor="middle">{escape(label)}</text>')
    legend_x = LEFT
    for s in series:
        parts.append(f'<rect class="{escape(s.css)}" x="{legend_x}" y="{HEIGHT - 14}" '
                     'width="10" height="10"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{HEIGHT - 5}">{escape(s.name)}</text>')
        legend_x += 24 + 7 * len(s.name)
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above


def cap_meter(spent: float, cap: float) -> Markup:
    """A bar of spend against the cap; red (``over``) at 100 % and above."""
    ratio = spent / cap if cap > 0 else (1.0 if spent > 0 else 0.0)
    over = ratio >= 1.0
    pct = min(ratio, 1.0) * 100
    label = f"{ratio * 100:.0f} % of the monthly cap"
    return Markup(  # noqa: S704 - numbers only
        f'<svg class="capmeter{" over" if over else ""}" viewBox="0 0 100 6" '
        f'preserveAspectRatio="none" role="img" aria-label="{label}" data-testid="cap-meter" '
        f'data-over="{"yes" if over else "no"}"><title>{label}</title>'
        '<rect class="track" x="0" y="0" width="100" height="6"/>'
        f'<rect class="fill" x="0" y="0" width="{pct:.1f}" height="6"/></svg>')
