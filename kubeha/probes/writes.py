"""Writes through the API at a steady rate, and proof afterwards that no acknowledged write was lost.

`WriteRecorder` creates one small object per write (ConfigMaps ``<prefix>-<run>-<seq>`` in a dedicated namespace,
through `ConfigMapStore`) and records each outcome:

- ``ok``: the API server acknowledged the write (2xx, with a resourceVersion). It MUST be readable afterwards.
- ``failed``: definitely not applied: the connection or TLS handshake failed before the request was sent, or the
  server rejected it with a status that is returned before storage is touched (4xx other than 408, 501, 503).
- ``unknown``: the request may or may not have been applied: the connection dropped or timed out after sending, or the
  status can come back after the storage write (408, 500, 502, 504 and other 5xx).

`verify()` lists what the run's label selector finds and compares: an acknowledged write that is missing or holds
another value is a violation, as is a definitely failed write that is present; unknown writes are only reported as
present or absent. Every write is also a `kubeha.core.outage.Sample` (ok only when acknowledged), so write-outage
windows come from the same arithmetic as the API probe's.

The store is a small protocol (`WriteStore`) so the bookkeeping is testable without a cluster. `ConfigMapStore` talks
HTTPS itself over one fresh connection per write (see `kubeha.probes.api.Connection`): it needs to know whether a
failure happened before or after the request was sent, which a pooled client does not report.
"""

from __future__ import annotations

import enum
import json
import math
import re
import secrets
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol
from urllib.parse import quote, urlencode

from kubeha.core.jsonfields import JsonFormatError, JsonObject, as_object, get_list, get_object, get_str
from kubeha.core.outage import OutageWindow, ProbeStats, Sample
from kubeha.core.timeline import Timeline, TimelineEvent
from kubeha.probes.api import (
    DEFAULT_CONNECT_TIMEOUT_S,
    ErrorClass,
    HttpResponse,
    TransportError,
    classify_status,
    one_request,
)
from kubeha.probes.credentials import ApiEndpoint

__all__ = [
    "CleanupReport",
    "ConfigMapStore",
    "DEFAULT_WRITE_RATE_HZ",
    "DEFAULT_WRITE_TIMEOUT_S",
    "MANAGED_BY_LABEL",
    "RUN_LABEL",
    "StoreError",
    "VerificationIncomplete",
    "WriteIndeterminate",
    "WriteOutcome",
    "WriteRecord",
    "WriteRecorder",
    "WriteRejected",
    "WriteReport",
    "WriteStore",
    "WriteVerification",
    "judge_writes",
    "write_outcome_of_status",
]

DEFAULT_WRITE_RATE_HZ = 5.0
DEFAULT_WRITE_TIMEOUT_S = 2.0
DEFAULT_PREFIX = "kubeha-write"
DEFAULT_MAX_DURATION_S = 3600.0
DEFAULT_VERIFY_DEADLINE_S = 60.0
DEFAULT_CLEANUP_DEADLINE_S = 60.0
DEFAULT_STORE_REQUEST_TIMEOUT_S = 10.0
RETRY_PAUSE_S = 0.5
RUN_ID_BYTES = 4
# Slack on top of the write timeouts for the writer thread to finish after stop().
JOIN_SLACK_S = 2.0
MAX_NAME_LENGTH = 253
NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LIST_PAGE_SIZE = 500
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "kubeha"
RUN_LABEL = "kubeha.io/write-run"
SEQ_KEY = "seq"
VALUE_KEY = "value"
TIMELINE_SOURCE = "write-recorder"
DETAIL_MAX_CHARS = 300

HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
# Statuses that can be returned after the write reached storage (request timeout, etcd errors, gateway and handler
# timeouts): the write may have been applied.
AMBIGUOUS_STATUSES = frozenset({408, 500, 502, 504})
# Server errors returned before storage is touched.
DEFINITE_SERVER_ERRORS = frozenset({501, 503})
HTTP_SERVER_ERROR_MIN = 500


class WriteOutcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


def write_outcome_of_status(status: int) -> WriteOutcome:
    """What an HTTP status means for whether a create was applied."""
    if classify_status(status) is None:
        return WriteOutcome.OK
    if status in AMBIGUOUS_STATUSES:
        return WriteOutcome.UNKNOWN
    if status >= HTTP_SERVER_ERROR_MIN and status not in DEFINITE_SERVER_ERRORS:
        return WriteOutcome.UNKNOWN
    return WriteOutcome.FAILED


