"""Probes of the data plane: in-cluster DNS and HTTP loops, and an HTTP(S) prober run from this machine.

In-cluster loops. A probe pod (tools image, pinned to a node the test does not break) runs a shell loop that makes
one attempt every `interval_s` and prints one line per attempt::

    <start epoch s> <end epoch s> <outcome> <detail>

``outcome`` is ``ok`` or an error class (``timeout``, ``nxdomain``, ``servfail``, ``refused``, ``connect``,
``http-503`` ...); ``detail`` is the answer (A records, or the HTTP body: the echo pod's name). The test reads the
pod's log back (through the API, from the kubelet of the probe's node) and turns each line into a
`kubeha.core.outage.Sample`. Times are the node's wall clock converted to this process's monotonic clock; the nodes
of the embedded cluster share this machine's clock. A DNS attempt is one query (``dig +tries=1``): what one client
query experiences, without resolver retries that would hide a dead server.

Host prober. `HostHttpProber` makes one request per interval to each target (an ingress node address, a Host
header, optionally TLS with SNI and verification against the test's CA) on a NEW connection each time, in a thread
per target, and records Samples the same way.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from kubeha.cluster.client import REQUEST_TIMEOUT_S
from kubeha.core.outage import ProbeStats, Sample
from kubeha.probes.api import Phase, classify_os_error

from .kube import pod_log, wait_until
from .workloads import PROBE_CONTAINER, create_pod, probe_pod, wait_pod_running

__all__ = [
    "Attempt",
    "HostHttpProber",
    "HttpTarget",
    "InClusterProbe",
    "dns_loop_script",
    "http_loop_script",
    "parse_attempts",
    "stats_between",
]

DEFAULT_INTERVAL_S = 0.25
# Probing before a fault: every attempt must succeed then, or the fault would be measured against a broken state.
BASELINE_S = 5.0
NOT_FOUND = 404
DNS_QUERY_TIMEOUT_S = 1
HTTP_CONNECT_TIMEOUT_S = 1
HTTP_MAX_TIME_S = 3
FIRST_LINE_TIMEOUT_S = 30.0
HOST_PROBER_CONNECT_TIMEOUT_S = 1.0
HOST_PROBER_REQUEST_TIMEOUT_S = 3.0
HOST_PROBER_JOIN_SLACK_S = 5.0
BODY_LIMIT = 4096

# The loops print the detail with spaces replaced, so that a line always splits into four fields.
_DNS_LOOP = r"""
while :; do
  s=$(date +%s.%N)
  out=$(dig +time=$QUERY_TIMEOUT +tries=1 +noall +answer +comments "$NAME" "$QTYPE" 2>&1); rc=$?
  e=$(date +%s.%N)
  status=$(printf '%s\n' "$out" | sed -n 's/.*status: \([A-Z]*\),.*/\1/p' | head -n 1)
  answer=$(printf '%s\n' "$out" | awk '$4=="A" || $4=="AAAA" {print $5}' | sort | paste -sd, -)
  if [ $rc -eq 9 ]; then cls=timeout
  elif [ $rc -ne 0 ]; then cls=dig-exit-$rc
  elif [ "$status" != NOERROR ]; then cls=$(printf '%s' "${status:-no-status}" | tr 'A-Z' 'a-z')
  elif [ -z "$answer" ]; then cls=no-answer
  else cls=ok
  fi
  echo "$s $e $cls ${answer:--}"
  sleep $INTERVAL
done
"""

_HTTP_LOOP = r"""
while :; do
  s=$(date +%s.%N)
  body=$(curl -sS --connect-timeout $CONNECT_TIMEOUT --max-time $MAX_TIME -o - -w '\n%{http_code}' "$URL" 2>/dev/null)
  rc=$?
  e=$(date +%s.%N)
  code=$(printf '%s' "$body" | tail -n 1)
  text=$(printf '%s' "$body" | head -n 1 | tr -d '\r\n' | tr -c 'A-Za-z0-9._:-' '_' | cut -c1-80)
  case $rc in
    0) if [ "$code" = 200 ]; then cls=ok; else cls=http-$code; fi ;;
    7) cls=connect ;;
    28) cls=timeout ;;
    52) cls=empty-reply ;;
    56) cls=reset ;;
    *) cls=curl-exit-$rc ;;
  esac
  echo "$s $e $cls ${text:--}"
  sleep $INTERVAL
done
"""


def dns_loop_script() -> str:
    return _DNS_LOOP


def http_loop_script() -> str:
    return _HTTP_LOOP


@dataclass(frozen=True)
class Attempt:
    """One probe attempt: a Sample on this process's monotonic clock plus what was answered."""

    sample: Sample
    detail: str
    t_wall: float


