"""HA-SVC: Services reach every endpoint, NodePorts answer on every node, address ranges are disjoint, and
kube-proxy runs in one known mode on every node.

Requests are made from a probe pod (tools image, curl) on a worker; the backend is the echo Deployment (agnhost
serve-hostname, two replicas per worker), whose answer names the pod that served it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kubernetes.client import ApiClient, CoreV1Api

from suites.ha._dataplane.analysis import require
from suites.ha._dataplane.facts import (
    kube_proxy_configured_mode,
    kube_proxy_running_modes,
    overlaps,
    pod_cidrs,
    service_cidrs,
)
from suites.ha._dataplane.kube import field, items, pod_log, ready_endpoints
from suites.ha._dataplane.scaffold import DataplaneNamespace, dataplane_exec, module_namespace, worker_names
from suites.ha._dataplane.workloads import (
    PROBE_CONTAINER,
    EchoBackend,
    create_echo_backend,
    create_pod,
    create_service,
    probe_pod,
    service_body,
    wait_pod_running,
)
from kubeha.cluster.client import REQUEST_TIMEOUT_S
from kubeha.plugin import KubehaCluster, ResultRecorder, cluster_setup, not_run
from suites.ha._support.podexec import PodExec

__all__ = ["dataplane_exec"]  # the fixture, re-exported so that pytest finds it in this module

REPLICAS_PER_WORKER = 2
# kube-proxy picks an endpoint at random per connection: with k endpoints, this many requests per endpoint miss one
# with probability k * (1 - 1/k)^(20k) < 1e-6 for any k >= 2.
REQUESTS_PER_ENDPOINT = 20
REQUESTS_PER_NODE = 3
CURL_MAX_TIME_S = 2
EXEC_TIMEOUT_PER_REQUEST_S = CURL_MAX_TIME_S + 1
PROBE_POD = "svc-client"
KUBE_PROXY_LOG_MODE = re.compile(r"Using (\w+) [Pp]roxier")


@dataclass(frozen=True)
class SvcEnv:
    ns: DataplaneNamespace
    echo: EchoBackend
    node_port: int


@pytest.fixture(scope="module")
def svc_env(request: pytest.FixtureRequest, api_client: ApiClient, kubeha_cluster: KubehaCluster) -> Iterator[SvcEnv]:
    workers = worker_names(kubeha_cluster.topology)
    with module_namespace(request, api_client, "svc") as ns:
        with cluster_setup(request, "service set-up"):
            echo = create_echo_backend(api_client, ns.name, "echo", REPLICAS_PER_WORKER * len(workers), workers)
            node_port_service = create_service(api_client, ns.name, service_body("echo-nodeport", "echo",
                                                                                 service_type="NodePort"))
            node_port = int(field(node_port_service, "spec", "ports")[0]["nodePort"])
            create_pod(api_client, ns.name, probe_pod(PROBE_POD, workers[0]))
            wait_pod_running(api_client, ns.name, PROBE_POD)
        yield SvcEnv(ns=ns, echo=echo, node_port=node_port)


def _curl_many(runner: PodExec, env: SvcEnv, url: str, count: int) -> list[str]:
    """`count` GETs of `url` from the probe pod, each on a new connection; one line per request: the answer (a pod
    name) or "FAIL <curl exit>"."""
    script = (f'for i in $(seq {count}); do out=$(curl -sS --max-time {CURL_MAX_TIME_S} "{url}" 2>/dev/null); '
              'rc=$?; if [ $rc -eq 0 ]; then echo "$out"; else echo "FAIL $rc"; fi; done')
    result = runner.run(env.ns.name, PROBE_POD, PROBE_CONTAINER, ["sh", "-c", script],
                        timeout_s=count * EXEC_TIMEOUT_PER_REQUEST_S + 10)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.control(
    "HA-SVC-01", "A ClusterIP reaches every endpoint",
    "Connections to a Service's ClusterIP MUST all succeed and MUST be spread over every ready endpoint of the "
    "Service",
)
def test_cluster_ip_reaches_all_endpoints(svc_env: SvcEnv, api_client: ApiClient, dataplane_exec: PodExec,
                                          kubeha_result: ResultRecorder) -> None:
    env = svc_env
    endpoints = {pod for pod, _ in ready_endpoints(api_client, env.ns.name, env.echo.name)}
    if len(endpoints) != env.echo.replicas:
        raise AssertionError(f"Service {env.ns.name}/{env.echo.name} has {len(endpoints)} ready endpoints, its "
                             f"Deployment {env.echo.replicas} ready replicas: endpoints are not up to date")
    answers = _curl_many(dataplane_exec, env, f"http://{env.echo.cluster_ip}/", REQUESTS_PER_ENDPOINT * len(endpoints))
    failed = [a for a in answers if a.startswith("FAIL")]
    reached = {a for a in answers if not a.startswith("FAIL")}
    strangers = sorted(reached - endpoints)
    missed = sorted(endpoints - reached)
    kubeha_result.evidence("answers per pod", ", ".join(f"{pod}: {answers.count(pod)}" for pod in sorted(endpoints)))
    kubeha_result.measure("requests", len(answers), "requests")
    problems = [p for p in (
        require(kubeha_result, "failed requests", len(failed), "requests", 0,
                broken=f"{{value:.0f}} of {len(answers)} requests to {env.echo.cluster_ip} failed ({failed[:3]})"),
        require(kubeha_result, "endpoints reached", len(reached & endpoints), "endpoints", len(endpoints),
                at_least=True, broken=f"the ClusterIP reached {{value:.0f}} of {{budget:.0f}} endpoints; never: "
                                      f"{', '.join(missed)}"),
    ) if p]
    if strangers:
        problems.append(f"answers from pods that are not endpoints of the Service: {', '.join(strangers)}")
    assert not problems, "; ".join(problems)


@pytest.mark.control(
    "HA-SVC-02", "A NodePort answers on every node",
    "A NodePort Service MUST answer on its node port at the address of every node of the cluster, control-plane "
    "nodes included, with a response from one of its endpoints",
)
# Every node must be up: a node another test holds down cannot answer, and that says nothing about NodePorts.
@pytest.mark.serial
def test_node_port_on_every_node(svc_env: SvcEnv, kubeha_cluster: KubehaCluster, dataplane_exec: PodExec,
                                 kubeha_result: ResultRecorder) -> None:
    env = svc_env
    nodes = kubeha_cluster.topology.nodes
    problems = []
    answering = 0
    for node in nodes:
        host = f"[{node.address}]" if ":" in node.address else node.address
        answers = _curl_many(dataplane_exec, env, f"http://{host}:{env.node_port}/", REQUESTS_PER_NODE)
        wrong = [a for a in answers if not a.startswith(env.echo.pod_prefix)]
        if wrong or len(answers) != REQUESTS_PER_NODE:
            problems.append(f"{node.name} ({node.address}:{env.node_port}) answered {wrong or answers}")
        else:
            answering += 1
    kubeha_result.evidence("node port", str(env.node_port))
    broken = require(kubeha_result, "nodes answering", answering, "nodes", len(nodes), at_least=True,
                     broken="{value:.0f} of {budget:.0f} nodes answered on the node port")
    assert not broken, f"{broken}: " + "; ".join(problems)


@pytest.mark.control(
    "HA-SVC-03", "Service and pod address ranges are disjoint",
    "The Service CIDR MUST NOT overlap the pod CIDRs (the cluster's and every node's), node pod CIDRs MUST NOT "
    "overlap each other, every ClusterIP MUST lie in the Service CIDR and no pod address in it",
)
def test_service_and_pod_cidrs_disjoint(api_client: ApiClient, kubeha_result: ResultRecorder) -> None:
    services, service_source = service_cidrs(api_client)
    per_node, cluster = pod_cidrs(api_client)
    node_networks = [network for networks in per_node.values() for network in networks]
    problems: list[str] = []
    for a, b in overlaps(services, [*cluster, *node_networks]):
        problems.append(f"Service CIDR {a} overlaps pod CIDR {b}")
    names = sorted(per_node)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            for a, b in overlaps(per_node[first], per_node[second]):
                problems.append(f"pod CIDR {a} of {first} overlaps {b} of {second}")
    outside = []
    for service in items(CoreV1Api(api_client).list_service_for_all_namespaces(_request_timeout=REQUEST_TIMEOUT_S)):
        for ip in field(service, "spec", "clusterIPs") or []:
            if ip == "None":
                continue
            address = ipaddress.ip_address(ip)
            if not any(address in network for network in services if network.version == address.version):
                outside.append(f"{field(service, 'metadata', 'namespace')}/{field(service, 'metadata', 'name')}={ip}")
    inside = []
    for pod in items(CoreV1Api(api_client).list_pod_for_all_namespaces(_request_timeout=REQUEST_TIMEOUT_S)):
        if field(pod, "spec", "hostNetwork"):
            continue
        for entry in field(pod, "status", "podIPs") or []:
            address = ipaddress.ip_address(entry.get("ip"))
            if any(address in network for network in services if network.version == address.version):
                inside.append(f"{field(pod, 'metadata', 'namespace')}/{field(pod, 'metadata', 'name')}={address}")
    kubeha_result.evidence("Service CIDR", f"{', '.join(map(str, services))} ({service_source})")
    kubeha_result.evidence("pod CIDRs", f"cluster {', '.join(map(str, cluster)) or 'not visible'}; "
                           + "; ".join(f"{n}: {', '.join(map(str, c)) or 'none'}" for n, c in sorted(per_node.items())))
    if not node_networks and not cluster:
        raise AssertionError("no pod CIDR is visible (no node has spec.podCIDRs, no kube-controller-manager "
                             "--cluster-cidr): the overlap cannot be checked")
    broken = [p for p in (
        require(kubeha_result, "overlapping ranges", len(problems), "pairs", 0,
                broken="{value:.0f} overlapping range pair(s): " + "; ".join(problems)),
        require(kubeha_result, "ClusterIPs outside the Service CIDR", len(outside), "addresses", 0,
                broken="{value:.0f} ClusterIP(s) outside the Service CIDR: " + ", ".join(outside[:10])),
        require(kubeha_result, "pod addresses inside the Service CIDR", len(inside), "addresses", 0,
                broken="{value:.0f} pod address(es) inside the Service CIDR: " + ", ".join(inside[:10])),
    ) if p]
    assert not broken, "; ".join(broken)


def _mode_from_log(client: ApiClient, pod: str) -> str | None:
    match = KUBE_PROXY_LOG_MODE.search(pod_log(client, "kube-system", pod))
    return match.group(1).lower() if match else None


@pytest.mark.control(
    "HA-SVC-04", "kube-proxy runs in its configured mode on every node",
    "Every node MUST run kube-proxy, and each MUST report the proxy mode its configuration names",
)
# Every node must be up: the mode is read from each node's kube-proxy, through its kubelet.
@pytest.mark.serial
def test_kube_proxy_mode(api_client: ApiClient, kubeha_cluster: KubehaCluster,
                         kubeha_result: ResultRecorder) -> None:
    configured = kube_proxy_configured_mode(api_client)
    if configured is None:
        not_run("the cluster has no kube-system/kube-proxy ConfigMap: Services are implemented without kube-proxy "
                "(e.g. by the CNI), whose mode this control does not read")
    mode, source = configured
    running = kube_proxy_running_modes(api_client)
    pods = {str(field(p, "spec", "nodeName")): str(field(p, "metadata", "name"))
            for p in items(CoreV1Api(api_client).list_namespaced_pod(
                "kube-system", label_selector="k8s-app=kube-proxy", _request_timeout=REQUEST_TIMEOUT_S))}
    reported: dict[str, str] = {}
    for node, answer in running.items():
        if answer.startswith("error:"):
            # The metrics port may listen on localhost only: the mode kube-proxy logged at start stands in.
            from_log = _mode_from_log(api_client, pods[node]) if node in pods else None
            reported[node] = f"{from_log} (from its log; {answer})" if from_log else answer
        else:
            reported[node] = answer
    nodes = [node.name for node in kubeha_cluster.topology.nodes]
    agreeing = [n for n in nodes if reported.get(n, "").split(" ")[0] == mode]
    kubeha_result.evidence("configured mode", f"{mode} ({source})")
    kubeha_result.evidence("reported modes", "; ".join(f"{n}: {reported.get(n, 'no kube-proxy pod')}" for n in nodes))
    broken = require(kubeha_result, "nodes running the configured mode", len(agreeing), "nodes", len(nodes),
                     at_least=True, broken=f"{{value:.0f}} of {{budget:.0f}} nodes run kube-proxy in mode {mode}")
    assert not broken, broken + ": " + "; ".join(f"{n}: {reported.get(n, 'no kube-proxy pod')}" for n in nodes
                                                 if n not in agreeing)
