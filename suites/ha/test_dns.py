"""HA-DNS: cluster DNS answers pods correctly, is replicated, and keeps answering through node faults.

Lookups are made from a probe pod (the tools image, dig) through its own resolver configuration, i.e. the cluster
DNS Service the kubelet wrote into its /etc/resolv.conf. The cluster domain comes from the kubelet's running
configuration (``/configz``), never assumed. Names looked up:

- a ClusterIP Service by FQDN (<svc>.<ns>.svc.<domain>), by <svc> and <svc>.<ns> through the search path, and a
  Service of another namespace by <svc>.<other ns> and its FQDN; a name that does not exist must be NXDOMAIN;
- a headless Service: its A records must be exactly the ready pod addresses of its endpoints;
- pod A records a-b-c-d.<ns>.pod.<domain>.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kubernetes.client import ApiClient

from suites.ha._dataplane import budgets
from suites.ha._dataplane.analysis import fault_figures, record_fault_figures, require
from suites.ha._dataplane.dns import Lookup, lookup, pod_a_record
from suites.ha._dataplane.facts import ClusterDns, cluster_dns, coredns_pods, kubelet_dns, node_loss_timing
from suites.ha._dataplane.kube import field, ready_endpoints, wait_until
from suites.ha._dataplane.probes import InClusterProbe
from suites.ha._dataplane.scaffold import DataplaneNamespace, dataplane_exec, module_namespace, worker_names
from suites.ha._dataplane.workloads import (
    PROBE_CONTAINER,
    create_echo_backend,
    create_pod,
    create_service,
    create_service_during_fault,
    probe_pod,
    service_body,
    wait_pod_running,
)
from kubeha.core.topology import Role
from kubeha.faults import Journal, node_stopped
from kubeha.plugin import KubehaCluster, ResultRecorder, cluster_setup, not_run
from kubeha.providers.base import Provider
from suites.ha._support.podexec import PodExec

__all__ = ["dataplane_exec"]  # the fixture, re-exported so that pytest finds it in this module

# Lookup latency as dig reports it (server time, no exec overhead); far above a healthy cluster's milliseconds.
LOOKUP_LATENCY_BUDGET_S = 1.0
# Minimum replicas and distinct nodes for cluster DNS to survive the loss of any one node.
MIN_DNS_REPLICAS = 2
# A Service created while a control-plane node is down must resolve within this long: CoreDNS's watch runs through
# the API servers that are left. A watch cut with the lost one reconnects within client-go's backoff (the first
# term); one held on a server that was powered off is not cut at all (no FIN or RST comes back) and stalls until
# client-go's HTTP/2 health check gives up on the connection: 30 s without a frame, then a 15 s ping timeout
# (k8s.io/apimachinery/pkg/util/net). Measured: 21.2 s with CoreDNS's watch on the stopped node.
NEW_NAME_WATCH_RECONNECT_S = 15.0
DEAD_CONNECTION_DETECTION_S = 30.0 + 15.0
NEW_NAME_RESOLUTION_BUDGET_S = NEW_NAME_WATCH_RECONNECT_S + DEAD_CONNECTION_DETECTION_S
NEW_NAME_POLL_S = 0.5
NAME_SETTLE_TIMEOUT_S = 60.0
EXEC_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DnsEnv:
    ns: DataplaneNamespace
    other: DataplaneNamespace
    domain: str
    probe_node: str
    probe_pod: str
    echo_ip: str
    remote_ip: str
    dns: ClusterDns


PROBE_POD = "dns-client"


@pytest.fixture(scope="module")
def dns_env(request: pytest.FixtureRequest, api_client: ApiClient, kubeha_cluster: KubehaCluster,
            dataplane_exec: PodExec) -> Iterator[DnsEnv]:
    workers = worker_names(kubeha_cluster.topology)
    with module_namespace(request, api_client, "dns") as ns, module_namespace(request, api_client, "dnsx") as other:
        with cluster_setup(request, "DNS set-up"):
            echo = create_echo_backend(api_client, ns.name, "echo", len(workers), workers)
            create_service(api_client, ns.name, service_body("echo-headless", "echo", headless=True))
            remote = create_service(api_client, other.name, service_body("remote", "remote"))
            node = workers[0]
            create_pod(api_client, ns.name, probe_pod(PROBE_POD, node))
            wait_pod_running(api_client, ns.name, PROBE_POD)
        domain = kubelet_dns(api_client, node).cluster_domain
        if not domain:
            raise AssertionError(f"the kubelet of {node} reports no clusterDomain in its configuration: pods cannot "
                                 "form cluster names")
        yield DnsEnv(ns=ns, other=other, domain=domain, probe_node=node, probe_pod=PROBE_POD,
                     echo_ip=echo.cluster_ip, remote_ip=str(field(remote, "spec", "clusterIP")),
                     dns=cluster_dns(api_client))


def _check(env: DnsEnv, runner: PodExec, name: str, want: frozenset[str] | None, *, search: bool = False,
           problems: list[str], lookups: list[Lookup]) -> None:
    """Look `name` up; `want` None means it must not exist (NXDOMAIN)."""
    found = lookup(runner, env.ns.name, env.probe_pod, name, search=search)
    lookups.append(found)
    if want is None:
        if found.status != "NXDOMAIN":
            problems.append(f"{name} should not exist but got {found.describe()}")
        return
    if not found.ok:
        problems.append(f"{found.describe()}; expected {', '.join(sorted(want))} from {env.dns.describe()}")
    elif found.addresses != want:
        problems.append(f"{name} resolved to {', '.join(sorted(found.addresses))}, expected {', '.join(sorted(want))}")


def _status_summary(lookups: list[Lookup]) -> str:
    """How the lookups were answered, e.g. "NOERROR x5, NXDOMAIN x1" or "no reply from the nameserver x6"."""
    counts = Counter("no reply from the nameserver" if lk.status == "no-reply" else lk.status for lk in lookups)
    return ", ".join(f"{status} x{count}" for status, count in sorted(counts.items()))


def _latency_figures(result: ResultRecorder, lookups: list[Lookup], problems: list[str]) -> None:
    times = sorted(t for t in (lk.query_time_s for lk in lookups) if t is not None)
    result.measure("lookups", len(lookups), "lookups")
    if times:
        worst = times[-1]
        broken = require(result, "slowest lookup", worst, "s", LOOKUP_LATENCY_BUDGET_S,
                         broken="the slowest lookup took {value:.3f} s, budget {budget:.1f} s")
        if broken:
            problems.append(broken)


@pytest.mark.control(
    "HA-DNS-01", "Service names resolve from pods",
    "A pod MUST resolve a Service's FQDN <svc>.<ns>.svc.<cluster domain> to its ClusterIP, the short names <svc> and "
    "<svc>.<ns> through its search path, a Service of another namespace by <svc>.<ns> and FQDN, and MUST get "
    "NXDOMAIN for a Service that does not exist",
)
def test_service_names_resolve(dns_env: DnsEnv, dataplane_exec: PodExec, kubeha_result: ResultRecorder) -> None:
    env = dns_env
    ns, other, domain = env.ns.name, env.other.name, env.domain
    echo, remote = frozenset({env.echo_ip}), frozenset({env.remote_ip})
    problems: list[str] = []
    lookups: list[Lookup] = []
    _check(env, dataplane_exec, f"echo.{ns}.svc.{domain}", echo, problems=problems, lookups=lookups)
    _check(env, dataplane_exec, "echo", echo, search=True, problems=problems, lookups=lookups)
    _check(env, dataplane_exec, f"echo.{ns}", echo, search=True, problems=problems, lookups=lookups)
    _check(env, dataplane_exec, f"remote.{other}", remote, search=True, problems=problems, lookups=lookups)
    _check(env, dataplane_exec, f"remote.{other}.svc.{domain}", remote, problems=problems, lookups=lookups)
    _check(env, dataplane_exec, f"absent-{secrets.token_hex(4)}.{ns}.svc.{domain}", None, problems=problems,
           lookups=lookups)
    kubeha_result.evidence("cluster DNS", env.dns.describe())
    kubeha_result.evidence("lookups", "\n".join(lk.describe() for lk in lookups))
    _latency_figures(kubeha_result, lookups, problems)
    kubeha_result.measure("wrong or failed answers", len(problems), "lookups", budget=0)
    assert not problems, (f"cluster DNS ({env.dns.describe()}) answered {len(problems)} of {len(lookups)} lookups "
                          f"wrongly ({_status_summary(lookups)}):\n  " + "\n  ".join(problems))


@pytest.mark.control(
    "HA-DNS-02", "Headless Services and pod records resolve to pod addresses",
    "A pod MUST resolve a headless Service's FQDN to exactly the addresses of its ready endpoints, and each pod "
    "record a-b-c-d.<ns>.pod.<cluster domain> to that pod's address",
)
def test_headless_and_pod_records(dns_env: DnsEnv, api_client: ApiClient, dataplane_exec: PodExec,
                                  kubeha_result: ResultRecorder) -> None:
    env = dns_env
    endpoints = ready_endpoints(api_client, env.ns.name, "echo-headless")
    if not endpoints:
        raise AssertionError(f"headless Service {env.ns.name}/echo-headless has no ready endpoint: the echo backend "
                             "is not ready, nothing to resolve")
    addresses = frozenset(address for _, address in endpoints)
    problems: list[str] = []
    lookups: list[Lookup] = []
    _check(env, dataplane_exec, f"echo-headless.{env.ns.name}.svc.{env.domain}", addresses, problems=problems,
           lookups=lookups)
    for _, address in endpoints:
        _check(env, dataplane_exec, pod_a_record(address, env.ns.name, env.domain), frozenset({address}),
               problems=problems, lookups=lookups)
    kubeha_result.evidence("ready endpoints", ", ".join(f"{pod}={ip}" for pod, ip in endpoints))
    kubeha_result.evidence("lookups", "\n".join(lk.describe() for lk in lookups))
    kubeha_result.measure("pod records checked", len(endpoints), "records")
    _latency_figures(kubeha_result, lookups, problems)
    kubeha_result.measure("wrong or failed answers", len(problems), "lookups", budget=0)
    assert not problems, (f"{len(problems)} of {len(lookups)} lookups answered wrongly ({_status_summary(lookups)}):"
                          "\n  " + "\n  ".join(problems))


@pytest.mark.control(
    "HA-DNS-03", "Every kubelet points pods at the cluster DNS Service",
    "Every node's kubelet MUST run with clusterDNS equal to the cluster DNS Service's ClusterIP(s) and one "
    "clusterDomain shared by all nodes, and a pod's resolv.conf MUST name that server and search "
    "<ns>.svc.<cluster domain>",
)
def test_kubelet_dns_settings(dns_env: DnsEnv, api_client: ApiClient, kubeha_cluster: KubehaCluster,
                              dataplane_exec: PodExec, kubeha_result: ResultRecorder) -> None:
    env = dns_env
    service_ips = set(env.dns.cluster_ips)
    problems: list[str] = []
    domains: dict[str, list[str]] = {}
    nodes = [node.name for node in kubeha_cluster.topology.nodes]
    for node in nodes:
        settings = kubelet_dns(api_client, node)
        domains.setdefault(settings.cluster_domain, []).append(node)
        if not settings.cluster_dns or not set(settings.cluster_dns) <= service_ips:
            problems.append(f"kubelet of {node} has clusterDNS {list(settings.cluster_dns)}, the cluster DNS Service "
                            f"is at {sorted(service_ips)}")
    if len(domains) != 1:
        problems.append("kubelets disagree on clusterDomain: "
                        + "; ".join(f"{d or '(empty)'} on {', '.join(n)}" for d, n in sorted(domains.items())))
    resolv = dataplane_exec.run(env.ns.name, env.probe_pod, PROBE_CONTAINER, ["cat", "/etc/resolv.conf"],
                                timeout_s=EXEC_TIMEOUT_S)
    nameservers = [line.split()[1] for line in resolv.stdout.splitlines() if line.startswith("nameserver ")]
    search = [word for line in resolv.stdout.splitlines() if line.startswith("search ") for word in line.split()[1:]]
    if not nameservers or not set(nameservers) <= service_ips:
        problems.append(f"probe pod's resolv.conf names nameservers {nameservers}, expected {sorted(service_ips)}")
    wanted_search = f"{env.ns.name}.svc.{env.domain}"
    if wanted_search not in search:
        problems.append(f"probe pod's resolv.conf searches {search}, expected it to include {wanted_search}")
    kubeha_result.evidence("cluster domain", ", ".join(sorted(domains)))
    kubeha_result.evidence("probe pod resolv.conf", resolv.stdout.strip())
    kubeha_result.measure("kubelets checked", len(nodes), "nodes", budget=len(kubeha_cluster.topology.nodes))
    kubeha_result.measure("mismatches", len(problems), "settings", budget=0)
    assert not problems, "cluster DNS settings disagree:\n  " + "\n  ".join(problems)


@pytest.mark.control(
    "HA-DNS-04", "Cluster DNS is replicated across nodes",
    "Cluster DNS MUST run at least 2 ready replicas, on at least 2 different nodes, so that losing one node "
    "leaves a server",
)
def test_dns_replicas_on_distinct_nodes(api_client: ApiClient, kubeha_result: ResultRecorder) -> None:
    pods = coredns_pods(api_client)
    ready = [pod for pod in pods if pod.ready]
    nodes = sorted({pod.node for pod in ready})
    kubeha_result.evidence("cluster DNS pods", ", ".join(f"{p.name} on {p.node} ({'ready' if p.ready else 'NOT ready'})"
                                                         for p in pods) or "none")
    replicas_broken = require(kubeha_result, "ready DNS replicas", len(ready), "pods", MIN_DNS_REPLICAS,
                              at_least=True, broken="{value:.0f} ready cluster DNS replica(s), at least {budget:.0f} "
                                                    "needed")
    nodes_broken = require(kubeha_result, "nodes with a ready DNS replica", len(nodes), "nodes", MIN_DNS_REPLICAS,
                           at_least=True, broken="ready cluster DNS replicas run on {value:.0f} node(s) "
                                                 f"({', '.join(nodes) or 'none'}), at least {{budget:.0f}} needed")
    problems = [p for p in (replicas_broken, nodes_broken) if p]
    assert not problems, "; ".join(problems)


# ---------------------------------------------------------------------------------------------------------------------
# Faults


def _dns_probe(api_client: ApiClient, env: DnsEnv, node: str, label: str) -> InClusterProbe:
    """A DNS probe of the echo Service's FQDN on `node`; entering it starts it and checks a failure-free baseline."""
    query = f"echo.{env.ns.name}.svc.{env.domain}"
    return InClusterProbe.dns(api_client, env.ns.name, f"dns-probe-{label}-{secrets.token_hex(2)}", node, query,
                              expect=env.echo_ip)