def parse_attempts(text: str, *, check: Callable[[str], str | None] | None = None,
                   wall_to_mono: float | None = None) -> tuple[Attempt, ...]:
    """Parse a probe log. `check(detail)` may turn an ``ok`` line into a failure (returns the error class), e.g.
    an answer that is not the expected address. Incomplete lines (the loop was cut mid-line) are skipped."""
    offset = (time.time() - time.monotonic()) if wall_to_mono is None else wall_to_mono
    attempts = []
    for line in text.splitlines():
        fields = line.split(" ", 3)
        if len(fields) != 4:
            continue
        try:
            start, end = float(fields[0]), float(fields[1])
        except ValueError:
            continue
        outcome, detail = fields[2], fields[3]
        if outcome == "ok" and check is not None:
            wrong = check(detail)
            if wrong is not None:
                outcome = wrong
        ok = outcome == "ok"
        sample = Sample(t_mono=start - offset, ok=ok, error_class=None if ok else outcome,
                        latency_s=max(end - start, 0.0))
        attempts.append(Attempt(sample=sample, detail=detail, t_wall=start))
    return tuple(attempts)


def stats_between(attempts: Sequence[Attempt], start_mono: float, end_mono: float) -> ProbeStats:
    """ProbeStats of the attempts that started in [start_mono, end_mono]."""
    chosen = [a.sample for a in attempts if start_mono <= a.sample.t_mono <= end_mono]
    return ProbeStats.from_samples(chosen)


