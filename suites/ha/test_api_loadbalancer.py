"""HA-API: the API server as clients reach it, through the load balancer.

HA-API-01  a hard-stopped control-plane node (each one in turn) costs at most the budgeted outage
HA-API-02  a graceful rolling restart of the API servers
HA-API-03  the kubeconfig points at the load balancer, not at a node
HA-API-04  every API server's certificate names the load balancer
HA-API-05  the kubernetes Service's EndpointSlices follow the API servers' health

The outage budget defaults to the load balancer's own detection time (haproxy: next check + fall x check timeout +
the intervals between failing checks) plus one probe attempt; ``api_outage_s`` in --ha-config overrides it.
"""

from __future__ import annotations

import socket
import ssl
import time

import pytest
from kubernetes.client import ApiClient

from kubeha.cluster.discovery import APISERVER_COMPONENT as APISERVER
from kubeha.faults import Journal, component_stopped, node_stopped
from kubeha.plugin import KubehaCluster, ResultRecorder, not_run
from kubeha.probes.credentials import ApiEndpoint
from kubeha.providers.base import Component, Provider
from suites.ha._support.budgets import (
    Budget,
    HaConfig,
    endpoint_readmission_budget,
    endpoint_removal_budget,
    rolling_restart_failed_requests_budget,
)
from suites.ha._support.haproxy import HaproxyChecks
from suites.ha._support.kube import (
    NODE_RESTART_TIMEOUT_S,
    ApiServer,
    RetryTimeout,
    direct_client,
    fail,
    kubernetes_endpoint_addresses,
    wait_for,
    wait_ready,
    wait_restarted,
)
from suites.ha._support.restore import until_back
from suites.ha._support.traffic import Traffic

# Probing before the fault, so that a failing baseline shows as such.
BASELINE_S = 3.0
# After the budget, every attempt must keep succeeding this long for the API to count as recovered.
STABLE_AFTER_BUDGET_S = 10.0
# A restarted API server must serve /readyz within this long.
API_SERVER_READY_TIMEOUT_S = 180.0
# Readmission time assumed when the load balancer's health checks are unknown.
READMISSION_UNKNOWN_S = 30.0
# The kubernetes Service's endpoints must list every API server within this long from the start of the test (the
# health gate before it already waited for the steady state).
ENDPOINTS_SETTLE_S = 30.0
# Reading an API server's certificate: one TCP connection and TLS handshake.
TLS_CONNECT_TIMEOUT_S = 10.0
# Waits for a budgeted event last this many times the budget, so that a late event is measured, not just missed.
OVERRUN_FACTOR = 2


def _node_at(cluster: KubehaCluster, index: int) -> str:
    names = sorted(node.name for node in cluster.topology.control_planes())
    if index >= len(names):
        not_run(f"the cluster has {len(names)} control-plane nodes, this test stops the one at index {index}")
    return names[index]


def _lb_hint(checks: HaproxyChecks | None) -> str:
    if checks is None:
        return ""
    unchecked = checks.unchecked()
    if unchecked:
        names = ", ".join(server.server for server in unchecked)
        return (
            f"the load balancer has no health check on {names}, so nothing takes a stopped API server out of "
            "rotation"
        )
    return ""


@pytest.mark.serial
@pytest.mark.control(
    "HA-API-01",
    "API survives the loss of a control-plane node",
    "While any one control-plane node is hard-stopped, reads and writes through the load balancer MUST keep "
    "succeeding after an outage no longer than the budget",
)
@pytest.mark.disruptive(control_plane_nodes=1, reason="hard-stops one control-plane node")
def test_api_survives_control_plane_node_loss(
    request: pytest.FixtureRequest,
    control_plane_index: int,
    kubeha_cluster: KubehaCluster,
    provider: Provider,
    journal: Journal,
    ha_endpoint: ApiEndpoint,
    ha_namespace: str,
    api_outage: Budget,
    lb_checks: tuple[HaproxyChecks | None, str],
    api_client: ApiClient,
    kubeha_result: ResultRecorder,
) -> None:
    node = _node_at(kubeha_cluster, control_plane_index)
    budget = api_outage.value
    kubeha_result.evidence("budget", api_outage.describe())
    with Traffic(ha_endpoint, ha_namespace, test_id=request.node.nodeid) as traffic:
        time.sleep(BASELINE_S)
        with until_back(
            node_stopped(provider, node, journal=journal, hard=True),
            wait=lambda since: wait_restarted(api_client, node, since, timeout_s=NODE_RESTART_TIMEOUT_S),
        ) as back:
            fault = back.first
            kubeha_result.event("fault", fault.describe())
            time.sleep(max(fault.injected_mono + budget + STABLE_AFTER_BUDGET_S - time.monotonic(), 0.0))
            traffic.stop()
    kubeha_result.measure("node_back_s", back.seconds or 0.0, "s")
    verdict = traffic.judge(fault.started_mono, budget)
    traffic.record(kubeha_result, verdict)
    fault_text = f"control-plane node {node} was hard-stopped"
    if not verdict.ok:
        summary, *rest = verdict.message(fault_text).splitlines()
        hint = _lb_hint(lb_checks[0])
        fail(summary + (f"; {hint}" if hint else ""), *rest, api_outage.describe())
    verification = traffic.verify_writes(kubeha_result)
    if not verification.passed:
        fail(f"acknowledged writes lost after {fault_text}: {verification.summary()}")


