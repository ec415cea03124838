"""Figures of a probe series around a fault, and the checks against their budgets.

Every check returns the message of what broke and by how much (None when within budget); the test records every
figure in its result first, then fails with all broken checks at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kubeha.core.outage import ProbeStats, Sample
from kubeha.plugin import ResultRecorder
from kubeha.core.model import Comparison

__all__ = ["FaultFigures", "fault_figures", "record_fault_figures", "require"]


@dataclass(frozen=True)
class FaultFigures:
    """What a probe saw from `start` (fault injected) to `end` (fault undone)."""

    subject: str
    stats: ProbeStats
    recovery_s: float  # from start to the end of the last failed attempt (0: nothing failed)
    streak_s: float  # failure-free time at the end, before the fault was undone
    detection_attempts: int  # attempts in the detection window (start .. start + detection_s)
    detection_failures: int

    @property
    def detection_failure_share(self) -> float:
        return self.detection_failures / self.detection_attempts if self.detection_attempts else 0.0

    def error_summary(self) -> str:
        return ", ".join(f"{name} x{count}" for name, count in self.stats.error_counts) or "none"


def fault_figures(subject: str, samples: Sequence[Sample], start: float, end: float,
                  detection_s: float) -> FaultFigures:
    during = [s for s in samples if start <= s.t_mono <= end]
    if not during:
        raise AssertionError(f"{subject}: the probe recorded no attempt while the fault was in place "
                             f"({end - start:.1f} s): it proves nothing; check the probe pod's node and logs")
    stats = ProbeStats.from_samples(during)
    failed = [s for s in during if not s.ok]
    last_failure_end = max((s.t_mono + s.latency_s for s in failed), default=start)
    window = [s for s in during if s.t_mono <= start + detection_s]
    return FaultFigures(
        subject=subject,
        stats=stats,
        recovery_s=max(last_failure_end - start, 0.0),
        streak_s=max(end - last_failure_end, 0.0),
        detection_attempts=len(window),
        detection_failures=sum(1 for s in window if not s.ok),
    )


def record_fault_figures(result: ResultRecorder, prefix: str, figures: FaultFigures, *,
                         outage_budgeted: bool = False) -> None:
    """The figures every fault control reports. Budgets are recorded by the caller's `require`; with
    `outage_budgeted` the caller records the longest outage itself, against its budget."""
    result.measure(f"{prefix} attempts during fault", figures.stats.count, "attempts")
    result.measure(f"{prefix} failed attempts during fault", figures.stats.failures, "attempts")
    result.measure(f"{prefix} availability during fault", round(figures.stats.availability, 4), "ratio")
    if not outage_budgeted:
        result.measure(f"{prefix} longest outage", round(figures.stats.longest_outage_s, 3), "s")
    if figures.stats.latency_p99_s is not None:
        result.measure(f"{prefix} p99 latency during fault", round(figures.stats.latency_p99_s, 3), "s")
    result.windows(figures.stats.windows)
    result.evidence(f"{prefix} errors", figures.error_summary())


def require(result: ResultRecorder, name: str, value: float, unit: str, budget: float, *, at_least: bool = False,
            broken: str) -> str | None:
    """Record `value` against `budget`; the message `broken` (formatted with value and budget) if it is outside."""
    measurement = result.measure(name, round(value, 4), unit, budget=round(budget, 4),
                                 comparison=Comparison.AT_LEAST if at_least else Comparison.AT_MOST)
    if measurement.within_budget is False:
        return broken.format(value=value, budget=budget)
    return None