def _wait_dns_ready(api_client: ApiClient, replicas: int) -> float:
    def check() -> str | None:
        ready = [p for p in coredns_pods(api_client) if p.ready]
        return None if len(ready) >= replicas else f"{len(ready)}/{replicas} cluster DNS replicas ready"

    return wait_until(check, timeout_s=budgets.RESTART_RECOVERY_TIMEOUT_S, what="cluster DNS replicas ready again")


def _probe_node(kubeha_cluster: KubehaCluster, avoid: str) -> str:
    candidates = [n for n in worker_names(kubeha_cluster.topology) if n != avoid]
    if not candidates:
        not_run(f"no worker other than {avoid} to run the DNS probe on: the probe must survive the fault")
    return candidates[0]


@pytest.mark.control(
    "HA-DNS-05", "DNS survives the loss of a DNS replica's node",
    "While the node of one cluster DNS replica is down, lookups MUST keep succeeding for the share of queries the "
    "surviving replicas receive, and ALL lookups MUST succeed again once the node is detected as lost (node-monitor "
    "grace period plus endpoint propagation)",
)
@pytest.mark.disruptive(control_plane_nodes=1, workers=1,
                        reason="stops the node of one DNS replica, a control-plane node or a worker; the worker "
                               "budget also keeps the probe's node up")
