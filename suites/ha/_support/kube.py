"""Kubernetes objects the HA suite creates and reads: namespaces, workloads, the API servers, failure dumps.

Every call passes `REQUEST_TIMEOUT_S`. `retry` repeats a call that failed for a transient reason (a server error,
throttling, a connection that broke) until a named deadline, so a step taken while a control-plane node is down does
not fail on the one connection the load balancer sent to it. `direct_client` talks to one API server by node address,
bypassing the load balancer.
"""

from __future__ import annotations

import ssl
import time
from datetime import datetime, timezone
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import pytest

from kubernetes.client import (
    ApiClient,
    AppsV1Api,
    CoordinationV1Api,
    CoreV1Api,
    DiscoveryV1Api,
    V1Container,
    V1ContainerStatus,
    V1Deployment,
    V1DeploymentSpec,
    CoreV1Event,
    V1LabelSelector,
    V1Lease,
    V1Namespace,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1PodTemplateSpec,
)
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from fixtures.kind.versions import PINS
from kubeha.cluster.client import REQUEST_TIMEOUT_S
from kubeha.cluster.discovery import APISERVER_COMPONENT, PodInfo, parse_flags
from kubeha.probes.api import DEFAULT_APISERVER_PORT, READYZ_OK_BODY, READYZ_PATH, TransportError, one_request
from kubeha.probes.credentials import ApiEndpoint

__all__ = [
    "ApiServer",
    "MANAGED_BY",
    "RetryTimeout",
    "WORKLOAD_IMAGE",
    "api_servers",
    "create_namespace",
    "deployment_body",
    "direct_client",
    "delete_namespace",
    "describe_error",
    "dump_control_plane",
    "dump_namespace",
    "NODE_RESTART_TIMEOUT_S",
    "fail",
    "kubelet_heartbeat",
    "wait_restarted",
    "readyz_ok",
    "wait_ready",
    "kubernetes_endpoint_addresses",
    "name_of",
    "node_of",
    "phase_of",
    "pod_body",
    "retry",
    "wait_for",
]

T = TypeVar("T")

# The suite's test workloads: agnhost from the embedded cluster's node image, never pulled. An attached cluster must
# have this image on its worker nodes.
WORKLOAD_IMAGE = f"kubeha.local/agnhost:{PINS.kubernetes}"
WORKLOAD_COMMAND = ("/agnhost", "pause")
WORKLOAD_GRACE_S = 1
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubeha"}
NAMESPACE_PREFIX = "kubeha-ha-"
RETRY_PAUSE_S = 0.5
WAIT_POLL_S = 0.5
DUMP_EVENTS = 60
KUBERNETES_SERVICE_LABEL = "kubernetes.io/service-name=kubernetes"
HTTP_TOO_MANY_REQUESTS = 429
HTTP_SERVER_ERROR_MIN = 500
HTTP_NOT_FOUND = 404
HTTP_OK = 200
READYZ_REQUEST_TIMEOUT_S = 2.0
KUBE_SYSTEM = "kube-system"
NODE_LEASE_NAMESPACE = "kube-node-lease"
# A node restarted after a fault must run its kube-system pods again within this long.
NODE_RESTART_TIMEOUT_S = 300.0
LABEL_VALUE_MAX = 63


class RetryTimeout(TimeoutError):
    """A call kept failing, or a condition never held, until its deadline."""


def _transient(error: ApiException | HTTPError | OSError) -> bool:
    if isinstance(error, ApiException):
        status = int(error.status or 0)
        return status == 0 or status == HTTP_TOO_MANY_REQUESTS or status >= HTTP_SERVER_ERROR_MIN
    return True


def describe_error(error: ApiException | HTTPError | OSError) -> str:
    if isinstance(error, ApiException):
        return f"API error {error.status} {error.reason}".strip()
    return f"{type(error).__name__}: {str(error)[:300]}"


def retry(call: Callable[[], T], *, timeout_s: float, what: str) -> T:
    """`call()`, repeated while it fails transiently, until `timeout_s`; `RetryTimeout` naming `what` after that.

    A non-transient API error (4xx other than 429) is raised at once: retrying cannot fix it.
    """
    deadline = time.monotonic() + timeout_s
    attempts = 0
    while True:
        attempts += 1
        try:
            return call()
        except (ApiException, HTTPError, OSError) as error:
            if not _transient(error):
                raise
            if time.monotonic() + RETRY_PAUSE_S > deadline:
                raise RetryTimeout(
                    f"{what} kept failing for {timeout_s:.0f} s ({attempts} attempts), last: {describe_error(error)}"
                ) from error
        time.sleep(RETRY_PAUSE_S)


