"""HA-ETCD: etcd's quorum, as its members report it and as API writes experience it.

HA-ETCD-01  topology audit: odd member count >= 3, all healthy, one leader, one raft term, equal HashKV
HA-ETCD-02  writes survive floor((N-1)/2) stopped members
HA-ETCD-03  one member more: writes fail; after restore nothing acknowledged is lost and the members agree
HA-ETCD-04  a new leader is elected within the budget after the leader's node is killed

Member counts come from the cluster (`kubeha.core.quorum`); nothing assumes three members. etcdctl runs inside the
etcd static pods (stacked etcd); with external etcd these controls are not-run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from kubernetes.client import ApiClient

from kubeha.cluster.discovery import ETCD_COMPONENT
from kubeha.cluster.health import HealthReport, SteadyStateGate
from kubeha.core.model import Comparison
from kubeha.core.quorum import quorum_plan
from kubeha.faults import Journal, component_stopped, node_stopped
from kubeha.plugin import KubehaCluster, ResultRecorder
from kubeha.probes.credentials import ApiEndpoint
from kubeha.probes.writes import WriteOutcome
from kubeha.providers.base import Component, Provider
from suites.ha._support.budgets import Budget, EtcdTiming, HaConfig, etcd_election_budget, quorum_recovery_budget
from suites.ha._support.etcd import (
    EtcdAudit,
    EtcdOutputError,
    EtcdPod,
    Etcdctl,
    Snapshot,
    audit,
    election_observer_script,
    leader_changes,
    min_ha_members,
)
from suites.ha._support.kube import NODE_RESTART_TIMEOUT_S, ApiServer, RetryTimeout, fail, wait_for, wait_restarted
from suites.ha._support.podexec import ExecError, PodExec
from suites.ha._support.restore import until_back
from suites.ha._support.traffic import Traffic

KUBE_SYSTEM = "kube-system"
BASELINE_S = 3.0
STABLE_AFTER_BUDGET_S = 10.0
# How long quorum stays lost while writes are attempted (each attempt times out after the write timeout).
QUORUM_LOSS_HOLD_S = 15.0
# Writes attempted while quorum is lost, at least: fewer prove nothing.
MIN_WRITES_WITHOUT_QUORUM = 3
# After restarting stopped members, etcd must report every member healthy and agreeing within this long.
ETCD_REJOIN_TIMEOUT_S = 180.0
# The election observer must report the current leader within this long after it starts.
OBSERVER_START_TIMEOUT_S = 30.0
# The observer runs this much longer than the election budget, so that a late election is still measured.
OBSERVER_EXTRA_S = 30.0
# Waits for a budgeted event last this many times the budget, so that a late event is measured, not just missed.
OVERRUN_FACTOR = 2


def _etcdctl_via(pod: EtcdPod, servers: Sequence[ApiServer], base: ApiEndpoint) -> tuple[PodExec, Etcdctl]:
    """etcdctl in `pod`, exec'd through the API server on the pod's own node (which survives faults elsewhere)."""
    server = next((server for server in servers if server.node == pod.node), None)
    execs = PodExec(server.endpoint(base) if server is not None else base)
    return execs, Etcdctl(execs, pod)


def _members_restarted(client: ApiClient, pods: Sequence[EtcdPod], since_wall: float) -> float:
    """Wait until the etcd static pod of every one of `pods` runs again, restarted after `since_wall`."""
    return sum(
        wait_restarted(client, pod.node, since_wall, component=ETCD_COMPONENT, timeout_s=NODE_RESTART_TIMEOUT_S)
        for pod in pods
    )


def _record_audit(result: ResultRecorder, snapshot: Snapshot, verdict: EtcdAudit, *, prefix: str = "") -> None:
    result.evidence(f"{prefix}etcdctl", snapshot.evidence())
    result.evidence(f"{prefix}etcd audit", "\n".join(verdict.facts + tuple(f"PROBLEM: {p}" for p in verdict.problems)))


def _healthy_snapshot(etcdctl: Etcdctl, mode_cluster: KubehaCluster, timeout_s: float) -> tuple[Snapshot, EtcdAudit, float]:
    """Wait until the audit passes (members back, healthy, agreeing); the last snapshot, its audit, seconds waited."""
    last: list[tuple[Snapshot, EtcdAudit]] = []

    def attempt() -> bool | None:
        try:
            snapshot = etcdctl.snapshot()
        except (ExecError, EtcdOutputError):
            return None
        verdict = audit(snapshot, mode_cluster.topology.etcd_mode)
        last[:] = [(snapshot, verdict)]
        return True if verdict.ok else None

    start = time.monotonic()
    try:
        wait_for(attempt, timeout_s=timeout_s, what="every etcd member to be back, healthy and agreeing")
    except RetryTimeout as error:
        if not last:
            raise
        snapshot, verdict = last[0]
        return snapshot, EtcdAudit(problems=(str(error), *verdict.problems), facts=verdict.facts), time.monotonic() - start
    snapshot, verdict = last[0]
    return snapshot, verdict, time.monotonic() - start


@pytest.mark.serial
@pytest.mark.control(
    "HA-ETCD-01",
    "etcd topology",
    "etcd MUST run an odd number of at least 3 voting members, all healthy, with exactly one leader that every "
    "member agrees on, all on the same raft term and holding identical data (equal HashKV at one revision)",
)
def test_etcd_topology(
    kubeha_cluster: KubehaCluster,
    etcd_pods: tuple[EtcdPod, ...],
    ha_endpoint: ApiEndpoint,
    kubeha_result: ResultRecorder,
) -> None:
    if not etcd_pods:
        fail("no etcd static pod runs on any control-plane node, although discovery found stacked etcd")
    with PodExec(ha_endpoint) as execs:
        snapshot = Etcdctl(execs, etcd_pods[0]).snapshot()
    verdict = audit(snapshot, kubeha_cluster.topology.etcd_mode)
    _record_audit(kubeha_result, snapshot, verdict)
    voting = snapshot.voting()
    kubeha_result.measure(
        "voting_members", len(voting), "members", budget=min_ha_members(), comparison=Comparison.AT_LEAST
    )
    kubeha_result.measure("even_member_count", 1 if len(voting) % 2 == 0 else 0, "", budget=0)
    kubeha_result.measure(
        "unhealthy_members", sum(1 for item in snapshot.health if not item.healthy), "members", budget=0
    )
    kubeha_result.measure("leaders_reported", len(snapshot.leaders() - {0}), "leaders", budget=1)
    kubeha_result.measure("raft_terms", len({status.raft_term for status in snapshot.statuses}), "terms", budget=1)
    kubeha_result.measure("distinct_hashkv", len({item.hash for item in snapshot.hashes}), "hashes", budget=1)
    pod_members = sorted(pod.member_name for pod in etcd_pods)
    member_names = sorted(member.name for member in voting)
    if pod_members != member_names and verdict.ok:
        fail(f"etcd's members {member_names} are not the etcd pods' members {pod_members}")
    if not verdict.ok:
        fail(verdict.problems[0], *verdict.problems[1:])


@pytest.mark.serial
@pytest.mark.control(
    "HA-ETCD-02",
    "Writes survive etcd member loss within tolerance",
    "With floor((N-1)/2) of N etcd members stopped, writes through the API MUST keep succeeding after an outage no "
    "longer than the budget, and no acknowledged write may be lost",
)
def test_writes_survive_tolerated_etcd_member_loss(
    request: pytest.FixtureRequest,
    tolerated_etcd_stops: int,
    kubeha_cluster: KubehaCluster,
    provider: Provider,
    journal: Journal,
    etcd_pods: tuple[EtcdPod, ...],
    ha_endpoint: ApiEndpoint,
    ha_api_servers: tuple[ApiServer, ...],
    ha_namespace: str,
    api_outage: Budget,
    etcd_timing: EtcdTiming,
    api_client: ApiClient,
    kubeha_result: ResultRecorder,
) -> None:
    plan = quorum_plan(len(etcd_pods))
    if tolerated_etcd_stops != plan.may_stop:
        fail(f"the cluster now has {plan.members} etcd members; this test was generated for stopping "
             f"{tolerated_etcd_stops}, quorum tolerates {plan.may_stop}")
    stopped, survivors = etcd_pods[: plan.may_stop], etcd_pods[plan.may_stop :]
    budget = api_outage.value + etcd_timing.election_bound_s()
    kubeha_result.evidence(
        "budget",
        f"{budget:g} s = {api_outage.describe()} + etcd election bound {etcd_timing.election_bound_s():g} s "
        f"({etcd_timing.source}); stopping {', '.join(pod.member_name for pod in stopped)} of {plan.members} "
        f"(quorum {plan.quorum})",
    )
    with Traffic(ha_endpoint, ha_namespace, test_id=request.node.nodeid) as traffic:
        time.sleep(BASELINE_S)
        with until_back(
            *(component_stopped(provider, pod.node, Component.ETCD, journal=journal) for pod in stopped),
            wait=lambda since: _members_restarted(api_client, stopped, since),
        ) as back:
            for fault in back.faults:
                kubeha_result.event("fault", fault.describe())
            time.sleep(max(back.last.injected_mono + budget + STABLE_AFTER_BUDGET_S - time.monotonic(), 0.0))
            traffic.stop()
    verdict = traffic.judge(back.first.started_mono, budget)
    traffic.record(kubeha_result, verdict)
    fault_text = f"{len(stopped)} of {plan.members} etcd members were stopped"
    if not verdict.ok:
        summary, *rest = verdict.message(fault_text).splitlines()
        fail(summary, *rest)
    execs, etcdctl = _etcdctl_via(survivors[0], ha_api_servers, ha_endpoint)
    with execs:
        snapshot, agreement, waited = _healthy_snapshot(etcdctl, kubeha_cluster, ETCD_REJOIN_TIMEOUT_S)
    _record_audit(kubeha_result, snapshot, agreement, prefix="after restore: ")
    kubeha_result.measure("etcd_rejoin_s", waited, "s")
    if not agreement.ok:
        fail(f"after restarting the stopped members: {agreement.problems[0]}", *agreement.problems[1:])
    verification = traffic.verify_writes(kubeha_result)
    if not verification.passed:
        fail(f"acknowledged writes lost after {fault_text}: {verification.summary()}")


@pytest.mark.serial
@pytest.mark.control(
    "HA-ETCD-03",
    "etcd refuses writes without quorum and recovers intact",
    "With one etcd member more than quorum tolerates stopped, writes MUST fail; once the members are back, every "
    "acknowledged write MUST be present, the members MUST agree (equal HashKV) and the API MUST be healthy",
)
def test_etcd_refuses_writes_without_quorum_and_recovers_intact(
    request: pytest.FixtureRequest,
    quorum_losing_etcd_stops: int,
    kubeha_cluster: KubehaCluster,
    provider: Provider,
    journal: Journal,
    etcd_pods: tuple[EtcdPod, ...],
    ha_endpoint: ApiEndpoint,
    ha_api_servers: tuple[ApiServer, ...],
    ha_namespace: str,
    ha_config: HaConfig,
    api_outage: Budget,
    etcd_timing: EtcdTiming,
    steady_state: SteadyStateGate,
    api_client: ApiClient,
    kubeha_result: ResultRecorder,
) -> None:
    plan = quorum_plan(len(etcd_pods))
    if quorum_losing_etcd_stops != plan.must_stop_to_lose:
        fail(f"the cluster now has {plan.members} etcd members; this test was generated for stopping "
             f"{quorum_losing_etcd_stops}, quorum is lost at {plan.must_stop_to_lose}")
    stopped, survivors = etcd_pods[: plan.must_stop_to_lose], etcd_pods[plan.must_stop_to_lose :]
    recovery = quorum_recovery_budget(ha_config, api_outage, etcd_timing)
    kubeha_result.evidence(
        "plan",
        f"stopping {', '.join(pod.member_name for pod in stopped)}: {len(stopped)} of {plan.members} members, "
        f"quorum {plan.quorum}\n{recovery.describe()}",
    )
    with Traffic(ha_endpoint, ha_namespace, test_id=request.node.nodeid) as traffic:
        time.sleep(BASELINE_S)
        with until_back(
            *(component_stopped(provider, pod.node, Component.ETCD, journal=journal) for pod in stopped),
            wait=lambda since: _members_restarted(api_client, stopped, since),
        ) as back:
            for fault in back.faults:
                kubeha_result.event("fault", fault.describe())
            lost_t = back.last.injected_mono
            time.sleep(QUORUM_LOSS_HOLD_S)
            restore_t = time.monotonic()
        restored_t = time.monotonic()
        # Restoring the first member brings a majority back: quorum recovery is timed from when it runs again.
        quorum_back_t = back.restored_mono[0] if back.restored_mono else restored_t

        def acknowledged_after_restore() -> float | None:
            later = [r for r in traffic.writes.records() if r.t_mono >= quorum_back_t and r.outcome is WriteOutcome.OK]
            return later[0].t_mono if later else None

        try:
            first_ok, _ = wait_for(
                acknowledged_after_restore, timeout_s=OVERRUN_FACTOR * recovery.value, what="a write acknowledged after restore"
            )
        except RetryTimeout as error:
            traffic.stop()
            kubeha_result.measure("quorum_recovery_s", OVERRUN_FACTOR * recovery.value, "s", budget=recovery.value)
            fail(f"no write was acknowledged after the etcd members were restarted: {error}")
        time.sleep(STABLE_AFTER_BUDGET_S)
        traffic.stop()
    during = [record for record in traffic.writes.records() if lost_t <= record.t_mono < restore_t]
    acknowledged = [record for record in during if record.outcome is WriteOutcome.OK]
    recovery_s = first_ok - quorum_back_t
    kubeha_result.measure("writes_attempted_without_quorum", len(during), "writes",
                          budget=MIN_WRITES_WITHOUT_QUORUM, comparison=Comparison.AT_LEAST)
    kubeha_result.measure("writes_acknowledged_without_quorum", len(acknowledged), "writes", budget=0)
    # How long the provider took to have the first member running again: kubelet restarts a static pod whose
    # manifest came back only after failing to delete its mirror pod, which takes API timeouts without quorum.
    kubeha_result.measure("etcd_quorum_member_restart_s", quorum_back_t - restore_t, "s")
    kubeha_result.measure("etcd_members_back_s", restored_t - restore_t, "s")
    kubeha_result.measure("quorum_recovery_s", recovery_s, "s", budget=recovery.value)
    kubeha_result.evidence("writes", traffic.writes.report().summary())
    if acknowledged:
        names = ", ".join(record.name for record in acknowledged[:5])
        fail(
            f"{len(acknowledged)} of {len(during)} writes were acknowledged while {len(stopped)} of {plan.members} "
            f"etcd members were down (quorum {plan.quorum}): {names}"
        )
    if len(during) < MIN_WRITES_WITHOUT_QUORUM:
        fail(f"only {len(during)} writes were attempted while quorum was lost, at least {MIN_WRITES_WITHOUT_QUORUM} "
             "are needed to show that writes fail")
    if recovery_s > recovery.value:
        fail(f"writes recovered {recovery_s:.2f} s after a majority of etcd members ran again, budget "
             f"{recovery.value:.2f} s")
    health: HealthReport = steady_state.wait()
    kubeha_result.evidence("health after restore", health.describe())
    if not health.ok:
        fail(f"the API is not healthy after quorum was restored: {health.describe()}")
    execs, etcdctl = _etcdctl_via(survivors[0] if survivors else stopped[0], ha_api_servers, ha_endpoint)
    with execs:
        snapshot, agreement, _ = _healthy_snapshot(etcdctl, kubeha_cluster, ETCD_REJOIN_TIMEOUT_S)
    _record_audit(kubeha_result, snapshot, agreement, prefix="after restore: ")
    if not agreement.ok:
        fail(f"after quorum was restored: {agreement.problems[0]}", *agreement.problems[1:])
    verification = traffic.verify_writes(kubeha_result)
    if not verification.passed:
        fail(f"acknowledged writes lost across the quorum loss: {verification.summary()}")


@pytest.mark.serial
@pytest.mark.control(
    "HA-ETCD-04",
    "etcd elects a new leader after the leader dies",
    "When the etcd leader's node is killed, the surviving members MUST elect a new leader within the budget",
)
@pytest.mark.disruptive(control_plane_nodes=1, reason="hard-stops the node of the etcd leader")
@pytest.mark.needs(etcd_members=min_ha_members())
def test_new_etcd_leader_after_leader_node_killed(
    kubeha_cluster: KubehaCluster,
    provider: Provider,
    journal: Journal,
    etcd_pods: tuple[EtcdPod, ...],
    ha_endpoint: ApiEndpoint,
    ha_api_servers: tuple[ApiServer, ...],
    ha_config: HaConfig,
    etcd_timing: EtcdTiming,
    api_client: ApiClient,
    kubeha_result: ResultRecorder,
) -> None:
    budget = etcd_election_budget(ha_config, etcd_timing)
    kubeha_result.evidence("budget", budget.describe())
    with PodExec(ha_endpoint) as execs:
        before = Etcdctl(execs, etcd_pods[0]).snapshot()
    leaders = before.leaders() - {0}
    if len(leaders) != 1:
        fail(f"etcd has no single leader before the fault: {audit(before, kubeha_cluster.topology.etcd_mode).problems}")
    (old_leader,) = leaders
    old_name = before.name_of(old_leader)
    old_term = max(status.raft_term for status in before.statuses)
    leader_pod = next((pod for pod in etcd_pods if pod.member_name == old_name), None)
    if leader_pod is None:
        fail(f"the etcd leader {old_name} runs in none of the etcd pods {[pod.name for pod in etcd_pods]}")
    observer = next(pod for pod in etcd_pods if pod is not leader_pod)
    execs, _ = _etcdctl_via(observer, ha_api_servers, ha_endpoint)
    duration = budget.value + OBSERVER_EXTRA_S + OBSERVER_START_TIMEOUT_S
    with execs:
        session = execs.session(
            KUBE_SYSTEM, observer.name, "etcd", election_observer_script(observer, duration),
            open_timeout_s=OBSERVER_START_TIMEOUT_S,
        )
        try:
            wait_for(
                lambda: True if any(view.leader == old_leader for view in leader_changes(session.lines())) else None,
                timeout_s=OBSERVER_START_TIMEOUT_S,
                what=f"the observer in {observer.name} to report the current leader {old_name}",
            )
            with until_back(
                node_stopped(provider, leader_pod.node, journal=journal, hard=True),
                wait=lambda since: wait_restarted(api_client, leader_pod.node, since, timeout_s=NODE_RESTART_TIMEOUT_S),
            ) as back:
                fault = back.first
                kubeha_result.event("fault", fault.describe())

                def elected() -> float | None:
                    for view in leader_changes(session.lines()):
                        if view.t_mono >= fault.started_mono and view.leader not in (None, 0, old_leader):
                            return view.t_mono
                    return None

                try:
                    elected_t, _ = wait_for(elected, timeout_s=budget.value + OBSERVER_EXTRA_S, what="a new etcd leader")
                except RetryTimeout as error:
                    kubeha_result.measure("etcd_election_s", budget.value + OBSERVER_EXTRA_S, "s", budget=budget.value)
                    fail(f"no new etcd leader after {old_name}'s node {leader_pod.node} was killed: {error}",
                         f"observer stderr: {session.stderr()[-500:]} {session.error()}")
                views = leader_changes(session.lines())
        finally:
            session.stop(OBSERVER_START_TIMEOUT_S)
    kubeha_result.measure("node_back_s", back.seconds or 0.0, "s")
    election_s = elected_t - fault.started_mono
    new_view = next(view for view in views if view.t_mono == elected_t)
    new_leader = new_view.leader if new_view.leader is not None else 0
    kubeha_result.measure("etcd_election_s", election_s, "s", budget=budget.value)
    readings = [
        f"{view.t_mono - fault.started_mono:+.2f} s leader {before.name_of(view.leader) if view.leader else 'none'}"
        f" term {view.raft_term}" + (f" ({view.error})" if view.error else "")
        for view in views
        if view.t_mono >= fault.started_mono - 1.0 and view.t_mono <= elected_t + 1.0
    ]
    kubeha_result.evidence(
        f"leader as {observer.member_name} saw it",
        f"killed {leader_pod.node} (leader {old_name}, term {old_term})\n" + "\n".join(readings),
    )
    if election_s > budget.value:
        fail(
            f"a new etcd leader ({before.name_of(new_leader)}) was elected {election_s:.2f} s after the leader "
            f"{old_name}'s node was killed, budget {budget.value:.2f} s"
        )
    if new_view.raft_term is not None and new_view.raft_term <= old_term:
        fail(f"the new leader {before.name_of(new_leader)} reports raft term {new_view.raft_term}, not above the old "
             f"leader's term {old_term}")
