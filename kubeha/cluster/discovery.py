"""Topology discovery: what the cluster is made of, read from the API into a `kubeha.core.topology.Topology`.

The work is split in two. `read_snapshot` makes a handful of bounded, read-only API requests and copies what it needs
into frozen `*Info` records. Everything else — flag parsing from static pod commands, role assignment, etcd
membership, leader election settings, the load-balancer endpoint — is pure and works on those records, so it is
tested without a cluster.

What is read, and from where:

- control-plane nodes: the ``node-role.kubernetes.io/control-plane`` label; every other node is a worker;
- etcd, stacked: the etcd static pods in kube-system (label ``component=etcd``) on control-plane nodes, one member
  per pod, from its ``--name``, ``--initial-advertise-peer-urls`` and ``--advertise-client-urls``;
- etcd, external: kube-apiserver's ``--etcd-servers`` when none of its hosts is a node of the cluster;
- the load-balancer endpoint: the kubeconfig's server URL, and whether it differs from every node address;
- leader election of kube-controller-manager and kube-scheduler: their ``--leader-elect*`` flags, Kubernetes
  defaults where absent; a scheduler started with ``--config`` keeps those settings in a file on the node, which the
  API does not show, and `Discovery.notes` says so;
- ingress nodes: the ``ingress-ready=true`` label, or nodes running a host-network pod of an ingress controller
  DaemonSet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.client.models import V1Container, V1DaemonSet, V1Node, V1Pod

from kubeha.cluster.client import REQUEST_TIMEOUT_S, server_host_port
from kubeha.core.topology import EtcdMember, EtcdMode, LeaderElection, LoadBalancer, Node, Role, Topology

__all__ = [
    "CONTROL_PLANE_LABEL",
    "ContainerInfo",
    "DaemonSetInfo",
    "DEFAULT_LEASE_DURATION_S",
    "DEFAULT_RENEW_DEADLINE_S",
    "DEFAULT_RETRY_PERIOD_S",
    "Discovery",
    "DiscoveryError",
    "Flags",
    "INGRESS_READY_LABEL",
    "NodeInfo",
    "PodInfo",
    "Snapshot",
    "build_topology",
    "discover",
    "etcd_member_from_command",
    "etcd_servers",
    "is_ingress_daemonset",
    "leader_election_from_command",
    "parse_bool",
    "parse_flags",
    "parse_go_duration",
    "parse_initial_cluster",
    "read_snapshot",
]

CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
# Clusters set up before Kubernetes 1.24 label control-plane nodes "master" only.
LEGACY_MASTER_LABEL = "node-role.kubernetes.io/master"
INGRESS_READY_LABEL = "ingress-ready"
KUBE_SYSTEM = "kube-system"
COMPONENT_LABEL = "component"
ETCD_COMPONENT = "etcd"
APISERVER_COMPONENT = "kube-apiserver"
CONTROLLER_MANAGER_COMPONENT = "kube-controller-manager"
SCHEDULER_COMPONENT = "kube-scheduler"
LEADER_ELECTED_COMPONENTS = (CONTROLLER_MANAGER_COMPONENT, SCHEDULER_COMPONENT)

# Kubernetes defaults (k8s.io/component-base/config/v1alpha1 RecommendedDefaultLeaderElectionConfiguration).
DEFAULT_LEADER_ELECT = True
DEFAULT_LEASE_DURATION_S = 15.0
DEFAULT_RENEW_DEADLINE_S = 10.0
DEFAULT_RETRY_PERIOD_S = 2.0

# Flags that pflag parses as booleans: "--flag" alone means true, and the next token is never their value.
BOOL_FLAGS = frozenset({"leader-elect", "profiling", "allow-privileged", "experimental-initial-corrupt-check"})

# kind's nodes carry a provider ID of this form; its API endpoint is served by the haproxy load-balancer container.
KIND_PROVIDER_PREFIX = "kind://"

# Names (DaemonSet name, app labels, images) that mark an ingress controller.
INGRESS_CONTROLLER_HINTS = ("ingress", "traefik", "contour", "envoy-gateway", "haproxy-ingress", "kong")
APP_LABELS = ("app", "app.kubernetes.io/name", "app.kubernetes.io/component", "k8s-app")

class DiscoveryError(RuntimeError):
    """The cluster does not look like what the suite can test; the message says what was missing."""


# -- records copied out of API objects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str]
    addresses: tuple[tuple[str, str], ...]  # (type, address), as in status.addresses
    ready: bool
    ready_reason: str = ""
    provider_id: str = ""

    def address(self) -> str:
        """The InternalIP if any, else the first address, else the name."""
        for kind, value in self.addresses:
            if kind == "InternalIP":
                return value
        return self.addresses[0][1] if self.addresses else self.name

    def is_control_plane(self) -> bool:
        return CONTROL_PLANE_LABEL in self.labels or LEGACY_MASTER_LABEL in self.labels


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    image: str
    command: tuple[str, ...]  # command followed by args


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    node: str
    labels: Mapping[str, str]
    phase: str
    ready: bool
    host_network: bool = False
    owner_kind: str = ""
    owner_name: str = ""
    containers: tuple[ContainerInfo, ...] = ()
    not_ready_containers: tuple[str, ...] = ()

    def component(self) -> str:
        return self.labels.get(COMPONENT_LABEL, "")

    def main_command(self) -> tuple[str, ...]:
        """The command of the container named like the component (static pods have one), else the first one."""
        wanted = self.component()
        for container in self.containers:
            if container.name == wanted:
                return container.command
        return self.containers[0].command if self.containers else ()


@dataclass(frozen=True)
class DaemonSetInfo:
    namespace: str
    name: str
    labels: Mapping[str, str]
    host_network: bool
    images: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    """Everything discovery reads from the API, at one moment."""

    server_url: str
    nodes: tuple[NodeInfo, ...]
    kube_system_pods: tuple[PodInfo, ...]
    ingress_pods: tuple[PodInfo, ...] = ()  # host-network pods of ingress controller DaemonSets
    daemonsets: tuple[DaemonSetInfo, ...] = ()
    notes: tuple[str, ...] = ()  # what could not be read


@dataclass(frozen=True)
class Discovery:
    """The discovered topology, whether the API endpoint is a load balancer, and what could not be read exactly."""

    topology: Topology
    lb_distinct_from_nodes: bool
    notes: tuple[str, ...] = field(default=())


# -- pure parsing --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flags:
    """Command-line flags of one process, in the order given. A repeated flag's last value wins (as in pflag)."""

    items: tuple[tuple[str, str], ...]
    positional: tuple[str, ...] = ()

    def get(self, name: str) -> str | None:
        for key, value in reversed(self.items):
            if key == name:
                return value
        return None

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.items)


