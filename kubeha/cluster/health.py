"""The health gate: is the cluster in its steady state, so that the next disruptive test starts from a known place?

Steady state means: every node Ready; every kube-system pod Running with all its containers ready; ``/readyz``
answering ``ok`` through the load-balanced endpoint of the kubeconfig; and every etcd member healthy, which the
suite reads from the readiness of the etcd static pods (their probe is etcd's own ``/health``). With external etcd
there are no etcd pods and the apiserver's ``/readyz`` (which includes its etcd check) stands for it.

The assessment is pure (`assess`); `check_once` reads the API for it and `wait_for_steady_state` polls until the
state holds or a named timeout expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubeha.cluster.client import REQUEST_TIMEOUT_S
from kubeha.cluster.discovery import ETCD_COMPONENT, NodeInfo, PodInfo, read_kube_system_pods, read_nodes
from kubeha.core.topology import EtcdMode, Topology

__all__ = [
    "HealthReport",
    "SteadyStateGate",
    "READYZ_PATH",
    "STEADY_STATE_POLL_S",
    "STEADY_STATE_TIMEOUT_S",
    "ReadyzAnswer",
    "assess",
    "check_once",
    "wait_for_steady_state",
]

# How long the gate waits for the cluster to settle after a disruptive test (or before the first one).
STEADY_STATE_TIMEOUT_S = 300.0
# Pause between two assessments while waiting.
STEADY_STATE_POLL_S = 3.0
READYZ_PATH = "/readyz"
# Pod phase of a finished run-to-completion pod: neither running nor broken.
SUCCEEDED = "Succeeded"


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


def wait_for_steady_state(
    client: ApiClient,
    *,
    expected_etcd_pods: int | None = None,
    timeout_s: float = STEADY_STATE_TIMEOUT_S,
    poll_s: float = STEADY_STATE_POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> HealthReport:
    """Assess until the cluster is in its steady state or `timeout_s` has passed; the last problems on timeout."""
    start = clock()
    deadline = start + timeout_s
    assessments = 0
    while True:
        problems = check_once(client, expected_etcd_pods=expected_etcd_pods)
        assessments += 1
        now = clock()
        if not problems or now + poll_s > deadline:
            return HealthReport(problems=problems, waited_s=now - start, assessments=assessments)
        sleep(poll_s)


class SteadyStateGate:
    """The health gate for one cluster: `check` assesses once, `wait` polls until steady or `timeout_s` passes."""

    def __init__(self, client: ApiClient, topology: Topology) -> None:
        self._client = client
        stacked = topology.etcd_mode is EtcdMode.STACKED
        self._expected_etcd_pods = len(topology.etcd_members) if stacked else None

    def check(self) -> HealthReport:
        return HealthReport(problems=check_once(self._client, expected_etcd_pods=self._expected_etcd_pods))

    def wait(self, timeout_s: float = STEADY_STATE_TIMEOUT_S) -> HealthReport:
        return wait_for_steady_state(self._client, expected_etcd_pods=self._expected_etcd_pods, timeout_s=timeout_s)
