"""Who holds the leader-election Leases, and how long a new holder took to take over after a fault.

`LeaseWatcher` polls coordination.k8s.io/v1 Leases (by default kube-system/kube-controller-manager and
kube-system/kube-scheduler) several times a second and keeps one `LeaseObservation` each time a Lease's state changes
(holder, renewTime, duration, transitions, or the Lease appearing or disappearing). Renewals are kept too, so the
last renewal of a dead leader is visible.

The takeover arithmetic is pure and works on any list of observations: the holder in place at the reference instant
(the fault injection) is the old holder; the takeover is the first later observation of a non-empty holder other than
the old one whose renewTime is not older than the reference instant (within a clock-skew tolerance). A Lease released
on shutdown (empty holderIdentity) is not a takeover.

Lease holder identities are ``<node>_<uuid>`` for kube-controller-manager and kube-scheduler; `holder_node` returns the
node part.
"""

from __future__ import annotations

import json
import math
import re
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Protocol
from urllib.parse import quote

from kubeha.core.jsonfields import JsonFormatError, JsonObject, as_object, get_object
from kubeha.core.timeline import Timeline, TimelineEvent
from kubeha.probes.api import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    ErrorClass,
    TransportError,
    one_request,
)
from kubeha.probes.credentials import ApiEndpoint

__all__ = [
    "CLOCK_SKEW_TOLERANCE_S",
    "DEFAULT_LEASES",
    "DEFAULT_POLL_INTERVAL_S",
    "HttpLeaseReader",
    "LeaseObservation",
    "LeaseReadError",
    "LeaseReader",
    "LeaseRef",
    "LeaseState",
    "LeaseWatcher",
    "find_takeover",
    "holder_at",
    "holder_node",
    "holder_transitions",
    "parse_lease",
    "takeover_time",
]

