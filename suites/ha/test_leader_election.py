"""HA-LE: leader election of kube-controller-manager and kube-scheduler.

HA-LE-01  leader election on for every instance, one Lease holder, on a control-plane node, renewing
HA-LE-02  the holder's node hard-stopped: a different holder within the budget, which then acts
HA-LE-03  the holder's process stopped: the same

"Acts" means: the controller-manager creates the pods of a Deployment scaled up after the takeover, and the
scheduler binds a pod created after it. The takeover budget defaults to the component's leaseDuration plus two
jittered retryPeriods (`kubeha.core.topology.LeaderElection.takeover_bound_s`) plus the observation slack.
"""

from __future__ import annotations

import time

import pytest
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api, V1Pod

from kubeha.cluster.client import REQUEST_TIMEOUT_S
from kubeha.cluster.discovery import (
    CONTROLLER_MANAGER_COMPONENT,
    DEFAULT_LEASE_DURATION_S,
    DEFAULT_RENEW_DEADLINE_S,
    DEFAULT_RETRY_PERIOD_S,
    SCHEDULER_COMPONENT,
    leader_election_from_command,
    read_kube_system_pods,
)
from kubeha.core.model import Comparison
from kubeha.core.topology import LeaderElection
from kubeha.faults import FaultRecord, Journal, component_stopped, node_stopped
from kubeha.plugin import KubehaCluster, ResultRecorder
from kubeha.probes.credentials import ApiEndpoint
from kubeha.probes.leases import HttpLeaseReader, LeaseObservation, LeaseRef, LeaseWatcher, holder_node
from kubeha.providers.base import Component, Provider
from suites.ha._support.budgets import Budget, HaConfig, controller_action_budget, leader_takeover_budget
from suites.ha._support.kube import (
    NODE_RESTART_TIMEOUT_S,
    ApiServer,
    RetryTimeout,
    deployment_body,
    direct_client,
    fail,
    node_of,
    pod_body,
    retry,
    wait_for,
    wait_restarted,
)
from suites.ha._support.restore import until_back

KUBE_SYSTEM = "kube-system"
COMPONENTS = (CONTROLLER_MANAGER_COMPONENT, SCHEDULER_COMPONENT)
COMPONENT_OF = {CONTROLLER_MANAGER_COMPONENT: Component.KUBE_CONTROLLER_MANAGER, SCHEDULER_COMPONENT: Component.KUBE_SCHEDULER}
# The audit watches the Lease this many retry periods (plus one second), to see it renewed and held by one holder.
AUDIT_RETRY_PERIODS = 3
AUDIT_EXTRA_S = 1.0
# The first Lease reading must arrive within this long.
FIRST_READING_TIMEOUT_S = 15.0
# Waiting for a takeover goes this far beyond the budget, so that a late takeover is measured, not just missed.
TAKEOVER_WAIT_EXTRA_S = 30.0
# Before the fault, the controllers must have created the probe Deployment's pod within this long.
WORKLOAD_TIMEOUT_S = 120.0
# Calls made while a control-plane node is down retry transient failures this long.
CALL_TIMEOUT_S = 60.0
PROBE_DEPLOYMENT = "takeover-probe"
PROBE_POD = "schedule-probe"
INITIAL_REPLICAS = 1
SCALED_REPLICAS = 2
MERGE_PATCH = "application/merge-patch+json"


def _election(cluster: KubehaCluster, component: str) -> tuple[LeaderElection, str]:
    found = cluster.topology.leader_election(component)
    if found is not None:
        return found, f"{component} flags read by discovery"
    default = LeaderElection(component, True, DEFAULT_LEASE_DURATION_S, DEFAULT_RENEW_DEADLINE_S, DEFAULT_RETRY_PERIOD_S)
    return default, f"{component} settings unknown, Kubernetes defaults"


def _lease(component: str) -> LeaseRef:
    return LeaseRef(KUBE_SYSTEM, component)


