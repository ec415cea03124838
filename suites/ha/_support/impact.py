"""What a fault did to a probed service: how long until it recovered, and how much failed on the way.

`recovery_of` works on the samples of any probe (`kubeha.core.outage.Sample`: the API probe, the write recorder) and
the monotonic instant a fault began. Recovery is the end of the last outage window that ends after the fault began:
from then on every sample succeeded. An outage still open when probing stopped means recovery was not observed.

Pure: samples in, figures and messages out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kubeha.core.outage import OutageWindow, ProbeStats, Sample

__all__ = ["Recovery", "describe_errors", "recovery_of", "samples_between"]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def describe_errors(stats: ProbeStats) -> str:
    """``"tls-timeout 12, connect-refused 3"``, or ``"none"``."""
    if not stats.error_counts:
        return "none"
    ordered = sorted(stats.error_counts, key=lambda pair: (-pair[1], pair[0]))
    return ", ".join(f"{name} {count}" for name, count in ordered)


def samples_between(samples: Iterable[Sample], start: float, end: float) -> tuple[Sample, ...]:
    """The samples taken at ``start <= t_mono <= end``."""
    return tuple(sample for sample in samples if start <= sample.t_mono <= end)


@dataclass(frozen=True)
class Recovery:
    """How `subject` fared from `fault_t` (monotonic) until probing stopped.

    `recovery_s` is the time from the fault to the first success after the last failure (0 when nothing failed
    after the fault); when the last sample failed it is the time to the last sample, and `recovered` is False.
    """

    subject: str
    fault_t: float
    stats: ProbeStats
    after_fault: tuple[OutageWindow, ...]
    recovery_s: float
    recovered: bool
    observed_s: float

    @property
    def failures_after_fault(self) -> int:
        return sum(window.failures for window in self.after_fault)

    @property
    def longest_after_fault_s(self) -> float:
        return max((window.duration for window in self.after_fault), default=0.0)

    def counts(self) -> str:
        return (
            f"{_plural(len(self.stats.windows), 'window')}, {self.stats.failures} failed of "
            f"{_plural(self.stats.count, 'attempt')}; errors: {describe_errors(self.stats)}"
        )

    def within(self, budget_s: float) -> bool:
        return self.recovered and self.recovery_s <= budget_s

    def message(self, budget_s: float, fault: str) -> str:
        """One line: what happened to the subject after `fault`, against `budget_s`."""
        if not self.recovered:
            return (
                f"{self.subject} still failing {self.recovery_s:.2f} s after {fault} (budget {budget_s:.2f} s; "
                f"{self.counts()})"
            )
        if not self.after_fault:
            return f"no {self.subject} failure after {fault} ({self.counts()}), budget {budget_s:.2f} s"
        verdict = "exceeds" if self.recovery_s > budget_s else "within"
        return (
            f"{self.subject} recovered {self.recovery_s:.2f} s after {fault}, {verdict} budget {budget_s:.2f} s "
            f"(longest outage {self.longest_after_fault_s:.2f} s; {self.counts()})"
        )


def recovery_of(samples: Iterable[Sample], fault_t: float, *, subject: str, min_failures: int = 1) -> Recovery:
    """The `Recovery` of `subject` from the samples a probe recorded around a fault that began at `fault_t`.

    Raises ValueError when there is no sample at all or none after the fault: recovery cannot be judged.
    """
    ordered = sorted(samples, key=lambda sample: sample.t_mono)
    stats = ProbeStats.from_samples(ordered, min_failures=min_failures)
    later = [sample for sample in ordered if sample.t_mono >= fault_t]
    if not later:
        raise ValueError(
            f"no {subject} sample after the fault began: keep the probe running while the fault is in place"
        )
    after = tuple(window for window in stats.windows if window.end >= fault_t)
    observed = later[-1].t_mono - fault_t
    if after and after[-1].open:
        return Recovery(subject, fault_t, stats, after, observed, False, observed)
    recovery = max(after[-1].end - fault_t, 0.0) if after else 0.0
    return Recovery(subject, fault_t, stats, after, recovery, True, observed)