def wait_for(condition: Callable[[], T | None], *, timeout_s: float, what: str) -> tuple[T, float]:
    """Poll `condition` until it returns a value; (value, seconds waited). Transient API errors count as "not yet"."""
    start = time.monotonic()
    deadline = start + timeout_s
    last_error = ""
    while True:
        try:
            value = condition()
        except (ApiException, HTTPError, OSError) as error:
            if not _transient(error):
                raise
            last_error = describe_error(error)
            value = None
        now = time.monotonic()
        if value is not None:
            return value, now - start
        if now + WAIT_POLL_S > deadline:
            suffix = f" (last error: {last_error})" if last_error else ""
            raise RetryTimeout(f"timed out after {timeout_s:.0f} s waiting for {what}{suffix}")
        time.sleep(WAIT_POLL_S)


@dataclass(frozen=True)
class ApiServer:
    """One API server as its static pod runs it: node, advertised address and port."""

    node: str
    address: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.port}"

    def endpoint(self, base: ApiEndpoint) -> ApiEndpoint:
        """`base`'s credentials against this API server directly (its certificate names its address)."""
        return base.with_server(self.url)


def api_servers(pods: Iterable[PodInfo], node_addresses: Mapping[str, str]) -> tuple[ApiServer, ...]:
    """The API servers of the kube-apiserver static pods, sorted by node; the node address where not advertised."""
    found: list[ApiServer] = []
    for pod in pods:
        if pod.component() != APISERVER_COMPONENT or not pod.node:
            continue
        flags = parse_flags(pod.main_command())
        address = flags.get("advertise-address") or node_addresses.get(pod.node) or pod.node
        raw_port = flags.get("secure-port")
        port = int(raw_port) if raw_port and raw_port.isdigit() else DEFAULT_APISERVER_PORT
        found.append(ApiServer(node=pod.node, address=address, port=port))
    return tuple(sorted(found, key=lambda server: server.node))


def direct_client(base: ApiEndpoint, server: ApiServer) -> ApiClient:
    """An `ApiClient` of its own talking to `server` only (close it when done)."""
    return server.endpoint(base).new_api_client()


def create_namespace(client: ApiClient, purpose: str) -> str:
    """Create a namespace ``kubeha-ha-<random>`` labelled as the suite's; its name."""
    body = V1Namespace(
        metadata=V1ObjectMeta(generate_name=NAMESPACE_PREFIX, labels={**MANAGED_BY, "kubeha.io/purpose": _label(purpose)})
    )
    created = CoreV1Api(client).create_namespace(body, _request_timeout=REQUEST_TIMEOUT_S)
    name = created.metadata.name if created.metadata is not None else None
    if not name:
        raise RetryTimeout("the API server created a namespace without a name: check the API server's version")
    return name


def _label(text: str) -> str:
    """`text` as a label value: at most 63 characters of letters, digits, '-', '_' and '.', alphanumeric at the ends."""
    cleaned = "".join(char if char.isalnum() or char in "-_." else "-" for char in text)[:LABEL_VALUE_MAX]
    return cleaned.strip("-_.")


def delete_namespace(client: ApiClient, name: str) -> None:
    try:
        CoreV1Api(client).delete_namespace(name, _request_timeout=REQUEST_TIMEOUT_S)
    except ApiException as error:
        if error.status != HTTP_NOT_FOUND:
            raise


def _labels(name: str) -> dict[str, str]:
    return {**MANAGED_BY, "app": name}


def _pod_spec() -> V1PodSpec:
    return V1PodSpec(
        termination_grace_period_seconds=WORKLOAD_GRACE_S,
        containers=[
            V1Container(name="pause", image=WORKLOAD_IMAGE, image_pull_policy="Never", command=list(WORKLOAD_COMMAND))
        ],
    )