def _age_s(observation: LeaseObservation) -> float | None:
    if observation.renew_time is None:
        return None
    return observation.t_wall - observation.renew_time.timestamp()


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.serial
@pytest.mark.control(
    "HA-LE-01",
    "One active instance per leader-elected component",
    "kube-controller-manager and kube-scheduler MUST run with leader election enabled on every instance, with "
    "exactly one holder of their Lease, on a control-plane node, renewing it",
)
@pytest.mark.needs(control_planes=2)
def test_one_leader_holds_the_lease(
    component: str,
    api_client: ApiClient,
    kubeha_cluster: KubehaCluster,
    ha_endpoint: ApiEndpoint,
    kubeha_result: ResultRecorder,
) -> None:
    election, source = _election(kubeha_cluster, component)
    control_planes = {node.name for node in kubeha_cluster.topology.control_planes()}
    pods = sorted((pod for pod in read_kube_system_pods(api_client) if pod.component() == component), key=lambda p: p.node)
    off = []
    for pod in pods:
        settings, _ = leader_election_from_command(component, pod.main_command())
        if not settings.enabled:
            off.append(pod.node)
    problems: list[str] = []
    if off:
        problems.append(
            f"leader election is off (--leader-elect=false) on {len(off)} of {len(pods)} {component} instances "
            f"({', '.join(off)}): each of them acts as the leader at once"
        )
    if len(pods) < 2:
        problems.append(f"only {len(pods)} {component} instance runs: there is no standby to take over")
    lease = _lease(component)
    watch_s = AUDIT_RETRY_PERIODS * election.retry_period_s + AUDIT_EXTRA_S
    with LeaseWatcher(HttpLeaseReader(ha_endpoint), [lease]) as watcher:
        time.sleep(watch_s)
    observations = [obs for obs in watcher.observations(lease) if obs.exists]
    holders = sorted({obs.holder_identity for obs in observations if obs.holder_identity})
    renewals = {obs.renew_time for obs in observations if obs.renew_time is not None}
    last = observations[-1] if observations else None
    age = _age_s(last) if last is not None else None
    kubeha_result.evidence(
        "lease",
        f"{lease} watched {watch_s:g} s ({watcher.poll_count(lease)} reads, {len(watcher.errors(lease))} failed): "
        f"holders {holders or 'none'}, {len(renewals)} distinct renewTime(s), last renewed "
        f"{'never' if age is None else f'{age:.1f} s before the last read'}\n"
        f"instances: {', '.join(f'{pod.name} on {pod.node}' for pod in pods)}\n"
        f"settings: leaseDuration {election.lease_duration_s:g} s, retryPeriod {election.retry_period_s:g} s ({source})",
    )
    kubeha_result.measure("instances", len(pods), "instances", budget=2, comparison=Comparison.AT_LEAST)
    kubeha_result.measure("instances_without_leader_election", len(off), "instances", budget=0)
    kubeha_result.measure("lease_holders_seen", len(holders), "holders", budget=1)
    if not observations:
        problems.append(f"the Lease {lease} does not exist: no instance ever won the election")
    elif not holders:
        problems.append(f"the Lease {lease} has no holder")
    else:
        if len(holders) > 1:
            problems.append(f"the Lease {lease} changed holder while watched for {watch_s:g} s: {holders}")
        node = holder_node(holders[-1])
        if node not in control_planes:
            problems.append(f"the Lease {lease} is held by {holders[-1]}, not on a control-plane node")
        elif node not in {pod.node for pod in pods}:
            problems.append(f"the Lease {lease} is held by {holders[-1]}, but no {component} runs on {node}")
        if age is not None:
            kubeha_result.measure("lease_renew_age_s", age, "s", budget=election.lease_duration_s)
        if age is None or age > election.lease_duration_s:
            problems.append(
                f"the Lease {lease} was last renewed {'never' if age is None else f'{age:.1f} s ago'} by {holders[-1]}, "
                f"more than its leaseDuration {election.lease_duration_s:g} s: no instance holds it"
            )
        elif len(renewals) < 2:
            problems.append(f"the Lease {lease} was not renewed while watched for {watch_s:g} s")
    if problems:
        fail(problems[0], *problems[1:])


def _pods_of(client: ApiClient, namespace: str, app: str) -> list[V1Pod]:
    pods = CoreV1Api(client).list_namespaced_pod(namespace, label_selector=f"app={app}", _request_timeout=REQUEST_TIMEOUT_S)
    return [pod for pod in pods.items if pod.metadata is None or pod.metadata.deletion_timestamp is None]