def parse_flags(command: Sequence[str], bool_flags: frozenset[str] = BOOL_FLAGS) -> Flags:
    """Parse a container command list such as ``["kube-scheduler", "--leader-elect=true", "--v", "2"]``.

    ``--name=value`` and ``-name=value`` give value; ``--name value`` takes the next token when it does not start
    with ``-`` and `name` is not a boolean flag; a flag alone means ``"true"``. The first token is the program when
    it does not start with ``-``; other tokens that are not flags or values are positional. Entries of the form
    ``sh -c "..."`` are not shell-parsed: flags inside a shell string are not seen.
    """
    tokens = list(command)
    items: list[tuple[str, str]] = []
    positional: list[str] = []
    index = 1 if tokens and not tokens[0].startswith("-") else 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--":
            positional.extend(tokens[index:])
            break
        if not token.startswith("-") or token == "-":
            positional.append(token)
            continue
        name = token.lstrip("-")
        if "=" in name:
            key, value = name.split("=", 1)
            items.append((key, value))
            continue
        if name not in bool_flags and index < len(tokens) and not tokens[index].startswith("-"):
            items.append((name, tokens[index]))
            index += 1
            continue
        items.append((name, "true"))
    return Flags(items=tuple(items), positional=tuple(positional))


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek small letter mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go `time.ParseDuration` string such as ``15s``, ``1m30s``, ``500ms`` or ``0``."""
    raw = text.strip()
    sign = 1.0
    body = raw
    if body[:1] in "+-" and body:
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"invalid duration {text!r}: expected a Go duration such as 15s, 1m30s or 500ms")
    total = 0.0
    position = 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            raise ValueError(f"invalid duration {text!r}: expected a Go duration such as 15s, 1m30s or 500ms")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    return sign * total


_TRUE = frozenset({"1", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "f", "false", "n", "no"})


def parse_bool(text: str) -> bool:
    """A boolean flag value as Go's strconv.ParseBool reads it (case-insensitive)."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r}: expected true or false")


