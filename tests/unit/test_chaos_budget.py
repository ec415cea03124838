"""The chaos fault budget: what a fault claims, when it is refused, how the refusal reads, and the shared store."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.kubeha_chaos.budget import (
    BudgetStore,
    claim_resources,
    observed_down,
    precheck,
    totals,
)
from kubeha.cluster.discovery import NodeInfo, PodInfo
from kubeha.core.budget import Claim, Limits, ResourceKind
from kubeha.core.topology import EtcdMember, EtcdMode, LoadBalancer, Node, Role, Topology
from kubeha.providers.base import Component

K = ResourceKind
CP = frozenset({Role.CONTROL_PLANE, Role.ETCD})
WORKER = frozenset({Role.WORKER, Role.INGRESS})
PLAIN_WORKER = frozenset({Role.WORKER})


def topology(control_planes: int = 3, etcd_members: int | None = None) -> Topology:
    nodes = tuple(Node(f"cp-{i}", CP, f"10.0.0.{i}") for i in range(1, control_planes + 1))
    nodes += (Node("w-1", WORKER, "10.0.1.1"), Node("w-2", WORKER, "10.0.1.2"), Node("w-3", PLAIN_WORKER, "10.0.1.3"))
    count = control_planes if etcd_members is None else etcd_members
    members = tuple(EtcdMember(f"cp-{i}", f"https://10.0.0.{i}:2380", f"https://10.0.0.{i}:2379", f"cp-{i}")
                    for i in range(1, count + 1))
    return Topology(nodes, members, EtcdMode.STACKED, LoadBalancer("127.0.0.1", 6443, "haproxy"))


TOPOLOGY = topology()
LIMITS = Limits.from_topology(TOPOLOGY)


def nodes(*names: str) -> list[Node]:
    return [TOPOLOGY.node(name) for name in names]


def test_claim_resources_of_whole_nodes() -> None:
    assert claim_resources(nodes("cp-1", "cp-2")) == {K.CONTROL_PLANE_NODE: 2}
    assert claim_resources(nodes("w-1")) == {K.INGRESS_NODE: 1}
    assert claim_resources(nodes("w-3")) == {K.WORKER_NODE: 1}


@pytest.mark.parametrize(
    ("component", "kind"),
    [
        (Component.ETCD, K.ETCD_MEMBER),
        (Component.KUBE_APISERVER, K.API_SERVER),
        (Component.KUBE_CONTROLLER_MANAGER, K.CONTROLLER_MANAGER),
        (Component.KUBE_SCHEDULER, K.SCHEDULER),
    ],
)
def test_claim_resources_of_components(component: Component, kind: K) -> None:
    assert claim_resources(nodes("cp-1", "cp-3"), component) == {kind: 2}


def test_a_stopped_kubelet_claims_its_whole_node() -> None:
    assert claim_resources(nodes("cp-1", "w-3"), Component.KUBELET) == {K.CONTROL_PLANE_NODE: 1, K.WORKER_NODE: 1}


def test_totals() -> None:
    have = totals(TOPOLOGY)
    assert have[K.ETCD_MEMBER] == 3
    assert have[K.CONTROL_PLANE_NODE] == have[K.API_SERVER] == 3
    assert have[K.WORKER_NODE] == 3
    assert have[K.INGRESS_NODE] == 2
    assert have[K.LOAD_BALANCER] == 1


def test_two_of_three_control_planes_refused_naming_etcd_first() -> None:
    claim = Claim("run", {K.CONTROL_PLANE_NODE: 2})
    check = precheck(claim, (), LIMITS, {}, verb="stopping", topology=TOPOLOGY)
    assert not check.granted
    assert check.message == (
        "stopping 2 of 3 etcd members exceeds the tolerance of 1; stopping 2 of 3 control-plane nodes exceeds the "
        "tolerance of 1; pass allow_beyond_tolerance=true to break quorum deliberately"
    )


def test_two_etcd_components_refused() -> None:
    claim = Claim("run", claim_resources(nodes("cp-1", "cp-2"), Component.ETCD))
    check = precheck(claim, (), LIMITS, {}, verb="stopping", topology=TOPOLOGY)
    assert check.message == (
        "stopping 2 of 3 etcd members exceeds the tolerance of 1; pass allow_beyond_tolerance=true to break quorum "
        "deliberately"
    )


def test_beyond_tolerance_without_etcd_says_exceed() -> None:
    check = precheck(Claim("run", {K.INGRESS_NODE: 2}), (), LIMITS, {}, verb="killing", topology=TOPOLOGY)
    assert check.message == (
        "killing 2 of 2 ingress nodes exceeds the tolerance of 1; pass allow_beyond_tolerance=true to exceed it "
        "deliberately"
    )


def test_one_control_plane_is_within_tolerance() -> None:
    check = precheck(Claim("run", {K.CONTROL_PLANE_NODE: 1}), (), LIMITS, {}, verb="stopping", topology=TOPOLOGY)
    assert check.granted


def test_second_control_plane_refused_while_another_run_holds_one() -> None:
    other = Claim("chaos/other-run", {K.CONTROL_PLANE_NODE: 1})
    check = precheck(Claim("run", {K.CONTROL_PLANE_NODE: 1}), (other,), LIMITS, {}, verb="stopping",
                     topology=TOPOLOGY)
    assert not check.granted
    assert check.message.startswith(
        "stopping 1 etcd member while 1 is already down exceeds the tolerance of 1 (3 in the cluster); stopping 1 "
        "control-plane node while 1 is already down exceeds the tolerance of 1 (3 in the cluster) (down now: "
        "chaos/other-run (shared: 1 control_plane_node))"
    )
    assert check.message.endswith("pass budget_timeout_s to wait for it, or pass allow_beyond_tolerance=true to "
                                  "exceed the tolerance deliberately")


def test_a_worker_fits_next_to_a_control_plane_fault() -> None:
    other = Claim("chaos/other-run", {K.CONTROL_PLANE_NODE: 1})
    assert precheck(Claim("run", {K.INGRESS_NODE: 1}), (other,), LIMITS, {}, verb="stopping",
                    topology=TOPOLOGY).granted


def test_exclusive_claim_waits_for_no_one_when_alone() -> None:
    claim = Claim("run", {K.CONTROL_PLANE_NODE: 2}, exclusive=True)
    assert precheck(claim, (), LIMITS, {}, verb="stopping", topology=TOPOLOGY).granted


def test_exclusive_claim_refused_while_another_fault_is_active() -> None:
    claim = Claim("run", {K.CONTROL_PLANE_NODE: 2}, exclusive=True)
    other = Claim("chaos/other-run", {K.INGRESS_NODE: 1})
    check = precheck(claim, (other,), LIMITS, {}, verb="stopping", topology=TOPOLOGY)
    assert check.message == (
        "allow_beyond_tolerance needs the cluster to itself, but 1 other fault(s) are active (chaos/other-run "
        "(shared: 1 ingress_node)): restore them first, or pass budget_timeout_s to wait for them"
    )


def test_nothing_is_injected_next_to_an_exclusive_fault() -> None:
    exclusive = Claim("chaos/quorum", {K.CONTROL_PLANE_NODE: 2}, exclusive=True)
    check = precheck(Claim("run", {K.INGRESS_NODE: 1}), (exclusive,), LIMITS, {}, verb="stopping",
                     topology=TOPOLOGY)
    assert check.message.startswith("a fault beyond tolerance has the cluster to itself (chaos/quorum (exclusive: ")


def test_down_without_a_claim_counts_against_the_budget() -> None:
    down = {K.CONTROL_PLANE_NODE: ("node cp-3 is NotReady (NodeStatusUnknown)",)}
    check = precheck(Claim("run", {K.CONTROL_PLANE_NODE: 1}), (), LIMITS, down, verb="stopping", topology=TOPOLOGY)
    assert not check.granted
    assert check.unaccounted == ("node cp-3 is NotReady (NodeStatusUnknown)",)
    assert "(down now: node cp-3 is NotReady (NodeStatusUnknown))" in check.message
    assert check.message.startswith("stopping 1 etcd member while 1 is already down exceeds the tolerance of 1")


def test_down_and_claimed_counts_once() -> None:
    other = Claim("chaos/other-run", {K.INGRESS_NODE: 1})
    down = {K.INGRESS_NODE: ("node w-1 is NotReady (NodeStatusUnknown)",)}
    check = precheck(Claim("run", {K.CONTROL_PLANE_NODE: 1}), (other,), LIMITS, down, verb="stopping",
                     topology=TOPOLOGY)
    assert check.granted
    assert check.unaccounted == ()


def test_an_exclusive_claim_ignores_what_is_down() -> None:
    down = {K.CONTROL_PLANE_NODE: ("node cp-3 is NotReady (x)",)}
    claim = Claim("run", {K.CONTROL_PLANE_NODE: 2}, exclusive=True)
    assert precheck(claim, (), LIMITS, down, verb="stopping", topology=TOPOLOGY).granted


def node_info(name: str, ready: bool) -> NodeInfo:
    return NodeInfo(name=name, labels={}, addresses=(), ready=ready, ready_reason="KubeletReady" if ready else "x")


def pod(component: str, node: str, ready: bool, phase: str = "Running") -> PodInfo:
    return PodInfo(namespace="kube-system", name=f"{component}-{node}", node=node, labels={"component": component},
                   phase=phase, ready=ready)


def test_observed_down_counts_nodes_and_control_plane_pods() -> None:
    found = observed_down(
        TOPOLOGY,
        [node_info("cp-1", True), node_info("cp-2", False), node_info("w-3", False), node_info("w-1", True)],
        [pod("etcd", "cp-1", False), pod("kube-apiserver", "cp-1", True), pod("kube-scheduler", "cp-2", False),
         pod("coredns", "w-1", False), pod("kube-controller-manager", "cp-3", True, phase="Pending")],
    )
    assert found == {
        K.CONTROL_PLANE_NODE: ("node cp-2 is NotReady (x)",),
        K.WORKER_NODE: ("node w-3 is NotReady (x)",),
        K.ETCD_MEMBER: ("etcd on cp-1 is not ready (pod Running)",),
        K.CONTROLLER_MANAGER: ("kube-controller-manager on cp-3 is not ready (pod Pending)",),
    }


# -- the shared store -------------------------------------------------------------------------------------------


def store(tmp_path: Path) -> BudgetStore:
    return BudgetStore(tmp_path / "chaos" / "uid", journal_cluster_id="uid", journal_state_dir=tmp_path)


def test_store_records_the_discovered_limits(tmp_path: Path) -> None:
    budget = store(tmp_path)
    assert budget.stored_limits() is None
    with budget.choose(LIMITS) as coordinator:
        assert coordinator.limits == LIMITS
        assert coordinator.run_dir.parent == budget.directory
    assert budget.stored_limits() == LIMITS
    assert budget.active() == ()


def test_store_keeps_the_limits_while_a_claim_is_active(tmp_path: Path) -> None:
    budget = store(tmp_path)
    shrunk = Limits.from_topology(topology(etcd_members=2))  # a stopped etcd member vanished from discovery
    assert shrunk != LIMITS
    with budget.choose(LIMITS) as coordinator:
        grant = coordinator.acquire(Claim("chaos/etcd", {K.ETCD_MEMBER: 1}), timeout_s=0.0)
        grant.__enter__()
    try:
        with budget.choose(shrunk) as coordinator:
            assert coordinator.limits == LIMITS
            assert [held.claim.holder for held in coordinator.active()] == ["chaos/etcd"]
        assert [claim.holder for claim in budget.active()] == ["chaos/etcd"]
    finally:
        grant.__exit__(None, None, None)
    with budget.choose(shrunk) as coordinator:
        assert coordinator.limits == shrunk
    assert budget.stored_limits() == shrunk


def test_store_rejects_a_hand_edited_limits_file(tmp_path: Path) -> None:
    budget = store(tmp_path)
    budget.directory.mkdir(parents=True)
    budget.limits_path.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON .* remove it when no chaos experiment runs"):
        budget.stored_limits()
