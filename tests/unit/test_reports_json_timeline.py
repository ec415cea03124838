"""The JSON run record: round trip through a file, schema checks and the derived summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeha.core.jsonfields import JsonFormatError
from kubeha.core.model import ClusterIdentity, ControlResult, Measurement, ProbeSpan, Profile, RunReport, Verdict
from kubeha.core.outage import OutageWindow
from kubeha.core.timeline import Timeline, TimelineEvent
from reports.json_timeline import (
    DOCUMENT_KIND,
    SCHEMA_VERSION,
    dumps,
    loads,
    read_document,
    to_document,
    write_document,
)


def sample() -> tuple[RunReport, Timeline]:
    report = RunReport(
        cluster=ClusterIdentity("https://lb:6443", "uid-1", "v1.31.2"),
        started_wall=1_700_000_000.0,
        finished_wall=1_700_000_300.5,
        profile=Profile.CERTIFICATION,
        results=(
            ControlResult(
                control_id="HA-API-001",
                title="API survives a control-plane node loss",
                statement="The API MUST answer within 5 s of losing one control-plane node.",
                verdict=Verdict.FAILED,
                reason="longest API outage 7.31 s exceeds budget 5.00 s",
                started_wall=1_700_000_010.0,
                duration_s=60.25,
                measurements=(Measurement("api_longest_outage", 7.31, "s", 5.0),),
                windows=(OutageWindow(110.0, 117.31, 40, "timeout"),),
                probe_span=ProbeSpan(100.0, 160.0),
                tags=("api",),
            ),
            ControlResult(
                control_id="HA-LB-002",
                title="LB",
                statement="s",
                verdict=Verdict.SKIPPED,
                reason="no load balancer access",
                started_wall=1_700_000_100.0,
                duration_s=0.0,
            ),
        ),
    )
    timeline = Timeline(
        [
            TimelineEvent(117.31, 1_700_000_027.31, "probe.api", "recovered", "first 200 after outage", "t1"),
            TimelineEvent(110.0, 1_700_000_020.0, "fault", "node.stop", "stopped cp1 (é)", "t1"),
        ]
    )
    return report, timeline


def test_file_round_trip(tmp_path: Path) -> None:
    report, timeline = sample()
    path = tmp_path / "run.json"
    write_document(path, report, timeline)
    read_report, read_timeline = read_document(path)
    assert read_report == report
    assert read_timeline.events() == timeline.events()
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_document_header_and_summary() -> None:
    report, timeline = sample()
    document = json.loads(dumps(report, timeline))
    assert document["kind"] == DOCUMENT_KIND
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["summary"]["verdict"] == "failed"
    assert document["summary"]["counts"]["skipped"] == 1
    assert [e["t_mono"] for e in document["timeline"]] == [110.0, 117.31]
    assert document == to_document(report, timeline)


def test_other_schema_version_is_refused() -> None:
    report, timeline = sample()
    document = to_document(report, timeline)
    document["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(JsonFormatError, match="schema_version is 2.*release that wrote it"):
        loads(json.dumps(document))


def test_other_document_kind_is_refused() -> None:
    with pytest.raises(JsonFormatError, match="not a kubeha run record"):
        loads(json.dumps({"kind": "something-else", "schema_version": 1}))


def test_damaged_json_is_reported() -> None:
    report, timeline = sample()
    with pytest.raises(JsonFormatError, match="not valid JSON"):
        loads(dumps(report, timeline)[:-20])


def test_damaged_timeline_entry_names_its_index() -> None:
    report, timeline = sample()
    document = to_document(report, timeline)
    events = document["timeline"]
    assert isinstance(events, list)
    events[1] = {"t_mono": 1.0}
    with pytest.raises(JsonFormatError, match=r"document\.timeline\[1\] has no field 't_wall'"):
        loads(json.dumps(document))