def _duration_flag(flags: Flags, name: str, default: float, component: str, notes: list[str]) -> float:
    raw = flags.get(name)
    if raw is None:
        return default
    try:
        seconds = parse_go_duration(raw)
    except ValueError as error:
        notes.append(f"{component}: --{name}={raw} is not a duration ({error}); using the default {default:g}s")
        return default
    if seconds <= 0:
        notes.append(f"{component}: --{name}={raw} is not positive; using the default {default:g}s")
        return default
    return seconds


def leader_election_from_command(component: str, command: Sequence[str]) -> tuple[LeaderElection, tuple[str, ...]]:
    """Leader election settings of `component` from its command line, and notes on what was assumed.

    Flags absent from the command take the Kubernetes defaults (enabled, 15s lease, 10s renew deadline, 2s retry).
    When the component runs with ``--config``, its configuration file can set these too; the file lives on the node
    and is not visible through the API, so the flags and defaults are used and a note says so.
    """
    flags = parse_flags(command)
    notes: list[str] = []
    enabled = DEFAULT_LEADER_ELECT
    raw_enabled = flags.get("leader-elect")
    if raw_enabled is not None:
        try:
            enabled = parse_bool(raw_enabled)
        except ValueError:
            notes.append(f"{component}: --leader-elect={raw_enabled} is not a boolean; assuming leader election is on")
    lease = _duration_flag(flags, "leader-elect-lease-duration", DEFAULT_LEASE_DURATION_S, component, notes)
    renew = _duration_flag(flags, "leader-elect-renew-deadline", DEFAULT_RENEW_DEADLINE_S, component, notes)
    retry = _duration_flag(flags, "leader-elect-retry-period", DEFAULT_RETRY_PERIOD_S, component, notes)
    config = flags.get("config")
    if config is not None:
        notes.append(
            f"{component} runs with --config {config}: leader election settings in that file are not visible "
            "through the API; using the --leader-elect* flags on its command line and Kubernetes defaults for the rest"
        )
    return (
        LeaderElection(
            component=component,
            enabled=enabled,
            lease_duration_s=lease,
            renew_deadline_s=renew,
            retry_period_s=retry,
        ),
        tuple(notes),
    )


def parse_initial_cluster(text: str) -> tuple[tuple[str, str], ...]:
    """``name1=https://a:2380,name2=https://b:2380`` as (name, peer URL) pairs, in order."""
    pairs: list[tuple[str, str]] = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        if "=" not in entry:
            raise ValueError(f"invalid --initial-cluster entry {entry!r}: expected name=peer-url")
        name, url = entry.split("=", 1)
        pairs.append((name.strip(), url.strip()))
    return tuple(pairs)


def _first_url(value: str | None) -> str | None:
    if value is None:
        return None
    urls = [url.strip() for url in value.split(",") if url.strip()]
    return urls[0] if urls else None


def etcd_member_from_command(command: Sequence[str], node: str) -> EtcdMember:
    """The member an etcd static pod runs, from its ``--name``, peer and client URL flags.

    The peer URL is ``--initial-advertise-peer-urls``, or this member's entry in ``--initial-cluster`` when absent.
    """
    flags = parse_flags(command)
    name = flags.get("name") or node
    peer = _first_url(flags.get("initial-advertise-peer-urls"))
    if peer is None:
        initial = flags.get("initial-cluster")
        if initial is not None:
            peer = dict(parse_initial_cluster(initial)).get(name)
    client = _first_url(flags.get("advertise-client-urls"))
    missing = [
        flag
        for flag, value in (("--initial-advertise-peer-urls", peer), ("--advertise-client-urls", client))
        if value is None
    ]
    if peer is None or client is None:
        raise DiscoveryError(
            f"the etcd pod on {node} has no {' or '.join(missing)} flag: cannot tell its member URLs; "
            "the suite reads them from the static pod command that kubeadm writes"
        )
    return EtcdMember(name=name, peer_url=peer, client_url=client, node=node)


def etcd_servers(command: Sequence[str]) -> tuple[str, ...]:
    """The URLs in kube-apiserver's ``--etcd-servers``."""
    raw = parse_flags(command).get("etcd-servers")
    if raw is None:
        return ()
    return tuple(url.strip() for url in raw.split(",") if url.strip())