def test_dns_survives_replica_node_loss(dns_env: DnsEnv, api_client: ApiClient, kubeha_cluster: KubehaCluster,
                                        provider: Provider, journal: Journal,
                                        kubeha_result: ResultRecorder) -> None:
    env = dns_env
    ready = [p for p in coredns_pods(api_client) if p.ready]
    nodes = sorted({p.node for p in ready})
    if len(nodes) < MIN_DNS_REPLICAS:
        raise AssertionError(f"cluster DNS has ready replicas on {len(nodes)} node(s) ({', '.join(nodes) or 'none'}): "
                             "losing one node would take DNS down; see HA-DNS-04")
    topology = kubeha_cluster.topology
    # Prefer a control-plane target: the workers (and so the probe) stay whole.
    nodes.sort(key=lambda n: (not topology.node(n).has(Role.CONTROL_PLANE), n))
    target = nodes[0]
    probe_node = _probe_node(kubeha_cluster, target)
    timing = node_loss_timing(api_client)
    dead = sum(1 for p in ready if p.node == target)
    hold_s = budgets.node_loss_hold_s(timing)
    kubeha_result.evidence("fault", f"hard-stop (docker kill) node {target} (runs {dead} of {len(ready)} DNS "
                                    f"replicas); probe on {probe_node}; held {hold_s:.0f} s")
    kubeha_result.evidence("node loss timing", f"grace {timing.grace_s:.0f} s, monitor period "
                                               f"{timing.monitor_period_s:.0f} s ({timing.source})")
    with _dns_probe(api_client, env, probe_node, "replica-loss") as probe:
        with node_stopped(provider, target, journal=journal, hard=True) as fault, \
                env.ns.dumping_on_failure("dns-05", kubeha_result):
            time.sleep(hold_s)
            end = time.monotonic()
            after = {p.node: p.ready for p in coredns_pods(api_client)}
        attempts = probe.attempts()
    restart_s = _wait_dns_ready(api_client, len(ready))
    figures = fault_figures("DNS", [a.sample for a in attempts], fault.injected_mono, end, timing.detection_bound_s)
    record_fault_figures(kubeha_result, "DNS", figures)
    kubeha_result.measure("DNS replicas ready again after restart", round(restart_s, 1), "s")
    share_budget = budgets.expected_failure_share(dead, len(ready)) + budgets.FAILURE_SHARE_MARGIN
    problems = [p for p in (
        require(kubeha_result, "failed share before detection", figures.detection_failure_share, "ratio",
                share_budget, broken="{value:.0%} of lookups failed before the node was detected as lost, budget "
                                     f"{{budget:.0%}} ({dead} of {len(ready)} replicas dead)"),
        require(kubeha_result, "DNS recovery", figures.recovery_s, "s", budgets.recovery_budget_s(timing),
                broken="lookups kept failing until {value:.1f} s after the node stopped, budget {budget:.1f} s "
                       f"(grace {timing.grace_s:.0f} s + monitor period + endpoint propagation); errors: "
                       f"{figures.error_summary()}"),
    ) if p]
    if after.get(target, False):
        problems.append(f"the DNS replica on {target} was still ready after {hold_s:.0f} s with its node stopped: "
                        "the fault did not take effect or the node was not detected as lost")
    assert not problems, "; ".join(problems)


