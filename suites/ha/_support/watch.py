"""A watch that resumes from its last resourceVersion, as client-go's reflector does, and the check of what it saw.

`ResumingWatch` lists nothing: it watches ConfigMaps of one namespace and label selector from a given
resourceVersion, over its own HTTPS connection (one TCP + TLS connection per watch request, through the endpoint it
is given: the load balancer). When the connection ends for any reason it reconnects and asks for events after the
last resourceVersion it received (BOOKMARKs included). It records every event, every break and every resume.
A ``410 Gone`` means the resourceVersion expired and the watch cannot resume without a relist: it is recorded as
`expired` and the watch stops, since relisting would hide lost events.

`judge_watch` compares the events with the writes that were made (pure).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import quote, urlencode

from kubeha.probes.api import DEFAULT_CONNECT_TIMEOUT_S, USER_AGENT
from kubeha.probes.credentials import ApiEndpoint

__all__ = ["Break", "ResumingWatch", "WatchEvent", "WatchVerdict", "judge_watch"]

# The server ends a watch after this long; the client then resumes like after any other end.
WATCH_SERVER_TIMEOUT_S = 600
# With writes every fraction of a second, a silent connection for this long is considered dead.
WATCH_READ_TIMEOUT_S = 10.0
# Pause before reconnecting after a failed attempt (the load balancer may still route to a stopped server).
RECONNECT_PAUSE_S = 0.2
HTTP_OK = 200
HTTP_GONE = 410
DETAIL_CHARS = 300
JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WatchEvent:
    t_mono: float
    type: str
    name: str
    resource_version: int
    connection: int


@dataclass(frozen=True)
class Break:
    """A watch connection that ended (`reason`) at `t_mono`; `resumed_t` when a new one was established."""

    t_mono: float
    connection: int
    reason: str
    resumed_t: float | None = None
    from_version: int = 0


class ResumingWatch:
    """Watch ConfigMaps matching `selector` in `namespace` from `resource_version`, resuming after every break."""

    def __init__(
        self,
        endpoint: ApiEndpoint,
        namespace: str,
        selector: Mapping[str, str],
        resource_version: int,
        *,
        name: str = "watch",
    ) -> None:
        self.endpoint = endpoint
        self.namespace = namespace
        self.selector = dict(selector)
        self.name = name
        self._context = endpoint.ssl_context()
        self._lock = threading.Lock()
        self._events: list[WatchEvent] = []
        self._breaks: list[Break] = []
        self._errors: list[str] = []
        self._version = resource_version
        self._connection = 0
        self._connected_once = threading.Event()
        self._expired: str | None = None
        self._stop = threading.Event()
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    # -- life cycle -------------------------------------------------------------------------------------------------

    def start(self) -> ResumingWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            sock = self._socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the other side: the reader thread sees the end either way
        self._thread.join(JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            raise RuntimeError(f"watch {self.name} did not stop within {JOIN_TIMEOUT_S:.0f} s")

    def __enter__(self) -> ResumingWatch:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected_once.wait(timeout_s)

    # -- reading ----------------------------------------------------------------------------------------------------

    def events(self) -> tuple[WatchEvent, ...]:
        with self._lock:
            return tuple(self._events)

    def breaks(self) -> tuple[Break, ...]:
        with self._lock:
            return tuple(self._breaks)

    def errors(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._errors)

    @property
    def expired(self) -> str | None:
        with self._lock:
            return self._expired

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._version

    def names_added(self) -> frozenset[str]:
        return frozenset(event.name for event in self.events() if event.type == "ADDED")

    # -- the loop ---------------------------------------------------------------------------------------------------

    def _path(self, version: int) -> str:
        query = urlencode(
            {
                "watch": "true",
                "resourceVersion": str(version),
                "allowWatchBookmarks": "true",
                "labelSelector": ",".join(f"{key}={value}" for key, value in sorted(self.selector.items())),
                "timeoutSeconds": str(WATCH_SERVER_TIMEOUT_S),
            }
        )
        return f"{self.endpoint.base_path}/api/v1/namespaces/{quote(self.namespace)}/configmaps?{query}"

    def _note_error(self, text: str) -> None:
        with self._lock:
            self._errors.append(f"{time.monotonic():.3f} {text[:DETAIL_CHARS]}")

    def _run(self) -> None:
        while not self._stop.is_set():
            reason = self._one_connection()
            if self._stop.is_set() or self.expired is not None:
                return
            if reason is not None:
                # An established connection ended: a break, resumed by the next successful connection.
                with self._lock:
                    self._breaks.append(Break(time.monotonic(), self._connection, reason, None, self._version))
            self._stop.wait(RECONNECT_PAUSE_S)

    def _one_connection(self) -> str | None:
        """Run one watch request to its end; the reason it ended, or None if it never got going (already noted)."""
        endpoint = self.endpoint
        version = self.resource_version
        try:
            raw = socket.create_connection((endpoint.host, endpoint.port), timeout=DEFAULT_CONNECT_TIMEOUT_S)
        except OSError as error:
            self._note_error(f"connect: {type(error).__name__}: {error}")
            return None
        try:
            raw.settimeout(WATCH_READ_TIMEOUT_S)
            try:
                tls = self._context.wrap_socket(raw, server_hostname=endpoint.server_hostname)
            except OSError as error:
                self._note_error(f"tls: {type(error).__name__}: {error}")
                return None
            with self._lock:
                self._socket = tls
            if self._stop.is_set():
                return None
            connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=WATCH_READ_TIMEOUT_S)
            connection.sock = tls
            connection.auto_open = 0
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **endpoint.auth_headers()}
            try:
                connection.request("GET", self._path(version), headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as error:
                self._note_error(f"request: {type(error).__name__}: {error}")
                return None
            if response.status != HTTP_OK:
                body = response.read(DETAIL_CHARS).decode("utf-8", "replace")
                if response.status == HTTP_GONE:
                    with self._lock:
                        self._expired = f"HTTP 410 resuming from {version}: {body}"
                    return "expired"
                self._note_error(f"HTTP {response.status} {response.reason}: {body}")
                return None
            self._connected(version)
            return self._read(response)
        finally:
            with self._lock:
                self._socket = None
            raw.close()

    def _connected(self, version: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._connection += 1
            if self._breaks and self._breaks[-1].resumed_t is None:
                last = self._breaks[-1]
                self._breaks[-1] = Break(last.t_mono, last.connection, last.reason, now, version)
        self._connected_once.set()

    def _read(self, response: http.client.HTTPResponse) -> str:
        while not self._stop.is_set():
            try:
                line = response.readline()
            except (OSError, http.client.HTTPException) as error:
                return f"{type(error).__name__}: {error}"[:DETAIL_CHARS]
            if not line:
                return "the server ended the watch"
            if not line.strip():
                continue
            ended = self._event(line)
            if ended is not None:
                return ended
        return "stopped"

    def _event(self, line: bytes) -> str | None:
        arrived = time.monotonic()
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            self._note_error(f"unreadable event line {line[:DETAIL_CHARS]!r}")
            return "unreadable event"
        kind = str(event.get("type", "")) if isinstance(event, dict) else ""
        obj = event.get("object") if isinstance(event, dict) else None
        if not isinstance(obj, dict):
            self._note_error(f"event without object: {line[:DETAIL_CHARS]!r}")
            return "event without object"
        if kind == "ERROR":
            code = obj.get("code")
            message = str(obj.get("message", ""))[:DETAIL_CHARS]
            if code == HTTP_GONE:
                with self._lock:
                    self._expired = f"ERROR 410 at resourceVersion {self._version}: {message}"
                return "expired"
            self._note_error(f"ERROR event {code}: {message}")
            return f"server sent ERROR {code}"
        raw_metadata = obj.get("metadata")
        metadata: dict[str, object] = raw_metadata if isinstance(raw_metadata, dict) else {}
        raw_version = metadata.get("resourceVersion")
        try:
            version = int(str(raw_version))
        except ValueError:
            self._note_error(f"{kind} event with resourceVersion {raw_version!r}")
            return "event without resourceVersion"
        with self._lock:
            self._version = max(self._version, version)
            if kind != "BOOKMARK":
                self._events.append(WatchEvent(arrived, kind, str(metadata.get("name", "")), version, self._connection))
        return None


@dataclass(frozen=True)
class WatchVerdict:
    """What one watch saw, against what was written. Names are object names."""

    watch: str
    added: int
    lost: tuple[str, ...]
    duplicated: tuple[str, ...]
    unexpected: tuple[str, ...]
    out_of_order: tuple[str, ...]
    resumes: int
    expired: str | None

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.out_of_order or self.expired)

    def summary(self) -> str:
        parts = [f"{self.watch}: {self.added} ADDED events, {self.resumes} resume(s)"]
        if self.expired:
            parts.append(f"could not resume: {self.expired}")
        if self.lost:
            parts.append(f"{len(self.lost)} lost ({', '.join(self.lost[:5])})")
        if self.duplicated:
            parts.append(f"{len(self.duplicated)} duplicated ({', '.join(self.duplicated[:5])})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} never written ({', '.join(self.unexpected[:5])})")
        if self.out_of_order:
            parts.append(f"{len(self.out_of_order)} out of resourceVersion order ({', '.join(self.out_of_order[:5])})")
        return "; ".join(parts)


def judge_watch(
    watch: str,
    events: Iterable[WatchEvent],
    must_see: Iterable[str],
    may_see: Iterable[str],
    resumes: int,
    expired: str | None,
) -> WatchVerdict:
    """`must_see`: objects that exist (acknowledged writes, unknown ones found present); `may_see`: the rest written."""
    ordered = list(events)
    added = [event for event in ordered if event.type == "ADDED"]
    seen: dict[str, int] = {}
    for event in added:
        seen[event.name] = seen.get(event.name, 0) + 1
    required = set(must_see)
    allowed = required | set(may_see)
    out_of_order: list[str] = []
    last = 0
    for event in ordered:
        if event.resource_version <= last:
            out_of_order.append(f"{event.name}@{event.resource_version}")
        last = max(last, event.resource_version)
    return WatchVerdict(
        watch=watch,
        added=len(added),
        lost=tuple(sorted(required - set(seen))),
        duplicated=tuple(sorted(name for name, count in seen.items() if count > 1)),
        unexpected=tuple(sorted(set(seen) - allowed)),
        out_of_order=tuple(out_of_order),
        resumes=resumes,
        expired=expired,
    )
