"""The report writers as a pytest plugin: each control's result as JUnit ``<property>`` elements, and each run's JSON
record and HTML audit report.

Load it next to the kubeha plugin, which declares the hooks it implements (`kubeha.hooks`); like the rest of reports/,
it imports nothing but kubeha.core and the standard library:
``pytest_plugins = ["kubeha.plugin", "reports.pytest_plugin"]``, or ``-p kubeha.plugin -p reports.pytest_plugin``.
The JSON record and the HTML report are written into the report directory (``--report-dir``, default
``out/reports``) under fixed names, so that they always show the latest run; each run's raw material stays in its
own directory under ``runs/``.
"""

from __future__ import annotations

from pathlib import Path

from kubeha.core.model import ControlResult, RunReport
from kubeha.core.timeline import Timeline
from reports.html import write_html
from reports.json_timeline import write_document
from reports.junit import junit_properties

__all__ = ["HTML_REPORT", "JSON_RECORD", "pytest_kubeha_junit_properties", "pytest_kubeha_write_reports"]

JSON_RECORD = "kubeha-run.json"
HTML_REPORT = "kubeha-report.html"


def pytest_kubeha_junit_properties(result: ControlResult) -> list[tuple[str, str]]:
    """Identity, verdict, measurements and evidence of the control, in `reports.junit.junit_properties`' order."""
    return junit_properties(result)


def pytest_kubeha_write_reports(report: RunReport, timeline: Timeline, directory: Path) -> list[Path]:
    """The run's JSON record (`reports.json_timeline`) and HTML audit report (`reports.html`), both written
    atomically into `directory`. (The hook's ``config`` argument is not taken: pluggy passes only the arguments an
    implementation names, and this module stays free of pytest, as every module of reports/ imports kubeha.core
    only.)"""
    record = directory / JSON_RECORD
    html = directory / HTML_REPORT
    write_document(record, report, timeline)
    write_html(html, report)
    return [record, html]