def _url_host(url: str) -> str:
    return urlsplit(url).hostname or url


def is_ingress_daemonset(daemonset: DaemonSetInfo) -> bool:
    """A host-network DaemonSet whose name, app labels or images name an ingress controller."""
    if not daemonset.host_network:
        return False
    words = [daemonset.name, *(daemonset.labels.get(label, "") for label in APP_LABELS), *daemonset.images]
    return any(hint in word.lower() for word in words for hint in INGRESS_CONTROLLER_HINTS)


# -- pure assembly -------------------------------------------------------------------------------------------------


def _node_addresses(nodes: Iterable[NodeInfo]) -> set[str]:
    known: set[str] = set()
    for node in nodes:
        known.add(node.name)
        known.update(address for _, address in node.addresses)
    return known


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _load_balancer(snapshot: Snapshot, notes: list[str]) -> tuple[LoadBalancer | None, bool]:
    host, port = server_host_port(snapshot.server_url)
    by_address = {address: node.name for node in snapshot.nodes for _, address in node.addresses}
    by_address.update({node.name: node.name for node in snapshot.nodes})
    if host in by_address:
        notes.append(
            f"the API endpoint {snapshot.server_url} is node {by_address[host]} itself, not a load balancer: "
            "while that node is down the API is unreachable through this endpoint"
        )
        return None, False
    is_kind = bool(snapshot.nodes) and all(node.provider_id.startswith(KIND_PROVIDER_PREFIX) for node in snapshot.nodes)
    if is_kind:
        kind = "haproxy"
    else:
        kind = "external"
        if host in _LOOPBACK_HOSTS:
            notes.append(
                f"the API endpoint {snapshot.server_url} is a loopback address (a tunnel or port forward?); "
                "it is treated as the load balancer"
            )
    return LoadBalancer(host=host, port=port, kind=kind), True


def _leader_elections(pods: Sequence[PodInfo], notes: list[str]) -> tuple[LeaderElection, ...]:
    elections: list[LeaderElection] = []
    for component in LEADER_ELECTED_COMPONENTS:
        candidates = sorted((pod for pod in pods if pod.component() == component), key=lambda pod: pod.node)
        if not candidates:
            notes.append(
                f"no {component} static pod in {KUBE_SYSTEM} (label {COMPONENT_LABEL}={component}): its leader "
                "election settings are unknown and tests of its failover have no timing bound"
            )
            continue
        readings = [leader_election_from_command(component, pod.main_command()) for pod in candidates]
        election, first_notes = readings[0]
        notes.extend(first_notes)
        differing = sorted({pod.node for pod, (other, _) in zip(candidates, readings) if other != election})
        if differing:
            notes.append(
                f"{component} on {', '.join(differing)} runs with leader election settings different from "
                f"{candidates[0].node}; using those of {candidates[0].node}"
            )
        elections.append(election)
    return tuple(elections)


def _etcd(
    snapshot: Snapshot, control_planes: set[str], notes: list[str]
) -> tuple[EtcdMode, tuple[EtcdMember, ...]]:
    etcd_pods = sorted(
        (pod for pod in snapshot.kube_system_pods if pod.component() == ETCD_COMPONENT),
        key=lambda pod: pod.node,
    )
    stacked = [pod for pod in etcd_pods if pod.node in control_planes]
    if stacked:
        members = tuple(etcd_member_from_command(pod.main_command(), pod.node) for pod in stacked)
        listed: set[str] = set()
        for pod in stacked:
            initial = parse_flags(pod.main_command()).get("initial-cluster")
            if initial is not None:
                listed.update(name for name, _ in parse_initial_cluster(initial))
        missing = sorted(listed - {member.name for member in members})
        if missing:
            notes.append(
                f"etcd --initial-cluster names member(s) {missing} with no etcd pod on a control-plane node: "
                "they were removed, or run elsewhere; the fault budget counts only the members found"
            )
        return EtcdMode.STACKED, members
    apiservers = [pod for pod in snapshot.kube_system_pods if pod.component() == APISERVER_COMPONENT]
    urls: list[str] = []
    for pod in sorted(apiservers, key=lambda pod: pod.node):
        for url in etcd_servers(pod.main_command()):
            if url not in urls:
                urls.append(url)
    if not urls:
        raise DiscoveryError(
            f"found no etcd static pod (label {COMPONENT_LABEL}={ETCD_COMPONENT}) on a control-plane node and no "
            f"kube-apiserver pod with --etcd-servers in {KUBE_SYSTEM}: the suite cannot tell where etcd runs; "
            "it supports kubeadm-style clusters whose control plane runs as static pods"
        )
    node_hosts = _node_addresses(snapshot.nodes)
    local = sorted(url for url in urls if _url_host(url) in node_hosts or _url_host(url) in _LOOPBACK_HOSTS)
    if local:
        raise DiscoveryError(
            f"kube-apiserver's --etcd-servers {local} point at cluster nodes, but no etcd static pod runs on a "
            f"control-plane node: etcd runs outside {KUBE_SYSTEM} pods (a systemd unit?), which the suite cannot "
            "see; run etcd as kubeadm static pods or externally"
        )
    notes.append(
        "etcd is external (kube-apiserver --etcd-servers point outside the cluster nodes): member names are the "
        "hosts of those URLs and peer URLs are not visible through the API"
    )
    members = tuple(
        # An external member's peer URL is known only to etcd itself; the API never shows it.
        EtcdMember(name=_url_host(url), peer_url=None, client_url=url, node=None) for url in urls
    )
    return EtcdMode.EXTERNAL, members