@pytest.mark.serial
@pytest.mark.control(
    "HA-API-02",
    "Rolling restart of the API servers",
    "A graceful rolling restart of the API servers, one at a time, MUST NOT interrupt the API through the load "
    "balancer for longer than the budget, MUST NOT lose an acknowledged write, and MUST keep failed requests within "
    "their budget when one is set",
)
@pytest.mark.disruptive(api_servers=1, reason="restarts the API servers one at a time")
@pytest.mark.needs(control_planes=2)
def test_api_servers_rolling_restart(
    request: pytest.FixtureRequest,
    provider: Provider,
    journal: Journal,
    ha_endpoint: ApiEndpoint,
    ha_api_servers: tuple[ApiServer, ...],
    ha_namespace: str,
    ha_config: HaConfig,
    api_outage: Budget,
    lb_checks: tuple[HaproxyChecks | None, str],
    api_client: ApiClient,
    kubeha_result: ResultRecorder,
) -> None:
    checks = lb_checks[0]
    readmission = checks.readmission_bound_s() if checks is not None else None
    readmission_s = readmission if readmission is not None else READMISSION_UNKNOWN_S
    failed_budget = rolling_restart_failed_requests_budget(ha_config)
    kubeha_result.evidence(
        "budgets",
        "\n".join(
            [
                api_outage.describe(),
                failed_budget.describe() if failed_budget is not None else "failed requests: not bounded (reported)",
                f"wait after each restart for the load balancer to readmit the server: {readmission_s:g} s",
            ]
        ),
    )
    steps: list[str] = []
    with Traffic(ha_endpoint, ha_namespace, test_id=request.node.nodeid) as traffic:
        time.sleep(BASELINE_S)
        started = time.monotonic()
        for server in ha_api_servers:
            step_start = time.monotonic()
            with until_back(
                component_stopped(provider, server.node, Component.KUBE_APISERVER, journal=journal),
                wait=lambda since: wait_restarted(
                    api_client, server.node, since, component=APISERVER, timeout_s=NODE_RESTART_TIMEOUT_S
                ),
            ) as back:
                kubeha_result.event("fault", back.first.describe())
                stopped_s = back.first.injected_mono - back.first.started_mono
            ready_s = wait_ready(
                server.endpoint(ha_endpoint),
                timeout_s=API_SERVER_READY_TIMEOUT_S,
                what=f"the API server on {server.node} to serve /readyz after its restart",
            )
            time.sleep(readmission_s)
            steps.append(
                f"{server.node}: stopped in {stopped_s:.1f} s, ready {ready_s:.1f} s after restart, "
                f"step {time.monotonic() - step_start:.1f} s"
            )
        traffic.stop()
    kubeha_result.evidence("restart steps", "\n".join(steps))
    verdict = traffic.judge(started, api_outage.value)
    reads, writes = verdict.reads, verdict.writes
    kubeha_result.measure("api_longest_outage_s", reads.stats.longest_outage_s, "s", budget=api_outage.value)
    kubeha_result.measure("write_longest_outage_s", writes.stats.longest_outage_s, "s", budget=api_outage.value)
    failed = reads.stats.failures + writes.stats.failures
    kubeha_result.measure(
        "failed_requests", failed, "requests", budget=None if failed_budget is None else failed_budget.value
    )
    kubeha_result.measure("api_probes", reads.stats.count, "probes")
    kubeha_result.measure("writes_attempted", writes.stats.count, "writes")
    probe = traffic.probe.result()
    kubeha_result.windows(probe.main.windows)
    kubeha_result.probe_span(probe.main.stats.first_t, probe.main.stats.last_t)
    kubeha_result.evidence("probe summary", f"reads: {reads.counts()}\nwrites: {writes.counts()}")
    worst = max(reads.stats.longest_outage_s, writes.stats.longest_outage_s)
    if worst > api_outage.value or reads.stats.open_window is not None or writes.stats.open_window is not None:
        subject = "reads" if reads.stats.longest_outage_s >= writes.stats.longest_outage_s else "writes"
        fail(
            f"longest API outage during the rolling restart {worst:.2f} s ({subject}) exceeds budget "
            f"{api_outage.value:.2f} s (reads: {reads.counts()}; writes: {writes.counts()})",
            _lb_hint(checks),
        )
    if failed_budget is not None and failed > failed_budget.value:
        fail(
            f"{failed} requests failed during the rolling restart, budget {failed_budget.value:g} "
            f"(reads: {reads.counts()}; writes: {writes.counts()})"
        )
    verification = traffic.verify_writes(kubeha_result)
    if not verification.passed:
        fail(f"acknowledged writes lost during the rolling restart: {verification.summary()}")