DEFAULT_POLL_INTERVAL_S = 0.2
DEFAULT_MAX_DURATION_S = 3600.0
# How far a new holder's renewTime (its node's clock) may lag the reference instant (this process's clock) and still
# count as fresh. kind nodes share the host clock; NTP-synchronised machines stay well within this.
CLOCK_SKEW_TOLERANCE_S = 1.0
JOIN_SLACK_S = 2.0
TIMELINE_SOURCE_PREFIX = "lease"
HTTP_OK = 200
HTTP_NOT_FOUND = 404
DETAIL_MAX_CHARS = 300
_UUID_SUFFIX = re.compile(r"^(?P<node>.+)_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True, order=True)
class LeaseRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{quote(self.namespace)}/leases/{quote(self.name)}"


DEFAULT_LEASES = (
    LeaseRef("kube-system", "kube-controller-manager"),
    LeaseRef("kube-system", "kube-scheduler"),
)


def holder_node(identity: str | None) -> str | None:
    """The node part of a ``<node>_<uuid>`` holder identity; the identity itself if it has no such suffix."""
    if not identity:
        return None
    match = _UUID_SUFFIX.match(identity)
    return match.group("node") if match else identity


@dataclass(frozen=True)
class LeaseState:
    """A Lease's spec as read; an empty holderIdentity (released) is None."""

    holder_identity: str | None
    renew_time: datetime | None
    acquire_time: datetime | None
    lease_duration_s: int | None
    lease_transitions: int | None


def _optional_time(spec: JsonObject, key: str, where: str) -> datetime | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise JsonFormatError(f"{where}.{key} must be an RFC 3339 time string, found {value!r:.80}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as error:
        raise JsonFormatError(f"{where}.{key} is not an RFC 3339 time: {value!r:.80}") from error
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def _optional_int(spec: JsonObject, key: str, where: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise JsonFormatError(f"{where}.{key} must be an integer, found {value!r:.80}")
    return value


def parse_lease(document: JsonObject) -> LeaseState:
    """The `LeaseState` of a Lease object decoded from JSON. Raises `JsonFormatError`."""
    spec = as_object(document.get("spec") or {}, "Lease.spec")
    holder = spec.get("holderIdentity")
    if holder is not None and not isinstance(holder, str):
        raise JsonFormatError(f"Lease.spec.holderIdentity must be a string, found {holder!r:.80}")
    get_object(document, "metadata", "Lease")
    return LeaseState(
        holder_identity=holder or None,
        renew_time=_optional_time(spec, "renewTime", "Lease.spec"),
        acquire_time=_optional_time(spec, "acquireTime", "Lease.spec"),
        lease_duration_s=_optional_int(spec, "leaseDurationSeconds", "Lease.spec"),
        lease_transitions=_optional_int(spec, "leaseTransitions", "Lease.spec"),
    )


@dataclass(frozen=True)
class LeaseObservation:
    """A Lease's state as seen at `t_mono` (and `t_wall`, the same instant); `exists` False when it was absent."""

    t_mono: float
    t_wall: float
    lease: LeaseRef
    exists: bool
    holder_identity: str | None = None
    renew_time: datetime | None = None
    acquire_time: datetime | None = None
    lease_duration_s: int | None = None
    lease_transitions: int | None = None

    @classmethod
    def of(cls, t_mono: float, t_wall: float, lease: LeaseRef, state: LeaseState | None) -> LeaseObservation:
        if state is None:
            return cls(t_mono=t_mono, t_wall=t_wall, lease=lease, exists=False)
        return cls(
            t_mono=t_mono,
            t_wall=t_wall,
            lease=lease,
            exists=True,
            holder_identity=state.holder_identity,
            renew_time=state.renew_time,
            acquire_time=state.acquire_time,
            lease_duration_s=state.lease_duration_s,
            lease_transitions=state.lease_transitions,
        )

    @property
    def holder_node(self) -> str | None:
        return holder_node(self.holder_identity)

    def same_state(self, other: LeaseObservation) -> bool:
        return (
            self.exists,
            self.holder_identity,
            self.renew_time,
            self.acquire_time,
            self.lease_duration_s,
            self.lease_transitions,
        ) == (
            other.exists,
            other.holder_identity,
            other.renew_time,
            other.acquire_time,
            other.lease_duration_s,
            other.lease_transitions,
        )

    def acquired_after_s(self, since_t: float) -> float | None:
        """Seconds from monotonic instant `since_t` to this holder's acquireTime, None if the Lease has none.

        acquireTime is written by the new holder with its node's clock, so this is finer than the polling interval
        but only as exact as the clocks agree (see `CLOCK_SKEW_TOLERANCE_S`).
        """
        if self.acquire_time is None:
            return None
        return self.acquire_time.timestamp() - self.wall_of(since_t)

    def wall_of(self, t_mono: float) -> float:
        """The wall-clock time of monotonic instant `t_mono`, using this observation's pair of clocks."""
        return self.t_wall - (self.t_mono - t_mono)


def _of_lease(observations: Iterable[LeaseObservation], lease: LeaseRef) -> list[LeaseObservation]:
    return sorted((obs for obs in observations if obs.lease == lease), key=lambda obs: obs.t_mono)


def holder_at(observations: Iterable[LeaseObservation], lease: LeaseRef, t_mono: float) -> str | None:
    """The holder identity last observed at or before `t_mono` (None: none observed, absent or released)."""
    holder: str | None = None
    for obs in _of_lease(observations, lease):
        if obs.t_mono > t_mono:
            break
        holder = obs.holder_identity
    return holder


def holder_transitions(observations: Iterable[LeaseObservation], lease: LeaseRef) -> tuple[LeaseObservation, ...]:
    """The observations where `lease`'s holder changed (the first observation included)."""
    changes: list[LeaseObservation] = []
    previous: LeaseObservation | None = None
    for obs in _of_lease(observations, lease):
        if previous is None or obs.holder_identity != previous.holder_identity or obs.exists != previous.exists:
            changes.append(obs)
        previous = obs
    return tuple(changes)


def find_takeover(
    observations: Iterable[LeaseObservation],
    lease: LeaseRef,
    since_t: float,
    *,
    skew_tolerance_s: float = CLOCK_SKEW_TOLERANCE_S,
) -> LeaseObservation | None:
    """The first observation after `since_t` of a new holder with a fresh renewTime, or None.

    The old holder is the one observed at `since_t`. "Fresh" means the renewTime is no older than `since_t` on the
    wall clock minus `skew_tolerance_s`.
    """
    ordered = _of_lease(observations, lease)
    old = holder_at(ordered, lease, since_t)
    for obs in ordered:
        if obs.t_mono < since_t or obs.holder_identity is None or obs.holder_identity == old:
            continue
        if obs.renew_time is None:
            continue
        if obs.renew_time.timestamp() >= obs.wall_of(since_t) - skew_tolerance_s:
            return obs
    return None


def takeover_time(
    observations: Iterable[LeaseObservation],
    lease: LeaseRef,
    since_t: float,
    *,
    skew_tolerance_s: float = CLOCK_SKEW_TOLERANCE_S,
) -> float | None:
    """Seconds from `since_t` until a new holder was observed (see `find_takeover`), None if not (yet) observed."""
    found = find_takeover(observations, lease, since_t, skew_tolerance_s=skew_tolerance_s)
    return None if found is None else found.t_mono - since_t


class LeaseReadError(Exception):
    """A Lease could not be read; `error_class` is an `ErrorClass` value."""

    def __init__(self, error_class: str, detail: str) -> None:
        super().__init__(f"{error_class}: {detail}")
        self.error_class = error_class
        self.detail = detail


class LeaseReader(Protocol):
    def read(self, lease: LeaseRef, timeout_s: float) -> LeaseState | None:
        """The Lease's state, None if it does not exist. Raises `LeaseReadError`."""
        ...


class HttpLeaseReader:
    """`LeaseReader` over the API, one fresh HTTPS connection per read."""

    def __init__(self, endpoint: ApiEndpoint, *, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self.connect_timeout_s = connect_timeout_s
        self._context: ssl.SSLContext = endpoint.ssl_context()

    def read(self, lease: LeaseRef, timeout_s: float) -> LeaseState | None:
        try:
            response = one_request(
                self.endpoint,
                self._context,
                "GET",
                lease.path,
                connect_timeout_s=self.connect_timeout_s,
                timeout_s=timeout_s,
            )
        except TransportError as error:
            raise LeaseReadError(error.error_class.value, error.detail) from error
        if response.status == HTTP_NOT_FOUND:
            return None
        if response.status != HTTP_OK:
            error_class = response.error_class or ErrorClass.HTTP_OTHER
            raise LeaseReadError(error_class.value, response.summary())
        try:
            return parse_lease(as_object(json.loads(response.body), "Lease"))
        except (json.JSONDecodeError, UnicodeDecodeError, JsonFormatError) as error:
            raise LeaseReadError(ErrorClass.PROTOCOL.value, f"{lease}: {error}"[:DETAIL_MAX_CHARS]) from error


def _check_positive(value: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")


class LeaseWatcher:
    """Poll `leases` through `reader` every `interval_s` from a background thread and keep every state change.

    ``with LeaseWatcher(reader) as watcher: ...``; read `observations()`, `current_holder()` and `takeover_time()`
    at any time. With a `timeline`, each holder change is appended to it.
    """

    def __init__(
        self,
        reader: LeaseReader,
        leases: Sequence[LeaseRef] = DEFAULT_LEASES,
        *,
        interval_s: float = DEFAULT_POLL_INTERVAL_S,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        max_duration_s: float = DEFAULT_MAX_DURATION_S,
        timeline: Timeline | None = None,
        test_id: str | None = None,
    ) -> None:
        _check_positive(interval_s, "interval_s")
        _check_positive(request_timeout_s, "request_timeout_s")
        _check_positive(max_duration_s, "max_duration_s")
        if not leases:
            raise ValueError("give at least one Lease to watch, e.g. DEFAULT_LEASES")
        if len(set(leases)) != len(leases):
            raise ValueError(f"each Lease must be listed once, got {[str(lease) for lease in leases]}")
        self._reader = reader
        self.leases = tuple(leases)
        self.interval_s = float(interval_s)
        self.request_timeout_s = float(request_timeout_s)
        self.max_duration_s = float(max_duration_s)
        self._timeline = timeline
        self._test_id = test_id
        self._condition = threading.Condition()
        self._observations: list[LeaseObservation] = []
        self._latest: dict[LeaseRef, LeaseObservation] = {}
        self._polls: dict[LeaseRef, int] = {lease: 0 for lease in self.leases}
        self._errors: dict[LeaseRef, list[tuple[float, str]]] = {lease: [] for lease in self.leases}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- polling ----------------------------------------------------------------------------------------------

    def poll_once(self) -> None:
        """Read every Lease once and record what changed (the background thread calls this at the set rate)."""
        for lease in self.leases:
            t_mono, t_wall = time.monotonic(), time.time()
            try:
                state = self._reader.read(lease, self.request_timeout_s)
            except LeaseReadError as error:
                with self._condition:
                    self._polls[lease] += 1
                    self._errors[lease].append((t_mono, str(error)[:DETAIL_MAX_CHARS]))
                continue
            self.record(LeaseObservation.of(t_mono, t_wall, lease, state))

    def record(self, observation: LeaseObservation) -> bool:
        """Keep `observation` if the Lease's state changed; True if kept."""
        lease = observation.lease
        self._check_lease(lease)
        with self._condition:
            self._polls[lease] += 1
            previous = self._latest.get(lease)
            if previous is not None and previous.same_state(observation):
                return False
            self._observations.append(observation)
            self._latest[lease] = observation
            self._condition.notify_all()
        if previous is None or previous.holder_identity != observation.holder_identity:
            self._note_holder_change(previous, observation)
        return True

    def _note_holder_change(self, previous: LeaseObservation | None, observation: LeaseObservation) -> None:
        if self._timeline is None:
            return
        old = "(unobserved)" if previous is None else previous.holder_identity or "(none)"
        new = observation.holder_identity or ("(none)" if observation.exists else "(lease absent)")
        self._timeline.append(
            TimelineEvent(
                t_mono=observation.t_mono,
                t_wall=observation.t_wall,
                source=f"{TIMELINE_SOURCE_PREFIX}/{observation.lease}",
                kind="lease-holder" if previous is None else "lease-holder-change",
                detail=f"{old} -> {new}",
                test_id=self._test_id,
            )
        )

    def _run(self) -> None:
        next_t = time.monotonic()
        deadline = next_t + self.max_duration_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.poll_once()
            next_t += self.interval_s
            now = time.monotonic()
            if next_t < now:
                next_t += math.ceil((now - next_t) / self.interval_s) * self.interval_s
            self._stop.wait(next_t - now)

    def start(self) -> LeaseWatcher:
        if self._thread is not None:
            raise RuntimeError("this LeaseWatcher was already started; create a new one for another run")
        self._thread = threading.Thread(target=self._run, name="lease-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is None:
            return
        bound = len(self.leases) * (DEFAULT_CONNECT_TIMEOUT_S + self.request_timeout_s) + JOIN_SLACK_S
        self._thread.join(bound)
        if self._thread.is_alive():
            raise RuntimeError(f"the lease watcher did not stop within {bound:.1f} s")

    def __enter__(self) -> LeaseWatcher:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- reading ----------------------------------------------------------------------------------------------

    def _check_lease(self, lease: LeaseRef) -> None:
        if lease not in self._polls:
            raise KeyError(f"Lease {lease} is not watched; watched: {[str(watched) for watched in self.leases]}")

    def observations(self, lease: LeaseRef | None = None) -> tuple[LeaseObservation, ...]:
        """Every recorded state change, in time order (of one Lease, or all)."""
        if lease is not None:
            self._check_lease(lease)
        with self._condition:
            snapshot = list(self._observations)
        return tuple(obs for obs in snapshot if lease is None or obs.lease == lease)

    def transitions(self, lease: LeaseRef) -> tuple[LeaseObservation, ...]:
        """Holder changes of `lease` (the first observation included)."""
        return holder_transitions(self.observations(lease), lease)

    def latest(self, lease: LeaseRef) -> LeaseObservation | None:
        self._check_lease(lease)
        with self._condition:
            return self._latest.get(lease)

    def current_holder(self, lease: LeaseRef) -> str | None:
        """The holder identity last observed (None: not yet read, absent or released)."""
        latest = self.latest(lease)
        return None if latest is None else latest.holder_identity

    def holder_at(self, lease: LeaseRef, t_mono: float) -> str | None:
        return holder_at(self.observations(lease), lease, t_mono)

    def takeover_time(
        self, lease: LeaseRef, since_t: float, *, skew_tolerance_s: float = CLOCK_SKEW_TOLERANCE_S
    ) -> float | None:
        """Seconds from `since_t` (time.monotonic() at the fault) to the first new holder observed; None if none."""
        return takeover_time(self.observations(lease), lease, since_t, skew_tolerance_s=skew_tolerance_s)

    def wait_for_takeover(
        self,
        lease: LeaseRef,
        since_t: float,
        timeout_s: float,
        *,
        skew_tolerance_s: float = CLOCK_SKEW_TOLERANCE_S,
    ) -> LeaseObservation | None:
        """Block until a takeover after `since_t` is observed or `timeout_s` passes; the takeover or None."""
        self._check_lease(lease)
        _check_positive(timeout_s, "timeout_s")
        deadline = time.monotonic() + timeout_s
        with self._condition:
            found = find_takeover(self._observations, lease, since_t, skew_tolerance_s=skew_tolerance_s)
            remaining = deadline - time.monotonic()
            while found is None and remaining > 0:
                self._condition.wait(remaining)
                found = find_takeover(self._observations, lease, since_t, skew_tolerance_s=skew_tolerance_s)
                remaining = deadline - time.monotonic()
            return found

    def poll_count(self, lease: LeaseRef) -> int:
        self._check_lease(lease)
        with self._condition:
            return self._polls[lease]

    def errors(self, lease: LeaseRef) -> tuple[tuple[float, str], ...]:
        """(t_mono, detail) of every failed read of `lease`."""
        self._check_lease(lease)
        with self._condition:
            return tuple(self._errors[lease])