def _ingress_nodes(snapshot: Snapshot) -> set[str]:
    labelled = {node.name for node in snapshot.nodes if node.labels.get(INGRESS_READY_LABEL) == "true"}
    controllers = {(ds.namespace, ds.name) for ds in snapshot.daemonsets if is_ingress_daemonset(ds)}
    running = {
        pod.node
        for pod in snapshot.ingress_pods
        if pod.host_network and pod.owner_kind == "DaemonSet" and (pod.namespace, pod.owner_name) in controllers
    }
    return labelled | running


def build_topology(snapshot: Snapshot) -> Discovery:
    """Assemble the `Topology` from a `Snapshot` (pure)."""
    notes: list[str] = list(snapshot.notes)
    if not snapshot.nodes:
        raise DiscoveryError("the cluster has no node: check that the kubeconfig points at a working cluster")
    control_planes = {node.name for node in snapshot.nodes if node.is_control_plane()}
    if not control_planes:
        raise DiscoveryError(
            f"no node carries the {CONTROL_PLANE_LABEL} label: the suite finds control-plane nodes by it; label "
            f"them with `kubectl label node NAME {CONTROL_PLANE_LABEL}=`"
        )
    mode, members = _etcd(snapshot, control_planes, notes)
    etcd_nodes = {member.node for member in members if member.node is not None}
    ingress = _ingress_nodes(snapshot)
    nodes: list[Node] = []
    for info in sorted(snapshot.nodes, key=lambda node: node.name):
        roles = {Role.CONTROL_PLANE} if info.name in control_planes else {Role.WORKER}
        if info.name in etcd_nodes:
            roles.add(Role.ETCD)
        if info.name in ingress:
            roles.add(Role.INGRESS)
        nodes.append(Node(name=info.name, roles=frozenset(roles), address=info.address()))
    load_balancer, distinct = _load_balancer(snapshot, notes)
    elections = _leader_elections(snapshot.kube_system_pods, notes)
    topology = Topology(
        nodes=tuple(nodes),
        etcd_members=members,
        etcd_mode=mode,
        load_balancer=load_balancer,
        leader_elections=elections,
    )
    return Discovery(topology=topology, lb_distinct_from_nodes=distinct, notes=tuple(notes))


# -- the thin API part ---------------------------------------------------------------------------------------------