def _takeover(
    fault_kind: str,
    component: str,
    cluster: KubehaCluster,
    provider: Provider,
    journal: Journal,
    endpoint: ApiEndpoint,
    servers: tuple[ApiServer, ...],
    namespace: str,
    api_client: ApiClient,
    config: HaConfig,
    result: ResultRecorder,
) -> None:
    election, source = _election(cluster, component)
    takeover = leader_takeover_budget(config, election, source)
    action = controller_action_budget(config)
    result.evidence("budgets", f"{takeover.describe()}\n{action.describe()}")
    apps = AppsV1Api(api_client)
    apps.create_namespaced_deployment(
        namespace, deployment_body(PROBE_DEPLOYMENT, INITIAL_REPLICAS), _request_timeout=REQUEST_TIMEOUT_S
    )
    wait_for(
        lambda: True if len(_pods_of(api_client, namespace, PROBE_DEPLOYMENT)) >= INITIAL_REPLICAS else None,
        timeout_s=WORKLOAD_TIMEOUT_S,
        what=f"the controllers to create the pod of Deployment {PROBE_DEPLOYMENT} before the fault",
    )
    lease = _lease(component)
    initial = HttpLeaseReader(endpoint).read(lease, REQUEST_TIMEOUT_S)
    if initial is None or initial.holder_identity is None:
        fail(f"the Lease {lease} has no holder before the fault: nothing to take over from")
    old_holder = initial.holder_identity
    old_node = holder_node(old_holder)
    if old_node not in {node.name for node in cluster.topology.control_planes()}:
        fail(f"the Lease {lease} is held by {old_holder}, not by an instance on a control-plane node")
    reader = next((server for server in servers if server.node != old_node), None)
    if reader is None:
        fail(f"no API server outside {old_node}: the takeover cannot be observed while {old_node} is down")
    client = direct_client(endpoint, reader)
    try:
        with LeaseWatcher(HttpLeaseReader(reader.endpoint(endpoint)), [lease]) as watcher:
            wait_for(
                lambda: True if watcher.current_holder(lease) is not None else None,
                timeout_s=FIRST_READING_TIMEOUT_S,
                what=f"a first reading of the Lease {lease} through {reader.node}",
            )
            fault_cm = (
                node_stopped(provider, old_node, journal=journal, hard=True)
                if fault_kind == "node"
                else component_stopped(provider, old_node, COMPONENT_OF[component], journal=journal)
            )
            restarted = None if fault_kind == "node" else component
            with until_back(
                fault_cm,
                wait=lambda since: wait_restarted(
                    client, old_node, since, component=restarted, timeout_s=NODE_RESTART_TIMEOUT_S
                ),
            ) as back:
                result.event("fault", back.first.describe())
                _after_fault(back.first, lease, watcher, takeover, action, old_holder, old_node, cluster, client,
                             namespace, result)
        result.measure("restored_s", back.seconds or 0.0, "s")
    finally:
        client.close()  # type: ignore[no-untyped-call]