def deployment_body(name: str, replicas: int) -> V1Deployment:
    return V1Deployment(
        metadata=V1ObjectMeta(name=name, labels=_labels(name)),
        spec=V1DeploymentSpec(
            replicas=replicas,
            selector=V1LabelSelector(match_labels={"app": name}),
            template=V1PodTemplateSpec(metadata=V1ObjectMeta(labels=_labels(name)), spec=_pod_spec()),
        ),
    )


def pod_body(name: str) -> V1Pod:
    return V1Pod(metadata=V1ObjectMeta(name=name, labels=_labels(name)), spec=_pod_spec())


def name_of(obj: V1Pod | V1Deployment | V1Lease | CoreV1Event) -> str:
    return (obj.metadata.name if obj.metadata is not None else None) or "(unnamed)"


def node_of(pod: V1Pod) -> str | None:
    return pod.spec.node_name if pod.spec is not None else None


def phase_of(pod: V1Pod) -> str:
    return (pod.status.phase if pod.status is not None else None) or "Unknown"


def kubernetes_endpoint_addresses(client: ApiClient) -> frozenset[str]:
    """The ready addresses of the default/kubernetes Service's EndpointSlices."""
    slices = DiscoveryV1Api(client).list_namespaced_endpoint_slice(
        "default", label_selector=KUBERNETES_SERVICE_LABEL, _request_timeout=REQUEST_TIMEOUT_S
    )
    addresses: set[str] = set()
    for item in slices.items:
        for endpoint in item.endpoints or []:
            conditions = endpoint.conditions
            if conditions is not None and conditions.ready is False:
                continue
            addresses.update(endpoint.addresses or [])
    return frozenset(addresses)


def _when(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value or "")


def _event_time(event: CoreV1Event) -> str:
    created = event.metadata.creation_timestamp if event.metadata is not None else None
    return _when(event.last_timestamp or event.event_time or created)


def dump_namespace(client: ApiClient, namespace: str) -> str:
    """Pods, Deployments and recent events of `namespace`, as text for a failure report."""
    core, apps = CoreV1Api(client), AppsV1Api(client)
    lines = [f"namespace {namespace}:"]
    for deployment in apps.list_namespaced_deployment(namespace, _request_timeout=REQUEST_TIMEOUT_S).items:
        status = deployment.status
        wanted = deployment.spec.replicas if deployment.spec is not None else None
        created = status.replicas if status is not None else None
        ready = status.ready_replicas if status is not None else None
        lines.append(f"  deployment {name_of(deployment)}: replicas {wanted}, created {created or 0}, ready {ready or 0}")
    for pod in core.list_namespaced_pod(namespace, _request_timeout=REQUEST_TIMEOUT_S).items:
        lines.append(f"  pod {name_of(pod)}: {phase_of(pod)} on {node_of(pod) or '(unscheduled)'}")
    events = sorted(core.list_namespaced_event(namespace, _request_timeout=REQUEST_TIMEOUT_S).items, key=_event_time)
    for event in events[-DUMP_EVENTS:]:
        involved = event.involved_object
        lines.append(
            f"  event {_event_time(event)} {event.type} {event.reason} {involved.kind}/{involved.name}: "
            f"{(event.message or '').strip()}"
        )
    return "\n".join(lines)


def dump_control_plane(client: ApiClient) -> str:
    """kube-system pods and the leader-election Leases, as text for a failure report."""
    core = CoreV1Api(client)
    lines = ["kube-system pods:"]
    for pod in core.list_namespaced_pod("kube-system", _request_timeout=REQUEST_TIMEOUT_S).items:
        statuses = (pod.status.container_statuses if pod.status is not None else None) or []
        ready = sum(1 for status in statuses if status.ready)
        restarts = sum(status.restart_count or 0 for status in statuses)
        lines.append(
            f"  {name_of(pod)} on {node_of(pod)}: {phase_of(pod)}, {ready}/{len(statuses)} ready, {restarts} restarts"
        )
    lines.append("leases:")
    for lease in CoordinationV1Api(client).list_namespaced_lease("kube-system", _request_timeout=REQUEST_TIMEOUT_S).items:
        spec = lease.spec
        holder = spec.holder_identity if spec is not None else None
        renewed = spec.renew_time if spec is not None else None
        lines.append(f"  {name_of(lease)}: holder {holder}, renewed {_when(renewed)}")
    return "\n".join(lines)