def _labels(raw: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(raw or {})


def node_info(node: V1Node) -> NodeInfo:
    meta = node.metadata
    status = node.status
    ready = False
    reason = "no Ready condition"
    for condition in (status.conditions if status is not None else None) or []:
        if condition.type == "Ready":
            ready = condition.status == "True"
            reason = condition.reason or condition.status
    addresses = tuple(
        (address.type, address.address) for address in ((status.addresses if status is not None else None) or [])
    )
    return NodeInfo(
        name=(meta.name if meta is not None else None) or "",
        labels=_labels(meta.labels if meta is not None else None),
        addresses=addresses,
        ready=ready,
        ready_reason=reason,
        provider_id=(node.spec.provider_id if node.spec is not None else None) or "",
    )


def _container_info(container: V1Container) -> ContainerInfo:
    return ContainerInfo(
        name=container.name,
        image=container.image or "",
        command=tuple(container.command or ()) + tuple(container.args or ()),
    )


def pod_info(pod: V1Pod) -> PodInfo:
    meta = pod.metadata
    spec = pod.spec
    status = pod.status
    owner_kind = owner_name = ""
    for owner in (meta.owner_references if meta is not None else None) or []:
        if owner.controller:
            owner_kind, owner_name = owner.kind, owner.name
    ready = any(
        condition.type == "Ready" and condition.status == "True"
        for condition in ((status.conditions if status is not None else None) or [])
    )
    not_ready = tuple(
        sorted(
            container.name
            for container in ((status.container_statuses if status is not None else None) or [])
            if not container.ready
        )
    )
    return PodInfo(
        namespace=(meta.namespace if meta is not None else None) or "",
        name=(meta.name if meta is not None else None) or "",
        node=(spec.node_name if spec is not None else None) or "",
        labels=_labels(meta.labels if meta is not None else None),
        phase=(status.phase if status is not None else None) or "Unknown",
        ready=ready,
        host_network=bool(spec.host_network) if spec is not None else False,
        owner_kind=owner_kind,
        owner_name=owner_name,
        containers=tuple(_container_info(container) for container in (spec.containers if spec is not None else [])),
        not_ready_containers=not_ready,
    )


def daemonset_info(daemonset: V1DaemonSet) -> DaemonSetInfo:
    meta = daemonset.metadata
    template = daemonset.spec.template.spec if daemonset.spec is not None else None
    labels = dict(meta.labels or {}) if meta is not None else {}
    template_meta = daemonset.spec.template.metadata if daemonset.spec is not None else None
    if template_meta is not None and template_meta.labels:
        labels = {**template_meta.labels, **labels}
    return DaemonSetInfo(
        namespace=(meta.namespace if meta is not None else None) or "",
        name=(meta.name if meta is not None else None) or "",
        labels=labels,
        host_network=bool(template.host_network) if template is not None else False,
        images=tuple(container.image or "" for container in (template.containers if template is not None else [])),
    )


def read_nodes(client: ApiClient) -> tuple[NodeInfo, ...]:
    nodes = CoreV1Api(client).list_node(_request_timeout=REQUEST_TIMEOUT_S)
    return tuple(node_info(node) for node in nodes.items)


def read_kube_system_pods(client: ApiClient) -> tuple[PodInfo, ...]:
    pods = CoreV1Api(client).list_namespaced_pod(KUBE_SYSTEM, _request_timeout=REQUEST_TIMEOUT_S)
    return tuple(pod_info(pod) for pod in pods.items)


FORBIDDEN = 403


def read_snapshot(client: ApiClient) -> Snapshot:
    """Read what discovery needs: nodes, kube-system pods, DaemonSets and the ingress controllers' pods.

    DaemonSets are optional: without permission to list them cluster-wide, ingress nodes come from the
    ``ingress-ready`` label alone and a note says so.
    """
    core = CoreV1Api(client)
    notes: list[str] = []
    try:
        listed = AppsV1Api(client).list_daemon_set_for_all_namespaces(_request_timeout=REQUEST_TIMEOUT_S).items
    except ApiException as error:
        if error.status != FORBIDDEN:
            raise
        listed = []
        notes.append(
            "the kubeconfig's user may not list DaemonSets cluster-wide: ingress nodes are only those labelled "
            f"{INGRESS_READY_LABEL}=true"
        )
    daemonsets = tuple(daemonset_info(ds) for ds in listed)
    ingress_pods: list[PodInfo] = []
    for ds in daemonsets:
        if not is_ingress_daemonset(ds):
            continue
        pods = core.list_namespaced_pod(ds.namespace, _request_timeout=REQUEST_TIMEOUT_S)
        ingress_pods.extend(
            info
            for info in (pod_info(pod) for pod in pods.items)
            if info.owner_kind == "DaemonSet" and info.owner_name == ds.name
        )
    return Snapshot(
        server_url=str(client.configuration.host),
        nodes=read_nodes(client),
        kube_system_pods=read_kube_system_pods(client),
        ingress_pods=tuple(ingress_pods),
        daemonsets=daemonsets,
        notes=tuple(notes),
    )


def discover(client: ApiClient) -> Discovery:
    """Read the cluster `client` talks to and assemble its topology."""
    return build_topology(read_snapshot(client))
