"""Client traffic through the load balancer while a fault runs: reads (`ApiProbe`) and writes (`WriteRecorder`).

``with Traffic(endpoint, namespace) as traffic: ...`` probes the API at 10 Hz on a new connection per attempt and
writes ConfigMaps into `namespace` at 5 Hz, from background threads, until the block ends. `Traffic.judge` turns the
samples into `Recovery` figures against a budget, measured from the instant the fault began, and records them (with
the outage windows) in the control's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from kubeha.core.model import Comparison
from kubeha.plugin import ResultRecorder
from kubeha.probes.api import ApiProbe
from kubeha.probes.credentials import ApiEndpoint
from kubeha.probes.writes import ConfigMapStore, WriteRecorder, WriteReport, WriteVerification
from suites.ha._support.impact import Recovery, recovery_of

__all__ = ["Traffic", "TrafficVerdict"]

READS = "API reads through the load balancer"
WRITES = "API writes through the load balancer"


@dataclass(frozen=True)
class TrafficVerdict:
    reads: Recovery
    writes: Recovery
    write_report: WriteReport
    budget_s: float

    @property
    def ok(self) -> bool:
        return self.reads.within(self.budget_s) and self.writes.within(self.budget_s)

    def message(self, fault: str) -> str:
        """One line per subject; the worse one first."""
        lines = [self.reads.message(self.budget_s, fault), self.writes.message(self.budget_s, fault)]
        if self.reads.within(self.budget_s) and not self.writes.within(self.budget_s):
            lines.reverse()
        return "\n".join(lines)


class Traffic:
    """Reads and writes through `endpoint` (the load balancer); writes go to ConfigMaps in `namespace`."""

    def __init__(self, endpoint: ApiEndpoint, namespace: str, *, test_id: str | None = None) -> None:
        self.endpoint = endpoint
        self.store = ConfigMapStore(endpoint, namespace)
        self.probe = ApiProbe(endpoint, test_id=test_id)
        self.writes = WriteRecorder(self.store, test_id=test_id)

    def __enter__(self) -> Traffic:
        self.probe.start()
        try:
            self.writes.start()
        except BaseException:
            self.probe.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop reading and writing (again: a no-op); the samples stay available."""
        try:
            self.writes.stop()
        finally:
            self.probe.stop()

    def judge(self, fault_t: float, budget_s: float) -> TrafficVerdict:
        return TrafficVerdict(
            reads=recovery_of(self.probe.samples(), fault_t, subject=READS),
            writes=recovery_of(self.writes.samples(), fault_t, subject=WRITES),
            write_report=self.writes.report(),
            budget_s=budget_s,
        )

    def record(self, result: ResultRecorder, verdict: TrafficVerdict, *, prefix: str = "") -> None:
        """Measurements and outage windows of `verdict` into the control's result."""
        probe = self.probe.result()
        reads, writes, report = verdict.reads, verdict.writes, verdict.write_report
        result.measure(f"{prefix}api_recovery_s", reads.recovery_s, "s", budget=verdict.budget_s)
        result.measure(f"{prefix}api_longest_outage_s", reads.stats.longest_outage_s, "s", budget=verdict.budget_s)
        result.measure(f"{prefix}api_failed_probes", reads.stats.failures, "probes")
        result.measure(f"{prefix}api_probes", reads.stats.count, "probes")
        result.measure(f"{prefix}write_recovery_s", writes.recovery_s, "s", budget=verdict.budget_s)
        result.measure(f"{prefix}writes_acknowledged", report.ok, "writes")
        result.measure(f"{prefix}writes_failed", report.failed, "writes")
        result.measure(f"{prefix}writes_unknown", report.unknown, "writes")
        result.windows(probe.main.windows)
        result.probe_span(probe.main.stats.first_t, probe.main.stats.last_t)
        examples = "\n".join(f"{error}: {detail}" for error, detail in probe.main.error_examples)
        result.evidence(
            "probe summary",
            f"{reads.counts()}\n{report.summary()}" + (f"\nfirst error of each class:\n{examples}" if examples else ""),
        )

    def verify_writes(self, result: ResultRecorder) -> WriteVerification:
        """Read every write back (after the traffic stopped) and record the lost-write count against budget 0."""
        verification = self.writes.verify()
        result.measure("writes_lost", len(verification.violations), "writes", budget=0, comparison=Comparison.AT_MOST)
        result.evidence("write verification", verification.summary())
        return verification

    def cleanup(self) -> None:
        self.writes.cleanup()
