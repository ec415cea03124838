"""The chaos engine against a fake cluster: budget refusals, parallel runs, journal, consent, restores.

`FakeMachines` is the project's recording provider (`FaultPlan`, which implements the Provider protocol) wired to
`FakeCluster`, a stand-in for the API that reacts like a kubeadm cluster: a stopped node turns NotReady with its
pods, a stopped static pod disappears from the API, and the API stops answering when etcd loses quorum. Journal and
coordinator are the real ones, in a temporary state directory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from chaoslib.exceptions import ActivityFailed
from chaos.kubeha_chaos.budget import BudgetStore
from chaos.kubeha_chaos.engine import ChaosEngine, FaultRegistry, FaultType
from chaos.kubeha_chaos.session import ClusterArguments
from chaos.kubeha_chaos.targets import NodeSelector
from kubeha.cluster.discovery import ContainerInfo, NodeInfo, PodInfo, Snapshot, build_topology
from kubeha.cluster.identity import ClusterIdentity
from kubeha.core.budget import Claim, Limits, ResourceKind
from kubeha.core.topology import Role
from kubeha.faults import FaultPlan, Journal, UndoAction, UndoOp, pending
from kubeha.faults.journal import entries
from kubeha.providers import ProviderKind
from kubeha.providers.base import Component, ProviderError

UID = "0b5e1d6a-2c57-4d6f-9a51-1f1c6c2a9e01"
OTHER_UID = "9f0e1d6a-2c57-4d6f-9a51-1f1c6c2a9e99"
KIND = "unit"
SERVER = "https://127.0.0.1:6443"
CONTROL_PLANES = ("cp-1", "cp-2", "cp-3")
WORKERS = ("w-1", "w-2")
NODES = CONTROL_PLANES + WORKERS
STATIC_PODS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
QUORUM = 2
LEASE_STEP_S = 10.0
FAST_POLL_S = 0.01
SHORT_TIMEOUT_S = 0.3

KUBECONFIG = f"""apiVersion: v1
kind: Config
clusters: [{{name: unit, cluster: {{server: "{SERVER}"}}}}]
contexts: [{{name: unit, context: {{cluster: unit, user: unit}}}}]
current-context: unit
users: [{{name: unit, user: {{}}}}]
"""


def _address(node: str) -> str:
    return f"10.0.{0 if node.startswith('cp') else 1}.{node[-1]}"


class FakeCluster:
    """What the API shows, changed by `FakeMachines` as a real cluster would change."""

    def __init__(self, kind_cluster: str = KIND) -> None:
        self.kind_cluster = kind_cluster
        self.lock = threading.Lock()
        self.ready = {node: True for node in NODES}
        self.removed: set[tuple[str, str]] = set()  # static pods whose manifest was moved away
        self.leases = {node: 1000.0 for node in NODES}
        self.starts = {(node, component): 500.0 for node in CONTROL_PLANES for component in STATIC_PODS}
        self.api_down = False

    def answers(self) -> bool:
        return not self.api_down

    def _check(self) -> None:
        if self.api_down:
            raise ConnectionRefusedError(111, "Connection refused")

    def recompute(self) -> None:
        with self.lock:
            members = sum(1 for node in CONTROL_PLANES if self.ready[node] and (node, "etcd") not in self.removed)
            self.api_down = members < QUORUM

    def identity(self) -> ClusterIdentity:
        self._check()
        return ClusterIdentity(api_url=SERVER, kube_system_uid=UID, kubernetes_version="v1.34.3")

    def nodes(self) -> tuple[NodeInfo, ...]:
        self._check()
        with self.lock:
            return tuple(
                NodeInfo(
                    name=node,
                    labels={"node-role.kubernetes.io/control-plane": ""} if node in CONTROL_PLANES else {},
                    addresses=(("InternalIP", _address(node)),),
                    ready=self.ready[node],
                    ready_reason="KubeletReady" if self.ready[node] else "NodeStatusUnknown",
                    provider_id=f"kind://docker/{self.kind_cluster}/{node}",
                )
                for node in NODES
            )

    def kube_system_pods(self) -> tuple[PodInfo, ...]:
        self._check()
        pods = []
        with self.lock:
            for node in CONTROL_PLANES:
                for component in STATIC_PODS:
                    if (node, component) in self.removed:
                        continue
                    command: tuple[str, ...] = (component,)
                    if component == "etcd":
                        address = _address(node)
                        command = ("etcd", f"--name={node}", f"--initial-advertise-peer-urls=https://{address}:2380",
                                   f"--advertise-client-urls=https://{address}:2379")
                    pods.append(PodInfo(
                        namespace="kube-system", name=f"{component}-{node}", node=node,
                        labels={"component": component}, phase="Running", ready=self.ready[node],
                        containers=(ContainerInfo(component, component, command),),
                    ))
        return tuple(pods)

    def snapshot(self) -> Snapshot:
        return Snapshot(server_url=SERVER, nodes=self.nodes(), kube_system_pods=self.kube_system_pods())

    def node_leases(self) -> dict[str, float]:
        self._check()
        with self.lock:
            return dict(self.leases)

    def container_starts(self) -> dict[tuple[str, str], float]:
        self._check()
        with self.lock:
            return {key: started for key, started in self.starts.items() if key not in self.removed}


class FakeMachines(FaultPlan):
    """The recording provider, applying each operation to the fake cluster; `fail` makes (operation, node) raise."""

    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__(NODES, provider_name="kind")
        self.cluster = cluster
        self.renew_on_start = True  # a started kubelet renews its Lease
        self.restart_pods_on_start = True  # ... and starts the static pods' containers again
        self.fail: dict[tuple[str, str], Exception] = {}
        self.calls_lock = threading.Lock()

    def _call(self, operation: str, node: str | None = None, component: Component | None = None,
              peers: tuple[str, ...] = ()) -> None:
        with self.calls_lock:
            super()._call(operation, node, component, peers)
        error = self.fail.get((operation, node or ""))
        if error is not None:
            raise error

    def _set(self, node: str, ready: bool, *, restarted: bool = False) -> None:
        with self.cluster.lock:
            self.cluster.ready[node] = ready
            if ready and self.renew_on_start:
                self.cluster.leases[node] += LEASE_STEP_S
            if restarted and self.restart_pods_on_start:
                for component in STATIC_PODS:
                    if (node, component) in self.cluster.starts:
                        self.cluster.starts[(node, component)] = self.cluster.leases[node] + 1.0
        self.cluster.recompute()

    def stop_node(self, node: str) -> None:
        super().stop_node(node)
        self._set(node, False)

    def kill_node(self, node: str) -> None:
        super().kill_node(node)
        self._set(node, False)

    def start_node(self, node: str) -> None:
        super().start_node(node)
        self._set(node, True, restarted=True)

    def isolate_node(self, node: str, peers: tuple[str, ...]) -> None:
        super().isolate_node(node, peers)
        self._set(node, False)

    def heal_node(self, node: str, peers: tuple[str, ...]) -> None:
        super().heal_node(node, peers)
        self._set(node, True)

    def stop_component(self, node: str, component: Component) -> None:
        super().stop_component(node, component)
        with self.cluster.lock:
            self.cluster.removed.add((node, component.value))
        self.cluster.recompute()

    def start_component(self, node: str, component: Component) -> None:
        super().start_component(node, component)
        with self.cluster.lock:
            self.cluster.removed.discard((node, component.value))
        self.cluster.recompute()


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.kubeconfig = tmp_path / "kubeconfig"
        self.kubeconfig.write_text(KUBECONFIG)
        self.state_dir = tmp_path / "state"
        self.cluster = FakeCluster()
        self.machines = FakeMachines(self.cluster)

    def arguments(self, *, kind_cluster: str | None = KIND, allowed_cluster_uid: str | None = None) -> ClusterArguments:
        return ClusterArguments(kubeconfig=self.kubeconfig, context=None, provider=ProviderKind.KIND,
                                kind_cluster=kind_cluster, inventory=None, allowed_cluster_uid=allowed_cluster_uid,
                                state_dir=self.state_dir)

    def engine(self, registry: FaultRegistry | None = None, **arguments: str | None) -> ChaosEngine:
        return ChaosEngine(self.arguments(**arguments), self.machines, self.cluster,
                           registry=registry or FaultRegistry(), poll_interval_s=FAST_POLL_S)

    def store(self) -> BudgetStore:
        return BudgetStore(self.state_dir / "chaos" / UID, journal_cluster_id=UID, journal_state_dir=self.state_dir)

    def active(self) -> list[Claim]:
        return list(self.store().active())

    def pending(self) -> list[str]:
        return [entry.undo.describe() for entry in pending(UID, state_dir=self.state_dir)]

    def calls(self) -> tuple[str, ...]:
        return self.machines.describe()


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def stop(engine: ChaosEngine, selector: NodeSelector, *, hard: bool = False, beyond: bool = False,
         timeout_s: float = 0.0) -> tuple[str, ...]:
    return engine.stop_nodes(selector, hard=hard, allow_beyond_tolerance=beyond, budget_timeout_s=timeout_s)


CONTROL_PLANE = NodeSelector(role=Role.CONTROL_PLANE, count=1)


def test_stop_within_budget_journals_claims_and_holds(setup: Setup) -> None:
    engine = setup.engine()
    assert stop(engine, CONTROL_PLANE) == ("cp-1",)
    assert setup.calls() == ("stop_node cp-1",)
    assert setup.pending() == ["start node cp-1"]
    [claim] = setup.active()
    assert dict(claim.resources) == {ResourceKind.CONTROL_PLANE_NODE: 1}
    assert not claim.exclusive


def test_kill_uses_the_hard_power_off(setup: Setup) -> None:
    assert stop(setup.engine(), NodeSelector(role=Role.WORKER), hard=True) == ("w-1",)
    assert setup.calls() == ("kill_node w-1",)


def test_restore_starts_waits_and_releases(setup: Setup) -> None:
    engine = setup.engine()
    stop(engine, CONTROL_PLANE)
    assert engine.restore(NodeSelector(role=Role.CONTROL_PLANE), FaultType.NODE) == ("cp-1",)
    assert setup.calls() == ("stop_node cp-1", "start_node cp-1")
    assert setup.pending() == []
    assert setup.active() == []


def test_restore_with_nothing_held_does_nothing(setup: Setup) -> None:
    assert setup.engine().restore(NodeSelector(role=Role.CONTROL_PLANE), FaultType.NODE) == ()
    assert setup.calls() == ()


def test_second_stop_refused_by_the_budget(setup: Setup) -> None:
    engine = setup.engine()
    stop(engine, CONTROL_PLANE)
    with pytest.raises(ActivityFailed) as refused:
        stop(engine, CONTROL_PLANE)
    assert str(refused.value).startswith(
        "stopping 1 etcd member while 1 is already down exceeds the tolerance of 1 (3 in the cluster); stopping 1 "
        "control-plane node while 1 is already down exceeds the tolerance of 1 (3 in the cluster)"
    )
    assert setup.calls() == ("stop_node cp-1",)
    assert len(setup.active()) == 1


def test_two_of_three_refused_and_nothing_touched(setup: Setup) -> None:
    with pytest.raises(ActivityFailed) as refused:
        stop(setup.engine(), NodeSelector(role=Role.CONTROL_PLANE, count=2))
    assert str(refused.value) == (
        "stopping 2 of 3 etcd members exceeds the tolerance of 1; stopping 2 of 3 control-plane nodes exceeds the "
        "tolerance of 1; pass allow_beyond_tolerance=true to break quorum deliberately"
    )
    assert setup.calls() == ()
    assert entries(UID, state_dir=setup.state_dir) == ()
    assert setup.active() == []


def test_parallel_background_stops_one_is_refused(setup: Setup) -> None:
    engine = setup.engine()
    outcomes: list[object] = []
    start = threading.Barrier(2)

    def attempt() -> None:
        start.wait()
        try:
            outcomes.append(stop(engine, CONTROL_PLANE))
        except ActivityFailed as error:
            outcomes.append(error)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    refused = [outcome for outcome in outcomes if isinstance(outcome, ActivityFailed)]
    stopped = [outcome for outcome in outcomes if isinstance(outcome, tuple)]
    assert len(refused) == 1 and len(stopped) == 1, outcomes
    assert "exceeds the tolerance of 1" in str(refused[0])
    assert setup.calls() == (f"stop_node {stopped[0][0]}",)


def test_separate_runs_share_the_budget(setup: Setup) -> None:
    first, second = setup.engine(FaultRegistry()), setup.engine(FaultRegistry())
    stop(first, CONTROL_PLANE)
    with pytest.raises(ActivityFailed, match="while 1 is already down exceeds the tolerance of 1"):
        stop(second, NodeSelector(names=("cp-2",)))
    first.restore(NodeSelector(), FaultType.NODE)
    assert stop(second, NodeSelector(names=("cp-2",))) == ("cp-2",)


def test_budget_timeout_waits_for_the_other_run(setup: Setup) -> None:
    first, second = setup.engine(FaultRegistry()), setup.engine(FaultRegistry())
    stop(first, CONTROL_PLANE)
    timer = threading.Timer(0.3, lambda: first.restore(NodeSelector(), FaultType.NODE))
    timer.start()
    try:
        assert stop(second, NodeSelector(names=("cp-2",)), timeout_s=20.0) == ("cp-2",)
    finally:
        timer.join()
    assert setup.calls() == ("stop_node cp-1", "start_node cp-1", "stop_node cp-2")


def test_beyond_tolerance_deliberately_then_restore_while_the_api_is_down(setup: Setup) -> None:
    engine = setup.engine()
    assert stop(engine, NodeSelector(role=Role.CONTROL_PLANE, count=2), beyond=True) == ("cp-1", "cp-2")
    assert sorted(setup.calls()) == ["stop_node cp-1", "stop_node cp-2"]
    assert not setup.cluster.answers()
    [claim] = setup.active()
    assert claim.exclusive
    other = setup.engine(FaultRegistry())
    with pytest.raises(ActivityFailed, match="cannot read the cluster"):
        stop(other, NodeSelector(role=Role.WORKER))  # no budget check without the API: refused
    assert engine.restore(NodeSelector(role=Role.CONTROL_PLANE), FaultType.NODE) == ("cp-1", "cp-2")
    assert setup.cluster.answers()
    assert setup.pending() == []
    assert setup.active() == []


def test_nothing_else_while_beyond_tolerance(setup: Setup) -> None:
    engine = setup.engine()
    stop(engine, NodeSelector(names=("cp-1",)), beyond=True)
    with pytest.raises(ActivityFailed, match="a fault beyond tolerance has the cluster to itself"):
        stop(setup.engine(FaultRegistry()), NodeSelector(role=Role.WORKER))


def test_a_node_down_outside_kubeha_counts(setup: Setup) -> None:
    setup.cluster.ready["cp-3"] = False
    with pytest.raises(ActivityFailed) as refused:
        stop(setup.engine(), CONTROL_PLANE)
    assert "(down now: node cp-3 is NotReady (NodeStatusUnknown))" in str(refused.value)
    assert setup.calls() == ()


def test_limits_stay_while_a_stopped_etcd_member_is_invisible(setup: Setup) -> None:
    engine = setup.engine()
    assert engine.stop_component(NodeSelector(role=Role.ETCD), Component.ETCD, allow_beyond_tolerance=False,
                                 budget_timeout_s=0.0) == ("cp-1",)
    assert ("cp-1", "etcd") in setup.cluster.removed  # discovery now finds 2 members, tolerance 0
    with pytest.raises(ActivityFailed) as refused:
        stop(engine, NodeSelector(names=("cp-2",)))
    assert str(refused.value).startswith(
        "stopping 1 etcd member while 1 is already down exceeds the tolerance of 1 (2 in the cluster)"
    )
    engine.restore(NodeSelector(), FaultType.COMPONENT, component=Component.ETCD)
    assert setup.calls() == ("stop_component cp-1 etcd", "start_component cp-1 etcd")
    assert setup.active() == []


def test_a_component_fault_is_picked_where_the_component_runs(setup: Setup) -> None:
    with pytest.raises(ActivityFailed, match=r'node w-1 has no etcd role, which "stop etcd on" needs'):
        setup.engine().stop_component(NodeSelector(names=("w-1",)), Component.ETCD, allow_beyond_tolerance=False,
                                      budget_timeout_s=0.0)


def test_isolation_from_every_other_node_and_heal(setup: Setup) -> None:
    engine = setup.engine()
    assert engine.isolate_nodes(NodeSelector(names=("w-2",)), (), allow_beyond_tolerance=False,
                                budget_timeout_s=0.0) == ("w-2",)
    assert setup.calls() == ("isolate_node w-2 peers=cp-1,cp-2,cp-3,w-1",)
    engine.restore(NodeSelector(), FaultType.ISOLATION)
    assert setup.calls()[-1] == "heal_node w-2 peers=cp-1,cp-2,cp-3,w-1"
    assert setup.pending() == []


def test_injection_is_all_or_nothing(setup: Setup) -> None:
    setup.machines.fail[("stop_node", "cp-2")] = ProviderError("docker stop failed: fix docker")
    with pytest.raises(ActivityFailed) as failed:
        stop(setup.engine(), NodeSelector(role=Role.CONTROL_PLANE, count=2), beyond=True)
    assert "stop failed on cp-2: docker stop failed: fix docker" in str(failed.value)
    assert "the other targets were restored and the claim released" in str(failed.value)
    assert sorted(setup.calls()) == ["start_node cp-1", "start_node cp-2", "stop_node cp-1", "stop_node cp-2"]
    assert setup.pending() == []
    assert setup.active() == []


def test_a_failed_restore_keeps_the_claim_until_restore_all(setup: Setup) -> None:
    engine = setup.engine()
    stop(engine, NodeSelector(names=("w-1",)))
    setup.machines.fail[("start_node", "w-1")] = ProviderError("docker start failed: fix docker")
    with pytest.raises(ActivityFailed, match="could not start node w-1 after the fault on w-1: docker start failed"):
        engine.restore(NodeSelector(), FaultType.NODE)
    assert setup.pending() == ["start node w-1"]
    assert len(setup.active()) == 1
    del setup.machines.fail[("start_node", "w-1")]
    report = engine.restore_all()
    assert report.replayed == ("start node w-1 (restore retried)",)
    assert setup.pending() == []
    assert setup.active() == []


def test_restore_waits_for_a_fresh_kubelet_heartbeat(setup: Setup) -> None:
    setup.machines.renew_on_start = False  # the node looks Ready, but no kubelet reported since the restart
    engine = setup.engine()
    stop(engine, NodeSelector(names=("w-1",)))
    with pytest.raises(ActivityFailed) as failed:
        engine.restore(NodeSelector(), FaultType.NODE, ready_timeout_s=SHORT_TIMEOUT_S)
    assert str(failed.value).startswith(
        "not back within 0 s: node w-1 Ready with a fresh kubelet heartbeat and its control-plane pods ready"
    )


def test_restore_waits_for_the_control_plane_containers_to_start_again(setup: Setup) -> None:
    setup.machines.restart_pods_on_start = False  # kubelet renewed its Lease, the pods still show their old state
    engine = setup.engine()
    stop(engine, NodeSelector(names=("cp-2",)))
    with pytest.raises(ActivityFailed) as failed:
        engine.restore(NodeSelector(), FaultType.NODE, ready_timeout_s=SHORT_TIMEOUT_S)
    assert str(failed.value).startswith("not back within 0 s: node cp-2 Ready with a fresh kubelet heartbeat")
    assert "(started again since the fault)" in str(failed.value)


def test_restore_names_a_node_not_held(setup: Setup) -> None:
    assert setup.engine().restore(NodeSelector(names=("w-2",)), FaultType.NODE) == ("w-2",)
    assert setup.calls() == ("start_node w-2",)


def test_restore_refuses_unknown_names_before_touching_anything(setup: Setup) -> None:
    engine = setup.engine()
    stop(engine, NodeSelector(names=("w-1",)))
    with pytest.raises(ActivityFailed, match=r"nodes \['w-9'\] are not machines of kind cluster unit"):
        engine.restore(NodeSelector(names=("w-1", "w-9")), FaultType.NODE)
    assert setup.calls() == ("stop_node w-1",)
    assert engine.restore(NodeSelector(), FaultType.NODE) == ("w-1",)


def test_restore_all_restores_everything_held(setup: Setup) -> None:
    engine = setup.engine()
    stop(engine, NodeSelector(names=("w-1",)))
    engine.stop_component(NodeSelector(names=("cp-2",)), Component.KUBE_SCHEDULER, allow_beyond_tolerance=False,
                          budget_timeout_s=0.0)
    report = engine.restore_all()
    assert sorted(report.restored) == ["kube-scheduler stopped on cp-2", "node w-1 down"]
    assert report.failed == ()
    assert setup.calls()[2:] == ("start_component cp-2 kube-scheduler", "start_node w-1")
    assert setup.pending() == []
    assert setup.active() == []


def test_consent_refused_for_another_kind_cluster(setup: Setup) -> None:
    with pytest.raises(ActivityFailed) as refused:
        stop(setup.engine(kind_cluster="other"), CONTROL_PLANE)
    assert str(refused.value).startswith(
        f"refusing to touch the cluster at {SERVER}: no consent was given for it; if every node of this cluster may "
        f"be disrupted, pass allowed_cluster_uid={UID}"
    )
    assert setup.calls() == ()


def test_consent_refused_for_a_uid_of_another_cluster(setup: Setup) -> None:
    with pytest.raises(ActivityFailed, match=f"allowed_cluster_uid {OTHER_UID} was given, but the cluster at "):
        stop(setup.engine(allowed_cluster_uid=OTHER_UID), CONTROL_PLANE)
    assert setup.calls() == ()


def test_consent_by_uid_without_kind(setup: Setup) -> None:
    assert stop(setup.engine(kind_cluster=None, allowed_cluster_uid=UID), CONTROL_PLANE) == ("cp-1",)


def test_restore_without_api_or_memory_asks_for_the_uid(setup: Setup) -> None:
    setup.cluster.api_down = True
    with pytest.raises(ActivityFailed, match="pass allowed_cluster_uid to name the cluster whose journal to restore"):
        setup.engine().restore(NodeSelector(names=("cp-1",)), FaultType.NODE)


def test_a_crashed_run_is_undone_and_its_claim_freed_by_the_next_fault(
    setup: Setup, zombie: Callable[[Callable[[], None]], int]
) -> None:
    limits = Limits.from_topology(build_topology(setup.cluster.snapshot()).topology)
    setup.machines.stop_node("cp-2")  # the crashed run stopped cp-2 ...
    setup.machines.calls.clear()

    def crashed_run() -> None:  # ... holding a claim and a pending undo entry when it died
        grant = setup.store().coordinator_for(limits).acquire(Claim("chaos/crashed", {ResourceKind.CONTROL_PLANE_NODE:
                                                                                      1}), timeout_s=0.0)
        grant.__enter__()
        Journal(UID, provider_name="kind", state_dir=setup.state_dir).record(UndoAction(UndoOp.START_NODE, node="cp-2"))

    pid = zombie(crashed_run)
    assert [entry.pid for entry in pending(UID, state_dir=setup.state_dir)] == [pid]
    assert stop(setup.engine(), NodeSelector(names=("cp-1",))) == ("cp-1",)
    assert setup.calls() == ("start_node cp-2", "stop_node cp-1")
    [holder] = [claim.holder for claim in setup.active()]  # the crashed run's claim is gone, ours is held
    assert f"/{os.getpid()}/stop/cp-1/" in holder
    assert all(entry.pid == os.getpid() for entry in pending(UID, state_dir=setup.state_dir))
