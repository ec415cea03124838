"""An inline SVG plot of a control's outage windows: a time axis with one red bar per window, labelled by duration.

Only outage bars are drawn as ``<rect>``; the axis and ticks are lines, so the number of rectangles in the plot is
the number of outage windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from kubeha.core.model import ProbeSpan, format_number
from kubeha.core.outage import OutageWindow

__all__ = ["render_outage_svg"]

WIDTH_PX = 720
HEIGHT_PX = 110
LEFT_PX = 40
RIGHT_PX = 30
LABEL_Y_PX = 18
BAR_Y_PX = 24
BAR_HEIGHT_PX = 36
AXIS_Y_PX = 72
TICK_PX = 5
TICK_LABEL_Y_PX = 92
MIN_BAR_PX = 2.0
MAX_TICKS = 8
TICK_STEPS = (1.0, 2.0, 5.0)
# Without a probe span, show this fraction of the windows' extent (at least MIN_PAD_S) on either side.
PAD_FRACTION = 0.1
MIN_PAD_S = 1.0
MIN_RANGE_S = 1.0
BAR_COLOUR = "#c62828"


def _range(windows: Sequence[OutageWindow], span: ProbeSpan | None) -> tuple[float, float]:
    first = min(window.start for window in windows)
    last = max(window.end for window in windows)
    if span is not None:
        origin, end = min(span.start, first), max(span.end, last)
    else:
        pad = max((last - first) * PAD_FRACTION, MIN_PAD_S)
        origin, end = first - pad, last + pad
    return origin, max(end, origin + MIN_RANGE_S)


def _tick_step(extent: float) -> float:
    raw = extent / MAX_TICKS
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next((step * magnitude for step in TICK_STEPS if step * magnitude >= raw), 10 * magnitude)


def _px(value: float) -> str:
    return f"{value:.1f}"


def render_outage_svg(windows: Sequence[OutageWindow], span: ProbeSpan | None = None) -> str:
    """SVG markup for `windows`; time is shown in seconds from the start of `span` (or just before the first window)."""
    if not windows:
        raise ValueError("render_outage_svg needs at least one outage window: render no plot for a clean control")
    origin, end = _range(windows, span)
    plot_width = WIDTH_PX - LEFT_PX - RIGHT_PX
    scale = plot_width / (end - origin)

    def x_of(t: float) -> float:
        return LEFT_PX + (t - origin) * scale

    total = math.fsum(window.duration for window in windows)
    label = f"{len(windows)} outage window(s), {format_number(round(total, 2))} s in total"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="outage-plot" width="{WIDTH_PX}" height="{HEIGHT_PX}" '
        f'viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<line class="axis" x1="{LEFT_PX}" y1="{AXIS_Y_PX}" x2="{WIDTH_PX - RIGHT_PX}" y2="{AXIS_Y_PX}" '
        'stroke="#444" stroke-width="1"/>',
    ]
    step = _tick_step(end - origin)
    for index in range(math.floor((end - origin) / step) + 1):
        tick = index * step
        x = _px(x_of(origin + tick))
        parts.append(
            f'<line class="tick" x1="{x}" y1="{AXIS_Y_PX}" x2="{x}" y2="{AXIS_Y_PX + TICK_PX}" stroke="#444"/>'
            f'<text x="{x}" y="{TICK_LABEL_Y_PX}" font-size="10" text-anchor="middle">{format_number(round(tick, 6))} s'
            "</text>"
        )
    for window in windows:
        left = x_of(window.start)
        width = max(x_of(window.end) - left, MIN_BAR_PX)
        duration = f"{window.duration:.2f} s"
        text = f"\u2265{duration} (open)" if window.open else duration
        detail = (
            f"outage from {format_number(round(window.start - origin, 3))} s for {duration}, "
            f"{window.failures} failed probe(s), first error {window.first_error_class or 'unknown'}"
            + (", still failing when probing stopped" if window.open else "")
        )
        dash = ' stroke="#000" stroke-dasharray="3 2"' if window.open else ""
        parts.append(
            f'<rect class="outage" x="{_px(left)}" y="{BAR_Y_PX}" width="{_px(width)}" height="{BAR_HEIGHT_PX}" '
            f'fill="{BAR_COLOUR}"{dash}><title>{escape(detail)}</title></rect>'
            f'<text class="duration" x="{_px(left + width / 2)}" y="{LABEL_Y_PX}" font-size="11" '
            f'text-anchor="middle">{escape(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
