"""The run timeline: ordering, filtering, concurrent appends and JSON-lines round trips."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeha.core.jsonfields import JsonFormatError
from kubeha.core.timeline import Timeline, TimelineEvent

seconds = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
words = st.text(min_size=1, max_size=12)
events = st.builds(
    TimelineEvent,
    t_mono=seconds,
    t_wall=seconds,
    source=words,
    kind=words,
    detail=st.text(max_size=40),
    test_id=st.none() | st.sampled_from(["tests/a.py::t1", "tests/b.py::t2"]),
)


def event(t: float, test_id: str | None = None, kind: str = "fault.inject") -> TimelineEvent:
    return TimelineEvent(t, 1_700_000_000.0 + t, "faults", kind, f"at {t}", test_id)


def test_events_are_sorted_and_ties_keep_append_order() -> None:
    timeline = Timeline()
    for item in (event(3.0), event(1.0, kind="first"), event(1.0, kind="second"), event(2.0)):
        timeline.append(item)
    assert [(e.t_mono, e.kind) for e in timeline.events()] == [
        (1.0, "first"),
        (1.0, "second"),
        (2.0, "fault.inject"),
        (3.0, "fault.inject"),
    ]
    assert len(timeline) == 4


def test_filters() -> None:
    timeline = Timeline([event(1.0, "t1"), event(2.0, "t2"), event(3.0, "t1"), event(4.0)])
    assert [e.t_mono for e in timeline.for_test("t1")] == [1.0, 3.0]
    assert [e.t_mono for e in timeline.between(2.0, 3.0)] == [2.0, 3.0]


def test_snapshot_is_unaffected_by_later_appends() -> None:
    timeline = Timeline([event(1.0)])
    snapshot = timeline.events()
    timeline.append(event(0.5))
    assert len(snapshot) == 1 and len(timeline.events()) == 2


def test_concurrent_appends_are_all_kept() -> None:
    timeline = Timeline()
    per_thread = 500

    def writer(offset: int) -> None:
        for index in range(per_thread):
            timeline.append(event(float(offset * per_thread + index)))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times = [e.t_mono for e in timeline.events()]
    assert times == [float(n) for n in range(4 * per_thread)]


def test_event_validation() -> None:
    with pytest.raises(ValueError, match="t_mono must be a finite number"):
        TimelineEvent(float("nan"), 0.0, "s", "k", "")
    with pytest.raises(ValueError, match="source must be a non-empty string"):
        TimelineEvent(0.0, 0.0, "", "k", "")
    with pytest.raises(TypeError, match="takes a TimelineEvent"):
        Timeline().append("not an event")  # type: ignore[arg-type]


@given(st.lists(events, max_size=20))
def test_jsonl_round_trip(items: list[TimelineEvent]) -> None:
    timeline = Timeline(items)
    text = timeline.to_jsonl()
    assert text.count("\n") == len(items)
    assert Timeline.from_jsonl(text).events() == timeline.events()


@given(st.lists(events, max_size=20))
def test_events_are_a_sorted_permutation(items: list[TimelineEvent]) -> None:
    ordered = Timeline(items).events()
    assert sorted(ordered, key=repr) == sorted(items, key=repr)
    assert all(a.t_mono <= b.t_mono for a, b in zip(ordered, ordered[1:]))


def test_from_jsonl_reports_the_damaged_line() -> None:
    good = json.dumps(event(1.0).to_dict())
    with pytest.raises(JsonFormatError, match="timeline line 2 is not valid JSON"):
        Timeline.from_jsonl(good + "\n{broken\n")
    with pytest.raises(JsonFormatError, match="timeline line 1.t_mono must be a number"):
        Timeline.from_jsonl(json.dumps({**event(1.0).to_dict(), "t_mono": "soon"}))
    assert len(Timeline.from_jsonl(good + "\n\n")) == 1