@pytest.mark.control(
    "HA-DNS-06", "DNS keeps answering while a control-plane node is down",
    "While one control-plane node is down, every lookup MUST succeed (when that node runs no DNS replica), and a "
    f"Service created meanwhile MUST resolve within {NEW_NAME_RESOLUTION_BUDGET_S:.0f} s",
)
@pytest.mark.disruptive(control_plane_nodes=1, workers=1,
                        reason="stops one control-plane node; the worker budget keeps the probe's node up")
def test_dns_survives_control_plane_loss(dns_env: DnsEnv, api_client: ApiClient, kubeha_cluster: KubehaCluster,
                                         provider: Provider, journal: Journal, dataplane_exec: PodExec,
                                         kubeha_result: ResultRecorder) -> None:
    env = dns_env
    topology = kubeha_cluster.topology
    control_planes = [node.name for node in topology.control_planes()]
    ready = [p for p in coredns_pods(api_client) if p.ready]
    dns_nodes = {p.node for p in ready}
    without_dns = sorted(n for n in control_planes if n not in dns_nodes)
    target = without_dns[-1] if without_dns else sorted(control_planes)[-1]
    dead = sum(1 for p in ready if p.node == target)
    probe_node = _probe_node(kubeha_cluster, target)
    timing = node_loss_timing(api_client)
    hold_s = budgets.node_loss_hold_s(timing)
    kubeha_result.evidence("fault", f"hard-stop (docker kill) control-plane node {target} ({dead} DNS replica(s) "
                                    f"on it); probe on {probe_node}; held {hold_s:.0f} s")
    name = f"late-{secrets.token_hex(3)}"
    with (_dns_probe(api_client, env, probe_node, "cp-loss") as probe,
          node_stopped(provider, target, journal=journal, hard=True) as fault,
          env.ns.dumping_on_failure("dns-06", kubeha_result)):
        created = create_service_during_fault(api_client, env.ns.name, service_body(name, "echo"),
                                              timeout_s=budgets.RESTART_RECOVERY_TIMEOUT_S)
        fqdn = f"{name}.{env.ns.name}.svc.{env.domain}"

        def resolves() -> str | None:
            found = lookup(dataplane_exec, env.ns.name, env.probe_pod, fqdn)
            return None if found.addresses == {field(created, "spec", "clusterIP")} else found.describe()

        resolved_s = wait_until(resolves, timeout_s=max(NAME_SETTLE_TIMEOUT_S, hold_s), what=f"{fqdn} resolving",
                                poll_s=NEW_NAME_POLL_S)
        remaining = hold_s - (time.monotonic() - fault.injected_mono)
        if remaining > 0:
            time.sleep(remaining)
        end = time.monotonic()
        attempts = probe.attempts()
    _wait_dns_ready(api_client, len(ready))
    figures = fault_figures("DNS", [a.sample for a in attempts], fault.injected_mono, end, timing.detection_bound_s)
    record_fault_figures(kubeha_result, "DNS", figures)
    problems = [require(kubeha_result, "new Service resolvable after", resolved_s, "s", NEW_NAME_RESOLUTION_BUDGET_S,
                        broken="a Service created during the fault resolved after {value:.1f} s, budget "
                               "{budget:.0f} s")]
    if dead == 0:
        problems.append(require(kubeha_result, "failed lookups", figures.stats.failures, "lookups", 0,
                                broken="{value:.0f} lookups failed although no DNS replica ran on the stopped node; "
                                       f"errors: {figures.error_summary()}"))
    else:
        problems.append(require(kubeha_result, "DNS recovery", figures.recovery_s, "s",
                                budgets.recovery_budget_s(timing),
                                broken="lookups kept failing until {value:.1f} s after the node stopped, budget "
                                       f"{{budget:.1f}} s; errors: {figures.error_summary()}"))
    broken = [p for p in problems if p]
    assert not broken, "; ".join(broken)
