"""The health gate: is the cluster in its steady state, so that the next disruptive test starts from a known place?

Steady state means: every node Ready; every kube-system pod Running with all its containers ready; ``/readyz``
answering ``ok`` through the load-balanced endpoint of the kubeconfig; and every etcd member healthy, which the
suite reads from the readiness of the etcd static pods (their probe is etcd's own ``/health``). With external etcd
there are no etcd pods and the apiserver's ``/readyz`` (which includes its etcd check) stands for it.

The assessment is pure (`assess`); `check_once` reads the API for it and `wait_for_steady_state` polls until the
state holds or a named timeout expires.

What the API shows of a node is what its kubelet last reported. For the seconds a restarted node's kubelet takes to
come back, the node still shows Ready and its pods ready, from before the fault, although its etcd member and API
server are not running. `SteadyStateGate.wait` therefore also waits until every node's kubelet has renewed its Lease
in ``kube-node-lease`` since the wait began (`LeaseFreshness`), and trusts the status read one poll after that: it was
reported after the fault. Kubelets renew their Lease every 10 s by default, so the gate waits about that long.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kubernetes.client import ApiClient, CoordinationV1Api
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubeha.cluster.client import REQUEST_TIMEOUT_S
from kubeha.cluster.discovery import ETCD_COMPONENT, FORBIDDEN, NodeInfo, PodInfo, read_kube_system_pods, read_nodes
from kubeha.core.topology import EtcdMode, Topology

__all__ = [
    "HealthReport",
    "LeaseFreshness",
    "NODE_LEASE_NAMESPACE",
    "SteadyStateGate",
    "READYZ_PATH",
    "STEADY_STATE_POLL_S",
    "STEADY_STATE_TIMEOUT_S",
    "ReadyzAnswer",
    "assess",
    "check_once",
    "read_lease_renewals",
    "wait_for_steady_state",
]

# How long the gate waits for the cluster to settle after a disruptive test (or before the first one).
STEADY_STATE_TIMEOUT_S = 300.0
# Pause between two assessments while waiting.
STEADY_STATE_POLL_S = 3.0
READYZ_PATH = "/readyz"
# Pod phase of a finished run-to-completion pod: neither running nor broken.
SUCCEEDED = "Succeeded"
# Where each kubelet renews the Lease named after its node.
NODE_LEASE_NAMESPACE = "kube-node-lease"


@dataclass(frozen=True)
class ReadyzAnswer:
    """What ``GET /readyz`` answered, or why it could not be asked (`error`)."""

    status: int = 0
    body: str = ""
    error: str = ""


@dataclass(frozen=True)
class HealthReport:
    """The outcome of the gate: `problems` is empty when the cluster is in its steady state."""

    problems: tuple[str, ...]
    waited_s: float = 0.0
    assessments: int = 1

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        if self.ok:
            return f"steady state after {self.waited_s:.1f} s"
        return f"not in steady state after {self.waited_s:.1f} s: " + "; ".join(self.problems)


def _node_problems(nodes: Sequence[NodeInfo]) -> list[str]:
    if not nodes:
        return ["the cluster lists no node"]
    return [f"node {node.name} is not Ready ({node.ready_reason})" for node in nodes if not node.ready]


def _pod_problems(pods: Sequence[PodInfo]) -> list[str]:
    problems: list[str] = []
    for pod in sorted(pods, key=lambda pod: pod.name):
        if pod.phase == SUCCEEDED:
            continue
        if pod.phase != "Running":
            problems.append(f"kube-system pod {pod.name} on {pod.node or 'no node'} is {pod.phase}")
        elif not pod.ready:
            waiting = ", ".join(pod.not_ready_containers) or "its Ready condition is false"
            problems.append(f"kube-system pod {pod.name} on {pod.node} is not ready ({waiting})")
    return problems


def _etcd_problems(pods: Sequence[PodInfo], expected_etcd_pods: int | None) -> list[str]:
    etcd = [pod for pod in pods if pod.component() == ETCD_COMPONENT]
    problems = [
        f"etcd member on {pod.node} is not healthy (pod {pod.name} is {pod.phase}, not ready)"
        for pod in etcd
        if pod.phase != "Running" or not pod.ready
    ]
    if expected_etcd_pods is not None and len(etcd) != expected_etcd_pods:
        problems.append(
            f"{len(etcd)} etcd pod(s) in kube-system, the topology has {expected_etcd_pods} stacked member(s)"
        )
    return problems


def _readyz_problems(readyz: ReadyzAnswer) -> list[str]:
    if readyz.error:
        return [f"GET {READYZ_PATH} through the load balancer failed: {readyz.error}"]
    if readyz.status != 200 or readyz.body.strip() != "ok":
        body = " ".join(readyz.body.split())[:200]
        return [f"GET {READYZ_PATH} through the load balancer answered {readyz.status}: {body}"]
    return []


def assess(
    nodes: Sequence[NodeInfo],
    kube_system_pods: Sequence[PodInfo],
    readyz: ReadyzAnswer,
    *,
    expected_etcd_pods: int | None = None,
) -> tuple[str, ...]:
    """Every way the cluster differs from its steady state (empty: it is in it).

    `expected_etcd_pods` is the number of stacked etcd members of the topology (None with external etcd, which
    runs no pod in the cluster).
    """
    return tuple(
        _node_problems(nodes)
        + _pod_problems(kube_system_pods)
        + _etcd_problems(kube_system_pods, expected_etcd_pods)
        + _readyz_problems(readyz)
    )


def _request_error(error: ApiException | HTTPError | OSError) -> str:
    if isinstance(error, ApiException):
        return f"API error {error.status} {error.reason}".strip()
    return f"{type(error).__name__}: {error}"


def read_readyz(client: ApiClient) -> ReadyzAnswer:
    """``GET /readyz`` through the kubeconfig's server URL, with the client's credentials."""
    method, url, headers, body, post_params = client.param_serialize(
        method="GET", resource_path=READYZ_PATH, auth_settings=["BearerToken"]
    )
    try:
        response = client.call_api(
            method, url, header_params=headers, body=body, post_params=post_params, _request_timeout=REQUEST_TIMEOUT_S
        )
        data = response.read()  # type: ignore[no-untyped-call]
    except (ApiException, HTTPError, OSError) as error:
        return ReadyzAnswer(error=_request_error(error))
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    return ReadyzAnswer(status=int(response.status), body=text)


def check_once(client: ApiClient, *, expected_etcd_pods: int | None = None) -> tuple[str, ...]:
    """Read nodes, kube-system pods and /readyz once, and assess them."""
    readyz = read_readyz(client)
    try:
        nodes = read_nodes(client)
        pods = read_kube_system_pods(client)
    except (ApiException, HTTPError, OSError) as error:
        return (*_readyz_problems(readyz), f"cannot list nodes and kube-system pods: {_request_error(error)}")
    return assess(nodes, pods, readyz, expected_etcd_pods=expected_etcd_pods)


def read_lease_renewals(client: ApiClient) -> dict[str, float]:
    """When each node's kubelet last renewed its Lease, by node name, in seconds since the epoch on that kubelet's
    clock (compare them with each other, not with this host's clock)."""
    leases = CoordinationV1Api(client).list_namespaced_lease(NODE_LEASE_NAMESPACE, _request_timeout=REQUEST_TIMEOUT_S)
    renewals: dict[str, float] = {}
    for lease in leases.items:
        name = lease.metadata.name if lease.metadata is not None else None
        renewed = lease.spec.renew_time if lease.spec is not None else None
        if name and renewed is not None:
            renewals[name] = renewed.timestamp()
    return renewals


class LeaseFreshness:
    """Which nodes' kubelets have not reported since the first call: until they have, what the API shows of those
    nodes and their pods may predate the last fault.

    A node counts as reported once its Lease was seen renewed at an earlier call than the current one: a kubelet that
    just came back may renew its Lease a moment before it posts its pods' status, so the status read at the call that
    first sees the renewal is not trusted yet. Each node's renewal is compared with its own earlier renewal, so the
    nodes' clocks need not agree with this host's. Without permission to read the Leases nothing is reported (the
    check cannot be made); a node whose Lease is missing is not waited for.
    """

    def __init__(self, client: ApiClient, read: Callable[[ApiClient], dict[str, float]] = read_lease_renewals) -> None:
        self._client = client
        self._read = read
        self._baseline: dict[str, float] | None = None
        self._reported: set[str] = set()
        self._forbidden = False

    def problems(self) -> tuple[str, ...]:
        if self._forbidden:
            return ()
        try:
            current = self._read(self._client)
        except ApiException as error:
            if error.status == FORBIDDEN:
                self._forbidden = True
                return ()
            return (f"cannot read the node Leases in {NODE_LEASE_NAMESPACE}: {_request_error(error)}",)
        except (HTTPError, OSError) as error:
            return (f"cannot read the node Leases in {NODE_LEASE_NAMESPACE}: {_request_error(error)}",)
        baseline = current if self._baseline is None else self._baseline
        self._baseline = baseline
        waiting = [name for name in sorted(baseline) if name in current and name not in self._reported]
        self._reported.update(name for name in waiting if current[name] > baseline[name])
        return tuple(
            f"node {name}: its kubelet has not reported since the health check began (no Lease renewal seen before "
            "this check), so what the API shows of it may predate the last fault"
            for name in waiting
        )


def wait_for_steady_state(
    client: ApiClient,
    *,
    expected_etcd_pods: int | None = None,
    timeout_s: float = STEADY_STATE_TIMEOUT_S,
    poll_s: float = STEADY_STATE_POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    freshness: LeaseFreshness | None = None,
) -> HealthReport:
    """Assess until the cluster is in its steady state or `timeout_s` has passed; the last problems on timeout.

    With `freshness`, the state holds only once every kubelet has reported since the wait began; the Leases are read
    before the nodes and pods, so that a renewal seen proves the status read after it is as recent.
    """
    start = clock()
    deadline = start + timeout_s
    assessments = 0
    while True:
        stale = freshness.problems() if freshness is not None else ()
        problems = (*stale, *check_once(client, expected_etcd_pods=expected_etcd_pods))
        assessments += 1
        now = clock()
        if not problems or now + poll_s > deadline:
            return HealthReport(problems=problems, waited_s=now - start, assessments=assessments)
        sleep(poll_s)


class SteadyStateGate:
    """The health gate for one cluster: `check` assesses once, `wait` polls until steady or `timeout_s` passes (and
    every kubelet has renewed its Lease since `wait` began, see `LeaseFreshness`)."""

    def __init__(self, client: ApiClient, topology: Topology) -> None:
        self._client = client
        stacked = topology.etcd_mode is EtcdMode.STACKED
        self._expected_etcd_pods = len(topology.etcd_members) if stacked else None

    def check(self) -> HealthReport:
        return HealthReport(problems=check_once(self._client, expected_etcd_pods=self._expected_etcd_pods))

    def wait(self, timeout_s: float = STEADY_STATE_TIMEOUT_S) -> HealthReport:
        """Poll until the cluster is in its steady state, as reported by every kubelet since this call began."""
        return wait_for_steady_state(
            self._client,
            expected_etcd_pods=self._expected_etcd_pods,
            timeout_s=timeout_s,
            freshness=LeaseFreshness(self._client),
        )
