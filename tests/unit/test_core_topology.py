"""Topology validation, role queries and the tolerances derived from member counts."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeha.core.quorum import fault_tolerance, has_quorum
from kubeha.core.tolerances import Tolerances
from kubeha.core.topology import (
    EtcdMember,
    EtcdMode,
    LeaderElection,
    LoadBalancer,
    Node,
    Role,
    Topology,
    TopologyError,
)

CP = frozenset({Role.CONTROL_PLANE})
WORKER = frozenset({Role.WORKER})
INGRESS_WORKER = frozenset({Role.WORKER, Role.INGRESS})
ETCD_HOST = frozenset({Role.ETCD})


def build(
    control_planes: int,
    workers: int = 0,
    ingress: int = 0,
    mode: EtcdMode = EtcdMode.STACKED,
    external_etcd: int = 3,
    load_balancer: bool = True,
) -> Topology:
    nodes = [Node(f"cp{i}", CP, f"10.0.0.{i}") for i in range(control_planes)]
    nodes += [Node(f"w{i}", WORKER, f"10.0.1.{i}") for i in range(workers)]
    nodes += [Node(f"in{i}", INGRESS_WORKER, f"10.0.2.{i}") for i in range(ingress)]
    if mode is EtcdMode.STACKED:
        members = [EtcdMember(f"cp{i}", f"https://10.0.0.{i}:2380", f"https://10.0.0.{i}:2379", f"cp{i}")
                   for i in range(control_planes)]
    else:
        nodes += [Node(f"etcd{i}", ETCD_HOST, f"10.0.3.{i}") for i in range(external_etcd)]
        members = [EtcdMember(f"etcd{i}", f"https://10.0.3.{i}:2380", f"https://10.0.3.{i}:2379", f"etcd{i}")
                   for i in range(external_etcd)]
    return Topology(
        nodes=tuple(nodes),
        etcd_members=tuple(members),
        etcd_mode=mode,
        load_balancer=LoadBalancer("10.0.0.100", 6443, "haproxy") if load_balancer else None,
        leader_elections=(LeaderElection("kube-scheduler", True, 15.0, 10.0, 2.0),),
    )


def test_role_queries() -> None:
    topology = build(control_planes=3, workers=2, ingress=2)
    assert [n.name for n in topology.control_planes()] == ["cp0", "cp1", "cp2"]
    assert [n.name for n in topology.workers()] == ["w0", "w1", "in0", "in1"]
    assert [n.name for n in topology.ingress_nodes()] == ["in0", "in1"]
    assert topology.node("w1").address == "10.0.1.1"
    assert topology.etcd_member_on("cp2") == topology.etcd_members[2]
    assert topology.etcd_member_on("w0") is None
    assert topology.leader_election("kube-scheduler") is not None
    assert topology.leader_election("kube-controller-manager") is None


def test_unknown_node_lookup_names_known_nodes() -> None:
    with pytest.raises(KeyError, match="known nodes"):
        build(control_planes=1).node("nope")


@pytest.mark.parametrize(("n", "expected"), [(1, 0), (3, 1), (5, 2), (7, 3)])
def test_etcd_tolerance_follows_member_count(n: int, expected: int) -> None:
    assert build(control_planes=n).etcd_tolerance() == expected


def test_zero_control_planes_is_rejected_with_fix() -> None:
    with pytest.raises(TopologyError, match="no control-plane node.*node-role.kubernetes.io/control-plane"):
        Topology(
            nodes=(Node("w0", WORKER, "10.0.1.0"),),
            etcd_members=(EtcdMember("e0", "https://e0:2380", "https://e0:2379"),),
            etcd_mode=EtcdMode.EXTERNAL,
        )


def test_no_etcd_member_is_rejected() -> None:
    with pytest.raises(TopologyError, match="no etcd member"):
        Topology(nodes=(Node("cp0", CP, "10.0.0.0"),), etcd_members=(), etcd_mode=EtcdMode.STACKED)


def test_duplicate_node_names_are_rejected() -> None:
    node = Node("cp0", CP, "10.0.0.0")
    with pytest.raises(TopologyError, match="unique.*cp0"):
        Topology(
            nodes=(node, node),
            etcd_members=(EtcdMember("cp0", "https://a:2380", "https://a:2379", "cp0"),),
            etcd_mode=EtcdMode.STACKED,
        )


def test_stacked_member_must_sit_on_a_control_plane_node() -> None:
    with pytest.raises(TopologyError, match="not a control-plane node.*EXTERNAL"):
        Topology(
            nodes=(Node("cp0", CP, "a"), Node("w0", WORKER, "b")),
            etcd_members=(EtcdMember("e", "https://b:2380", "https://b:2379", "w0"),),
            etcd_mode=EtcdMode.STACKED,
        )


def test_stacked_member_needs_a_node() -> None:
    with pytest.raises(TopologyError, match="has no node but etcd_mode is STACKED"):
        Topology(
            nodes=(Node("cp0", CP, "a"),),
            etcd_members=(EtcdMember("e", "https://b:2380", "https://b:2379"),),
            etcd_mode=EtcdMode.STACKED,
        )


def test_external_member_on_control_plane_is_rejected() -> None:
    with pytest.raises(TopologyError, match="use EtcdMode.STACKED"):
        Topology(
            nodes=(Node("cp0", CP, "a"),),
            etcd_members=(EtcdMember("e", "https://a:2380", "https://a:2379", "cp0"),),
            etcd_mode=EtcdMode.EXTERNAL,
        )


def test_member_on_unknown_node_is_rejected() -> None:
    with pytest.raises(TopologyError, match="not in nodes"):
        Topology(
            nodes=(Node("cp0", CP, "a"),),
            etcd_members=(EtcdMember("e", "https://a:2380", "https://a:2379", "ghost"),),
            etcd_mode=EtcdMode.EXTERNAL,
        )


def test_two_members_on_one_node_are_rejected() -> None:
    with pytest.raises(TopologyError, match="more than one etcd member"):
        Topology(
            nodes=(Node("cp0", CP, "a"),),
            etcd_members=(
                EtcdMember("e0", "https://a:2380", "https://a:2379", "cp0"),
                EtcdMember("e1", "https://a:2381", "https://a:2378", "cp0"),
            ),
            etcd_mode=EtcdMode.STACKED,
        )


def test_lists_must_be_tuples() -> None:
    with pytest.raises(TopologyError, match="must be a tuple"):
        Topology(nodes=[Node("cp0", CP, "a")], etcd_members=(), etcd_mode=EtcdMode.STACKED)  # type: ignore[arg-type]


def test_node_validation() -> None:
    with pytest.raises(TopologyError, match="has no role"):
        Node("n", frozenset(), "a")
    with pytest.raises(TopologyError, match="frozenset of Role"):
        Node("n", {Role.WORKER}, "a")  # type: ignore[arg-type]
    with pytest.raises(TopologyError, match="node name"):
        Node("", WORKER, "a")
    with pytest.raises(TopologyError, match="address"):
        Node("n", WORKER, " ")


def test_etcd_member_peer_url_may_be_unknown_but_not_blank() -> None:
    external = EtcdMember("etcd-a.example", None, "https://etcd-a.example:2379")
    assert external.peer_url is None
    topology = Topology(
        nodes=(Node("cp0", CP, "10.0.0.0"),), etcd_members=(external,), etcd_mode=EtcdMode.EXTERNAL
    )
    assert topology.etcd_tolerance() == 0
    with pytest.raises(TopologyError, match="peer_url.*--initial-advertise-peer-urls, or None when it is not known"):
        EtcdMember("e", " ", "https://e:2379")
    with pytest.raises(TopologyError, match="client_url"):
        EtcdMember("e", None, "")


def test_load_balancer_validation_and_endpoint() -> None:
    assert LoadBalancer("10.0.0.1", 6443, "haproxy").endpoint == "10.0.0.1:6443"
    assert LoadBalancer("fd00::1", 443, "vip").endpoint == "[fd00::1]:443"
    for port in (0, 65536, True):
        with pytest.raises(TopologyError, match="port must be an int"):
            LoadBalancer("h", port, "haproxy")
    with pytest.raises(TopologyError, match="haproxy"):
        LoadBalancer("h", 6443, "")


def test_leader_election_validation() -> None:
    with pytest.raises(TopologyError, match="must exceed renew_deadline_s"):
        LeaderElection("kube-scheduler", True, 10.0, 10.0, 2.0)
    with pytest.raises(TopologyError, match="1.2 x retry_period_s"):
        LeaderElection("kube-scheduler", True, 15.0, 2.4, 2.0)
    with pytest.raises(TopologyError, match="positive number of seconds"):
        LeaderElection("kube-scheduler", False, 0.0, 10.0, 2.0)
    # Disabled elections keep whatever the flags say; their ordering is irrelevant.
    LeaderElection("kube-scheduler", False, 5.0, 10.0, 2.0)


def test_duplicate_leader_election_is_rejected() -> None:
    topology = build(control_planes=1)
    with pytest.raises(TopologyError, match="more than once"):
        dataclasses.replace(topology, leader_elections=topology.leader_elections * 2)


def test_takeover_bound_for_kubernetes_defaults() -> None:
    # kube-scheduler/controller-manager defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    election = LeaderElection("kube-scheduler", True, 15.0, 10.0, 2.0)
    assert election.takeover_bound_s() == pytest.approx(15.0 + 2 * 2.0 * 2.2)


@given(
    st.integers(min_value=1, max_value=9),
    st.integers(min_value=0, max_value=6),
    st.integers(min_value=0, max_value=4),
    st.sampled_from(EtcdMode),
    st.integers(min_value=1, max_value=7),
    st.booleans(),
)
def test_tolerances_follow_counts(
    cps: int, workers: int, ingress: int, mode: EtcdMode, external: int, lb: bool
) -> None:
    topology = build(cps, workers, ingress, mode, external, lb)
    tolerances = Tolerances.from_topology(topology)
    etcd = len(topology.etcd_members)
    assert tolerances.etcd_members == fault_tolerance(etcd)
    assert has_quorum(etcd, tolerances.etcd_members)
    assert tolerances.api_servers == cps - 1
    assert tolerances.controller_managers == cps - 1
    assert tolerances.schedulers == cps - 1
    assert tolerances.workers == max(workers + ingress - 1, 0)
    assert tolerances.ingress_nodes == max(ingress - 1, 0)
    assert tolerances.load_balancers == 0
    if mode is EtcdMode.STACKED:
        assert tolerances.control_plane_nodes == min(cps - 1, fault_tolerance(cps))
    else:
        assert tolerances.control_plane_nodes == cps - 1


def test_five_node_stacked_cluster_is_not_treated_as_three() -> None:
    tolerances = Tolerances.from_topology(build(control_planes=5, workers=3, ingress=2))
    assert tolerances == Tolerances(
        etcd_members=2,
        api_servers=4,
        control_plane_nodes=2,
        controller_managers=4,
        schedulers=4,
        workers=4,
        ingress_nodes=1,
        load_balancers=0,
    )


def test_tolerances_reject_negative() -> None:
    with pytest.raises(ValueError, match="non-negative int.*from_topology"):
        Tolerances(-1, 0, 0, 0, 0, 0, 0, 0)