class StoreError(Exception):
    """A store operation failed; `error_class` is an `ErrorClass` value, `status` the HTTP status if any."""

    def __init__(self, error_class: str, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"{error_class}: {detail}")
        self.error_class = error_class
        self.detail = detail
        self.status = status


class WriteRejected(StoreError):
    """The write was definitely not applied."""


class WriteIndeterminate(StoreError):
    """The write may or may not have been applied."""


class VerificationIncomplete(RuntimeError):
    """The written objects could not be read back before the deadline, so nothing is proven either way."""


class WriteStore(Protocol):
    """Where `WriteRecorder` writes. Implementations raise the `StoreError` subclasses documented per method."""

    def create(self, name: str, data: Mapping[str, str], labels: Mapping[str, str], timeout_s: float) -> str | None:
        """Create object `name`; return its resourceVersion (None if the server did not say).

        Raises `WriteRejected` when it was definitely not applied, `WriteIndeterminate` when it may have been.
        """
        ...

    def list(self, selector: Mapping[str, str], timeout_s: float) -> dict[str, dict[str, str]]:
        """Name -> data of every object carrying all `selector` labels, read consistently. Raises `StoreError`."""
        ...

    def delete_all(self, selector: Mapping[str, str], timeout_s: float) -> None:
        """Delete every object carrying all `selector` labels. Raises `StoreError`."""
        ...


@dataclass(frozen=True)
class WriteRecord:
    """One write and its outcome; `t_mono` is when it was sent, `t_wall` the same instant on the wall clock."""

    seq: int
    name: str
    value: str
    t_mono: float
    t_wall: float
    latency_s: float
    outcome: WriteOutcome
    error_class: str | None = None
    status: int | None = None
    resource_version: str | None = None
    detail: str | None = None

    def sample(self) -> Sample:
        if self.outcome is WriteOutcome.OK:
            return Sample(t_mono=self.t_mono, ok=True, error_class=None, latency_s=self.latency_s)
        return Sample(t_mono=self.t_mono, ok=False, error_class=self.error_class, latency_s=self.latency_s)


@dataclass(frozen=True)
class WriteReport:
    """Counts, records and write-outage windows of a run."""

    run_id: str
    records: tuple[WriteRecord, ...]
    stats: ProbeStats
    windows: tuple[OutageWindow, ...]

    def _count(self, outcome: WriteOutcome) -> int:
        return sum(1 for record in self.records if record.outcome is outcome)

    @property
    def attempted(self) -> int:
        return len(self.records)

    @property
    def ok(self) -> int:
        return self._count(WriteOutcome.OK)

    @property
    def failed(self) -> int:
        return self._count(WriteOutcome.FAILED)

    @property
    def unknown(self) -> int:
        return self._count(WriteOutcome.UNKNOWN)

    def summary(self) -> str:
        return (
            f"{self.attempted} writes: {self.ok} acknowledged, {self.failed} failed, {self.unknown} unknown; "
            f"{len(self.windows)} write-outage window(s), longest {self.stats.longest_outage_s:.2f} s"
        )


