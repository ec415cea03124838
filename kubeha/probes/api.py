"""What a new API client sees, ten times a second: `ApiProbe`, and the one-connection HTTPS transport under it.

Every probe attempt opens a NEW TCP connection and a NEW TLS session (no keep-alive across attempts, no pooling, no
session resumption), asks ``GET /readyz`` and then makes one cheap authenticated read on that connection, each with
a short timeout, and closes it. That is what a client connecting during a fail-over experiences; a pooled connection
would hide the load balancer re-routing and the TLS handshake. Each attempt becomes one `kubeha.core.outage.Sample`
stamped with `time.monotonic()` at its start, failed attempts carry an `ErrorClass` naming the phase and the cause.

`Connection` is also the transport of the write recorder and the Lease watcher: it reports the phase a failure happened
in, so callers can tell "the request never reached a server" (connect, TLS) from "the request may have been processed"
(send, response).
"""

from __future__ import annotations

import enum
import errno
import http.client
import math
from concurrent.futures import ThreadPoolExecutor
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from kubeha.core.outage import OutageWindow, ProbeStats, Sample, outage_windows
from kubeha.core.timeline import Timeline, TimelineEvent
from kubeha.probes.credentials import ApiEndpoint

__all__ = [
    "ApiProbe",
    "ApiProbeResult",
    "Connection",
    "DEFAULT_APISERVER_PORT",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_INTERVAL_S",
    "DEFAULT_READ_PATH",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "ErrorClass",
    "HttpResponse",
    "Phase",
    "ProbeTarget",
    "READYZ_PATH",
    "TargetResult",
    "TransportError",
    "classify_os_error",
    "classify_status",
    "one_request",
]

DEFAULT_INTERVAL_S = 0.1
DEFAULT_CONNECT_TIMEOUT_S = 1.0
DEFAULT_REQUEST_TIMEOUT_S = 1.0
# A probe left running by mistake stops by itself after this long, bounding its memory (36 000 samples per target).
DEFAULT_MAX_DURATION_S = 3600.0
DEFAULT_APISERVER_PORT = 6443
DEFAULT_TARGET_NAME = "lb"
READYZ_PATH = "/readyz"
READYZ_OK_BODY = b"ok"
# Cheap, authenticated and always present: one namespace object.
DEFAULT_READ_PATH = "/api/v1/namespaces/kube-system"
MAX_BODY_BYTES = 16 * 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
DETAIL_MAX_CHARS = 300
USER_AGENT = "kubeha-probe"
# Extra time allowed for a probe thread to finish its current attempt after stop().
JOIN_SLACK_S = 2.0
TIMELINE_SOURCE_PREFIX = "api-probe"

HTTP_OK = 200
HTTP_TOO_MANY_REQUESTS = 429
HTTP_UNAUTHORIZED = 401
HTTP_FORBIDDEN = 403
HTTP_CLIENT_ERROR_MIN = 400
HTTP_SERVER_ERROR_MIN = 500
HTTP_SERVER_ERROR_MAX = 599


class ErrorClass(enum.StrEnum):
    """Why an attempt failed. Connect and TLS classes mean the request never reached an API server."""

    CONNECT_REFUSED = "connect-refused"
    CONNECT_TIMEOUT = "connect-timeout"
    UNREACHABLE = "unreachable"
    DNS = "dns"
    TLS = "tls"
    TLS_VERIFY = "tls-verify"
    TLS_TIMEOUT = "tls-timeout"
    RESET = "reset"
    CLOSED = "closed"
    SEND_TIMEOUT = "send-timeout"
    READ_TIMEOUT = "read-timeout"
    PROTOCOL = "protocol"
    SOCKET = "socket-error"
    HTTP_5XX = "http-5xx"
    HTTP_429 = "http-429"
    HTTP_AUTH = "http-401/403"
    HTTP_4XX = "http-4xx"
    HTTP_OTHER = "http-other"
    READYZ_NOT_OK = "readyz-not-ok"


class Phase(enum.Enum):
    """Where in an exchange a transport failure happened."""

    CONNECT = "connect"
    TLS = "tls"
    SEND = "send"
    RESPONSE = "response"

    @property
    def request_sent(self) -> bool:
        """Whether the server may have received (and acted on) the request."""
        return self in (Phase.SEND, Phase.RESPONSE)


_TIMEOUT_BY_PHASE = {
    Phase.CONNECT: ErrorClass.CONNECT_TIMEOUT,
    Phase.TLS: ErrorClass.TLS_TIMEOUT,
    Phase.SEND: ErrorClass.SEND_TIMEOUT,
    Phase.RESPONSE: ErrorClass.READ_TIMEOUT,
}
_UNREACHABLE_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


