"""The report writers loaded as a pytest plugin: a run writes the JSON record, the HTML report and the JUnit
properties of each control."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from kubeha.core.model import Verdict
from reports.json_timeline import read_document
from reports.pytest_plugin import HTML_REPORT, JSON_RECORD

pytest_plugins = ["pytester"]

CONTROL_TESTS = """
import pytest
from kubeha.core.model import Comparison

@pytest.mark.control("HA-API-01", "API availability", "The API MUST answer 99% of requests")
def test_availability(kubeha_result):
    kubeha_result.event("probe", "200 requests sent")
    kubeha_result.measure("availability", 99.5, "%", budget=99.0, comparison=Comparison.AT_LEAST)
    kubeha_result.evidence("probe", "199 of 200 requests answered")

@pytest.mark.control("HA-API-02", "API latency", "The API MUST answer within 1 s")
def test_latency(kubeha_result):
    kubeha_result.measure("latency_p99", 1.5, "s", budget=1.0)
"""


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(CONTROL_TESTS)
    return pytester.runpytest(
        "-p", "kubeha.plugin", "-p", "reports.pytest_plugin", "-p", "no:cacheprovider", "--strict-markers", *args
    )


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    """Test case name -> its properties."""
    found: dict[str, dict[str, str]] = {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        found[case.attrib["name"]] = {
            prop.attrib["name"]: prop.attrib["value"] for prop in case.iter("property")
        }
    return found


def test_run_writes_json_record_html_report_and_junit_properties(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    reports = pytester.path / "out" / "reports"
    result.stdout.fnmatch_lines([f"report written: {reports / JSON_RECORD}", f"report written: {reports / HTML_REPORT}"])

    properties = junit_properties(pytester.path / "junit.xml")
    assert properties["test_availability"] == {
        "control_id": "HA-API-01",
        "statement": "The API MUST answer 99% of requests",
        "verdict": "passed",
        "reason": "",
        "measure.availability": "99.5 % (budget >= 99)",
        "evidence.probe": "199 of 200 requests answered",
    }
    latency = properties["test_latency"]
    assert (latency["control_id"], latency["verdict"]) == ("HA-API-02", "failed")
    assert latency["measure.latency_p99"] == "1.5 s (budget <= 1)"
    assert latency["reason"].startswith("measurement(s) outside their budget: latency_p99")

    report, timeline = read_document(reports / JSON_RECORD)
    assert [(control.control_id, control.verdict) for control in report.results] == [
        ("HA-API-01", Verdict.PASSED),
        ("HA-API-02", Verdict.FAILED),
    ]
    assert [(event.kind, event.detail) for event in timeline.events()] == [("probe", "200 requests sent")]

    html = (reports / HTML_REPORT).read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert "HA-API-01" in html and "HA-API-02" in html and "The API MUST answer within 1 s" in html


def test_report_directory_option_is_honoured(pytester: pytest.Pytester) -> None:
    run(pytester, "--report-dir", "audit").assert_outcomes(passed=1, failed=1)
    assert sorted(path.name for path in (pytester.path / "audit").iterdir() if path.is_file()) == [
        HTML_REPORT,
        JSON_RECORD,
    ]


def test_nothing_is_written_without_a_result(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = pytester.runpytest("-p", "kubeha.plugin", "-p", "reports.pytest_plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "out").exists()


def test_repository_conftest_loads_the_report_writers(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("kubeha.plugin")
    assert pytestconfig.pluginmanager.has_plugin("reports.pytest_plugin")