def _after_fault(
    fault: FaultRecord,
    lease: LeaseRef,
    watcher: LeaseWatcher,
    takeover: Budget,
    action: Budget,
    old_holder: str,
    old_node: str,
    cluster: KubehaCluster,
    client: ApiClient,
    namespace: str,
    result: ResultRecorder,
) -> None:
    what = f"{fault.describe()} (holder {old_holder})"
    found = watcher.wait_for_takeover(lease, fault.started_mono, takeover.value + TAKEOVER_WAIT_EXTRA_S)
    history = "\n".join(
        f"{obs.t_mono - fault.started_mono:+.2f} s holder {obs.holder_identity or '(none)'}"
        for obs in watcher.transitions(lease)
    )
    result.evidence("lease holders", history)
    if found is None:
        result.measure("takeover_s", takeover.value + TAKEOVER_WAIT_EXTRA_S, "s", budget=takeover.value)
        fail(f"no other instance took the Lease {lease} within {takeover.value + TAKEOVER_WAIT_EXTRA_S:.1f} s after {what}")
    takeover_s = found.t_mono - fault.started_mono
    result.measure("takeover_s", takeover_s, "s", budget=takeover.value)
    acquired = found.acquired_after_s(fault.started_mono)
    if acquired is not None:
        result.measure("takeover_by_acquire_time_s", acquired, "s")
    new_node = holder_node(found.holder_identity)
    if new_node == old_node or new_node not in {node.name for node in cluster.topology.control_planes()}:
        fail(f"the Lease {lease} went to {found.holder_identity} after {what}: not another control-plane node")
    if takeover_s > takeover.value:
        fail(f"{found.holder_identity} took the Lease {lease} {takeover_s:.2f} s after {what}, budget {takeover.value:.2f} s")
    acted = time.monotonic()
    apps = AppsV1Api(client)
    retry(
        lambda: apps.patch_namespaced_deployment_scale(
            PROBE_DEPLOYMENT,
            namespace,
            {"spec": {"replicas": SCALED_REPLICAS}},
            _content_type=MERGE_PATCH,
            _request_timeout=REQUEST_TIMEOUT_S,
        ),
        timeout_s=CALL_TIMEOUT_S,
        what=f"scaling Deployment {PROBE_DEPLOYMENT} to {SCALED_REPLICAS}",
    )
    retry(
        lambda: CoreV1Api(client).create_namespaced_pod(namespace, pod_body(PROBE_POD), _request_timeout=REQUEST_TIMEOUT_S),
        timeout_s=CALL_TIMEOUT_S,
        what=f"creating pod {PROBE_POD}",
    )
    try:
        _, scaled_s = wait_for(
            lambda: True if len(_pods_of(client, namespace, PROBE_DEPLOYMENT)) >= SCALED_REPLICAS else None,
            timeout_s=action.value,
            what=f"the controller-manager to create the pods of Deployment {PROBE_DEPLOYMENT} scaled to {SCALED_REPLICAS}",
        )
        scheduled, _ = wait_for(
            lambda: next((node_of(pod) for pod in _pods_of(client, namespace, PROBE_POD) if node_of(pod)), None),
            timeout_s=max(action.value - (time.monotonic() - acted), 1.0),
            what=f"the scheduler to bind pod {PROBE_POD}",
        )
    except RetryTimeout as error:
        fail(f"after {found.holder_identity} took over: {error}")
    scheduled_s = time.monotonic() - acted
    result.measure("deployment_scaled_s", scaled_s, "s", budget=action.value)
    result.measure("pod_scheduled_s", scheduled_s, "s", budget=action.value)
    result.evidence("after takeover", f"{SCALED_REPLICAS} pods of {PROBE_DEPLOYMENT} created; {PROBE_POD} bound to {scheduled}")


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.serial
@pytest.mark.control(
    "HA-LE-02",
    "Leader takeover after node loss",
    "When the node of the Lease holder is hard-stopped, another instance MUST hold the Lease within the budget and "
    "then act: the controller-manager creates the pods of a scaled Deployment, the scheduler binds a new pod",
)
@pytest.mark.disruptive(control_plane_nodes=1, reason="hard-stops the node of the Lease holder")
@pytest.mark.needs(control_planes=2)
def test_leader_takeover_after_node_loss(
    component: str,
    kubeha_cluster: KubehaCluster,
    provider: Provider,
    journal: Journal,
    ha_endpoint: ApiEndpoint,
    ha_api_servers: tuple[ApiServer, ...],
    ha_namespace: str,
    api_client: ApiClient,
    ha_config: HaConfig,
    kubeha_result: ResultRecorder,
) -> None:
    _takeover("node", component, kubeha_cluster, provider, journal, ha_endpoint, ha_api_servers, ha_namespace,
              api_client, ha_config, kubeha_result)


@pytest.mark.parametrize(
    "component",
    [
        pytest.param(
            CONTROLLER_MANAGER_COMPONENT,
            marks=pytest.mark.disruptive(controller_managers=1, reason="stops the Lease holder's process"),
        ),
        pytest.param(
            SCHEDULER_COMPONENT, marks=pytest.mark.disruptive(schedulers=1, reason="stops the Lease holder's process")
        ),
    ],
)
@pytest.mark.serial
@pytest.mark.control(
    "HA-LE-03",
    "Leader takeover after process stop",
    "When the Lease holder's process is stopped, another instance MUST hold the Lease within the budget and then "
    "act: the controller-manager creates the pods of a scaled Deployment, the scheduler binds a new pod",
)
@pytest.mark.needs(control_planes=2)
def test_leader_takeover_after_process_stop(
    component: str,
    kubeha_cluster: KubehaCluster,
    provider: Provider,
    journal: Journal,
    ha_endpoint: ApiEndpoint,
    ha_api_servers: tuple[ApiServer, ...],
    ha_namespace: str,
    api_client: ApiClient,
    ha_config: HaConfig,
    kubeha_result: ResultRecorder,
) -> None:
    _takeover("process", component, kubeha_cluster, provider, journal, ha_endpoint, ha_api_servers, ha_namespace,
              api_client, ha_config, kubeha_result)

