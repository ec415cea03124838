"""chaostoolkit probes: what the cluster looks like from outside while and after faults run.

Every probe reads the cluster through the kubeconfig's server URL (the load balancer of an HA cluster), with
bounded timeouts, and answers with a plain value for a steady-state tolerance. A probe that cannot reach the API
answers False (not an error), so a steady-state check of a broken cluster reports a deviation and chaostoolkit
still plays the rollbacks. `kubeconfig_path` and `context` may come from the experiment's configuration
(``kubeha_kubeconfig``, ``kubeha_context``), which chaostoolkit passes as `configuration`.

Only `api_write_succeeds` changes anything: it creates one ConfigMap and deletes it.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Mapping

from kubernetes.client import ApiClient, CoreV1Api, V1ConfigMap, V1ObjectMeta
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from chaoslib.exceptions import ActivityFailed
from chaos.kubeha_chaos.session import resolve_kubeconfig
from kubeha.cluster.client import KubeconfigTarget, new_api_client
from kubeha.cluster.discovery import ETCD_COMPONENT, read_kube_system_pods, read_nodes
from kubeha.cluster.health import read_readyz
from kubeha.probes import ApiProbe, KubeconfigCredentials
from kubeha.probes.api import READYZ_PATH, TransportError, one_request

__all__ = [
    "api_available",
    "api_outage_during",
    "api_write_succeeds",
    "etcd_members_healthy",
    "nodes_ready",
]

log = logging.getLogger("chaostoolkit")

DEFAULT_READYZ_TIMEOUT_S = 5.0
DEFAULT_WRITE_TIMEOUT_S = 10.0
DEFAULT_WRITE_NAMESPACE = "default"
WRITE_PROBE_LABEL = "kubeha.io/chaos-write-probe"
# Extra time, past the measured window, that stopping the probe threads may take (each attempt is bounded).
MAX_OUTAGE_WINDOW_S = 3600.0
READYZ_OK = b"ok"
API_ERRORS = (ApiException, HTTPError, OSError)


def _target(kubeconfig_path: str | None, context: str | None,
            configuration: Mapping[str, object] | None) -> KubeconfigTarget:
    try:
        return resolve_kubeconfig(kubeconfig_path, context, configuration)
    except ValueError as error:
        raise ActivityFailed(str(error)) from None


def _credentials(target: KubeconfigTarget) -> KubeconfigCredentials:
    try:
        return KubeconfigCredentials(target.path, target.context)
    except ValueError as error:  # CredentialsError, KubeconfigError
        raise ActivityFailed(str(error)) from None


def _client(target: KubeconfigTarget) -> ApiClient:
    try:
        return new_api_client(target)
    except ValueError as error:  # KubeconfigError
        raise ActivityFailed(str(error)) from None


def _positive(value: object, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ActivityFailed(f"{argument} must be a positive number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ActivityFailed(f"{argument} must be a positive number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ActivityFailed(f"{argument} must be a positive number of seconds, got {value!r}")
    return seconds


def _api_error(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"API error {error.status} {error.reason}".strip()
    return f"{type(error).__name__}: {error}"


def api_available(
    timeout_s: float = DEFAULT_READYZ_TIMEOUT_S,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> bool:
    """Whether ``GET /readyz`` through the load balancer answers 200 ``ok`` on a new connection within
    `timeout_s` (connect and response each)."""
    seconds = _positive(timeout_s, "timeout_s")
    with _credentials(_target(kubeconfig_path, context, configuration)) as credentials:
        endpoint = credentials.endpoint
        try:
            response = one_request(endpoint, endpoint.ssl_context(), "GET", READYZ_PATH, connect_timeout_s=seconds,
                                   timeout_s=seconds)
        except TransportError as error:
            log.info("api_available: %s via %s failed: %s", READYZ_PATH, endpoint.server, error)
            return False
    if response.status == 200 and response.body.strip() == READYZ_OK:
        return True
    log.info("api_available: %s answered %s", READYZ_PATH, response.summary())
    return False


def nodes_ready(
    count: int | None = None,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> bool:
    """Whether at least `count` nodes are Ready (default: every node the API lists, and at least one)."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ActivityFailed(f"count must be a whole number >= 1, got {count!r}; omit it to require every node")
    client = _client(_target(kubeconfig_path, context, configuration))
    try:
        nodes = read_nodes(client)
    except API_ERRORS as error:
        log.info("nodes_ready: cannot list nodes: %s", _api_error(error))
        return False
    finally:
        client.close()  # type: ignore[no-untyped-call]
    ready = [node.name for node in nodes if node.ready]
    wanted = len(nodes) if count is None else count
    if nodes and len(ready) >= wanted:
        return True
    not_ready = sorted(f"{node.name} ({node.ready_reason})" for node in nodes if not node.ready)
    log.info("nodes_ready: %d of %d Ready, %d wanted; not Ready: %s", len(ready), len(nodes), wanted,
             ", ".join(not_ready) or "none")
    return False


