"""Outage windows and availability figures computed from probe samples.

A probe records one `Sample` per attempt against a service (the API through the load balancer, an in-cluster HTTP
endpoint, ...). An outage window opens at the first failed sample after a success (or at the first sample) and
closes at the next successful sample; an outage still running at the last sample is reported ``open``.
Samples may come from several threads and arrive in any order: they are ordered by time, ties keeping input order.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from kubeha.core.jsonfields import JsonObject, get_bool, get_float, get_int, get_optional_str

__all__ = [
    "BudgetCheck",
    "OutageWindow",
    "ProbeStats",
    "Sample",
    "UNKNOWN_ERROR_CLASS",
    "check_outage_budget",
    "outage_windows",
]

UNKNOWN_ERROR_CLASS = "unknown"
MEDIAN = 0.50
P99 = 0.99


def _finite(value: float, what: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}: {fix}")


@dataclass(frozen=True)
class Sample:
    """One probe attempt at monotonic time `t_mono`; `error_class` names why a failed attempt failed."""

    t_mono: float
    ok: bool
    error_class: str | None = None
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        _finite(self.t_mono, "Sample.t_mono", "record time.monotonic() when the attempt started")
        _finite(self.latency_s, "Sample.latency_s", "record the attempt's duration in seconds")
        if self.latency_s < 0:
            raise ValueError(f"Sample.latency_s must be >= 0, got {self.latency_s}: measure end minus start")
        if self.ok and self.error_class is not None:
            raise ValueError(
                f"a successful Sample cannot have error_class {self.error_class!r}: set ok=False or drop the error"
            )


@dataclass(frozen=True)
class OutageWindow:
    """A run of failed samples from `start` to `end` (seconds, monotonic clock of the probe)."""

    start: float
    end: float
    failures: int
    first_error_class: str | None = None
    open: bool = False

    def __post_init__(self) -> None:
        _finite(self.start, "OutageWindow.start", "use the first failed sample's time")
        _finite(self.end, "OutageWindow.end", "use the recovering sample's time")
        if self.end < self.start:
            raise ValueError(f"OutageWindow ends ({self.end}) before it starts ({self.start}): swap them")
        if self.failures < 1:
            raise ValueError(f"an OutageWindow holds at least one failed sample, got {self.failures}")

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> JsonObject:
        return {
            "start": self.start,
            "end": self.end,
            "failures": self.failures,
            "first_error_class": self.first_error_class,
            "open": self.open,
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str = "window") -> OutageWindow:
        return cls(
            start=get_float(obj, "start", where),
            end=get_float(obj, "end", where),
            failures=get_int(obj, "failures", where),
            first_error_class=get_optional_str(obj, "first_error_class", where),
            open=get_bool(obj, "open", where),
        )


def _ordered(samples: Iterable[Sample]) -> list[Sample]:
    return sorted(samples, key=attrgetter("t_mono"))


def _check_min_failures(min_failures: int) -> None:
    if isinstance(min_failures, bool) or not isinstance(min_failures, int) or min_failures < 1:
        raise ValueError(
            f"min_failures must be an int >= 1, got {min_failures!r}: use 1 to report every failed sample, "
            "more to ignore isolated blips"
        )


def _windows_of_ordered(ordered: Sequence[Sample], min_failures: int) -> list[OutageWindow]:
    windows: list[OutageWindow] = []
    start: Sample | None = None
    failures = 0
    for sample in ordered:
        if not sample.ok:
            if start is None:
                start = sample
            failures += 1
            continue
        if start is not None:
            if failures >= min_failures:
                windows.append(OutageWindow(start.t_mono, sample.t_mono, failures, start.error_class))
            start = None
            failures = 0
    if start is not None and failures >= min_failures:
        windows.append(OutageWindow(start.t_mono, ordered[-1].t_mono, failures, start.error_class, open=True))
    return windows


def outage_windows(samples: Iterable[Sample], *, min_failures: int = 1) -> list[OutageWindow]:
    """Outage windows in time order; runs of fewer than `min_failures` failed samples are not reported."""
    _check_min_failures(min_failures)
    return _windows_of_ordered(_ordered(samples), min_failures)


def _nearest_rank(ordered_values: Sequence[float], fraction: float) -> float:
    rank = max(math.ceil(fraction * len(ordered_values)), 1)
    return ordered_values[rank - 1]


@dataclass(frozen=True)
class ProbeStats:
    """Availability figures of one probe over the samples it recorded."""

    count: int
    failures: int
    first_t: float
    last_t: float
    windows: tuple[OutageWindow, ...]
    error_counts: tuple[tuple[str, int], ...]
    latency_p50_s: float | None
    latency_p99_s: float | None

    @classmethod
    def from_samples(cls, samples: Iterable[Sample], *, min_failures: int = 1) -> ProbeStats:
        _check_min_failures(min_failures)
        ordered = _ordered(samples)
        if not ordered:
            raise ValueError(
                "no probe samples: a probe that recorded nothing proves nothing; start the probe before the fault "
                "and stop it after recovery"
            )
        failed = [sample for sample in ordered if not sample.ok]
        errors = Counter(sample.error_class or UNKNOWN_ERROR_CLASS for sample in failed)
        latencies = sorted(sample.latency_s for sample in ordered if sample.ok)
        return cls(
            count=len(ordered),
            failures=len(failed),
            first_t=ordered[0].t_mono,
            last_t=ordered[-1].t_mono,
            windows=tuple(_windows_of_ordered(ordered, min_failures)),
            error_counts=tuple(sorted(errors.items())),
            latency_p50_s=_nearest_rank(latencies, MEDIAN) if latencies else None,
            latency_p99_s=_nearest_rank(latencies, P99) if latencies else None,
        )

    @property
    def successes(self) -> int:
        return self.count - self.failures

    @property
    def availability(self) -> float:
        """Fraction of samples that succeeded."""
        return self.successes / self.count

    @property
    def span_s(self) -> float:
        return self.last_t - self.first_t

    @property
    def longest_window(self) -> OutageWindow | None:
        return max(self.windows, key=attrgetter("duration"), default=None)

    @property
    def longest_outage_s(self) -> float:
        longest = self.longest_window
        return 0.0 if longest is None else longest.duration

    @property
    def total_outage_s(self) -> float:
        return math.fsum(window.duration for window in self.windows)

    @property
    def open_window(self) -> OutageWindow | None:
        """The outage still running when probing stopped, if any."""
        return next((window for window in self.windows if window.open), None)

    def error_count(self, error_class: str) -> int:
        return dict(self.error_counts).get(error_class, 0)


@dataclass(frozen=True)
class BudgetCheck:
    ok: bool
    message: str


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def check_outage_budget(stats: ProbeStats, budget_s: float, *, subject: str = "API") -> BudgetCheck:
    """Whether the longest outage of `subject` stayed within `budget_s` seconds, with a message for the report.

    An outage still open when probing stopped fails the check: recovery was not observed, so it is not proven.
    """
    _finite(budget_s, "budget_s", "pass the allowed outage in seconds")
    if budget_s < 0:
        raise ValueError(f"budget_s must be >= 0, got {budget_s}: pass the allowed outage in seconds")
    counts = f"{_plural(len(stats.windows), 'window')}, {stats.failures} failed of {_plural(stats.count, 'probe')}"
    still_open = stats.open_window
    if still_open is not None:
        return BudgetCheck(
            False,
            f"{subject} still failing when probing stopped: outage open for {still_open.duration:.2f} s "
            f"(budget {budget_s:.2f} s; {counts}); probe until the service recovers to measure the outage",
        )
    longest = stats.longest_outage_s
    if not stats.windows:
        return BudgetCheck(True, f"no {subject} outage ({counts}), budget {budget_s:.2f} s")
    if longest > budget_s:
        return BudgetCheck(
            False, f"longest {subject} outage {longest:.2f} s exceeds budget {budget_s:.2f} s ({counts})"
        )
    return BudgetCheck(True, f"longest {subject} outage {longest:.2f} s within budget {budget_s:.2f} s ({counts})")