@pytest.mark.control(
    "HA-API-03",
    "Clients reach the API through the load balancer",
    "The kubeconfig MUST point at the load balancer, not at one control-plane node",
)
def test_kubeconfig_points_at_load_balancer(
    kubeha_cluster: KubehaCluster, ha_endpoint: ApiEndpoint, kubeha_result: ResultRecorder
) -> None:
    host = ha_endpoint.host
    nodes = {node.address: node.name for node in kubeha_cluster.topology.nodes}
    names = {node.name for node in kubeha_cluster.topology.nodes}
    try:
        resolved = sorted({str(info[4][0]) for info in socket.getaddrinfo(host, ha_endpoint.port, type=socket.SOCK_STREAM)})
    except socket.gaierror as error:
        fail(f"the kubeconfig's server {ha_endpoint.server} does not resolve: {error}")
    kubeha_result.evidence(
        "kubeconfig",
        f"server {ha_endpoint.server} (context {ha_endpoint.context}) resolves to {', '.join(resolved)}\n"
        f"node addresses: {', '.join(f'{name} {address}' for address, name in sorted(nodes.items()))}\n"
        + "\n".join(f"note: {note}" for note in kubeha_cluster.discovery_notes),
    )
    targeted = sorted({nodes[address] for address in resolved if address in nodes} | ({host} & names))
    kubeha_result.measure("nodes_targeted_by_kubeconfig", len(targeted), "nodes", budget=0)
    if targeted:
        fail(
            f"the kubeconfig's server {ha_endpoint.server} is control-plane node {', '.join(targeted)} itself: "
            "clients lose the API whenever that node is down; point it at the load balancer"
        )
    if kubeha_cluster.topology.load_balancer is None:
        fail(f"the kubeconfig's server {ha_endpoint.server} is not a load balancer in front of the API servers")


def _certificate_names(server: ApiServer, endpoint: ApiEndpoint, hostname: str) -> tuple[bool, str, tuple[str, ...]]:
    """(verifies for `hostname`, verification error, subject alternative names) of `server`'s certificate."""
    error_text = ""
    for check_hostname in (True, False):
        context = endpoint.ssl_context()
        context.check_hostname = check_hostname
        with socket.create_connection((server.address, server.port), timeout=TLS_CONNECT_TIMEOUT_S) as raw:
            try:
                with context.wrap_socket(raw, server_hostname=hostname) as tls:
                    certificate = tls.getpeercert() or {}
            except ssl.SSLCertVerificationError as error:
                error_text = str(error.verify_message or error)
                continue
        sans = tuple(f"{entry[0]}:{entry[1]}" for entry in certificate.get("subjectAltName", ()) if len(entry) == 2)
        return check_hostname, error_text, sans
    raise ssl.SSLError(f"the certificate of {server.url} does not verify against the kubeconfig's CA: {error_text}")


@pytest.mark.serial
@pytest.mark.control(
    "HA-API-04",
    "API server certificates name the load balancer",
    "Every API server's serving certificate MUST include the load balancer's name or address in its subject "
    "alternative names",
)
def test_api_server_certificates_name_load_balancer(
    ha_endpoint: ApiEndpoint, ha_api_servers: tuple[ApiServer, ...], kubeha_result: ResultRecorder
) -> None:
    if ha_endpoint.insecure_skip_tls_verify:
        not_run("the kubeconfig skips TLS verification, so the API servers' certificates cannot be checked")
    hostname = ha_endpoint.server_hostname
    missing: list[str] = []
    lines: list[str] = []
    for server in ha_api_servers:
        try:
            matches, mismatch, sans = _certificate_names(server, ha_endpoint, hostname)
        except (OSError, ssl.SSLError) as error:
            fail(f"cannot read the certificate of the API server on {server.node} at {server.url}: {error}")
        verdict = "names" if matches else "does NOT name"
        lines.append(f"{server.node} {server.url}: {verdict} {hostname}; SANs {', '.join(sans)}")
        if not matches:
            missing.append(f"{server.node} ({mismatch})")
    kubeha_result.evidence("certificates", "\n".join(lines))
    kubeha_result.measure("certificates_without_lb_name", len(missing), "certificates", budget=0)
    if missing:
        fail(
            f"{len(missing)} of {len(ha_api_servers)} API server certificates do not name the load balancer "
            f"{hostname}: {'; '.join(missing)}; clients routed to them fail TLS verification"
        )


