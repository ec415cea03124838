"""The outage plot: one bar per window, placed and sized on the time axis."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeha.core.model import ProbeSpan
from kubeha.core.outage import OutageWindow
from reports.outage_svg import LEFT_PX, MIN_BAR_PX, RIGHT_PX, WIDTH_PX, render_outage_svg


class Shapes(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rects: list[dict[str, str]] = []
        self.texts: list[str] = []
        self._in_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "rect":
            self.rects.append({name: value or "" for name, value in attrs})
        self._in_text = tag == "text"

    def handle_endtag(self, tag: str) -> None:
        self._in_text = False

    def handle_data(self, data: str) -> None:
        if self._in_text:
            self.texts.append(data)


def shapes(windows: list[OutageWindow], span: ProbeSpan | None = None) -> Shapes:
    parser = Shapes()
    parser.feed(render_outage_svg(windows, span))
    return parser


def test_bars_are_placed_on_the_span() -> None:
    parsed = shapes([OutageWindow(10.0, 20.0, 5), OutageWindow(30.0, 35.0, 2)], ProbeSpan(0.0, 50.0))
    plot = WIDTH_PX - LEFT_PX - RIGHT_PX
    xs = [float(r["x"]) for r in parsed.rects]
    widths = [float(r["width"]) for r in parsed.rects]
    assert xs == pytest.approx([LEFT_PX + plot * 0.2, LEFT_PX + plot * 0.6], abs=0.1)
    assert widths == pytest.approx([plot * 0.2, plot * 0.1], abs=0.1)
    assert "10.00 s" in parsed.texts and "5.00 s" in parsed.texts
    assert "0 s" in parsed.texts and "50 s" in parsed.texts


def test_empty_window_list_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one outage window"):
        render_outage_svg([])


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=1e5, allow_nan=False),
            st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_one_visible_bar_per_window_inside_the_plot(pairs: list[tuple[float, float]]) -> None:
    windows = [OutageWindow(start, start + length, 1) for start, length in sorted(pairs)]
    parsed = shapes(windows)
    assert len(parsed.rects) == len(windows)
    for rect in parsed.rects:
        x, width = float(rect["x"]), float(rect["width"])
        assert width >= MIN_BAR_PX
        assert LEFT_PX - 0.1 <= x and x + width <= WIDTH_PX - RIGHT_PX + MIN_BAR_PX + 0.1
