"""HA-CONS: what clients of several API servers can rely on.

HA-CONS-01  an update with a stale resourceVersion gets 409 Conflict from every API server and through the load
            balancer
HA-CONS-02  a watch held through the load balancer resumes from its resourceVersion across an API server failover,
            without lost or duplicated events
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from kubernetes.client import ApiClient

from kubeha.cluster.discovery import APISERVER_COMPONENT
from kubeha.core.model import Comparison
from kubeha.faults import Journal, component_stopped
from kubeha.plugin import ResultRecorder
from kubeha.probes.api import HttpResponse, TransportError, one_request
from kubeha.probes.credentials import ApiEndpoint
from kubeha.probes.writes import WriteOutcome
from kubeha.providers.base import Component, Provider
from suites.ha._support.kube import (
    NODE_RESTART_TIMEOUT_S,
    ApiServer,
    RetryTimeout,
    fail,
    retry,
    wait_for,
    wait_ready,
    wait_restarted,
)
from suites.ha._support.restore import until_back
from suites.ha._support.traffic import Traffic
from suites.ha._support.watch import ResumingWatch, judge_watch

HTTP_OK = 200
HTTP_CREATED = 201
HTTP_CONFLICT = 409
REQUEST_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0
CONFLICT_OBJECT = "conflict-probe"
# Watches opened through the load balancer per API server, so that some are served by the one stopped.
WATCHES_PER_API_SERVER = 2
WATCH_CONNECT_TIMEOUT_S = 30.0
# Writes flow this long before the first fault, and the API server stays down this long.
WARMUP_S = 3.0
FAILOVER_HOLD_S = 10.0
API_SERVER_READY_TIMEOUT_S = 180.0
# After the writes stop, every watch must have delivered every write within this long.
WATCH_CATCH_UP_S = 30.0


@dataclass(frozen=True)
class _Target:
    name: str
    endpoint: ApiEndpoint


def _put(target: _Target, path: str, body: dict[str, object]) -> HttpResponse:
    return one_request(
        target.endpoint,
        target.endpoint.ssl_context(),
        "PUT",
        path,
        timeout_s=REQUEST_TIMEOUT_S,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )


def _configmap(namespace: str, version: str, value: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFLICT_OBJECT, "namespace": namespace, "resourceVersion": version},
        "data": {"value": value},
    }


def _version_of(response: HttpResponse) -> str:
    decoded = json.loads(response.body)
    return str(decoded["metadata"]["resourceVersion"])


@pytest.mark.serial
@pytest.mark.control(
    "HA-CONS-01",
    "Optimistic concurrency on every API server",
    "An update carrying a stale resourceVersion MUST be rejected with 409 Conflict by every API server, directly "
    "and through the load balancer",
)
def test_stale_updates_conflict_on_every_api_server(
    ha_endpoint: ApiEndpoint,
    ha_api_servers: tuple[ApiServer, ...],
    ha_namespace: str,
    kubeha_result: ResultRecorder,
) -> None:
    targets = [_Target("load balancer", ha_endpoint)] + [
        _Target(f"API server on {server.node}", server.endpoint(ha_endpoint)) for server in ha_api_servers
    ]
    collection = f"/api/v1/namespaces/{quote(ha_namespace)}/configmaps"
    path = f"{collection}/{CONFLICT_OBJECT}"
    lb = targets[0]
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFLICT_OBJECT}, "data": {"value": "0"}}
    created = one_request(
        lb.endpoint, lb.endpoint.ssl_context(), "POST", collection, timeout_s=REQUEST_TIMEOUT_S,
        body=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
    )
    if created.status != HTTP_CREATED:
        fail(f"creating ConfigMap {CONFLICT_OBJECT} through the load balancer failed: {created.summary()}")
    versions = [_version_of(created)]
    lines = [f"created through the load balancer at resourceVersion {versions[0]}"]
    # Each server in turn updates the object with the version the previous one returned: every server sees writes
    # made through the others.
    for index, target in enumerate(targets, start=1):
        try:
            response = _put(target, path, _configmap(ha_namespace, versions[-1], str(index)))
        except TransportError as error:
            fail(f"updating through {target.name} with the current resourceVersion {versions[-1]} failed: {error}")
        if response.status != HTTP_OK:
            fail(f"{target.name} rejected an update with the current resourceVersion {versions[-1]}: {response.summary()}")
        versions.append(_version_of(response))
        lines.append(f"{target.name}: update from {versions[-2]} accepted, now {versions[-1]}")
    stale = [versions[0], versions[-2]]
    accepted: list[str] = []
    for target in targets:
        for version in stale:
            try:
                response = _put(target, path, _configmap(ha_namespace, version, "stale"))
            except TransportError as error:
                fail(f"a stale update through {target.name} failed below HTTP: {error}")
            lines.append(f"{target.name}: stale update from {version} -> HTTP {response.status}")
            if response.status != HTTP_CONFLICT:
                accepted.append(
                    f"{target.name} answered HTTP {response.status} instead of 409 to resourceVersion {version} "
                    f"(current {versions[-1]})"
                )
    kubeha_result.evidence("updates", "\n".join(lines))
    kubeha_result.measure("stale_updates_tried", len(stale) * len(targets), "updates")
    kubeha_result.measure("stale_updates_not_conflicting", len(accepted), "updates", budget=0)
    if accepted:
        fail(f"{len(accepted)} stale updates were not rejected with 409 Conflict: {accepted[0]}", *accepted[1:])


@pytest.mark.serial
@pytest.mark.control(
    "HA-CONS-02",
    "Watches resume across API server failover",
    "A watch held through the load balancer MUST resume from its last resourceVersion after its API server stops, "
    "without losing or duplicating events",
)
@pytest.mark.disruptive(api_servers=1, reason="stops one API server at a time until a watch served by it breaks")
@pytest.mark.needs(control_planes=2)
def test_watch_resumes_across_api_server_failover(
    request: pytest.FixtureRequest,
    provider: Provider,
    journal: Journal,
    ha_endpoint: ApiEndpoint,
    ha_api_servers: tuple[ApiServer, ...],
    ha_namespace: str,
    api_client: ApiClient,
    kubeha_result: ResultRecorder,
) -> None:
    traffic = Traffic(ha_endpoint, ha_namespace, test_id=request.node.nodeid)
    listing = retry(
        lambda: one_request(
            ha_endpoint, ha_endpoint.ssl_context(), "GET", f"/api/v1/namespaces/{quote(ha_namespace)}/configmaps",
            timeout_s=REQUEST_TIMEOUT_S,
        ),
        timeout_s=CALL_TIMEOUT_S,
        what="listing the test namespace's ConfigMaps",
    )
    start_version = int(json.loads(listing.body)["metadata"]["resourceVersion"])
    watches = [
        ResumingWatch(ha_endpoint, ha_namespace, traffic.writes.selector, start_version, name=f"watch-{index}")
        for index in range(WATCHES_PER_API_SERVER * len(ha_api_servers))
    ]
    exercised: list[str] = []
    steps: list[str] = []
    try:
        for watch in watches:
            watch.start()
            if not watch.wait_connected(WATCH_CONNECT_TIMEOUT_S):
                fail(f"{watch.name} could not connect through the load balancer: {watch.errors()[-1:]}")
        with traffic:
            time.sleep(WARMUP_S)
            for server in ha_api_servers:
                with until_back(
                    component_stopped(provider, server.node, Component.KUBE_APISERVER, journal=journal),
                    wait=lambda since: wait_restarted(
                        api_client, server.node, since, component=APISERVER_COMPONENT, timeout_s=NODE_RESTART_TIMEOUT_S
                    ),
                ) as back:
                    fault = back.first
                    kubeha_result.event("fault", fault.describe())
                    time.sleep(FAILOVER_HOLD_S)
                    restore_t = time.monotonic()
                broken = [
                    watch.name
                    for watch in watches
                    if any(fault.started_mono <= item.t_mono <= restore_t for item in watch.breaks())
                ]
                steps.append(f"stopped the API server on {server.node}: watches broken {broken or 'none'}")
                wait_ready(server.endpoint(ha_endpoint), timeout_s=API_SERVER_READY_TIMEOUT_S,
                           what=f"the API server on {server.node} to serve again")
                if broken:
                    exercised.extend(broken)
                    break
            time.sleep(WARMUP_S)
        written = {record.name: record for record in traffic.writes.records()}
        acknowledged = {name for name, record in written.items() if record.outcome is WriteOutcome.OK}
        try:
            wait_for(
                lambda: True if all(acknowledged <= watch.names_added() or watch.expired for watch in watches) else None,
                timeout_s=WATCH_CATCH_UP_S,
                what="every watch to deliver every acknowledged write",
            )
        except RetryTimeout:
            steps.append(f"not every watch caught up within {WATCH_CATCH_UP_S:g} s")
    finally:
        for watch in watches:
            watch.stop()
    verification = traffic.verify_writes(kubeha_result)
    present = set(acknowledged) | set(verification.unknown_present)
    maybe = {name for name in written if name not in present}
    verdicts = [
        judge_watch(
            watch.name,
            watch.events(),
            present,
            maybe,
            sum(1 for item in watch.breaks() if item.resumed_t is not None),
            watch.expired,
        )
        for watch in watches
    ]
    kubeha_result.evidence("failover", "\n".join(steps))
    kubeha_result.evidence("watches", "\n".join(verdict.summary() for verdict in verdicts))
    resumed = [verdict for verdict in verdicts if verdict.watch in exercised and verdict.resumes]
    kubeha_result.measure("watches", len(watches), "watches")
    kubeha_result.measure("watches_resumed_across_failover", len(resumed), "watches", budget=1,
                          comparison=Comparison.AT_LEAST)
    kubeha_result.measure("events_lost", sum(len(v.lost) for v in verdicts), "events", budget=0)
    kubeha_result.measure("events_duplicated", sum(len(v.duplicated) for v in verdicts), "events", budget=0)
    kubeha_result.measure("watches_expired", sum(1 for v in verdicts if v.expired), "watches", budget=0)
    bad = [verdict for verdict in verdicts if not verdict.ok]
    if bad:
        fail(f"{len(bad)} of {len(verdicts)} watches did not resume cleanly across the failover: {bad[0].summary()}",
             *(verdict.summary() for verdict in bad[1:]))
    if not exercised:
        fail(f"no watch held through the load balancer was served by any of the {len(ha_api_servers)} API servers "
             "stopped in turn: the failover was never exercised")
    if not resumed:
        fail(f"watches {exercised} broke when their API server stopped but never resumed")
    if not verification.passed:
        fail(f"acknowledged writes lost during the failover: {verification.summary()}")
