"""Facts of the cluster the data-plane controls derive their expectations and budgets from, read through the API.

Nothing here is assumed: the cluster DNS Service and its endpoints, each kubelet's configuration (``/configz``
through the node proxy), the kube-controller-manager flags that bound how fast a lost node is noticed, the Service
and pod CIDRs, kube-proxy's configured and running mode. A value a cluster does not expose (a managed control plane
runs no visible kube-controller-manager pod) falls back to the Kubernetes default of the pinned version, and the
returned note says so.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes.client import ApiClient, CoreV1Api, NetworkingV1Api
from kubernetes.client.exceptions import ApiException

from kubeha.cluster.client import REQUEST_TIMEOUT_S
from kubeha.cluster.discovery import parse_flags, parse_go_duration, pod_info

from .kube import field, items

__all__ = [
    "ClusterDns",
    "DEFAULT_NODE_MONITOR_GRACE_S",
    "IpNetwork",
    "KubeletDns",
    "NodeLossTiming",
    "cluster_dns",
    "coredns_pods",
    "kube_proxy_configured_mode",
    "kube_proxy_running_modes",
    "kubelet_config",
    "kubelet_dns",
    "node_loss_timing",
    "overlaps",
    "pod_cidrs",
    "service_cidrs",
]

KUBE_SYSTEM = "kube-system"
NOT_FOUND = 404
DNS_SERVICE_SELECTOR = "k8s-app=kube-dns"
KUBE_PROXY_SELECTOR = "k8s-app=kube-proxy"
KUBE_PROXY_CONFIGMAP = "kube-proxy"
KUBE_PROXY_METRICS_PORT = 10249
# kube-controller-manager defaults of Kubernetes v1.34 (pkg/controller/nodelifecycle/config/v1alpha1/defaults.go).
DEFAULT_NODE_MONITOR_GRACE_S = 50.0
DEFAULT_NODE_MONITOR_PERIOD_S = 5.0
# kube-proxy's default when its configuration names no mode (Linux).
DEFAULT_PROXY_MODE = "iptables"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ClusterDns:
    """The cluster DNS Service (kube-system, k8s-app=kube-dns) and its ready endpoints."""

    service: str
    cluster_ips: tuple[str, ...]
    ready_endpoints: tuple[tuple[str, str], ...]  # (pod name, node)

    def describe(self) -> str:
        return (f"Service kube-system/{self.service} at {', '.join(self.cluster_ips)} with "
                f"{len(self.ready_endpoints)} ready endpoint(s)")


def _dns_service(client: ApiClient) -> dict[str, Any]:
    services = items(CoreV1Api(client).list_namespaced_service(KUBE_SYSTEM, label_selector=DNS_SERVICE_SELECTOR,
                                                               _request_timeout=REQUEST_TIMEOUT_S))
    if len(services) != 1:
        raise AssertionError(f"expected one cluster DNS Service in {KUBE_SYSTEM} labelled {DNS_SERVICE_SELECTOR}, "
                             f"found {len(services)}: {[field(s, 'metadata', 'name') for s in services]}")
    return services[0]


def cluster_dns(client: ApiClient) -> ClusterDns:
    service = _dns_service(client)
    ips = field(service, "spec", "clusterIPs") or [field(service, "spec", "clusterIP")]
    ready = [(pod.name, pod.node) for pod in coredns_pods(client) if pod.ready]
    return ClusterDns(service=str(field(service, "metadata", "name")), cluster_ips=tuple(str(ip) for ip in ips),
                      ready_endpoints=tuple(sorted(ready)))


@dataclass(frozen=True)
class DnsPod:
    name: str
    node: str
    ready: bool


def coredns_pods(client: ApiClient) -> tuple[DnsPod, ...]:
    """The pods behind the cluster DNS Service (its selector), not being deleted."""
    selector = field(_dns_service(client), "spec", "selector") or {}
    if not selector:
        raise AssertionError(f"the cluster DNS Service in {KUBE_SYSTEM} has no selector: cannot tell its pods")
    pods = CoreV1Api(client).list_namespaced_pod(
        KUBE_SYSTEM, label_selector=",".join(f"{k}={v}" for k, v in sorted(selector.items())),
        _request_timeout=REQUEST_TIMEOUT_S).items or []
    found = []
    for pod in pods:
        info = pod_info(pod)
        if pod.metadata is not None and pod.metadata.deletion_timestamp is not None:
            continue
        found.append(DnsPod(name=info.name, node=info.node, ready=info.ready and info.phase == "Running"))
    return tuple(sorted(found, key=lambda p: p.name))


@dataclass(frozen=True)
class KubeletDns:
    node: str
    cluster_dns: tuple[str, ...]
    cluster_domain: str


def kubelet_config(client: ApiClient, node: str) -> dict[str, Any]:
    """The running kubelet configuration of `node` (GET /api/v1/nodes/<node>/proxy/configz)."""
    response: Any = CoreV1Api(client).connect_get_node_proxy_with_path(
        node, "configz", _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S)
    document = json.loads(response.data)
    config = document.get("kubeletconfig") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise AssertionError(f"kubelet configz of node {node} has no kubeletconfig object: {str(document)[:200]}")
    return config


def kubelet_dns(client: ApiClient, node: str) -> KubeletDns:
    config = kubelet_config(client, node)
    return KubeletDns(node=node, cluster_dns=tuple(str(ip) for ip in config.get("clusterDNS") or []),
                      cluster_domain=str(config.get("clusterDomain") or ""))


def _controller_manager_commands(client: ApiClient) -> list[tuple[str, ...]]:
    pods = CoreV1Api(client).list_namespaced_pod(KUBE_SYSTEM, label_selector="component=kube-controller-manager",
                                                 _request_timeout=REQUEST_TIMEOUT_S).items or []
    return [pod_info(pod).main_command() for pod in pods]


@dataclass(frozen=True)
class NodeLossTiming:
    """How fast the node lifecycle controller notices a lost node: after `grace_s` without a heartbeat the node is
    NotReady/Unknown, its pods are marked not ready (and so leave their Services' endpoints) and it is tainted
    unreachable; the controller looks every `monitor_period_s`."""

    grace_s: float
    monitor_period_s: float
    source: str

    @property
    def detection_bound_s(self) -> float:
        return self.grace_s + self.monitor_period_s


def node_loss_timing(client: ApiClient) -> NodeLossTiming:
    commands = _controller_manager_commands(client)
    if not commands:
        return NodeLossTiming(DEFAULT_NODE_MONITOR_GRACE_S, DEFAULT_NODE_MONITOR_PERIOD_S,
                              "Kubernetes defaults (no kube-controller-manager pod is visible)")
    graces, periods = [], []
    for command in commands:
        flags = parse_flags(command)
        grace = flags.get("node-monitor-grace-period")
        period = flags.get("node-monitor-period")
        graces.append(parse_go_duration(grace) if grace else DEFAULT_NODE_MONITOR_GRACE_S)
        periods.append(parse_go_duration(period) if period else DEFAULT_NODE_MONITOR_PERIOD_S)
    return NodeLossTiming(max(graces), max(periods),
                          f"kube-controller-manager flags of {len(commands)} pod(s), Kubernetes defaults otherwise")


def _networks(text: str) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def service_cidrs(client: ApiClient) -> tuple[tuple[IpNetwork, ...], str]:
    """The Service CIDRs: the ServiceCIDR objects (networking.k8s.io/v1), else the API servers' flag."""
    try:
        found = items(NetworkingV1Api(client).list_service_cidr(_request_timeout=REQUEST_TIMEOUT_S))
    except ApiException as error:
        if error.status != NOT_FOUND:
            raise
        found = []
    cidrs = {network for item in found for c in field(item, "spec", "cidrs") or [] for network in _networks(str(c))}
    if cidrs:
        names = [field(item, "metadata", "name") for item in found]
        return tuple(sorted(cidrs, key=str)), f"ServiceCIDR objects {names}"
    pods = CoreV1Api(client).list_namespaced_pod(KUBE_SYSTEM, label_selector="component=kube-apiserver",
                                                 _request_timeout=REQUEST_TIMEOUT_S).items or []
    for pod in pods:
        info = pod_info(pod)
        value = parse_flags(info.main_command()).get("service-cluster-ip-range")
        if value:
            return _networks(value), f"--service-cluster-ip-range of {info.name}"
    raise AssertionError("the Service CIDR is not visible: no ServiceCIDR object and no kube-apiserver pod with "
                         "--service-cluster-ip-range")


def pod_cidrs(client: ApiClient) -> tuple[dict[str, tuple[IpNetwork, ...]], tuple[IpNetwork, ...]]:
    """(node -> its spec.podCIDRs, the controller manager's --cluster-cidr networks if visible)."""
    per_node: dict[str, tuple[IpNetwork, ...]] = {}
    for node in items(CoreV1Api(client).list_node(_request_timeout=REQUEST_TIMEOUT_S)):
        cidrs = field(node, "spec", "podCIDRs") or ([field(node, "spec", "podCIDR")] if field(node, "spec", "podCIDR")
                                                   else [])
        per_node[str(field(node, "metadata", "name"))] = tuple(n for c in cidrs for n in _networks(str(c)))
    cluster: set[IpNetwork] = set()
    for command in _controller_manager_commands(client):
        value = parse_flags(command).get("cluster-cidr")
        if value:
            cluster.update(_networks(value))
    return per_node, tuple(sorted(cluster, key=str))


def kube_proxy_configured_mode(client: ApiClient) -> tuple[str, str] | None:
    """(mode, where it was read) from the kube-proxy ConfigMap, or None when the cluster has none."""
    try:
        configmap = CoreV1Api(client).read_namespaced_config_map(KUBE_PROXY_CONFIGMAP, KUBE_SYSTEM,
                                                                 _request_timeout=REQUEST_TIMEOUT_S)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    for key, text in sorted((configmap.data or {}).items()):
        document = yaml.safe_load(text)
        if isinstance(document, dict) and document.get("kind") == "KubeProxyConfiguration":
            mode = str(document.get("mode") or "")
            return (mode or DEFAULT_PROXY_MODE,
                    f"ConfigMap {KUBE_SYSTEM}/{KUBE_PROXY_CONFIGMAP} key {key}"
                    + ("" if mode else f" (empty: kube-proxy's default {DEFAULT_PROXY_MODE})"))
    return None


def kube_proxy_running_modes(client: ApiClient) -> dict[str, str]:
    """node -> the mode kube-proxy on it reports on its metrics port (GET /proxyMode through the pod proxy); a value
    starting with "error:" says why a node's kube-proxy could not be asked."""
    core = CoreV1Api(client)
    pods = items(core.list_namespaced_pod(KUBE_SYSTEM, label_selector=KUBE_PROXY_SELECTOR,
                                          _request_timeout=REQUEST_TIMEOUT_S))
    modes: dict[str, str] = {}
    for pod in pods:
        node = str(field(pod, "spec", "nodeName"))
        name = str(field(pod, "metadata", "name"))
        try:
            response: Any = core.connect_get_namespaced_pod_proxy_with_path(
                f"{name}:{KUBE_PROXY_METRICS_PORT}", KUBE_SYSTEM, "proxyMode", _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S)
            modes[node] = bytes(response.data).decode().strip()
        except ApiException as error:
            modes[node] = f"error: API {error.status} {error.reason} asking {name}:{KUBE_PROXY_METRICS_PORT}"
    return modes


def overlaps(first: Sequence[IpNetwork], second: Sequence[IpNetwork]) -> list[tuple[IpNetwork, IpNetwork]]:
    """Every (a, b) of the same IP family that share addresses."""
    found: list[tuple[IpNetwork, IpNetwork]] = []
    for a in first:
        for b in second:
            if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network) and a.overlaps(b):
                found.append((a, b))
            elif isinstance(a, ipaddress.IPv6Network) and isinstance(b, ipaddress.IPv6Network) and a.overlaps(b):
                found.append((a, b))
    return found
