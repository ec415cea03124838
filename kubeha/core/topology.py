"""The shape of a highly available cluster, as plain immutable data.

Discovery (``kubeha.cluster``) builds a `Topology`; everything that decides how much may be broken at once reads it.
Construction validates the model, so an impossible topology (no control plane, an etcd member on a node that does
not exist, ...) fails where it is built with a message saying what to fix.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from kubeha.core.quorum import fault_tolerance

__all__ = [
    "EtcdMember",
    "EtcdMode",
    "LEADER_ELECTION_JITTER_FACTOR",
    "LeaderElection",
    "LoadBalancer",
    "Node",
    "Role",
    "Topology",
    "TopologyError",
]

MIN_PORT = 1
MAX_PORT = 65535

# client-go's leaderelection.JitterFactor: a candidate retries every retry_period * (1 + rand * JITTER_FACTOR).
LEADER_ELECTION_JITTER_FACTOR = 1.2


class TopologyError(ValueError):
    """A topology that cannot describe a working cluster."""


class Role(enum.Enum):
    CONTROL_PLANE = "control-plane"
    WORKER = "worker"
    ETCD = "etcd"
    INGRESS = "ingress"
    LOAD_BALANCER = "load-balancer"


class EtcdMode(enum.Enum):
    """STACKED: etcd runs on the control-plane nodes (kubeadm default). EXTERNAL: etcd runs on its own hosts."""

    STACKED = "stacked"
    EXTERNAL = "external"


def _require_text(value: str, what: str, fix: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise TopologyError(f"{what} must be a non-empty string, got {value!r}: {fix}")


@dataclass(frozen=True)
class Node:
    """A machine of the cluster. `name` is the Kubernetes node name (or the host name of an external etcd host)."""

    name: str
    roles: frozenset[Role]
    address: str

    def __post_init__(self) -> None:
        _require_text(self.name, "node name", "use the Kubernetes node name")
        if not isinstance(self.roles, frozenset) or not all(isinstance(role, Role) for role in self.roles):
            raise TopologyError(
                f"node {self.name}: roles must be a frozenset of Role, got {self.roles!r}: "
                "pass frozenset({Role.CONTROL_PLANE}) or similar"
            )
        if not self.roles:
            raise TopologyError(
                f"node {self.name} has no role: give it at least one Role (a node that runs pods is Role.WORKER)"
            )
        _require_text(self.address, f"node {self.name} address", "use the node's InternalIP or reachable host name")

    def has(self, role: Role) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class EtcdMember:
    """One voting etcd member. `node` names the `Node` it runs on, or is None for an external host not modelled.

    `peer_url` is None when it cannot be known: an external member's peer URL is visible to etcd only, never through
    the Kubernetes API.
    """

    name: str
    peer_url: str | None
    client_url: str
    node: str | None = None

    def __post_init__(self) -> None:
        _require_text(self.name, "etcd member name", "use the name shown by `etcdctl member list`")
        if self.peer_url is not None:
            _require_text(
                self.peer_url,
                f"etcd member {self.name} peer_url",
                "use the member's --initial-advertise-peer-urls, or None when it is not known",
            )
        _require_text(
            self.client_url, f"etcd member {self.name} client_url", "use the member's --advertise-client-urls"
        )
        if self.node is not None:
            _require_text(self.node, f"etcd member {self.name} node", "pass None when the host is not modelled")


@dataclass(frozen=True)
class LeaderElection:
    """Leader-election settings of one component (kube-controller-manager, kube-scheduler, ...)."""

    component: str
    enabled: bool
    lease_duration_s: float
    renew_deadline_s: float
    retry_period_s: float

    def __post_init__(self) -> None:
        _require_text(self.component, "leader election component", "use the component name, e.g. kube-scheduler")
        for label, value in (
            ("lease_duration_s", self.lease_duration_s),
            ("renew_deadline_s", self.renew_deadline_s),
            ("retry_period_s", self.retry_period_s),
        ):
            if not math.isfinite(value) or value <= 0:
                raise TopologyError(
                    f"{self.component} leader election {label} must be a positive number of seconds, got {value!r}: "
                    "read it from the component's --leader-elect-* flags"
                )
        if not self.enabled:
            return
        if self.lease_duration_s <= self.renew_deadline_s:
            raise TopologyError(
                f"{self.component} leader election lease_duration_s {self.lease_duration_s} must exceed "
                f"renew_deadline_s {self.renew_deadline_s} (client-go rejects it): check the flags that were read"
            )
        if self.renew_deadline_s <= LEADER_ELECTION_JITTER_FACTOR * self.retry_period_s:
            raise TopologyError(
                f"{self.component} leader election renew_deadline_s {self.renew_deadline_s} must exceed "
                f"{LEADER_ELECTION_JITTER_FACTOR} x retry_period_s {self.retry_period_s} (client-go rejects it): "
                "check the flags that were read"
            )

    def takeover_bound_s(self) -> float:
        """Worst-case seconds from a leader dying without releasing its lease to a standby holding it.

        The leader's last renewal happened no later than its death. A standby notices that renewal up to one
        jittered retry interval later, considers the lease expired `lease_duration_s` after noticing, and acquires
        it on its next jittered retry. A jittered interval is at most ``retry_period_s * (1 + JITTER_FACTOR)``.
        """
        jittered_retry = self.retry_period_s * (1 + LEADER_ELECTION_JITTER_FACTOR)
        return self.lease_duration_s + 2 * jittered_retry


@dataclass(frozen=True)
class LoadBalancer:
    """The endpoint clients use to reach the API servers, and what serves it (haproxy, a cloud LB, a VIP, ...)."""

    host: str
    port: int
    kind: str

    def __post_init__(self) -> None:
        _require_text(self.host, "load balancer host", "use the host or IP of the server URL in the kubeconfig")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not MIN_PORT <= self.port <= MAX_PORT:
            raise TopologyError(
                f"load balancer port must be an int in {MIN_PORT}..{MAX_PORT}, got {self.port!r}: "
                "use the port of the server URL in the kubeconfig"
            )
        _require_text(self.kind, "load balancer kind", 'name what serves the endpoint, e.g. "haproxy"')

    @property
    def endpoint(self) -> str:
        """``host:port``, with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Topology:
    nodes: tuple[Node, ...]
    etcd_members: tuple[EtcdMember, ...]
    etcd_mode: EtcdMode
    load_balancer: LoadBalancer | None = None
    leader_elections: tuple[LeaderElection, ...] = ()

    def __post_init__(self) -> None:
        for label, value in (
            ("nodes", self.nodes),
            ("etcd_members", self.etcd_members),
            ("leader_elections", self.leader_elections),
        ):
            if not isinstance(value, tuple):
                raise TopologyError(f"Topology.{label} must be a tuple, got {type(value).__name__}: wrap it in tuple()")
        self._check_nodes()
        self._check_etcd()
        components = [election.component for election in self.leader_elections]
        duplicated = sorted({name for name in components if components.count(name) > 1})
        if duplicated:
            raise TopologyError(
                f"leader election is listed more than once for {duplicated}: give one LeaderElection per component"
            )

    def _check_nodes(self) -> None:
        names = [node.name for node in self.nodes]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise TopologyError(f"node names must be unique, repeated: {duplicated}: list each node once")
        if not self.control_planes():
            raise TopologyError(
                "topology has no control-plane node: give Role.CONTROL_PLANE to the nodes labelled "
                "node-role.kubernetes.io/control-plane (a cluster cannot run without one)"
            )

    def _check_etcd(self) -> None:
        if not self.etcd_members:
            raise TopologyError(
                "topology has no etcd member: list the members reported by `etcdctl member list` "
                "(or the apiserver's --etcd-servers for external etcd)"
            )
        names = [member.name for member in self.etcd_members]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise TopologyError(f"etcd member names must be unique, repeated: {duplicated}: list each member once")
        hosts = [member.node for member in self.etcd_members if member.node is not None]
        shared = sorted({host for host in hosts if hosts.count(host) > 1})
        if shared:
            raise TopologyError(f"more than one etcd member on node(s) {shared}: each member runs on its own node")
        known = {node.name: node for node in self.nodes}
        for member in self.etcd_members:
            if member.node is None:
                if self.etcd_mode is EtcdMode.STACKED:
                    raise TopologyError(
                        f"etcd member {member.name} has no node but etcd_mode is STACKED: set node to the "
                        "control-plane node it runs on, or use EtcdMode.EXTERNAL"
                    )
                continue
            host = known.get(member.node)
            if host is None:
                raise TopologyError(
                    f"etcd member {member.name} is on node {member.node!r}, which is not in nodes "
                    f"{sorted(known)}: add the node or set the member's node to None"
                )
            if self.etcd_mode is EtcdMode.STACKED and not host.has(Role.CONTROL_PLANE):
                raise TopologyError(
                    f"etcd member {member.name} is on {host.name}, which is not a control-plane node, but etcd_mode "
                    "is STACKED: use EtcdMode.EXTERNAL or fix the node's roles"
                )
            if self.etcd_mode is EtcdMode.EXTERNAL and host.has(Role.CONTROL_PLANE):
                raise TopologyError(
                    f"etcd member {member.name} is on control-plane node {host.name} but etcd_mode is EXTERNAL: "
                    "use EtcdMode.STACKED"
                )

    def nodes_with(self, role: Role) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if node.has(role))

    def control_planes(self) -> tuple[Node, ...]:
        return self.nodes_with(Role.CONTROL_PLANE)

    def workers(self) -> tuple[Node, ...]:
        return self.nodes_with(Role.WORKER)

    def ingress_nodes(self) -> tuple[Node, ...]:
        return self.nodes_with(Role.INGRESS)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r} in the topology; known nodes: {[n.name for n in self.nodes]}")

    def etcd_member_on(self, node_name: str) -> EtcdMember | None:
        for member in self.etcd_members:
            if member.node == node_name:
                return member
        return None

    def leader_election(self, component: str) -> LeaderElection | None:
        for election in self.leader_elections:
            if election.component == component:
                return election
        return None

    def etcd_tolerance(self) -> int:
        """How many etcd members may be down at once with quorum kept."""
        return fault_tolerance(len(self.etcd_members))
