"""Run a command in a container through the API's exec subresource (what ``kubectl exec`` does).

`PodExec` owns its own `ApiClient` for one API endpoint (the load balancer, or one control-plane node's API server
directly, which keeps working while other control-plane nodes are down): the kubernetes package's websocket helper
temporarily replaces a method of the client it is given, so a client is never shared with other threads.

`PodExec.run` runs a command to completion within a deadline. `PodExec.session` starts a long-running command and
collects its standard output line by line, each line stamped with `time.monotonic()` on arrival, from a background
thread.

The websocket library has no connect timeout of its own, so every exec runs in a daemon thread and the caller stops
waiting at its deadline; a thread left behind ends when the API server closes the connection.
"""

from __future__ import annotations

import json
import queue
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from urllib3.exceptions import HTTPError
from websocket import WebSocketException

from kubeha.probes.credentials import ApiEndpoint

__all__ = ["ExecError", "ExecResult", "ExecSession", "PodExec", "is_connection_failure", "parse_exit_status"]

STDOUT_CHANNEL = 1
STDERR_CHANNEL = 2
ERROR_CHANNEL = 3
# How long one websocket poll waits for data before checking whether the caller stopped the session.
SESSION_POLL_S = 0.2
# Output kept from a failing command in error messages.
DETAIL_CHARS = 500
# Extra time for the exec thread to hand over its result after the command's own deadline.
RESULT_SLACK_S = 2.0

# Opening the exec stream is retried this often when the connection itself failed (the load balancer can hand a new
# connection to an API server that has just died while another test holds a control-plane node down): the command
# has not started then, so a retry cannot run it twice.
OPEN_ATTEMPTS = 3
OPEN_RETRY_DELAY_S = 1.0

_EXEC_ERRORS = (ApiException, HTTPError, WebSocketException, OSError, ssl.SSLError, ValueError)


def is_connection_failure(error: BaseException) -> bool:
    """Whether opening an exec stream failed before the API server took the request (or with a 5xx from a server
    shutting down), as opposed to an answer such as 403 or 404 that a retry would only repeat."""
    if isinstance(error, ApiException):
        return not error.status or error.status >= 500
    return isinstance(error, (HTTPError, WebSocketException, OSError, ssl.SSLError))


class ExecError(RuntimeError):
    """The command could not be run, or did not finish in time (not: it ran and exited non-zero)."""


@dataclass(frozen=True)
class ExecResult:
    pod: str
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        output = (self.stderr.strip() or self.stdout.strip())[-DETAIL_CHARS:]
        return f"`{' '.join(self.argv)}` in pod {self.pod} exited {self.exit_code}: {output or '(no output)'}"


def parse_exit_status(text: str) -> tuple[int | None, str]:
    """The exit code in the exec error channel's `Status` (0 on Success), or None and the error for other failures."""
    if not text.strip():
        return None, "the exec stream ended without an exit status"
    try:
        status = json.loads(text)
    except json.JSONDecodeError:
        return None, f"unreadable exit status {text[:DETAIL_CHARS]!r}"
    if not isinstance(status, dict):
        return None, f"unreadable exit status {text[:DETAIL_CHARS]!r}"
    if status.get("status") == "Success":
        return 0, ""
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if status.get("reason") == "NonZeroExitCode" and isinstance(causes, list):
        for cause in causes:
            if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
                try:
                    return int(str(cause.get("message"))), ""
                except ValueError:
                    break
    return None, str(status.get("message") or text[:DETAIL_CHARS])


@dataclass(frozen=True)
class _Outcome:
    result: ExecResult | None = None
    error: str = ""