def etcd_members_healthy(
    expected: int | None = None,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> bool:
    """Whether every stacked etcd member is healthy: `expected` etcd static pods (default: one per control-plane
    node) in kube-system, each Running and ready (their readiness probe is etcd's own health endpoint).

    A cluster with external etcd runs no etcd pod; there ``/readyz`` (which includes the API server's etcd check)
    must answer 200.
    """
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int) or expected < 1):
        raise ActivityFailed(f"expected must be a whole number >= 1, got {expected!r}; omit it for one member per "
                             "control-plane node")
    client = _client(_target(kubeconfig_path, context, configuration))
    try:
        nodes = read_nodes(client)
        pods = [pod for pod in read_kube_system_pods(client) if pod.component() == ETCD_COMPONENT]
        if not pods and expected is None:
            return _external_etcd_ready(client)
    except API_ERRORS as error:
        log.info("etcd_members_healthy: cannot read the cluster: %s", _api_error(error))
        return False
    finally:
        client.close()  # type: ignore[no-untyped-call]
    wanted = expected if expected is not None else sum(1 for node in nodes if node.is_control_plane())
    unhealthy = sorted(f"{pod.node} ({pod.phase}{'' if pod.ready else ', not ready'})" for pod in pods
                       if pod.phase != "Running" or not pod.ready)
    if len(pods) == wanted and not unhealthy:
        return True
    log.info("etcd_members_healthy: %d etcd pod(s) found, %d expected; unhealthy: %s", len(pods), wanted,
             ", ".join(unhealthy) or "none")
    return False


def _external_etcd_ready(client: ApiClient) -> bool:
    answer = read_readyz(client)
    if answer.error or answer.status != 200:
        log.info("etcd_members_healthy: no etcd pod, and /readyz answered %s %s", answer.status,
                 answer.error or answer.body[:200])
        return False
    return True


def api_outage_during(
    seconds: float = 60.0,
    interval_s: float = 0.1,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> float:
    """Probe the API through the load balancer for `seconds` (a new connection every `interval_s`: ``/readyz``
    then one authenticated read) and return the longest outage in seconds (0.0 when every attempt succeeded).

    Run it as a background probe next to a fault to measure what clients saw during it. An outage still open when
    the window ends counts up to the end of the window.
    """
    window = _positive(seconds, "seconds")
    if window > MAX_OUTAGE_WINDOW_S:
        raise ActivityFailed(f"seconds={window:g} is longer than {MAX_OUTAGE_WINDOW_S:g}: measure a shorter window")
    interval = _positive(interval_s, "interval_s")
    with _credentials(_target(kubeconfig_path, context, configuration)) as credentials:
        probe = ApiProbe(credentials.endpoint, interval_s=interval, max_duration_s=window + interval)
        probe.start()
        try:
            threading.Event().wait(window)
        finally:
            probe.stop()
        main = probe.result().main
    stats = main.stats
    longest = round(stats.longest_outage_s, 3)
    errors = ", ".join(f"{name} x{count}" for name, count in stats.error_counts) or "none"
    log.info("api_outage_during: %d attempts over %.1f s via %s, availability %.4f, %d outage window(s), longest "
             "%.3f s%s; errors: %s", stats.count, stats.span_s, main.server, stats.availability, len(stats.windows),
             longest, " (still open at the end)" if stats.open_window is not None else "", errors)
    return longest


def api_write_succeeds(
    namespace: str = DEFAULT_WRITE_NAMESPACE,
    timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> bool:
    """Whether a write through the load balancer is acknowledged within `timeout_s`: creates one ConfigMap in
    `namespace` (single attempt, no client retries), then deletes every ConfigMap this probe left there."""
    seconds = _positive(timeout_s, "timeout_s")
    name = f"kubeha-chaos-write-{uuid.uuid4().hex[:12]}"
    with _credentials(_target(kubeconfig_path, context, configuration)) as credentials:
        client = credentials.endpoint.new_api_client(retries=False)
        try:
            api = CoreV1Api(client)
            body = V1ConfigMap(metadata=V1ObjectMeta(name=name, labels={WRITE_PROBE_LABEL: "true"}),
                               data={"written-by": "kubeha chaos api_write_succeeds"})
            try:
                api.create_namespaced_config_map(namespace, body, _request_timeout=seconds)
            except API_ERRORS as error:
                log.info("api_write_succeeds: creating ConfigMap %s/%s failed: %s", namespace, name,
                         _api_error(error))
                return False
            try:
                api.delete_collection_namespaced_config_map(namespace, label_selector=f"{WRITE_PROBE_LABEL}=true",
                                                            _request_timeout=seconds)
            except API_ERRORS as error:
                log.warning("api_write_succeeds: the write succeeded but deleting ConfigMap %s/%s failed (%s); "
                            "the next successful probe deletes it", namespace, name, _api_error(error))
            return True
        finally:
            client.close()  # type: ignore[no-untyped-call]
