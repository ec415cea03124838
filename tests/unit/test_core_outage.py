"""Outage windows and probe statistics, checked on examples and as properties of arbitrary sample sequences."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeha.core.outage import (
    UNKNOWN_ERROR_CLASS,
    OutageWindow,
    ProbeStats,
    Sample,
    check_outage_budget,
    outage_windows,
)

ERRORS = st.sampled_from(["timeout", "connection_refused", "http_503", None])


@st.composite
def sample_lists(draw: st.DrawFn, min_size: int = 0) -> list[Sample]:
    """Samples at distinct times, in shuffled order."""
    times = draw(
        st.lists(
            st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False),
            min_size=min_size,
            max_size=60,
            unique=True,
        )
    )
    samples = []
    for t in times:
        ok = draw(st.booleans())
        latency = draw(st.floats(min_value=0.0, max_value=30.0, allow_nan=False))
        samples.append(Sample(t, ok, None if ok else draw(ERRORS), latency))
    return draw(st.permutations(samples))


def in_window(t: float, window: OutageWindow) -> bool:
    if window.open:
        return window.start <= t <= window.end
    return window.start <= t < window.end


def reference_windows(samples: list[Sample]) -> list[tuple[float, float, int, bool]]:
    """An independent oracle: group the time-ordered samples into runs of equal ok-ness."""
    ordered = sorted(samples, key=lambda s: s.t_mono)
    runs = [(ok, list(group)) for ok, group in itertools.groupby(ordered, key=lambda s: s.ok)]
    result = []
    for index, (ok, group) in enumerate(runs):
        if ok:
            continue
        if index + 1 < len(runs):
            result.append((group[0].t_mono, runs[index + 1][1][0].t_mono, len(group), False))
        else:
            result.append((group[0].t_mono, group[-1].t_mono, len(group), True))
    return result


def test_example_with_recovery_and_trailing_outage() -> None:
    samples = [
        Sample(0.0, True),
        Sample(1.0, False, "timeout"),
        Sample(2.0, False, "http_503"),
        Sample(3.5, True),
        Sample(4.0, True),
        Sample(5.0, False, "connection_refused"),
        Sample(6.0, False),
    ]
    windows = outage_windows(list(reversed(samples)))
    assert windows == [
        OutageWindow(1.0, 3.5, 2, "timeout"),
        OutageWindow(5.0, 6.0, 2, "connection_refused", open=True),
    ]
    assert windows[0].duration == 2.5


def test_outage_from_the_first_sample() -> None:
    assert outage_windows([Sample(10.0, False, "x"), Sample(12.0, True)]) == [OutageWindow(10.0, 12.0, 1, "x")]


def test_no_samples_no_windows() -> None:
    assert outage_windows([]) == []


def test_min_failures_drops_blips() -> None:
    samples = [Sample(0.0, False), Sample(1.0, True), Sample(2.0, False), Sample(3.0, False), Sample(4.0, True)]
    assert outage_windows(samples, min_failures=2) == [OutageWindow(2.0, 4.0, 2, None)]


@pytest.mark.parametrize("bad", [0, -1, True])
def test_min_failures_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="min_failures must be an int >= 1"):
        outage_windows([], min_failures=bad)


def test_ties_keep_input_order() -> None:
    samples = [Sample(1.0, False, "a"), Sample(1.0, True), Sample(2.0, True)]
    assert outage_windows(samples) == [OutageWindow(1.0, 1.0, 1, "a")]


def test_sample_validation() -> None:
    with pytest.raises(ValueError, match="cannot have error_class"):
        Sample(0.0, True, "timeout")
    with pytest.raises(ValueError, match="finite"):
        Sample(math.nan, False)
    with pytest.raises(ValueError, match="latency_s must be >= 0"):
        Sample(0.0, True, latency_s=-0.1)


def test_window_validation() -> None:
    with pytest.raises(ValueError, match="before it starts"):
        OutageWindow(2.0, 1.0, 1)
    with pytest.raises(ValueError, match="at least one failed sample"):
        OutageWindow(1.0, 2.0, 0)


def test_window_json_round_trip() -> None:
    window = OutageWindow(1.25, 3.5, 4, "timeout", open=True)
    assert OutageWindow.from_dict(json.loads(json.dumps(window.to_dict()))) == window


@given(sample_lists())
def test_windows_match_reference(samples: list[Sample]) -> None:
    windows = outage_windows(samples)
    assert [(w.start, w.end, w.failures, w.open) for w in windows] == reference_windows(samples)


@given(sample_lists())
def test_window_properties(samples: list[Sample]) -> None:
    windows = outage_windows(samples)
    for earlier, later in zip(windows, windows[1:]):
        assert earlier.end < later.start
        assert not earlier.open
    for sample in samples:
        containing = [w for w in windows if in_window(sample.t_mono, w)]
        assert len(containing) == (0 if sample.ok else 1)
    assert sum(w.failures for w in windows) == sum(1 for s in samples if not s.ok)
    if samples:
        span = max(s.t_mono for s in samples) - min(s.t_mono for s in samples)
        assert math.fsum(w.duration for w in windows) <= span
        last = max(samples, key=lambda s: s.t_mono)
        assert any(w.open for w in windows) == (not last.ok)


@given(sample_lists())
def test_windows_do_not_depend_on_arrival_order(samples: list[Sample]) -> None:
    reordered = sorted(samples, key=lambda s: s.t_mono)
    assert outage_windows(samples) == outage_windows(reordered)


@given(sample_lists(), st.integers(min_value=1, max_value=5))
def test_min_failures_filters_exactly(samples: list[Sample], k: int) -> None:
    expected = [w for w in outage_windows(samples) if w.failures >= k]
    assert outage_windows(samples, min_failures=k) == expected


@given(sample_lists(min_size=1))
def test_stats_properties(samples: list[Sample]) -> None:
    stats = ProbeStats.from_samples(samples)
    ok = [s for s in samples if s.ok]
    assert stats.count == len(samples)
    assert stats.failures == len(samples) - len(ok)
    assert stats.availability == len(ok) / len(samples)
    assert stats.windows == tuple(outage_windows(samples))
    assert stats.longest_outage_s == max((w.duration for w in stats.windows), default=0.0)
    assert stats.total_outage_s <= stats.span_s + 1e-9 * max(1.0, stats.span_s)
    assert sum(count for _, count in stats.error_counts) == stats.failures
    if ok:
        latencies = sorted(s.latency_s for s in ok)
        assert stats.latency_p50_s in latencies and stats.latency_p99_s in latencies
        assert stats.latency_p50_s is not None and stats.latency_p99_s is not None
        assert latencies[0] <= stats.latency_p50_s <= stats.latency_p99_s <= latencies[-1]
    else:
        assert stats.latency_p50_s is None and stats.latency_p99_s is None


def test_stats_example() -> None:
    samples = [Sample(float(t), True, latency_s=t / 100) for t in range(100)]
    samples += [Sample(100.0, False, "timeout"), Sample(101.0, False), Sample(102.0, True, latency_s=0.5)]
    stats = ProbeStats.from_samples(samples)
    assert stats.count == 103
    assert stats.failures == 2
    assert stats.error_count("timeout") == 1
    assert stats.error_count(UNKNOWN_ERROR_CLASS) == 1
    assert stats.error_count("http_503") == 0
    assert stats.longest_outage_s == 2.0
    # 101 successes sorted: 0.00 .. 0.49, 0.50, 0.50, 0.51 .. 0.99.
    assert stats.latency_p50_s == 0.5  # nearest rank ceil(0.50 * 101) = 51
    assert stats.latency_p99_s == 0.98  # nearest rank ceil(0.99 * 101) = 100
    assert stats.open_window is None


def test_stats_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no probe samples.*start the probe"):
        ProbeStats.from_samples([])


def _stats(windows: tuple[OutageWindow, ...], count: int = 610, failures: int = 52) -> ProbeStats:
    return ProbeStats(
        count=count,
        failures=failures,
        first_t=0.0,
        last_t=100.0,
        windows=windows,
        error_counts=(("timeout", failures),),
        latency_p50_s=0.01,
        latency_p99_s=0.2,
    )


def test_budget_exceeded_message() -> None:
    stats = _stats((OutageWindow(10.0, 17.31, 40), OutageWindow(30.0, 31.0, 6), OutageWindow(50.0, 51.0, 6)))
    check = check_outage_budget(stats, 5.0)
    assert not check.ok
    assert check.message == "longest API outage 7.31 s exceeds budget 5.00 s (3 windows, 52 failed of 610 probes)"


def test_budget_met_message() -> None:
    check = check_outage_budget(_stats((OutageWindow(10.0, 11.2, 3),), failures=3), 5.0, subject="ingress")
    assert check.ok
    assert check.message == "longest ingress outage 1.20 s within budget 5.00 s (1 window, 3 failed of 610 probes)"


def test_budget_without_outage() -> None:
    check = check_outage_budget(_stats((), failures=0), 5.0)
    assert check.ok
    assert check.message == "no API outage (0 windows, 0 failed of 610 probes), budget 5.00 s"


def test_open_outage_fails_even_when_short() -> None:
    check = check_outage_budget(_stats((OutageWindow(99.9, 100.0, 1, open=True),), failures=1), 5.0)
    assert not check.ok
    assert "still failing when probing stopped" in check.message
    assert "probe until the service recovers" in check.message


def test_budget_boundary_is_inclusive() -> None:
    assert check_outage_budget(_stats((OutageWindow(0.0, 5.0, 1),), failures=1), 5.0).ok


@pytest.mark.parametrize("budget", [-1.0, math.inf, math.nan])
def test_budget_must_be_a_finite_non_negative_number(budget: float) -> None:
    with pytest.raises(ValueError, match="budget_s"):
        check_outage_budget(_stats(()), budget)
