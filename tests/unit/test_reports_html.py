"""The HTML audit report, checked by parsing it: structure, escaping, self-containment and outage plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from kubeha.core.model import (
    ClusterIdentity,
    ControlResult,
    Evidence,
    Measurement,
    ProbeSpan,
    Profile,
    RunReport,
    Verdict,
)
from kubeha.core.outage import OutageWindow
from reports.html import render_html, write_html

HOSTILE = '<script>alert("x")</script> & "quotes"'
VOID = {"meta", "br", "hr", "img", "input", "link", "line"}


@dataclass
class Section:
    attrs: dict[str, str]
    rects: int = 0
    rect_fills: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


class Audit(HTMLParser):
    """Collects what the tests inspect and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.sections: list[Section] = []
        self.unbalanced: list[str] = []
        self._section_depth: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.tags.append((tag, values))
        if tag == "section" and "control" in values.get("class", "").split():
            self.sections.append(Section(values))
            self._section_depth = len(self.stack)
        if tag == "rect" and self._section_depth is not None:
            self.sections[-1].rects += 1
            self.sections[-1].rect_fills.append(values.get("fill", ""))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.unbalanced.append(tag)
            return
        self.stack.pop()
        if tag == "section" and self._section_depth == len(self.stack):
            self._section_depth = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._section_depth is not None:
            self.sections[-1].text.append(data)


def sample_report() -> RunReport:
    def control(control_id: str, verdict: Verdict, reason: str, **extra: object) -> ControlResult:
        return ControlResult(
            control_id=control_id,
            title=f"{control_id} title",
            statement=f"{control_id}: the cluster MUST keep serving.",
            verdict=verdict,
            reason=reason,
            started_wall=1_700_000_000.0,
            duration_s=42.0,
            **extra,  # type: ignore[arg-type]
        )

    return RunReport(
        cluster=ClusterIdentity("https://10.0.0.100:6443", "uid-1234", "v1.31.2"),
        started_wall=1_700_000_000.0,
        finished_wall=1_700_000_600.0,
        profile=Profile.CERTIFICATION,
        results=(
            control(
                "HA-API-001",
                Verdict.FAILED,
                HOSTILE,
                measurements=(
                    Measurement("api_longest_outage", 7.31, "s", 5.0),
                    Measurement("api_availability", 0.97, "", None),
                ),
                evidence=(Evidence("probe log", "GET /readyz -> 503\n<b>not bold</b>"),),
                windows=(OutageWindow(110.0, 117.31, 40, "timeout"), OutageWindow(130.0, 131.0, 6, "http_503")),
                probe_span=ProbeSpan(100.0, 160.0),
                tags=("api", "control-plane"),
            ),
            control(
                "HA-ETCD-002",
                Verdict.PASSED,
                "quorum kept",
                measurements=(Measurement("write_gap", 1.2, "s", 5.0),),
                windows=(OutageWindow(5.0, 6.2, 3, "timeout"),),
            ),
            control("HA-LB-003", Verdict.NOT_RUN, "the attach provider cannot stop the load balancer"),
            control(
                "HA-ING-004",
                Verdict.FAILED,
                "ingress never recovered",
                windows=(OutageWindow(50.0, 59.0, 9, "connect", open=True),),
            ),
        ),
    )


def audit(report: RunReport) -> tuple[str, Audit]:
    html = render_html(report)
    parser = Audit()
    parser.feed(html)
    parser.close()
    return html, parser


def test_document_is_well_formed() -> None:
    html, parser = audit(sample_report())
    assert html.startswith("<!DOCTYPE html>")
    assert parser.unbalanced == []
    assert parser.stack == []


def test_hostile_text_is_escaped() -> None:
    html, parser = audit(sample_report())
    assert "script" not in {tag for tag, _ in parser.tags}
    assert "b" not in {tag for tag, _ in parser.tags}
    joined = "".join(parser.text)
    assert HOSTILE in joined
    assert "<b>not bold</b>" in joined
    assert "&lt;script&gt;" in html


def test_self_contained_without_javascript() -> None:
    _, parser = audit(sample_report())
    for tag, attrs in parser.tags:
        assert tag not in {"script", "link", "iframe", "img", "object", "embed"}
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert "src" not in attrs
        if "href" in attrs:
            assert attrs["href"].startswith("#result-")


def test_summary_table_counts_by_verdict() -> None:
    _, parser = audit(sample_report())
    rows = [attrs.get("class", "") for tag, attrs in parser.tags if tag == "tr"]
    verdict_rows = [css for css in rows if css.startswith("verdict-")]
    assert verdict_rows == [f"verdict-{v.value}" for v in Verdict]
    text = "".join(parser.text)
    assert "Overall verdict: FAILED" in text
    assert "HA-LB-003 not_run: the attach provider cannot stop the load balancer" in text
    assert "certification requires every control to run" in text


def test_one_section_per_control_with_statement_and_verdict() -> None:
    report = sample_report()
    _, parser = audit(report)
    assert [s.attrs["id"] for s in parser.sections] == [f"result-{i}" for i in range(len(report.results))]
    for section, result in zip(parser.sections, report.results):
        text = "".join(section.text)
        assert f"verdict-{result.verdict.value}" in section.attrs["class"]
        assert result.statement in text
        assert result.reason in text
        assert result.verdict.value.upper() in text


def test_svg_bars_match_outage_windows() -> None:
    report = sample_report()
    _, parser = audit(report)
    for section, result in zip(parser.sections, report.results):
        assert section.rects == len(result.windows), result.control_id
        assert all(fill == "#c62828" for fill in section.rect_fills)
    assert sum(1 for tag, _ in parser.tags if tag == "svg") == sum(1 for r in report.results if r.windows)


def test_measurements_against_budgets() -> None:
    _, parser = audit(sample_report())
    first = "".join(parser.sections[0].text)
    assert "over budget" in first and "no budget" in first
    assert "<= 5 s" in first
    assert "within budget" in "".join(parser.sections[1].text)
    over = [attrs for tag, attrs in parser.tags if tag == "tr" and attrs.get("class") == "over-budget"]
    assert len(over) == 1


def test_outage_labels_show_durations() -> None:
    _, parser = audit(sample_report())
    assert "7.31 s" in "".join(parser.sections[0].text)
    assert "\u22659.00 s (open)" in "".join(parser.sections[3].text)


def test_write_html(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_html(target, sample_report())
    assert target.read_text(encoding="utf-8") == render_html(sample_report())
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