@dataclass(frozen=True)
class WriteVerification:
    """What reading the run's objects back found. Names are object names, in write order."""

    confirmed: int
    lost: tuple[str, ...]
    mismatched: tuple[str, ...]
    phantom: tuple[str, ...]
    unknown_present: tuple[str, ...]
    unknown_absent: tuple[str, ...]
    unexpected: tuple[str, ...]

    @property
    def violations(self) -> tuple[str, ...]:
        """Acknowledged writes missing or altered, and definitely failed writes that were applied anyway."""
        return self.lost + self.mismatched + self.phantom

    @property
    def passed(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        parts = [f"{self.confirmed} acknowledged write(s) read back intact"]
        if self.lost:
            parts.append(f"LOST acknowledged writes: {', '.join(self.lost)}")
        if self.mismatched:
            parts.append(f"acknowledged writes holding another value: {', '.join(self.mismatched)}")
        if self.phantom:
            parts.append(f"writes that failed definitely but are present: {', '.join(self.phantom)}")
        parts.append(
            f"unknown outcomes: {len(self.unknown_present)} applied, {len(self.unknown_absent)} not applied"
        )
        if self.unexpected:
            parts.append(f"objects of this run that were never written: {', '.join(self.unexpected)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class CleanupReport:
    """`complete` when a final list found none of the run's objects; `remaining` names what was still there."""

    complete: bool
    remaining: tuple[str, ...]
    last_error: str | None


def _check_positive(value: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}")


class WriteRecorder:
    """Write to `store` at `rate_hz` from a background thread and keep every outcome.

    ``with WriteRecorder(store) as recorder: ...`` writes until the block ends; then `report()`, `verify()` and
    `cleanup()`. Writes are sequential: a slow write delays the next one and missed slots are skipped, so during an
    outage the rate drops instead of piling up requests.
    """

    def __init__(
        self,
        store: WriteStore,
        *,
        rate_hz: float = DEFAULT_WRITE_RATE_HZ,
        prefix: str = DEFAULT_PREFIX,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
        max_duration_s: float = DEFAULT_MAX_DURATION_S,
        min_failures: int = 1,
        run_id: str | None = None,
        timeline: Timeline | None = None,
        test_id: str | None = None,
    ) -> None:
        _check_positive(rate_hz, "rate_hz")
        _check_positive(write_timeout_s, "write_timeout_s")
        _check_positive(max_duration_s, "max_duration_s")
        self.run_id = run_id if run_id is not None else secrets.token_hex(RUN_ID_BYTES)
        for text, what in ((prefix, "prefix"), (self.run_id, "run_id")):
            if not NAME_PATTERN.match(text):
                raise ValueError(
                    f"{what} {text!r} must be lowercase letters, digits and '-', starting and ending with a letter or "
                    "digit (it becomes part of object names and a label value)"
                )
        if len(prefix) + len(self.run_id) + 2 + len(str(2**63)) > MAX_NAME_LENGTH:
            raise ValueError(f"prefix {prefix!r} is too long for object names of at most {MAX_NAME_LENGTH} characters")
        self._store = store
        self.interval_s = 1.0 / rate_hz
        self.prefix = prefix
        self.write_timeout_s = float(write_timeout_s)
        self.max_duration_s = float(max_duration_s)
        self.min_failures = min_failures
        self._timeline = timeline
        self._test_id = test_id
        self._lock = threading.Lock()
        self._records: list[WriteRecord] = []
        self._seq = 0
        self._last_ok: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._value_salt = secrets.token_hex(RUN_ID_BYTES)

    @property
    def selector(self) -> dict[str, str]:
        """The labels carried by every object of this run (and by nothing else)."""
        return {MANAGED_BY_LABEL: MANAGED_BY_VALUE, RUN_LABEL: self.run_id}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def name_of(self, seq: int) -> str:
        return f"{self.prefix}-{self.run_id}-{seq}"

    def write_next(self) -> WriteRecord:
        """Make the next write now and record its outcome (the background thread calls this at the set rate)."""
        with self._lock:
            seq = self._seq
            self._seq += 1
        name = self.name_of(seq)
        value = f"{self.run_id}-{self._value_salt}-{seq}"
        data = {SEQ_KEY: str(seq), VALUE_KEY: value}
        t_wall = time.time()
        started = time.monotonic()
        try:
            resource_version = self._store.create(name, data, self.selector, self.write_timeout_s)
        except WriteRejected as error:
            record = self._record(seq, name, value, started, t_wall, WriteOutcome.FAILED, error)
        except WriteIndeterminate as error:
            record = self._record(seq, name, value, started, t_wall, WriteOutcome.UNKNOWN, error)
        else:
            latency = time.monotonic() - started
            record = WriteRecord(
                seq, name, value, started, t_wall, latency, WriteOutcome.OK, resource_version=resource_version
            )
        with self._lock:
            self._records.append(record)
        self._note_transition(record)
        return record

    @staticmethod
    def _record(
        seq: int, name: str, value: str, started: float, t_wall: float, outcome: WriteOutcome, error: StoreError
    ) -> WriteRecord:
        return WriteRecord(
            seq=seq,
            name=name,
            value=value,
            t_mono=started,
            t_wall=t_wall,
            latency_s=time.monotonic() - started,
            outcome=outcome,
            error_class=error.error_class,
            status=error.status,
            detail=error.detail[:DETAIL_MAX_CHARS],
        )

    def _note_transition(self, record: WriteRecord) -> None:
        ok = record.outcome is WriteOutcome.OK
        previous, self._last_ok = self._last_ok, ok
        if self._timeline is None or ok == previous or (previous is None and ok):
            return
        self._timeline.append(
            TimelineEvent(
                t_mono=record.t_mono,
                t_wall=record.t_wall,
                source=TIMELINE_SOURCE,
                kind="write-outage-end" if ok else "write-outage-start",
                detail=f"{record.name}: {record.outcome.value}" + ("" if ok else f" ({record.error_class})"),
                test_id=self._test_id,
            )
        )

    def _run(self) -> None:
        next_t = time.monotonic()
        deadline = next_t + self.max_duration_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.write_next()
            next_t += self.interval_s
            now = time.monotonic()
            if next_t < now:
                next_t += math.ceil((now - next_t) / self.interval_s) * self.interval_s
            self._stop.wait(next_t - now)

    def start(self) -> WriteRecorder:
        if self._thread is not None:
            raise RuntimeError("this WriteRecorder was already started; create a new one for another run")
        self._thread = threading.Thread(target=self._run, name=f"{TIMELINE_SOURCE}-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop writing and wait for the write in flight (bounded by the write timeout)."""
        self._stop.set()
        if self._thread is None:
            return
        bound = DEFAULT_CONNECT_TIMEOUT_S + self.write_timeout_s + JOIN_SLACK_S
        self._thread.join(bound)
        if self._thread.is_alive():
            raise RuntimeError(f"the write recorder did not stop within {bound:.1f} s")

    def __enter__(self) -> WriteRecorder:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def records(self) -> tuple[WriteRecord, ...]:
        with self._lock:
            return tuple(self._records)

    def samples(self) -> tuple[Sample, ...]:
        return tuple(record.sample() for record in self.records())

    def report(self) -> WriteReport:
        """Counts and write-outage windows so far (raises ValueError if nothing was written yet)."""
        records = self.records()
        stats = ProbeStats.from_samples((record.sample() for record in records), min_failures=self.min_failures)
        return WriteReport(run_id=self.run_id, records=records, stats=stats, windows=stats.windows)

    def _require_stopped(self, what: str) -> None:
        if self.running:
            raise RuntimeError(f"stop the write recorder before {what}: writes in flight would be misjudged")

    def verify(
        self,
        *,
        deadline_s: float = DEFAULT_VERIFY_DEADLINE_S,
        request_timeout_s: float = DEFAULT_STORE_REQUEST_TIMEOUT_S,
    ) -> WriteVerification:
        """Read the run's objects back (retrying until `deadline_s`) and judge every recorded write.

        Raises `VerificationIncomplete` if the objects could not be listed before the deadline.
        """
        self._require_stopped("verify()")
        _check_positive(deadline_s, "deadline_s")
        _check_positive(request_timeout_s, "request_timeout_s")
        present = self._list_until(time.monotonic() + deadline_s, request_timeout_s)
        return judge_writes(self.records(), present)

    def _list_until(self, deadline: float, request_timeout_s: float) -> dict[str, dict[str, str]]:
        last_error: StoreError | None = None
        remaining = deadline - time.monotonic()
        while remaining > 0:
            try:
                return self._store.list(self.selector, min(request_timeout_s, remaining))
            except StoreError as error:
                last_error = error
            time.sleep(max(min(RETRY_PAUSE_S, deadline - time.monotonic()), 0.0))
            remaining = deadline - time.monotonic()
        raise VerificationIncomplete(
            f"could not list the objects of write run {self.run_id} before the deadline; last error: {last_error}; "
            "the API did not recover in time, so lost writes can be neither found nor ruled out"
        )

    def cleanup(
        self,
        *,
        deadline_s: float = DEFAULT_CLEANUP_DEADLINE_S,
        request_timeout_s: float = DEFAULT_STORE_REQUEST_TIMEOUT_S,
    ) -> CleanupReport:
        """Delete every object of this run (and only those), retrying until `deadline_s`."""
        self._require_stopped("cleanup()")
        _check_positive(deadline_s, "deadline_s")
        _check_positive(request_timeout_s, "request_timeout_s")
        deadline = time.monotonic() + deadline_s
        last_error: str | None = None
        remaining_names: tuple[str, ...] = ()
        remaining = deadline - time.monotonic()
        while remaining > 0:
            try:
                self._store.delete_all(self.selector, min(request_timeout_s, remaining))
                left = self._store.list(self.selector, min(request_timeout_s, max(deadline - time.monotonic(), 0.1)))
            except StoreError as error:
                last_error = str(error)
            else:
                remaining_names = tuple(sorted(left))
                if not left:
                    return CleanupReport(complete=True, remaining=(), last_error=None)
            time.sleep(max(min(RETRY_PAUSE_S, deadline - time.monotonic()), 0.0))
            remaining = deadline - time.monotonic()
        return CleanupReport(complete=False, remaining=remaining_names, last_error=last_error)


def judge_writes(records: tuple[WriteRecord, ...], present: Mapping[str, Mapping[str, str]]) -> WriteVerification:
    """Compare recorded writes with the objects found (name -> data)."""
    confirmed = 0
    lost: list[str] = []
    mismatched: list[str] = []
    phantom: list[str] = []
    unknown_present: list[str] = []
    unknown_absent: list[str] = []
    for record in sorted(records, key=lambda r: r.seq):
        data = present.get(record.name)
        found = data is not None
        intact = data is not None and data.get(VALUE_KEY) == record.value
        if record.outcome is WriteOutcome.OK:
            if not found:
                lost.append(record.name)
            elif not intact:
                mismatched.append(record.name)
            else:
                confirmed += 1
        elif record.outcome is WriteOutcome.UNKNOWN:
            if found and not intact:
                mismatched.append(record.name)
            (unknown_present if found else unknown_absent).append(record.name)
        elif found:
            phantom.append(record.name)
    written = {record.name for record in records}
    unexpected = tuple(sorted(name for name in present if name not in written))
    return WriteVerification(
        confirmed=confirmed,
        lost=tuple(lost),
        mismatched=tuple(mismatched),
        phantom=tuple(phantom),
        unknown_present=tuple(unknown_present),
        unknown_absent=tuple(unknown_absent),
        unexpected=unexpected,
    )


def _selector_text(selector: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


class ConfigMapStore:
    """`WriteStore` on ConfigMaps of one namespace, each request on a fresh HTTPS connection."""

    def __init__(
        self,
        endpoint: ApiEndpoint,
        namespace: str,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        if not NAME_PATTERN.match(namespace):
            raise ValueError(f"namespace {namespace!r} is not a valid namespace name")
        _check_positive(connect_timeout_s, "connect_timeout_s")
        self.endpoint = endpoint
        self.namespace = namespace
        self.connect_timeout_s = float(connect_timeout_s)
        self._context: ssl.SSLContext = endpoint.ssl_context()

    @property
    def _collection(self) -> str:
        return f"/api/v1/namespaces/{quote(self.namespace)}/configmaps"

    def _request(
        self, method: str, path: str, timeout_s: float, body: JsonObject | None = None
    ) -> HttpResponse:
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = {} if payload is None else {"Content-Type": "application/json"}
        return one_request(
            self.endpoint,
            self._context,
            method,
            path,
            connect_timeout_s=self.connect_timeout_s,
            timeout_s=timeout_s,
            body=payload,
            headers=headers,
        )

    def _call(self, method: str, path: str, timeout_s: float, body: JsonObject | None = None) -> HttpResponse:
        """A request whose transport failure is a `StoreError` (for reads and deletes)."""
        try:
            return self._request(method, path, timeout_s, body)
        except TransportError as error:
            raise StoreError(error.error_class.value, error.detail) from error

    def create(self, name: str, data: Mapping[str, str], labels: Mapping[str, str], timeout_s: float) -> str | None:
        body: JsonObject = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": dict(labels)},
            "data": dict(data),
        }
        try:
            response = self._request("POST", self._collection, timeout_s, body)
        except TransportError as error:
            if error.request_sent:
                raise WriteIndeterminate(error.error_class.value, error.detail) from error
            raise WriteRejected(error.error_class.value, error.detail) from error
        outcome = write_outcome_of_status(response.status)
        if outcome is WriteOutcome.OK:
            return _resource_version(response)
        error_class = response.error_class or ErrorClass.HTTP_OTHER
        if outcome is WriteOutcome.UNKNOWN:
            raise WriteIndeterminate(error_class.value, response.summary(), status=response.status)
        raise WriteRejected(error_class.value, response.summary(), status=response.status)

    def list(self, selector: Mapping[str, str], timeout_s: float) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        deadline = time.monotonic() + timeout_s
        query: dict[str, str] = {"labelSelector": _selector_text(selector), "limit": str(LIST_PAGE_SIZE)}
        more = True
        while more:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreError(ErrorClass.READ_TIMEOUT.value, f"listing took longer than {timeout_s} s")
            response = self._call("GET", f"{self._collection}?{urlencode(query)}", remaining)
            if response.error_class is not None:
                raise StoreError(response.error_class.value, response.summary(), status=response.status)
            page = _json_object(response)
            try:
                for item in get_list(page, "items", "ConfigMapList"):
                    obj = as_object(item, "ConfigMapList.items[]")
                    name = get_str(get_object(obj, "metadata", "ConfigMap"), "name", "ConfigMap.metadata")
                    raw = obj.get("data") or {}
                    values = as_object(raw, f"ConfigMap {name}.data")
                    found[name] = {key: value for key, value in values.items() if isinstance(value, str)}
                token = as_object(page.get("metadata") or {}, "ConfigMapList.metadata").get("continue")
            except JsonFormatError as error:
                raise StoreError(ErrorClass.PROTOCOL.value, str(error), status=response.status) from error
            more = isinstance(token, str) and bool(token)
            if more:
                query["continue"] = str(token)
        return found

    def delete_all(self, selector: Mapping[str, str], timeout_s: float) -> None:
        query = urlencode({"labelSelector": _selector_text(selector)})
        response = self._call("DELETE", f"{self._collection}?{query}", timeout_s)
        if response.error_class is not None:
            raise StoreError(response.error_class.value, response.summary(), status=response.status)

    def ensure_namespace(self, timeout_s: float = DEFAULT_STORE_REQUEST_TIMEOUT_S) -> bool:
        """Create the namespace if it does not exist; True if this call created it. Raises `StoreError`."""
        path = f"/api/v1/namespaces/{quote(self.namespace)}"
        response = self._call("GET", path, timeout_s)
        if response.status != HTTP_NOT_FOUND:
            if response.error_class is not None:
                raise StoreError(response.error_class.value, response.summary(), status=response.status)
            return False
        body: JsonObject = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.namespace, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
        }
        response = self._call("POST", "/api/v1/namespaces", timeout_s, body)
        if response.status == HTTP_CONFLICT:
            return False
        if response.error_class is not None:
            raise StoreError(response.error_class.value, response.summary(), status=response.status)
        return True

    def delete_namespace(self, timeout_s: float = DEFAULT_STORE_REQUEST_TIMEOUT_S) -> None:
        """Ask for the namespace's deletion (it finishes asynchronously); absent is fine. Raises `StoreError`."""
        response = self._call("DELETE", f"/api/v1/namespaces/{quote(self.namespace)}", timeout_s)
        if response.status != HTTP_NOT_FOUND and response.error_class is not None:
            raise StoreError(response.error_class.value, response.summary(), status=response.status)


def _json_object(response: HttpResponse) -> JsonObject:
    try:
        decoded = json.loads(response.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StoreError(ErrorClass.PROTOCOL.value, f"response is not JSON: {error}", status=response.status) from error
    try:
        return as_object(decoded, "response")
    except JsonFormatError as error:
        raise StoreError(ErrorClass.PROTOCOL.value, str(error), status=response.status) from error


def _resource_version(response: HttpResponse) -> str | None:
    """The created object's resourceVersion; None if the acknowledged response does not carry one."""
    try:
        decoded = json.loads(response.body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(decoded, dict):
        return None
    metadata = decoded.get("metadata")
    if not isinstance(metadata, dict):
        return None
    version = metadata.get("resourceVersion")
    return version if isinstance(version, str) else None