def classify_os_error(error: OSError, phase: Phase) -> ErrorClass:
    """The `ErrorClass` of a socket, TLS or connection error raised during `phase`."""
    if isinstance(error, socket.gaierror):
        return ErrorClass.DNS
    if isinstance(error, TimeoutError) or error.errno == errno.ETIMEDOUT:
        return _TIMEOUT_BY_PHASE[phase]
    if isinstance(error, ConnectionRefusedError):
        return ErrorClass.CONNECT_REFUSED
    if isinstance(error, http.client.RemoteDisconnected):
        return ErrorClass.CLOSED
    if isinstance(error, ssl.SSLCertVerificationError):
        return ErrorClass.TLS_VERIFY
    if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return ErrorClass.CLOSED
    if isinstance(error, ssl.SSLError):
        return ErrorClass.TLS
    if isinstance(error, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return ErrorClass.RESET
    if error.errno in _UNREACHABLE_ERRNOS:
        return ErrorClass.UNREACHABLE
    if error.errno in _RESET_ERRNOS:
        return ErrorClass.RESET
    return ErrorClass.SOCKET


def classify_status(status: int) -> ErrorClass | None:
    """The `ErrorClass` of an HTTP status, None for a success (2xx)."""
    if HTTP_OK <= status < HTTP_OK + 100:
        return None
    if status == HTTP_TOO_MANY_REQUESTS:
        return ErrorClass.HTTP_429
    if status in (HTTP_UNAUTHORIZED, HTTP_FORBIDDEN):
        return ErrorClass.HTTP_AUTH
    if HTTP_SERVER_ERROR_MIN <= status <= HTTP_SERVER_ERROR_MAX:
        return ErrorClass.HTTP_5XX
    if HTTP_CLIENT_ERROR_MIN <= status < HTTP_SERVER_ERROR_MIN:
        return ErrorClass.HTTP_4XX
    return ErrorClass.HTTP_OTHER


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text[:DETAIL_MAX_CHARS]


class TransportError(Exception):
    """One HTTPS exchange failed below HTTP: `phase` says how far it got, `error_class` why it failed."""

    def __init__(self, error_class: ErrorClass, phase: Phase, detail: str) -> None:
        super().__init__(f"{error_class} during {phase.value}: {detail}")
        self.error_class = error_class
        self.phase = phase
        self.detail = detail

    @property
    def request_sent(self) -> bool:
        return self.phase.request_sent


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    body: bytes

    @property
    def error_class(self) -> ErrorClass | None:
        return classify_status(self.status)

    def summary(self) -> str:
        """Status line and the start of the body (an API `Status` message), for error details."""
        text = self.body[:DETAIL_MAX_CHARS].decode("utf-8", errors="replace")
        return f"HTTP {self.status} {self.reason}: {text}"


class Connection:
    """One fresh TCP + TLS connection to an endpoint, for one or a few sequential requests; not thread-safe.

    The connection is opened on the first request; if the server closes it between requests a new one is opened
    (never silently in plain text). Every failure raises `TransportError`.
    """

    def __init__(
        self,
        endpoint: ApiEndpoint,
        context: ssl.SSLContext,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        _check_positive(connect_timeout_s, "connect_timeout_s")
        self._endpoint = endpoint
        self._context = context
        self._connect_timeout_s = connect_timeout_s
        self._http: http.client.HTTPConnection | None = None
        self._tls: ssl.SSLSocket | None = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._tls is not None:
            self._tls.close()
            self._tls = None

    def _open(self) -> tuple[http.client.HTTPConnection, ssl.SSLSocket]:
        self.close()
        endpoint = self._endpoint
        deadline = time.monotonic() + self._connect_timeout_s
        try:
            raw = socket.create_connection((endpoint.host, endpoint.port), timeout=self._connect_timeout_s)
        except OSError as error:
            raise TransportError(classify_os_error(error, Phase.CONNECT), Phase.CONNECT, _describe(error)) from error
        # Like Go's net package (the API server's clients): no Nagle delay on small requests.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raw.close()
            raise TransportError(ErrorClass.TLS_TIMEOUT, Phase.TLS, "no time left for the TLS handshake")
        raw.settimeout(remaining)
        try:
            tls = self._context.wrap_socket(raw, server_hostname=endpoint.server_hostname)
        except OSError as error:
            raw.close()
            raise TransportError(classify_os_error(error, Phase.TLS), Phase.TLS, _describe(error)) from error
        connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=self._connect_timeout_s)
        connection.sock = tls
        # Never let http.client reconnect on its own: it would do so without TLS.
        connection.auto_open = 0
        self._http, self._tls = connection, tls
        return connection, tls

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """Send one request on this connection and read the whole response within `timeout_s`."""
        _check_positive(timeout_s, "timeout_s")
        if self._http is None or self._http.sock is None or self._tls is None:
            connection, tls = self._open()
        else:
            connection, tls = self._http, self._tls
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        all_headers.update(self._endpoint.auth_headers())
        if headers is not None:
            all_headers.update(headers)
        deadline = time.monotonic() + timeout_s
        tls.settimeout(timeout_s)
        try:
            connection.request(method, self._endpoint.base_path + path, body=body, headers=all_headers)
        except OSError as error:
            self.close()
            raise TransportError(classify_os_error(error, Phase.SEND), Phase.SEND, _describe(error)) from error
        except http.client.HTTPException as error:
            self.close()
            raise TransportError(ErrorClass.PROTOCOL, Phase.SEND, _describe(error)) from error
        try:
            return self._read_response(connection, tls, deadline)
        except OSError as error:
            self.close()
            raise TransportError(classify_os_error(error, Phase.RESPONSE), Phase.RESPONSE, _describe(error)) from error
        except http.client.IncompleteRead as error:
            self.close()
            raise TransportError(ErrorClass.CLOSED, Phase.RESPONSE, _describe(error)) from error
        except http.client.HTTPException as error:
            self.close()
            raise TransportError(ErrorClass.PROTOCOL, Phase.RESPONSE, _describe(error)) from error

    def _read_response(
        self, connection: http.client.HTTPConnection, tls: ssl.SSLSocket, deadline: float
    ) -> HttpResponse:
        tls.settimeout(_remaining(deadline))
        response = connection.getresponse()
        chunks: list[bytes] = []
        size = 0
        # The response closes itself once the body is complete; on a connection the server closes, that also
        # releases the socket, so the timeout is only adjusted while the response is open.
        while not response.isclosed():
            tls.settimeout(_remaining(deadline))
            chunk = response.read(READ_CHUNK_BYTES)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                self.close()
                raise TransportError(
                    ErrorClass.PROTOCOL, Phase.RESPONSE, f"response body larger than {MAX_BODY_BYTES} bytes"
                )
            chunks.append(chunk)
        if response.will_close:
            self.close()
        return HttpResponse(status=response.status, reason=response.reason, body=b"".join(chunks))


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("request deadline passed")
    return remaining


def _check_positive(value: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")


def one_request(
    endpoint: ApiEndpoint,
    context: ssl.SSLContext,
    method: str,
    path: str,
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    """One request on a fresh connection, closed afterwards. Raises `TransportError`."""
    with Connection(endpoint, context, connect_timeout_s=connect_timeout_s) as connection:
        return connection.request(method, path, timeout_s=timeout_s, body=body, headers=headers)


@dataclass(frozen=True)
class ProbeTarget:
    """A named API endpoint to probe: the load balancer, or one control-plane node's API server directly."""

    name: str
    endpoint: ApiEndpoint

    @classmethod
    def node(
        cls,
        endpoint: ApiEndpoint,
        name: str,
        address: str,
        *,
        port: int = DEFAULT_APISERVER_PORT,
        tls_server_name: str | None = None,
    ) -> ProbeTarget:
        """Node `name`'s API server at `address`, with `endpoint`'s credentials.

        kubeadm puts each node's advertise address in its serving certificate, so the address is verified as is;
        pass `tls_server_name` when the certificate names the node otherwise.
        """
        host = f"[{address}]" if ":" in address else address
        return cls(name=name, endpoint=endpoint.with_server(f"https://{host}:{port}", tls_server_name=tls_server_name))


@dataclass(frozen=True)
class TargetResult:
    """Everything one target's probe recorded."""

    target: str
    server: str
    samples: tuple[Sample, ...]
    stats: ProbeStats
    windows: tuple[OutageWindow, ...]
    # (error class, first detail seen for it), in order of first appearance.
    error_examples: tuple[tuple[str, str], ...]
    interval_s: float

    @property
    def rate_hz(self) -> float:
        """Achieved attempts per second over the run."""
        span = self.stats.span_s
        return 0.0 if span <= 0 else (self.stats.count - 1) / span


@dataclass(frozen=True)
class ApiProbeResult:
    """The results of all targets of one `ApiProbe` run; the first target is the main one (the load balancer)."""

    targets: tuple[TargetResult, ...]
    started_wall: float
    stopped_wall: float

    @property
    def main(self) -> TargetResult:
        return self.targets[0]

    def target(self, name: str) -> TargetResult:
        for result in self.targets:
            if result.target == name:
                return result
        raise KeyError(f"no probe target {name!r}; probed: {[result.target for result in self.targets]}")


class _TargetRunner:
    """The probe loop of one target, run in its own thread."""

    def __init__(self, probe: ApiProbe, target: ProbeTarget) -> None:
        self.probe = probe
        self.target = target
        self.context = target.endpoint.ssl_context()
        self.lock = threading.Lock()
        self.samples: list[Sample] = []
        self.examples: dict[str, str] = {}
        self.last_ok: bool | None = None
        self.thread = threading.Thread(
            target=self.run, name=f"{TIMELINE_SOURCE_PREFIX}-{target.name}", daemon=True
        )

    def attempt(self) -> tuple[Sample, str | None]:
        probe = self.probe
        started = time.monotonic()
        error_class: ErrorClass | None = None
        detail: str | None = None
        try:
            with Connection(self.target.endpoint, self.context, connect_timeout_s=probe.connect_timeout_s) as conn:
                readyz = conn.request("GET", READYZ_PATH, timeout_s=probe.request_timeout_s)
                if readyz.status in (HTTP_TOO_MANY_REQUESTS, HTTP_UNAUTHORIZED, HTTP_FORBIDDEN):
                    error_class, detail = classify_status(readyz.status), readyz.summary()
                elif readyz.status != HTTP_OK or readyz.body.strip() != READYZ_OK_BODY:
                    error_class, detail = ErrorClass.READYZ_NOT_OK, readyz.summary()
                else:
                    read = conn.request("GET", probe.read_path, timeout_s=probe.request_timeout_s)
                    error_class = read.error_class
                    if error_class is not None:
                        detail = read.summary()
        except TransportError as error:
            error_class, detail = error.error_class, error.detail
        latency = time.monotonic() - started
        if error_class is None:
            return Sample(t_mono=started, ok=True, error_class=None, latency_s=latency), None
        return Sample(t_mono=started, ok=False, error_class=error_class.value, latency_s=latency), detail

    def record(self, sample: Sample, detail: str | None) -> None:
        with self.lock:
            self.samples.append(sample)
            if sample.error_class is not None and detail is not None:
                self.examples.setdefault(sample.error_class, detail)
        if sample.ok != self.last_ok:
            if self.last_ok is not None or not sample.ok:
                self.probe._transition(self.target.name, sample)
            self.last_ok = sample.ok

    def run(self) -> None:
        """Start one attempt per interval, on schedule, whatever earlier attempts are doing.

        An attempt can take up to the connect plus two request timeouts when the API is down; running attempts
        concurrently keeps the probe rate at 1/interval through an outage instead of dropping to one per timeout.
        Samples carry their start time, so out-of-order completion does not matter.
        """
        probe = self.probe
        interval = probe.interval_s
        worst_case_s = probe.connect_timeout_s + 2 * probe.request_timeout_s
        in_flight_limit = max(1, math.ceil(worst_case_s / interval) + 1)
        slots = threading.BoundedSemaphore(in_flight_limit)
        next_t = time.monotonic()
        deadline = next_t + probe.max_duration_s

        def one() -> None:
            try:
                sample, detail = self.attempt()
                self.record(sample, detail)
            finally:
                slots.release()

        with ThreadPoolExecutor(max_workers=in_flight_limit,
                                thread_name_prefix=f"kubeha-probe-{self.target.name}") as pool:
            while not probe._stop.is_set() and time.monotonic() < deadline:
                if slots.acquire(blocking=False):
                    pool.submit(one)
                next_t += interval
                now = time.monotonic()
                if next_t < now:
                    # The scheduler itself was late (a loaded machine): skip missed slots rather than bunch them.
                    next_t += math.ceil((now - next_t) / interval) * interval
                probe._stop.wait(next_t - now)

    def snapshot(self) -> tuple[tuple[Sample, ...], tuple[tuple[str, str], ...]]:
        with self.lock:
            return tuple(self.samples), tuple(self.examples.items())


class ApiProbe:
    """Probe the API through `endpoint` (and optionally each node directly) from background threads.

    ``with ApiProbe(endpoint) as probe: ...`` starts probing on entry and stops on exit; `result()` gives samples,
    `ProbeStats` and outage windows per target. With a `timeline`, each outage start and end is appended to it.
    """

    def __init__(
        self,
        endpoint: ApiEndpoint,
        *,
        name: str = DEFAULT_TARGET_NAME,
        nodes: Sequence[ProbeTarget] = (),
        interval_s: float = DEFAULT_INTERVAL_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        read_path: str = DEFAULT_READ_PATH,
        max_duration_s: float = DEFAULT_MAX_DURATION_S,
        min_failures: int = 1,
        timeline: Timeline | None = None,
        test_id: str | None = None,
    ) -> None:
        for value, what in (
            (interval_s, "interval_s"),
            (connect_timeout_s, "connect_timeout_s"),
            (request_timeout_s, "request_timeout_s"),
            (max_duration_s, "max_duration_s"),
        ):
            _check_positive(value, what)
        if not read_path.startswith("/"):
            raise ValueError(f"read_path must be an absolute API path such as {DEFAULT_READ_PATH!r}, got {read_path!r}")
        targets = (ProbeTarget(name, endpoint), *nodes)
        names = [target.name for target in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"probe target names must be unique, got {names}: name node targets after their nodes")
        self.interval_s = float(interval_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.request_timeout_s = float(request_timeout_s)
        self.read_path = read_path
        self.max_duration_s = float(max_duration_s)
        self.min_failures = min_failures
        self._timeline = timeline
        self._test_id = test_id
        self._targets = targets
        self._stop = threading.Event()
        self._runners: list[_TargetRunner] = []
        self._started_wall: float | None = None
        self._stopped_wall: float | None = None

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(target.name for target in self._targets)

    @property
    def running(self) -> bool:
        return any(runner.thread.is_alive() for runner in self._runners)

    def start(self) -> ApiProbe:
        if self._runners:
            raise RuntimeError("this ApiProbe was already started; create a new one for another run")
        self._runners = [_TargetRunner(self, target) for target in self._targets]
        self._started_wall = time.time()
        for runner in self._runners:
            runner.thread.start()
        return self

    def stop(self) -> None:
        """Stop probing and wait for the attempts in flight (bounded by the timeouts)."""
        self._stop.set()
        # An attempt is at most two connections (if the server closes after /readyz) and two requests.
        bound = 2 * (self.connect_timeout_s + self.request_timeout_s) + JOIN_SLACK_S
        deadline = time.monotonic() + bound
        for runner in self._runners:
            runner.thread.join(max(deadline - time.monotonic(), 0.0))
        stuck = [runner.target.name for runner in self._runners if runner.thread.is_alive()]
        if self._stopped_wall is None:
            self._stopped_wall = time.time()
        if stuck:
            raise RuntimeError(f"probe threads for {stuck} did not stop within {bound:.1f} s")

    def __enter__(self) -> ApiProbe:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _runner(self, target: str | None) -> _TargetRunner:
        if not self._runners:
            raise RuntimeError("the probe has not been started: use `with ApiProbe(...)` or call start()")
        if target is None:
            return self._runners[0]
        for runner in self._runners:
            if runner.target.name == target:
                return runner
        raise KeyError(f"no probe target {target!r}; probed: {list(self.target_names)}")

    def samples(self, target: str | None = None) -> tuple[Sample, ...]:
        """A snapshot of the samples of `target` (default: the main target), safe while probing."""
        return self._runner(target).snapshot()[0]

    def windows(self, target: str | None = None) -> tuple[OutageWindow, ...]:
        return tuple(outage_windows(self.samples(target), min_failures=self.min_failures))

    def _transition(self, target: str, sample: Sample) -> None:
        if self._timeline is None:
            return
        kind = "outage-end" if sample.ok else "outage-start"
        detail = "ok" if sample.ok else f"{sample.error_class}"
        self._timeline.append(
            TimelineEvent(
                t_mono=sample.t_mono,
                t_wall=time.time() - (time.monotonic() - sample.t_mono),
                source=f"{TIMELINE_SOURCE_PREFIX}/{target}",
                kind=kind,
                detail=detail,
                test_id=self._test_id,
            )
        )

    def result(self) -> ApiProbeResult:
        """Samples, stats and outage windows of every target so far (raises if a target recorded nothing)."""
        if not self._runners or self._started_wall is None:
            raise RuntimeError("the probe has not been started: use `with ApiProbe(...)` or call start()")
        results: list[TargetResult] = []
        for runner in self._runners:
            samples, examples = runner.snapshot()
            stats = ProbeStats.from_samples(samples, min_failures=self.min_failures)
            results.append(
                TargetResult(
                    target=runner.target.name,
                    server=runner.target.endpoint.server,
                    samples=samples,
                    stats=stats,
                    windows=stats.windows,
                    error_examples=examples,
                    interval_s=self.interval_s,
                )
            )
        stopped = self._stopped_wall if self._stopped_wall is not None else time.time()
        return ApiProbeResult(targets=tuple(results), started_wall=self._started_wall, stopped_wall=stopped)
