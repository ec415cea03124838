"""How an activity reaches its cluster: arguments, API reads, consent, and the identity remembered for restores.

Every activity names the cluster the same way: a kubeconfig path and context for the API, and a provider for the
machines ("kind" with the kind cluster's name, or "ssh" with an inventory file). Each may be passed as an argument
or come from the experiment's configuration under the keys in `CONFIGURATION_KEYS` (the shipped experiments fill
those from environment variables with chaostoolkit ``{"type": "env", ...}`` entries). Arguments win; empty strings
count as absent, so an unset optional environment variable with a default of "" means "not given".

Consent (`check_consent`) follows the pytest plugin's rule: faults go only into the cluster whose kube-system UID
equals `allowed_cluster_uid`, or into the kind cluster named by `kind_cluster`, whose nodes carry kind provider IDs
naming that cluster and are exactly the provider's node containers.

Restores must work while the API is down (etcd quorum lost on purpose). The identity of a cluster is therefore
remembered (`IdentityMemory`) when consent is first established for it, keyed by the kubeconfig's server URL and
the provider target, and recalled when the API cannot be read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kubernetes.client import ApiClient, CoordinationV1Api, CoreV1Api

from kubeha.cluster.client import REQUEST_TIMEOUT_S, KubeconfigTarget, read_kubeconfig
from kubeha.cluster.discovery import (
    COMPONENT_LABEL,
    KUBE_SYSTEM,
    NodeInfo,
    PodInfo,
    Snapshot,
    read_kube_system_pods,
    read_nodes,
    read_snapshot,
)
from kubeha.cluster.identity import ClusterIdentity, read_identity
from kubeha.core.jsonfields import JsonFormatError, JsonValue, as_object, get_str
from kubeha.faults.journal import default_state_dir
from kubeha.providers import ProviderKind

__all__ = [
    "ApiReader",
    "CONFIGURATION_KEYS",
    "ClusterArguments",
    "ClusterReader",
    "ConsentRefused",
    "IdentityMemory",
    "check_consent",
    "kind_cluster_of",
    "resolve_kubeconfig",
]

# Experiment configuration keys an activity reads when the matching argument is not given.
CONFIGURATION_KEYS = {
    "kubeconfig_path": "kubeha_kubeconfig",
    "context": "kubeha_context",
    "provider": "kubeha_provider",
    "kind_cluster": "kubeha_kind_cluster",
    "inventory": "kubeha_inventory",
    "allowed_cluster_uid": "kubeha_allowed_cluster_uid",
    "state_dir": "kubeha_state_dir",
}
KIND_PROVIDER_PREFIX = "kind://"
NODE_LEASE_NAMESPACE = "kube-node-lease"
_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UID_COMMAND = "kubectl get namespace kube-system -o jsonpath='{.metadata.uid}'"


class ConsentRefused(RuntimeError):
    """The cluster was not named as one that faults may be injected into."""


def _text(value: object, argument: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{argument} must be a string, got {type(value).__name__} {value!r}")
    stripped = value.strip()
    return stripped or None


def _pick(argument: str, given: object, configuration: Mapping[str, object] | None) -> str | None:
    value = _text(given, argument)
    if value is not None or configuration is None:
        return value
    key = CONFIGURATION_KEYS[argument]
    return _text(configuration.get(key), f"configuration key {key}")


def resolve_kubeconfig(
    kubeconfig_path: object, context: object, configuration: Mapping[str, object] | None
) -> KubeconfigTarget:
    """The kubeconfig file and context from arguments or configuration (probes need nothing else)."""
    kubeconfig = _pick("kubeconfig_path", kubeconfig_path, configuration)
    if kubeconfig is None:
        raise ValueError(
            f"no kubeconfig: pass kubeconfig_path, or set the experiment configuration key "
            f"{CONFIGURATION_KEYS['kubeconfig_path']} (the shipped experiments read KUBEHA_KUBECONFIG)"
        )
    return KubeconfigTarget(Path(kubeconfig).expanduser(), _pick("context", context, configuration))


@dataclass(frozen=True)
class ClusterArguments:
    """Where the cluster is and how to act on its machines, resolved from arguments and configuration."""

    kubeconfig: Path
    context: str | None
    provider: ProviderKind
    kind_cluster: str | None
    inventory: Path | None
    allowed_cluster_uid: str | None
    state_dir: Path

    @classmethod
    def resolve(
        cls,
        *,
        kubeconfig_path: object = None,
        context: object = None,
        provider: object = None,
        kind_cluster: object = None,
        inventory: object = None,
        allowed_cluster_uid: object = None,
        state_dir: object = None,
        configuration: Mapping[str, object] | None = None,
    ) -> ClusterArguments:
        target = resolve_kubeconfig(kubeconfig_path, context, configuration)
        kind_name = _pick("kind_cluster", kind_cluster, configuration)
        inventory_path = _pick("inventory", inventory, configuration)
        provider_name = _pick("provider", provider, configuration)
        if provider_name is None:
            provider_name = ProviderKind.SSH.value if inventory_path else ProviderKind.KIND.value
        try:
            chosen = ProviderKind(provider_name)
        except ValueError:
            raise ValueError(
                f"provider {provider_name!r} is not known: pass \"kind\" (with kind_cluster) or \"ssh\" (with "
                "inventory)"
            ) from None
        if chosen is ProviderKind.ATTACH:
            raise ValueError(
                "provider \"attach\" cannot act on the cluster's machines: pass provider=\"ssh\" with an inventory "
                "file, or provider=\"kind\" with kind_cluster"
            )
        if chosen is ProviderKind.KIND and kind_name is None:
            raise ValueError(
                "provider \"kind\" needs the kind cluster's name: pass kind_cluster (see `kind get clusters`) or set "
                f"the configuration key {CONFIGURATION_KEYS['kind_cluster']}"
            )
        if chosen is ProviderKind.SSH and inventory_path is None:
            raise ValueError(
                "provider \"ssh\" needs an inventory file describing SSH access to the nodes: pass inventory or set "
                f"the configuration key {CONFIGURATION_KEYS['inventory']}"
            )
        uid = _pick("allowed_cluster_uid", allowed_cluster_uid, configuration)
        if uid is not None:
            uid = uid.lower()
            if not _UID.match(uid):
                raise ValueError(
                    f"allowed_cluster_uid {uid!r} is not a UID: pass the UID of the cluster's kube-system namespace, "
                    f"as printed by {UID_COMMAND}"
                )
        state = _pick("state_dir", state_dir, configuration)
        return cls(
            kubeconfig=target.path,
            context=target.context,
            provider=chosen,
            kind_cluster=kind_name if chosen is ProviderKind.KIND else None,
            inventory=Path(inventory_path).expanduser() if chosen is ProviderKind.SSH and inventory_path else None,
            allowed_cluster_uid=uid,
            state_dir=Path(state).expanduser() if state else default_state_dir(),
        )

    @property
    def target(self) -> KubeconfigTarget:
        return KubeconfigTarget(self.kubeconfig, self.context)

    @property
    def machines(self) -> str:
        """The provider target: kind cluster name or inventory path."""
        if self.provider is ProviderKind.KIND:
            return f"kind cluster {self.kind_cluster}"
        return f"inventory {self.inventory}"

    def chaos_dir(self, cluster_uid: str) -> Path:
        """Per-cluster state shared by every chaos process: ``<state_dir>/chaos/<kube-system UID>``."""
        return self.state_dir / "chaos" / cluster_uid


class ClusterReader(Protocol):
    """The API reads the chaos engine makes (a fake stands in for it in unit tests)."""

    def identity(self) -> ClusterIdentity: ...

    def snapshot(self) -> Snapshot: ...

    def nodes(self) -> tuple[NodeInfo, ...]: ...

    def kube_system_pods(self) -> tuple[PodInfo, ...]: ...

    def node_leases(self) -> dict[str, float]:
        """When each node's kubelet last renewed its Lease (POSIX seconds, the node's clock)."""
        ...

    def container_starts(self) -> dict[tuple[str, str], float]:
        """When the running container of each control-plane static pod started, by (node, component) (POSIX
        seconds, the node's clock)."""
        ...


class ApiReader:
    """`ClusterReader` over an `ApiClient` built from the activity's kubeconfig (every request bounded)."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    def identity(self) -> ClusterIdentity:
        return read_identity(self._client)

    def snapshot(self) -> Snapshot:
        return read_snapshot(self._client)

    def nodes(self) -> tuple[NodeInfo, ...]:
        return read_nodes(self._client)

    def kube_system_pods(self) -> tuple[PodInfo, ...]:
        return read_kube_system_pods(self._client)

    def container_starts(self) -> dict[tuple[str, str], float]:
        pods = CoreV1Api(self._client).list_namespaced_pod(KUBE_SYSTEM, label_selector=COMPONENT_LABEL,
                                                           _request_timeout=REQUEST_TIMEOUT_S)
        starts: dict[tuple[str, str], float] = {}
        for pod in pods.items:
            component = (pod.metadata.labels or {}).get(COMPONENT_LABEL) if pod.metadata is not None else None
            node = pod.spec.node_name if pod.spec is not None else None
            statuses = (pod.status.container_statuses if pod.status is not None else None) or []
            times = [status.state.running.started_at.timestamp() for status in statuses
                     if status.state is not None and status.state.running is not None
                     and status.state.running.started_at is not None]
            if component and node and times:
                starts[(str(node), str(component))] = float(min(times))
        return starts

    def node_leases(self) -> dict[str, float]:
        leases = CoordinationV1Api(self._client).list_namespaced_lease(NODE_LEASE_NAMESPACE,
                                                                       _request_timeout=REQUEST_TIMEOUT_S)
        renewed: dict[str, float] = {}
        for lease in leases.items:
            name = lease.metadata.name if lease.metadata is not None else None
            renew_time = lease.spec.renew_time if lease.spec is not None else None
            if name and renew_time is not None:
                renewed[str(name)] = float(renew_time.timestamp())
        return renewed


def kind_cluster_of(provider_id: str) -> str | None:
    """The kind cluster named by a node's provider ID ``kind://<runtime>/<cluster>/<node>``, else None."""
    if not provider_id.startswith(KIND_PROVIDER_PREFIX):
        return None
    parts = provider_id[len(KIND_PROVIDER_PREFIX):].split("/")
    return parts[1] if len(parts) == 3 and parts[1] else None


def check_consent(
    identity: ClusterIdentity,
    nodes: Sequence[NodeInfo],
    *,
    kind_cluster: str | None,
    kind_containers: Sequence[str] = (),
    allowed_cluster_uid: str | None,
) -> str:
    """How consent to inject faults into `identity` was given; raises `ConsentRefused` when it was not.

    `allowed_cluster_uid`, when given, must be the cluster's kube-system UID (a UID for another cluster is a
    mistake, never ignored). Otherwise the cluster must be the kind cluster `kind_cluster`: every API node names it
    in its provider ID, and the API's nodes are exactly `kind_containers`, the node containers of that kind cluster.
    """
    uid = identity.kube_system_uid
    if allowed_cluster_uid is not None:
        if allowed_cluster_uid != uid:
            raise ConsentRefused(
                f"allowed_cluster_uid {allowed_cluster_uid} was given, but the cluster at {identity.api_url} has "
                f"kube-system UID {uid}: that consent is for another cluster; if every node of this cluster may be "
                f"disrupted, pass allowed_cluster_uid={uid}"
            )
        return f"allowed_cluster_uid {uid}"
    refusal = (
        f"refusing to touch the cluster at {identity.api_url}: no consent was given for it; if every node of this "
        f"cluster may be disrupted, pass allowed_cluster_uid={uid} (configuration key "
        f"{CONFIGURATION_KEYS['allowed_cluster_uid']})"
    )
    if kind_cluster is None:
        raise ConsentRefused(refusal)
    foreign = sorted(node.name for node in nodes if kind_cluster_of(node.provider_id) != kind_cluster)
    if foreign or not nodes:
        raise ConsentRefused(
            f"{refusal}; it is not the kind cluster {kind_cluster}: nodes {foreign or 'none'} do not carry a "
            f"provider ID kind://<runtime>/{kind_cluster}/<node>"
        )
    api_names = sorted(node.name for node in nodes)
    if api_names != sorted(kind_containers):
        raise ConsentRefused(
            f"{refusal}; its nodes {api_names} are not the node containers {sorted(kind_containers)} of kind cluster "
            f"{kind_cluster}: point the kubeconfig at that kind cluster"
        )
    return f"kind cluster {kind_cluster}"


class IdentityMemory:
    """Identities of consented clusters, remembered under ``<state_dir>/chaos/identities/`` for restores."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "chaos" / "identities"

    def _path(self, arguments: ClusterArguments) -> Path:
        server = read_kubeconfig(arguments.target).server
        key = f"{server}\n{arguments.provider.value}\n{arguments.kind_cluster or arguments.inventory}"
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def remember(self, arguments: ClusterArguments, identity: ClusterIdentity) -> None:
        path = self._path(arguments)
        record = {"api_url": identity.api_url, "kube_system_uid": identity.kube_system_uid,
                  "kubernetes_version": identity.kubernetes_version, "machines": arguments.machines}
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        temporary.write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)

    def recall(self, arguments: ClusterArguments) -> ClusterIdentity | None:
        path = self._path(arguments)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            decoded: JsonValue = json.loads(text)
        except json.JSONDecodeError as error:
            raise JsonFormatError(f"{path} is not JSON ({error}): remove it; it is written again on the next fault")
        obj = as_object(decoded, str(path))
        return ClusterIdentity(
            api_url=get_str(obj, "api_url", str(path)),
            kube_system_uid=get_str(obj, "kube_system_uid", str(path)),
            kubernetes_version=get_str(obj, "kubernetes_version", str(path)),
        )
