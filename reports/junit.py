"""A control's result as JUnit ``<property>`` name/value pairs, so CI systems keep the evidence with the test case."""

from __future__ import annotations

from kubeha.core.model import ControlResult

__all__ = ["MEASURE_PREFIX", "EVIDENCE_PREFIX", "junit_properties"]

MEASURE_PREFIX = "measure."
EVIDENCE_PREFIX = "evidence."


def junit_properties(result: ControlResult) -> list[tuple[str, str]]:
    """Name/value pairs in a stable order: identity, verdict, measurements, then evidence."""
    properties = [
        ("control_id", result.control_id),
        ("statement", result.statement),
        ("verdict", result.verdict.value),
        ("reason", result.reason),
    ]
    properties.extend((f"{MEASURE_PREFIX}{m.name}", m.describe()) for m in result.measurements)
    properties.extend((f"{EVIDENCE_PREFIX}{e.label}", e.text) for e in result.evidence)
    return properties
