"""Who a cluster is: the identity that consent to inject faults is bound to.

The kube-system namespace's UID is created once with the cluster and never changes, so it tells two clusters apart
even when they share an API URL (a recreated kind cluster) or one cluster is reached through several URLs.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes.client import ApiClient, CoreV1Api, VersionApi

from kubeha.cluster.client import REQUEST_TIMEOUT_S

__all__ = ["ClusterIdentity", "IdentityError", "read_identity"]

KUBE_SYSTEM = "kube-system"


class IdentityError(RuntimeError):
    """The cluster did not report what its identity is made of."""


@dataclass(frozen=True)
class ClusterIdentity:
    api_url: str
    kube_system_uid: str
    kubernetes_version: str

    def describe(self) -> str:
        return f"{self.api_url} (kube-system UID {self.kube_system_uid}, Kubernetes {self.kubernetes_version})"


def read_identity(client: ApiClient) -> ClusterIdentity:
    """Read the identity of the cluster `client` talks to (two bounded API requests)."""
    api_url = str(client.configuration.host)
    namespace = CoreV1Api(client).read_namespace(KUBE_SYSTEM, _request_timeout=REQUEST_TIMEOUT_S)
    uid = namespace.metadata.uid if namespace.metadata is not None else None
    if not uid:
        raise IdentityError(
            f"the API server at {api_url} returned the {KUBE_SYSTEM} namespace without a UID; check that the "
            "kubeconfig points at a Kubernetes API server"
        )
    version = VersionApi(client).get_code(_request_timeout=REQUEST_TIMEOUT_S)
    return ClusterIdentity(api_url=api_url, kube_system_uid=uid, kubernetes_version=version.git_version)
