"""The session's cluster as tests see it: `KubehaCluster`, and the health gate they wait on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kubernetes.client import ApiClient

from kubeha.cluster.discovery import Discovery, discover
from kubeha.cluster.health import HealthReport
from kubeha.cluster.identity import ClusterIdentity, read_identity
from kubeha.consent import Consent, check_consent
from kubeha.core import model
from kubeha.core.topology import Topology
from kubeha.pytest_plugin.runcontext import ClusterHandle

__all__ = ["HealthGate", "KubehaCluster", "NO_CLUSTER_MESSAGE", "cluster_view", "read_cluster"]

NO_CLUSTER_MESSAGE = (
    "this test needs a Kubernetes cluster but the session has none: pass --cluster kind for the embedded cluster or "
    "--kubeconfig PATH to attach to one, or make pytest_kubeha_cluster_required return True in the suite's conftest.py"
)


@dataclass(frozen=True)
class KubehaCluster:
    """The session's cluster: who it is, how to reach it, what it is made of, and whether faults may be injected."""

    identity: ClusterIdentity
    kubeconfig: Path
    context: str | None
    topology: Topology
    embedded: bool
    name: str
    consent: Consent | None
    lb_distinct_from_nodes: bool = True
    discovery_notes: tuple[str, ...] = ()

    def fault_refusal(self) -> str | None:
        """None when faults may be injected, else why not and the flag that would allow it."""
        return check_consent(self.consent, self.identity)

    def report_identity(self) -> model.ClusterIdentity:
        return model.ClusterIdentity(
            api_url=self.identity.api_url,
            cluster_uid=self.identity.kube_system_uid,
            kubernetes_version=self.identity.kubernetes_version,
        )


class HealthGate(Protocol):
    """What the plugin uses of `kubeha.cluster.health.SteadyStateGate` (a test may override ``steady_state``)."""

    def check(self) -> HealthReport: ...

    def wait(self, timeout_s: float = ...) -> HealthReport: ...


def cluster_view(handle: ClusterHandle, discovery: Discovery, identity: ClusterIdentity | None = None) -> KubehaCluster:
    """The cluster from the session's handle and a discovery; `identity` as read now, else the handle's."""
    return KubehaCluster(
        identity=handle.identity if identity is None else identity,
        kubeconfig=handle.kubeconfig,
        context=handle.context,
        topology=discovery.topology,
        embedded=handle.embedded,
        name=handle.name,
        consent=handle.consent,
        lb_distinct_from_nodes=discovery.lb_distinct_from_nodes,
        discovery_notes=discovery.notes,
    )


def read_cluster(handle: ClusterHandle, client: ApiClient) -> KubehaCluster:
    """The session's cluster as this process reads it through `client`: identity and topology, with the consent given
    at session start. The consent stays bound to the identity read then: if this process reaches another cluster,
    `KubehaCluster.fault_refusal` says so and disruptive tests are not-run."""
    return cluster_view(handle, discover(client), read_identity(client))
