"""A self-contained HTML audit report of a run: no JavaScript, no external assets, every text escaped."""

from __future__ import annotations

import datetime
from html import escape
from pathlib import Path

from kubeha.core.model import ControlResult, Measurement, RunReport, Verdict, format_number
from reports.outage_svg import render_outage_svg

__all__ = ["render_html", "write_html"]

TITLE = "kubeha HA audit report"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
.verdict-passed { color: #1b5e20; } .verdict-failed, .verdict-error { color: #b71c1c; }
.verdict-not_run, .verdict-skipped { color: #8d6e00; }
section.control { border-top: 2px solid #999; margin-top: 2em; }
.statement { font-style: italic; } .over-budget { background: #ffebee; }
pre { background: #f5f5f5; padding: 0.5em; white-space: pre-wrap; overflow-wrap: anywhere; }
"""


def _e(text: str) -> str:
    return escape(text, quote=True)


def _when(wall: float) -> str:
    """ISO 8601 UTC time, or the raw epoch seconds when the value is outside the calendar's range."""
    try:
        return datetime.datetime.fromtimestamp(wall, tz=datetime.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{format_number(wall)} s since the epoch"


def _verdict(verdict: Verdict) -> str:
    return f'<span class="verdict verdict-{_e(verdict.value)}">{_e(verdict.value.upper())}</span>'


def _anchor(index: int) -> str:
    return f"result-{index}"


def _header(report: RunReport) -> str:
    summary = report.summary()
    rows = (
        ("API URL", report.cluster.api_url),
        ("Cluster UID", report.cluster.cluster_uid),
        ("Kubernetes version", report.cluster.kubernetes_version),
        ("Profile", report.profile.value),
        ("Started", _when(report.started_wall)),
        ("Finished", _when(report.finished_wall)),
        ("Duration", f"{format_number(round(report.finished_wall - report.started_wall, 1))} s"),
    )
    table = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in rows)
    return (
        f"<header><h1>{_e(TITLE)}</h1>"
        f'<p class="overall">Overall verdict: {_verdict(summary.verdict)}</p>'
        f'<table class="identity">{table}</table></header>'
    )


def _summary(report: RunReport) -> str:
    summary = report.summary()
    counts = "".join(
        f'<tr class="verdict-{_e(verdict.value)}"><td>{_verdict(verdict)}</td><td>{count}</td></tr>'
        for verdict, count in summary.counts
    )
    reasons = "".join(f"<li>{_e(reason)}</li>" for reason in summary.reasons)
    controls = "".join(
        f'<tr><td><a href="#{_anchor(index)}">{_e(result.control_id)}</a></td><td>{_e(result.title)}</td>'
        f"<td>{_verdict(result.verdict)}</td><td>{_e(result.reason)}</td></tr>"
        for index, result in enumerate(report.results)
    )
    return (
        '<section id="summary"><h2>Summary</h2>'
        '<table class="summary"><thead><tr><th>Verdict</th><th>Controls</th></tr></thead>'
        f"<tbody>{counts}</tbody><tfoot><tr><th>Total</th><th>{summary.total}</th></tr></tfoot></table>"
        + (f'<ul class="reasons">{reasons}</ul>' if reasons else "")
        + '<table class="controls"><thead><tr><th>Control</th><th>Title</th><th>Verdict</th><th>Reason</th></tr>'
        f"</thead><tbody>{controls}</tbody></table></section>"
    )


def _budget_state(measurement: Measurement) -> tuple[str, str]:
    """CSS class of the measurement's row and the words shown for it."""
    within = measurement.within_budget
    if within is None:
        return "", "no budget"
    return ("", "within budget") if within else ("over-budget", "over budget")


def _measurements(result: ControlResult) -> str:
    if not result.measurements:
        return ""
    rows = []
    for m in result.measurements:
        css, state = _budget_state(m)
        budget = "" if m.budget is None else f"{m.comparison.value} {format_number(m.budget)} {m.unit}".rstrip()
        row_class = f' class="{css}"' if css else ""
        rows.append(
            f"<tr{row_class}><td>{_e(m.name)}</td><td>{_e(format_number(m.value))} {_e(m.unit)}</td>"
            f"<td>{_e(budget)}</td><td>{_e(state)}</td></tr>"
        )
    return (
        '<table class="measurements"><thead><tr><th>Measurement</th><th>Value</th><th>Budget</th><th>Result</th>'
        f'</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _plot(result: ControlResult) -> str:
    if not result.windows:
        return ""
    origin = "probing started" if result.probe_span is not None else "just before the first outage"
    caption = f"Outage windows of {result.control_id}, in seconds since {origin}."
    return (
        f'<figure class="outage">{render_outage_svg(result.windows, result.probe_span)}'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _evidence(result: ControlResult) -> str:
    if not result.evidence:
        return ""
    items = "".join(f"<h4>{_e(item.label)}</h4><pre>{_e(item.text)}</pre>" for item in result.evidence)
    return f'<div class="evidence"><h3>Evidence</h3>{items}</div>'


def _control(index: int, result: ControlResult) -> str:
    tags = f'<p class="tags">Tags: {_e(", ".join(result.tags))}</p>' if result.tags else ""
    return (
        f'<section class="control verdict-{_e(result.verdict.value)}" id="{_anchor(index)}">'
        f"<h2>{_e(result.control_id)}: {_e(result.title)}</h2>"
        f'<p class="statement">{_e(result.statement)}</p>'
        f"<p>Verdict: {_verdict(result.verdict)}</p>"
        f'<p class="reason">{_e(result.reason)}</p>'
        f'<p class="timing">Started {_e(_when(result.started_wall))}, '
        f"took {_e(format_number(round(result.duration_s, 2)))} s</p>"
        f"{tags}{_measurements(result)}{_plot(result)}{_evidence(result)}</section>"
    )


def render_html(report: RunReport) -> str:
    controls = "".join(_control(index, result) for index, result in enumerate(report.results))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(TITLE)}: {_e(report.cluster.api_url)}</title><style>{STYLE}</style></head>"
        f"<body>{_header(report)}{_summary(report)}{controls}</body></html>\n"
    )


def write_html(path: Path, report: RunReport) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(render_html(report), encoding="utf-8")
    partial.replace(path)
