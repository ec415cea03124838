"""HA-ETCD-01 must fail when etcd runs 2 members.

The cheapest real 2-member etcd is the embedded cluster with one member removed: on the control-plane node that
joined last (its etcd manifest lists every member in --initial-cluster with --initial-cluster-state=existing, so the
member can rejoin from an empty data directory), the control-plane static pods are held (kube-apiserver,
kube-controller-manager and kube-scheduler too: they talk to that node's etcd and API server only) and the member is
removed with ``etcdctl member remove``. On the way out, in this order: ``etcdctl member add`` with the same name and
peer URL, the member's data directory wiped, its etcd started, the other components started; the check then waits
until etcd reports three healthy members that agree.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from kubeha.cluster.discovery import (
    ETCD_COMPONENT,
    PodInfo,
    discover,
    parse_flags,
    parse_initial_cluster,
    read_kube_system_pods,
)
from kubeha.core.topology import EtcdMode
from kubeha.faults import component_stopped
from kubeha.providers.base import Component
from suites.ha._support.etcd import EtcdOutputError, EtcdPod, Etcdctl, MemberInfo, audit
from suites.ha._support.haproxy import parse_haproxy
from suites.ha._support.kube import api_servers, readyz_ok, wait_for
from suites.ha._support.podexec import ExecError, PodExec
from tests.negative.harness import NegativeCluster

TEST = "suites/ha/test_etcd.py::test_etcd_topology"
DEFAULT_DATA_DIR = "/var/lib/etcd"
# Components held on the node whose member is removed, etcd last (restored first).
HELD = (Component.KUBE_APISERVER, Component.KUBE_CONTROLLER_MANAGER, Component.KUBE_SCHEDULER, Component.ETCD)
# Consecutive successful /readyz through the load balancer, each on a new connection, before the suite runs: the
# load balancer has taken the stopped API server out of rotation.
READYZ_STREAK = 20
READYZ_TIMEOUT_S = 120.0
ETCD_RECOVERY_TIMEOUT_S = 300.0


def _rejoinable(pods: list[PodInfo]) -> PodInfo:
    names = {parse_flags(pod.main_command()).get("name") or pod.node for pod in pods}
    for pod in sorted(pods, key=lambda pod: pod.node, reverse=True):
        flags = parse_flags(pod.main_command())
        listed = {name for name, _ in parse_initial_cluster(flags.get("initial-cluster") or "")}
        if flags.get("initial-cluster-state") == "existing" and listed == names:
            return pod
    pytest.fail(
        "no etcd member can rejoin from an empty data directory (none has --initial-cluster-state=existing and every "
        f"member {sorted(names)} in --initial-cluster): removing one would not be undoable",
        pytrace=False,
    )


def _member(members: tuple[MemberInfo, ...], peer_url: str) -> MemberInfo | None:
    return next((member for member in members if peer_url in member.peer_urls), None)


def test_two_member_etcd_fails_ha_etcd_01(restored: NegativeCluster, tmp_path: Path) -> None:
    pods = [pod for pod in read_kube_system_pods(restored.client) if pod.component() == ETCD_COMPONENT]
    target_info = _rejoinable(pods)
    target = EtcdPod.from_pod(target_info)
    flags = parse_flags(target_info.main_command())
    peer_url = (flags.get("initial-advertise-peer-urls") or "").split(",")[0]
    data_dir = flags.get("data-dir") or DEFAULT_DATA_DIR
    survivor = EtcdPod.from_pod(next(pod for pod in pods if pod.node != target.node))
    topology = discover(restored.client).topology
    servers = api_servers(read_kube_system_pods(restored.client), {node.name: node.address for node in topology.nodes})
    survivor_server = next(server for server in servers if server.node == survivor.node)
    checks = parse_haproxy(restored.provider.load_balancer_config().text)
    detection_s = checks.detection_bound_s() or 0.0

    # etcdctl goes through the survivor's own API server: the load balancer keeps sending some connections to the
    # stopped one until its health checks notice.
    with PodExec(survivor_server.endpoint(restored.endpoint)) as execs:
        etcdctl = Etcdctl(execs, survivor)
        before = etcdctl.snapshot()
        removed = _member(before.members, peer_url)
        assert removed is not None and removed.started, f"{target.member_name} ({peer_url}) is not a started member"
        if before.leader_name() == target.member_name:
            other = next(member for member in before.members if member.id != removed.id)
            moved = Etcdctl(execs, target).run(("move-leader", f"{other.id:x}"))
            assert moved.ok, moved.describe()

        def rejoin() -> None:
            members = etcdctl.members()
            current = _member(members, peer_url)
            if current is not None and current.started:
                return  # never removed: its data directory is still its own
            if current is None:
                added = etcdctl.add_member(target.member_name, peer_url)
                assert added.ok, added.describe()
            restored.docker_exec(target.node, ["rm", "-rf", f"{data_dir.rstrip('/')}/member"])

        with ExitStack() as stack:
            for component in HELD:
                stack.enter_context(component_stopped(restored.provider, target.node, component, journal=restored.journal))
            stopped_t = time.monotonic()
            stack.callback(rejoin)
            result = etcdctl.remove_member(removed.id)
            assert result.ok, result.describe()
            assert len(etcdctl.members()) == len(before.members) - 1
            time.sleep(max(stopped_t + detection_s - time.monotonic(), 0.0))
            _wait_for_readyz_streak(restored)
            # Not the whole cluster's steady state: the held node's kubelet reports through its own API server,
            # which is held too, so that node stays NotReady until the end of the check.
            _wait_for_healthy_members(etcdctl, len(before.members) - 1)
            run = restored.run_suite([TEST], tmp_path)

        def healthy() -> bool | None:
            try:
                verdict = audit(etcdctl.snapshot(), EtcdMode.STACKED)
            except (ExecError, EtcdOutputError):
                return None
            return True if verdict.ok else None

        wait_for(healthy, timeout_s=ETCD_RECOVERY_TIMEOUT_S, what=f"etcd to have {len(before.members)} healthy members again")
    run.assert_failed("HA-ETCD-01", "etcd has 2 voting members", "not an odd number")


def _wait_for_healthy_members(etcdctl: Etcdctl, count: int) -> None:
    def settled() -> bool | None:
        try:
            snapshot = etcdctl.snapshot()
        except (ExecError, EtcdOutputError):
            return None
        healthy = [health for health in snapshot.health if health.healthy]
        return True if len(snapshot.voting()) == count and len(healthy) == count and snapshot.leaders() else None

    wait_for(settled, timeout_s=ETCD_RECOVERY_TIMEOUT_S, what=f"etcd with {count} healthy members and a leader")


def _wait_for_readyz_streak(cluster: NegativeCluster) -> None:
    context = cluster.endpoint.ssl_context()
    streak = [0]

    def steady() -> bool | None:
        streak[0] = streak[0] + 1 if readyz_ok(cluster.endpoint, context) else 0
        return True if streak[0] >= READYZ_STREAK else None

    wait_for(steady, timeout_s=READYZ_TIMEOUT_S, what=f"{READYZ_STREAK} consecutive /readyz through the load balancer")