class InClusterProbe:
    """A probe pod running one of the loops on a chosen node; `attempts()` reads what it recorded so far."""

    def __init__(self, client: ApiClient, namespace: str, name: str, node: str, script: str,
                 env: Mapping[str, str], *, check: Callable[[str], str | None] | None = None) -> None:
        self._client = client
        self.namespace = namespace
        self.name = name
        self.node = node
        self._script = script
        self._env = dict(env)
        self._check = check

    def start(self) -> InClusterProbe:
        create_pod(self._client, self.namespace,
                   probe_pod(self.name, self.node, command=["bash", "-c", self._script], env=self._env))
        wait_pod_running(self._client, self.namespace, self.name)
        wait_until(lambda: None if self.attempts() else "no attempt logged yet", timeout_s=FIRST_LINE_TIMEOUT_S,
                   what=f"first attempt of probe {self.namespace}/{self.name}")
        return self

    def __enter__(self) -> InClusterProbe:
        """Start the probe and require a failure-free baseline (`BASELINE_S`) before anything is broken."""
        self.start()
        try:
            self.require_baseline()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def require_baseline(self) -> None:
        time.sleep(BASELINE_S)
        attempts = self.attempts()
        failed = [a for a in attempts if not a.sample.ok]
        if failed or not attempts:
            first = f"{failed[0].sample.error_class} {failed[0].detail}" if failed else "no attempt logged"
            raise AssertionError(f"probe {self.name} on {self.node} failed before any fault ({len(failed)} of "
                                 f"{len(attempts)} attempts; first: {first}): not a steady state to measure from")

    def attempts(self) -> tuple[Attempt, ...]:
        text = pod_log(self._client, self.namespace, self.name, container=PROBE_CONTAINER)
        return parse_attempts(text, check=self._check)

    def stop(self) -> None:
        try:
            CoreV1Api(self._client).delete_namespaced_pod(self.name, self.namespace, grace_period_seconds=0,
                                                          _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as error:
            if error.status != NOT_FOUND:
                raise

    @classmethod
    def dns(cls, client: ApiClient, namespace: str, name: str, node: str, query: str, *, expect: str | None = None,
            interval_s: float = DEFAULT_INTERVAL_S) -> InClusterProbe:
        """Queries `query` (A) through the pod's resolver (the cluster DNS Service); `expect`: an address the
        answer must contain."""

        def check(detail: str) -> str | None:
            return None if expect is None or expect in detail.split(",") else "wrong-answer"

        env = {"NAME": query, "QTYPE": "A", "QUERY_TIMEOUT": str(DNS_QUERY_TIMEOUT_S), "INTERVAL": str(interval_s)}
        return cls(client, namespace, name, node, dns_loop_script(), env, check=check)

    @classmethod
    def http(cls, client: ApiClient, namespace: str, name: str, node: str, url: str, *, body_prefix: str,
             interval_s: float = DEFAULT_INTERVAL_S) -> InClusterProbe:
        """GETs `url` on a new connection each time; a 200 whose body does not start with `body_prefix` (the echo
        pod name prefix) is a failure of class ``wrong-backend``."""

        def check(detail: str) -> str | None:
            return None if detail.startswith(body_prefix) else "wrong-backend"

        env = {"URL": url, "CONNECT_TIMEOUT": str(HTTP_CONNECT_TIMEOUT_S), "MAX_TIME": str(HTTP_MAX_TIME_S),
               "INTERVAL": str(interval_s)}
        return cls(client, namespace, name, node, http_loop_script(), env, check=check)


# ---------------------------------------------------------------------------------------------------------------------
# From this machine


@dataclass(frozen=True)
class HttpTarget:
    """Where to send a request: `address` (an ingress node), the Host (and SNI) name, the path; TLS when `tls` is
    an SSL context (which verifies the certificate against the test's CA and the host name)."""

    name: str
    address: str
    host: str
    path: str = "/"
    tls: ssl.SSLContext | None = None

    @property
    def port(self) -> int:
        return 443 if self.tls is not None else 80

    def describe(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}{self.path} at {self.address}:{self.port}"


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: str
    latency_s: float
    peer_cert_subject: str = ""


class HttpError(Exception):
    def __init__(self, error_class: str, detail: str) -> None:
        super().__init__(f"{error_class}: {detail}")
        self.error_class = error_class
        self.detail = detail


def http_request(target: HttpTarget, *, connect_timeout_s: float = HOST_PROBER_CONNECT_TIMEOUT_S,
                 timeout_s: float = HOST_PROBER_REQUEST_TIMEOUT_S) -> HttpAnswer:
    """One GET on a new connection (TLS with SNI = target.host when target.tls). Raises HttpError below HTTP."""
    start = time.monotonic()
    try:
        raw = socket.create_connection((target.address, target.port), timeout=connect_timeout_s)
    except OSError as error:
        raise HttpError(str(classify_os_error(error, Phase.CONNECT)), f"{type(error).__name__}: {error}") from error
    sock: socket.socket = raw
    subject = ""
    try:
        raw.settimeout(timeout_s)
        if target.tls is not None:
            try:
                tls_sock = target.tls.wrap_socket(raw, server_hostname=target.host)
            except OSError as error:
                raise HttpError(str(classify_os_error(error, Phase.TLS)), f"{type(error).__name__}: {error}") from error
            sock = tls_sock
            cert = tls_sock.getpeercert()
            subject = _subject(cert) if cert else ""
        connection = http.client.HTTPConnection(target.address, target.port, timeout=timeout_s)
        connection.sock = sock
        connection.auto_open = 0
        try:
            connection.request("GET", target.path, headers={"Host": target.host, "Connection": "close",
                                                            "User-Agent": "kubeha-dataplane-probe"})
            response = connection.getresponse()
            body = response.read(BODY_LIMIT).decode("utf-8", errors="replace")
        except OSError as error:
            error_class = str(classify_os_error(error, Phase.RESPONSE))
            raise HttpError(error_class, f"{type(error).__name__}: {error}") from error
        except http.client.HTTPException as error:
            raise HttpError("protocol", f"{type(error).__name__}: {error}") from error
        return HttpAnswer(status=response.status, body=body.strip(), latency_s=time.monotonic() - start,
                          peer_cert_subject=subject)
    finally:
        sock.close()


def _subject(cert: Mapping[str, Any]) -> str:
    names = [value for key, value in ((k, v) for rdn in cert.get("subject", ()) for k, v in rdn) if key == "commonName"]
    return ",".join(str(name) for name in names)


@dataclass
class _Series:
    target: HttpTarget
    samples: list[Sample] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


class HostHttpProber:
    """Probes each target from this machine every `interval_s`, each attempt on a new connection, one thread per
    target. An attempt succeeds when the answer is 200 and `accept(body)` returns None (else its error class)."""

    def __init__(self, targets: Sequence[HttpTarget], accept: Callable[[HttpTarget, str], str | None], *,
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"probe target names must be unique, got {names}")
        self._series = {t.name: _Series(t) for t in targets}
        self._accept = accept
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> HostHttpProber:
        for series in self._series.values():
            thread = threading.Thread(target=self._run, args=(series,), name=f"probe-{series.target.name}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(HOST_PROBER_REQUEST_TIMEOUT_S + HOST_PROBER_JOIN_SLACK_S)

    def _attempt(self, target: HttpTarget) -> tuple[Sample, str]:
        start = time.monotonic()
        try:
            answer = http_request(target)
        except HttpError as error:
            return Sample(start, False, error.error_class, time.monotonic() - start), error.detail[:200]
        if answer.status != 200:
            return Sample(start, False, f"http-{answer.status}", answer.latency_s), answer.body[:200]
        wrong = self._accept(target, answer.body)
        if wrong is not None:
            return Sample(start, False, wrong, answer.latency_s), answer.body[:200]
        return Sample(start, True, None, answer.latency_s), answer.body[:200]

    def _run(self, series: _Series) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            sample, detail = self._attempt(series.target)
            with self._lock:
                series.samples.append(sample)
                series.details.append(detail)
            self._stop.wait(max(self._interval_s - (time.monotonic() - started), 0.0))

    def samples(self, name: str) -> tuple[Sample, ...]:
        with self._lock:
            return tuple(self._series[name].samples)

    def details(self, name: str) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._series[name].details)

    def wait_for_success(self, name: str, after_mono: float, *, timeout_s: float) -> float:
        """Seconds from `after_mono` to the first successful attempt of `name` that started after it."""

        def check() -> str | None:
            for sample in self.samples(name):
                if sample.t_mono >= after_mono and sample.ok:
                    return None
            failed = [s for s in self.samples(name) if s.t_mono >= after_mono]
            last = failed[-1].error_class if failed else "no attempt yet"
            return f"{name}: no successful attempt yet (last: {last})"

        wait_until(check, timeout_s=timeout_s, what=f"{self._series[name].target.describe()} answering again",
                   poll_s=0.5)
        first = next(s for s in self.samples(name) if s.t_mono >= after_mono and s.ok)
        return first.t_mono - after_mono
