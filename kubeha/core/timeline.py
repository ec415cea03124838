"""The run's timeline: every fault, probe transition and coordinator decision, in time order.

Events are appended from several threads (probes, watchers, faults), so `Timeline` guards its list with a lock.
Reading always returns an immutable snapshot sorted by monotonic time, ties keeping the order of appending.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from kubeha.core.jsonfields import JsonFormatError, JsonObject, as_object, get_float, get_optional_str, get_str

__all__ = ["Timeline", "TimelineEvent"]


@dataclass(frozen=True)
class TimelineEvent:
    """Something that happened: `source` is who saw it (a probe, a fault, the coordinator), `kind` what it was."""

    t_mono: float
    t_wall: float
    source: str
    kind: str
    detail: str
    test_id: str | None = None

    def __post_init__(self) -> None:
        for label, value in (("t_mono", self.t_mono), ("t_wall", self.t_wall)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(
                    f"TimelineEvent.{label} must be a finite number, got {value!r}: "
                    "record time.monotonic() and time.time() when the event happened"
                )
        for label, text in (("source", self.source), ("kind", self.kind)):
            if not isinstance(text, str) or not text:
                raise ValueError(f"TimelineEvent.{label} must be a non-empty string, got {text!r}")

    def to_dict(self) -> JsonObject:
        return {
            "t_mono": self.t_mono,
            "t_wall": self.t_wall,
            "source": self.source,
            "kind": self.kind,
            "detail": self.detail,
            "test_id": self.test_id,
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str = "event") -> TimelineEvent:
        return cls(
            t_mono=get_float(obj, "t_mono", where),
            t_wall=get_float(obj, "t_wall", where),
            source=get_str(obj, "source", where),
            kind=get_str(obj, "kind", where),
            detail=get_str(obj, "detail", where),
            test_id=get_optional_str(obj, "test_id", where),
        )


class Timeline:
    """An append-only, thread-safe collection of `TimelineEvent`."""

    def __init__(self, events: Iterable[TimelineEvent] = ()) -> None:
        self._lock = threading.Lock()
        self._events: list[TimelineEvent] = []
        self.extend(events)

    def append(self, event: TimelineEvent) -> None:
        if not isinstance(event, TimelineEvent):
            raise TypeError(f"Timeline.append takes a TimelineEvent, got {type(event).__name__}")
        with self._lock:
            self._events.append(event)

    def extend(self, events: Iterable[TimelineEvent]) -> None:
        for event in events:
            self.append(event)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def events(self) -> tuple[TimelineEvent, ...]:
        """A snapshot in monotonic-time order."""
        with self._lock:
            snapshot = list(self._events)
        return tuple(sorted(snapshot, key=lambda event: event.t_mono))

    def for_test(self, test_id: str) -> tuple[TimelineEvent, ...]:
        return tuple(event for event in self.events() if event.test_id == test_id)

    def between(self, start: float, end: float) -> tuple[TimelineEvent, ...]:
        """Events with ``start <= t_mono <= end``."""
        return tuple(event for event in self.events() if start <= event.t_mono <= end)

    def to_jsonl(self) -> str:
        """One JSON object per line, in time order; empty string for an empty timeline."""
        return "".join(json.dumps(event.to_dict(), allow_nan=False) + "\n" for event in self.events())

    @classmethod
    def from_jsonl(cls, text: str) -> Timeline:
        events: list[TimelineEvent] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"timeline line {number}"
            try:
                decoded = json.loads(line)
            except json.JSONDecodeError as error:
                raise JsonFormatError(f"{where} is not valid JSON ({error.msg}): the file is damaged") from None
            events.append(TimelineEvent.from_dict(as_object(decoded, where), where))
        return cls(events)
