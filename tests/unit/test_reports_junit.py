"""JUnit property pairs for a control result."""

from __future__ import annotations

from kubeha.core.model import Comparison, ControlResult, Evidence, Measurement, Verdict
from reports.junit import junit_properties


def test_properties_in_order() -> None:
    result = ControlResult(
        control_id="HA-API-001",
        title="API survives a control-plane node loss",
        statement="The API MUST answer within 5 s of losing one control-plane node.",
        verdict=Verdict.FAILED,
        reason="longest API outage 7.31 s exceeds budget 5.00 s",
        started_wall=1_700_000_000.0,
        duration_s=61.0,
        measurements=(
            Measurement("api_longest_outage", 7.31, "s", 5.0),
            Measurement("api_availability", 0.97, "", 0.99, Comparison.AT_LEAST),
            Measurement("probes", 610.0, "requests"),
        ),
        evidence=(Evidence("stopped node", "kind-control-plane2"),),
    )
    assert junit_properties(result) == [
        ("control_id", "HA-API-001"),
        ("statement", "The API MUST answer within 5 s of losing one control-plane node."),
        ("verdict", "failed"),
        ("reason", "longest API outage 7.31 s exceeds budget 5.00 s"),
        ("measure.api_longest_outage", "7.31 s (budget <= 5)"),
        ("measure.api_availability", "0.97 (budget >= 0.99)"),
        ("measure.probes", "610 requests"),
        ("evidence.stopped node", "kind-control-plane2"),
    ]


def test_minimal_result() -> None:
    result = ControlResult(
        control_id="HA-X",
        title="t",
        statement="s",
        verdict=Verdict.PASSED,
        reason="",
        started_wall=0.0,
        duration_s=0.0,
    )
    assert [name for name, _ in junit_properties(result)] == ["control_id", "statement", "verdict", "reason"]