def _if_equal(seen: frozenset[str], expected: frozenset[str]) -> frozenset[str] | None:
    return seen if seen == expected else None


@pytest.mark.serial
@pytest.mark.control(
    "HA-API-05",
    "In-cluster API endpoints follow API server health",
    "The kubernetes Service's EndpointSlices MUST list every healthy API server, MUST drop a stopped one within the "
    "budget, and MUST list it again within the budget once it is back",
)
@pytest.mark.disruptive(api_servers=1, reason="stops one API server")
@pytest.mark.needs(control_planes=2)
def test_kubernetes_endpoints_follow_api_servers(
    provider: Provider,
    journal: Journal,
    ha_endpoint: ApiEndpoint,
    ha_api_servers: tuple[ApiServer, ...],
    ha_config: HaConfig,
    kubeha_result: ResultRecorder,
) -> None:
    removal = endpoint_removal_budget(ha_config)
    readmission = endpoint_readmission_budget(ha_config)
    kubeha_result.evidence("budgets", f"{removal.describe()}\n{readmission.describe()}")
    target, reader = ha_api_servers[-1], ha_api_servers[0]
    expected = frozenset(server.address for server in ha_api_servers)
    client: ApiClient = direct_client(ha_endpoint, reader)
    try:
        try:
            listed, _ = wait_for(
                lambda: _if_equal(kubernetes_endpoint_addresses(client), expected),
                timeout_s=ENDPOINTS_SETTLE_S,
                what=f"the kubernetes EndpointSlices to list every API server {sorted(expected)}",
            )
        except RetryTimeout as error:
            fail(f"the kubernetes Service does not list every healthy API server: {error}; listed now: "
                 f"{sorted(kubernetes_endpoint_addresses(client))}")
        kubeha_result.evidence("listed before the fault", ", ".join(sorted(listed)))
        with until_back(
            component_stopped(provider, target.node, Component.KUBE_APISERVER, journal=journal),
            wait=lambda since: wait_restarted(
                client, target.node, since, component=APISERVER, timeout_s=NODE_RESTART_TIMEOUT_S
            ),
        ) as back:
            fault = back.first
            kubeha_result.event("fault", fault.describe())
            try:
                wait_for(
                    lambda: True if target.address not in kubernetes_endpoint_addresses(client) else None,
                    timeout_s=OVERRUN_FACTOR * removal.value,
                    what=f"{target.address} ({target.node}) to leave the kubernetes EndpointSlices",
                )
            except RetryTimeout as error:
                kubeha_result.measure("endpoint_removal_s", OVERRUN_FACTOR * removal.value, "s", budget=removal.value)
                fail(f"the stopped API server on {target.node} stays in the kubernetes Service's endpoints: {error}")
            # From the moment the API server no longer runs (stop_component returned); its graceful shutdown
            # before that is reported separately.
            removed_s = time.monotonic() - fault.injected_mono
            shutdown_s = fault.injected_mono - fault.started_mono
            restore_t = time.monotonic()
        restored_s = time.monotonic() - restore_t
        try:
            _, readded_s = wait_for(
                lambda: True if target.address in kubernetes_endpoint_addresses(client) else None,
                timeout_s=OVERRUN_FACTOR * readmission.value,
                what=f"{target.address} ({target.node}) to be listed again",
            )
        except RetryTimeout as error:
            kubeha_result.measure("endpoint_readmission_s", OVERRUN_FACTOR * readmission.value, "s", budget=readmission.value)
            fail(f"the restarted API server on {target.node} is not listed again in the kubernetes Service: {error}")
    finally:
        client.close()  # type: ignore[no-untyped-call]
    readded_total = restored_s + readded_s
    kubeha_result.measure("api_server_shutdown_s", shutdown_s, "s")
    kubeha_result.measure("endpoint_removal_s", removed_s, "s", budget=removal.value)
    kubeha_result.measure("endpoint_readmission_s", readded_total, "s", budget=readmission.value)
    if removed_s > removal.value:
        fail(
            f"the stopped API server on {target.node} left the endpoints {removed_s:.2f} s after it stopped, budget "
            f"{removal.value:.2f} s"
        )
    if readded_total > readmission.value:
        fail(
            f"the restarted API server on {target.node} was listed again after {readded_total:.2f} s, budget "
            f"{readmission.value:.2f} s"
        )