class PodExec:
    """Exec into pods through `endpoint` (one API server or the load balancer)."""

    def __init__(self, endpoint: ApiEndpoint) -> None:
        self.endpoint = endpoint
        self._client: ApiClient = endpoint.new_api_client(retries=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> PodExec:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open(self, namespace: str, pod: str, container: str, argv: Sequence[str]) -> object:
        """Open the exec stream, on a new connection up to `OPEN_ATTEMPTS` times while the connection fails."""
        for _ in range(OPEN_ATTEMPTS - 1):
            try:
                return self._open_once(namespace, pod, container, argv)
            except _EXEC_ERRORS as error:
                if not is_connection_failure(error):
                    raise
            time.sleep(OPEN_RETRY_DELAY_S)
        return self._open_once(namespace, pod, container, argv)

    def _open_once(self, namespace: str, pod: str, container: str, argv: Sequence[str]) -> object:
        with self._lock:
            return stream(
                CoreV1Api(self._client).connect_get_namespaced_pod_exec,
                pod,
                namespace,
                command=list(argv),
                container=container,
                stderr=True,
                stdin=False,
                stdout=True,
                tty=False,
                _preload_content=False,
            )

    def _run_blocking(
        self, namespace: str, pod: str, container: str, argv: Sequence[str], timeout_s: float
    ) -> _Outcome:
        try:
            ws = self._open(namespace, pod, container, argv)
            ws.run_forever(timeout=timeout_s)  # type: ignore[attr-defined]
            if ws.is_open():  # type: ignore[attr-defined]
                ws.close()  # type: ignore[attr-defined]
                return _Outcome(error=f"did not finish within {timeout_s:.1f} s")
            stdout = str(ws.read_channel(STDOUT_CHANNEL))  # type: ignore[attr-defined]
            stderr = str(ws.read_channel(STDERR_CHANNEL))  # type: ignore[attr-defined]
            code, problem = parse_exit_status(str(ws.read_channel(ERROR_CHANNEL)))  # type: ignore[attr-defined]
        except _EXEC_ERRORS as error:
            return _Outcome(error=f"{type(error).__name__}: {str(error)[:DETAIL_CHARS]}")
        if code is None:
            return _Outcome(error=problem + (f"; stderr: {stderr.strip()[-DETAIL_CHARS:]}" if stderr.strip() else ""))
        return _Outcome(result=ExecResult(pod, tuple(argv), code, stdout, stderr))

    def run(
        self, namespace: str, pod: str, container: str, argv: Sequence[str], *, timeout_s: float
    ) -> ExecResult:
        """Run `argv` in `container` of `pod` and wait for it; `ExecError` if it cannot run or overruns."""
        results: queue.Queue[_Outcome] = queue.Queue(maxsize=1)
        thread = threading.Thread(
            target=lambda: results.put(self._run_blocking(namespace, pod, container, argv, timeout_s)),
            name=f"exec-{pod}",
            daemon=True,
        )
        thread.start()
        try:
            outcome = results.get(timeout=timeout_s + RESULT_SLACK_S)
        except queue.Empty:
            raise ExecError(
                f"exec of `{' '.join(argv)}` in {namespace}/{pod} through {self.endpoint.server} did not finish "
                f"within {timeout_s:.1f} s"
            ) from None
        if outcome.result is None:
            raise ExecError(
                f"exec of `{' '.join(argv)}` in {namespace}/{pod} through {self.endpoint.server} failed: {outcome.error}"
            )
        return outcome.result

    def session(
        self, namespace: str, pod: str, container: str, argv: Sequence[str], *, open_timeout_s: float
    ) -> ExecSession:
        """Start `argv` and collect its output lines until it exits or `ExecSession.stop` is called."""
        opened: queue.Queue[object | str] = queue.Queue(maxsize=1)

        def open_stream() -> None:
            try:
                opened.put(self._open(namespace, pod, container, argv))
            except _EXEC_ERRORS as error:
                opened.put(f"{type(error).__name__}: {str(error)[:DETAIL_CHARS]}")

        threading.Thread(target=open_stream, name=f"exec-open-{pod}", daemon=True).start()
        try:
            ws = opened.get(timeout=open_timeout_s)
        except queue.Empty:
            raise ExecError(
                f"exec of `{' '.join(argv)}` in {namespace}/{pod} through {self.endpoint.server} did not start within "
                f"{open_timeout_s:.1f} s"
            ) from None
        if isinstance(ws, str):
            raise ExecError(f"exec of `{' '.join(argv)}` in {namespace}/{pod} through {self.endpoint.server} failed: {ws}")
        return ExecSession(pod, tuple(argv), ws)


class ExecSession:
    """A running exec whose standard output lines are collected as (arrival time, line) by a background thread."""

    def __init__(self, pod: str, argv: tuple[str, ...], ws: object) -> None:
        self.pod = pod
        self.argv = argv
        self._ws = ws
        self._lock = threading.Lock()
        self._lines: list[tuple[float, str]] = []
        self._partial = ""
        self._stderr: list[str] = []
        self._error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, name=f"exec-session-{pod}", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        ws = self._ws
        try:
            while not self._stop.is_set() and ws.is_open():  # type: ignore[attr-defined]
                ws.update(timeout=SESSION_POLL_S)  # type: ignore[attr-defined]
                arrived = time.monotonic()
                out = str(ws.read_channel(STDOUT_CHANNEL))  # type: ignore[attr-defined]
                err = str(ws.read_channel(STDERR_CHANNEL))  # type: ignore[attr-defined]
                with self._lock:
                    if err:
                        self._stderr.append(err)
                    if out:
                        text = self._partial + out
                        *complete, self._partial = text.split("\n")
                        self._lines.extend((arrived, line) for line in complete)
        except _EXEC_ERRORS as error:
            with self._lock:
                self._error = f"{type(error).__name__}: {str(error)[:DETAIL_CHARS]}"
        finally:
            if ws.is_open():  # type: ignore[attr-defined]
                ws.close()  # type: ignore[attr-defined]

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def lines(self) -> tuple[tuple[float, str], ...]:
        with self._lock:
            return tuple(self._lines)

    def stderr(self) -> str:
        with self._lock:
            return "".join(self._stderr)

    def error(self) -> str:
        with self._lock:
            return self._error

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