def readyz_ok(endpoint: ApiEndpoint, context: ssl.SSLContext) -> bool:
    """Whether the API server of `endpoint` answers ``GET /readyz`` with ``ok`` right now."""
    try:
        response = one_request(endpoint, context, "GET", READYZ_PATH, timeout_s=READYZ_REQUEST_TIMEOUT_S)
    except TransportError:
        return False
    return response.status == HTTP_OK and response.body.strip() == READYZ_OK_BODY


def wait_ready(endpoint: ApiEndpoint, *, timeout_s: float, what: str) -> float:
    """Wait until `endpoint` answers ``/readyz`` with ``ok``; seconds waited. `RetryTimeout` naming `what`."""
    context = endpoint.ssl_context()
    _, waited = wait_for(lambda: True if readyz_ok(endpoint, context) else None, timeout_s=timeout_s, what=what)
    return waited


def fail(summary: str, *details: str) -> NoReturn:
    """Fail the test: `summary` (what broke and by how much) is the first line, the control's recorded reason."""
    pytest.fail("\n".join((summary, *(detail for detail in details if detail))), pytrace=False)


def _started_at(status: V1ContainerStatus) -> datetime | None:
    running = status.state.running if status.state is not None else None
    return running.started_at if running is not None else None


def _not_restarted(pod: V1Pod, since: datetime) -> str | None:
    """Why `pod` does not yet run containers started at or after `since` (second resolution), all ready; or None."""
    statuses = (pod.status.container_statuses if pod.status is not None else None) or []
    if not statuses:
        return f"{name_of(pod)}: no container status"
    floor = since.replace(microsecond=0)
    for status in statuses:
        started = _started_at(status)
        if started is None:
            return f"{name_of(pod)}/{status.name}: not running"
        if started < floor:
            return f"{name_of(pod)}/{status.name}: started {started.isoformat()}, before {floor.isoformat()}"
        if not status.ready:
            return f"{name_of(pod)}/{status.name}: not ready"
    return None


def kubelet_heartbeat(client: ApiClient, node: str) -> datetime | None:
    """When the kubelet of `node` last renewed its Lease in kube-node-lease."""
    lease = CoordinationV1Api(client).read_namespaced_lease(node, NODE_LEASE_NAMESPACE, _request_timeout=REQUEST_TIMEOUT_S)
    return lease.spec.renew_time if lease.spec is not None else None


def wait_restarted(
    client: ApiClient, node: str, since_wall: float, *, component: str | None = None, timeout_s: float
) -> float:
    """Wait until `node` is really back after a fault that ended after `since_wall` (time.time()); seconds waited.

    The API keeps showing a restarted node Ready and its pods ready until its kubelet reports again, so this waits
    for fresh reports: with `component`, until that static pod's containers were started after `since_wall` and are
    ready; without, until the kubelet renewed its Lease after `since_wall` and every kube-system pod on the node
    runs containers started after it, all ready.
    """
    since = datetime.fromtimestamp(since_wall, tz=timezone.utc)
    pending: list[str] = []

    def back() -> bool | None:
        if component is None:
            beat = kubelet_heartbeat(client, node)
            if beat is None or beat < since:
                pending[:] = [f"kubelet Lease last renewed {beat.isoformat() if beat else 'never'}"]
                return None
        pods = CoreV1Api(client).list_namespaced_pod(
            KUBE_SYSTEM, field_selector=f"spec.nodeName={node}", _request_timeout=REQUEST_TIMEOUT_S
        ).items
        relevant = [
            pod
            for pod in pods
            if phase_of(pod) != "Succeeded"
            and (component is None or (pod.metadata is not None and (pod.metadata.labels or {}).get("component") == component))
        ]
        reasons = [reason for reason in (_not_restarted(pod, since) for pod in relevant) if reason is not None]
        pending[:] = reasons if relevant else [f"no {component or 'kube-system'} pod on the node"]
        return True if relevant and not reasons else None

    what = f"{component or 'every kube-system pod'} on {node} to run again, restarted after the fault"
    try:
        _, waited = wait_for(back, timeout_s=timeout_s, what=what)
    except RetryTimeout as error:
        raise RetryTimeout(f"{error}; still waiting for: {'; '.join(pending) or 'a first answer'}") from error
    return waited
