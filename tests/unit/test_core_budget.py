"""The fault budget: claim expansion, grant decisions, and replay of the coordinator's grant/release log."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeha.core.budget import (
    Claim,
    Decision,
    LedgerError,
    LedgerEvent,
    Limits,
    ResourceKind,
    decide,
    expand,
    replay,
    replay_json,
)
from kubeha.core.tolerances import Tolerances
from kubeha.core.topology import EtcdMember, EtcdMode, LoadBalancer, Node, Role, Topology

K = ResourceKind


def stacked(control_planes: int, workers: int = 2) -> Topology:
    nodes = tuple(Node(f"cp{i}", frozenset({Role.CONTROL_PLANE}), f"10.0.0.{i}") for i in range(control_planes))
    nodes += tuple(Node(f"w{i}", frozenset({Role.WORKER, Role.INGRESS}), f"10.0.1.{i}") for i in range(workers))
    members = tuple(EtcdMember(f"cp{i}", "https://p", "https://c", f"cp{i}") for i in range(control_planes))
    return Topology(nodes, members, EtcdMode.STACKED, LoadBalancer("lb", 6443, "haproxy"))


def test_expand_stacked_control_plane_node() -> None:
    assert dict(expand({K.CONTROL_PLANE_NODE: 1}, EtcdMode.STACKED)) == {
        K.CONTROL_PLANE_NODE: 1,
        K.ETCD_MEMBER: 1,
        K.API_SERVER: 1,
        K.CONTROLLER_MANAGER: 1,
        K.SCHEDULER: 1,
    }


def test_expand_external_control_plane_node_spares_etcd() -> None:
    expanded = dict(expand({K.CONTROL_PLANE_NODE: 2}, EtcdMode.EXTERNAL))
    assert K.ETCD_MEMBER not in expanded
    assert expanded[K.API_SERVER] == 2


def test_expand_adds_to_named_resources() -> None:
    expanded = dict(expand({K.CONTROL_PLANE_NODE: 1, K.ETCD_MEMBER: 1}, EtcdMode.STACKED))
    assert expanded[K.ETCD_MEMBER] == 2


def test_expand_ingress_on_workers() -> None:
    assert dict(expand({K.INGRESS_NODE: 1}, EtcdMode.STACKED)) == {K.INGRESS_NODE: 1}
    assert dict(expand({K.INGRESS_NODE: 1}, EtcdMode.STACKED, ingress_nodes_are_workers=True)) == {
        K.WORKER_NODE: 1,
        K.INGRESS_NODE: 1,
    }


def test_claim_is_canonical_and_hashable() -> None:
    a = Claim("t1", {K.API_SERVER: 1, K.ETCD_MEMBER: 1, K.SCHEDULER: 0})
    b = Claim("t1", [(K.ETCD_MEMBER, 1), (K.API_SERVER, 1)])
    assert a == b and hash(a) == hash(b)
    assert a.resources == ((K.ETCD_MEMBER, 1), (K.API_SERVER, 1))
    assert a.amount(K.SCHEDULER) == 0


def test_claim_validation() -> None:
    with pytest.raises(ValueError, match="names no resources and is not exclusive"):
        Claim("t", {})
    with pytest.raises(ValueError, match="listed twice"):
        Claim("t", [(K.ETCD_MEMBER, 1), (K.ETCD_MEMBER, 1)])
    with pytest.raises(ValueError, match="int >= 0"):
        Claim("t", {K.ETCD_MEMBER: -1})
    with pytest.raises(TypeError, match="not a ResourceKind"):
        Claim("t", {"etcd_member": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holder"):
        Claim("", {K.ETCD_MEMBER: 1})
    assert Claim("t", {}, exclusive=True).resources == ()


def test_limits_from_topology_three_and_five_nodes() -> None:
    three = Limits.from_topology(stacked(3))
    assert three.limit(K.ETCD_MEMBER) == 1
    assert three.limit(K.API_SERVER) == 2
    assert three.limit(K.CONTROL_PLANE_NODE) == 1
    assert three.limit(K.WORKER_NODE) == 1
    assert three.limit(K.LOAD_BALANCER) == 0
    assert three.ingress_nodes_are_workers
    five = Limits.from_topology(stacked(5))
    assert five.limit(K.ETCD_MEMBER) == 2
    assert five.limit(K.CONTROL_PLANE_NODE) == 2


def test_two_control_plane_nodes_never_fit_three_node_stacked() -> None:
    limits = Limits.from_topology(stacked(3))
    decision = decide([], Claim("t", {K.CONTROL_PLANE_NODE: 2}), limits)
    assert decision == Decision(False, decision.reason, never_fits=True)
    assert "mark the test exclusive" in decision.reason and "larger cluster" in decision.reason
    assert "2 etcd_member (limit 1)" in decision.reason
    assert decide([], Claim("t", {K.CONTROL_PLANE_NODE: 2}), Limits.from_topology(stacked(5))).granted


def test_etcd_member_and_node_on_three_node_cluster_serialise() -> None:
    limits = Limits.from_topology(stacked(3))
    node = Claim("stop-node", {K.CONTROL_PLANE_NODE: 1})
    member = Claim("stop-etcd", {K.ETCD_MEMBER: 1})
    assert decide([], node, limits).granted
    waiting = decide([node], member, limits)
    assert not waiting.granted and not waiting.never_fits
    assert "etcd_member: 1 held + 1 requested > limit 1" in waiting.reason
    assert decide([node], Claim("stop-worker", {K.WORKER_NODE: 1}), limits).granted


def test_exclusive_claims() -> None:
    limits = Limits.from_topology(stacked(3))
    shared = Claim("a", {K.WORKER_NODE: 1})
    exclusive = Claim("quorum-loss", {K.ETCD_MEMBER: 2}, exclusive=True, reason="breaks quorum")
    assert not decide([shared], exclusive, limits).granted
    granted = decide([], exclusive, limits)
    assert granted.granted and "exclusive" in granted.reason
    blocked = decide([exclusive], shared, limits)
    assert not blocked.granted and not blocked.never_fits and "quorum-loss" in blocked.reason
    assert not decide([exclusive], Claim("b", {}, exclusive=True), limits).granted


def test_same_holder_twice_is_misuse() -> None:
    claim = Claim("a", {K.WORKER_NODE: 1})
    with pytest.raises(ValueError, match="already holds a claim: release it"):
        decide([claim], claim, Limits.from_topology(stacked(3, workers=5)))


def test_limits_for_single_control_plane() -> None:
    limits = Limits.from_topology(stacked(1))
    decision = decide([], Claim("t", {K.API_SERVER: 1}), limits)
    assert decision.never_fits


def test_decision_cannot_be_granted_and_never_fit() -> None:
    with pytest.raises(ValueError):
        Decision(True, "x", never_fits=True)


def test_serialisation_round_trips() -> None:
    limits = Limits.from_topology(stacked(5))
    assert Limits.from_dict(json.loads(json.dumps(limits.to_dict()))) == limits
    event = LedgerEvent.grant(Claim("t", {K.CONTROL_PLANE_NODE: 1}, reason="stop one node"))
    assert LedgerEvent.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    release = LedgerEvent.release("t")
    assert LedgerEvent.from_dict(json.loads(json.dumps(release.to_dict()))) == release


def test_replay_flags_breaches() -> None:
    limits = Limits.from_topology(stacked(3))
    a = Claim("a", {K.ETCD_MEMBER: 1})
    b = Claim("b", {K.CONTROL_PLANE_NODE: 1})
    x = Claim("x", {}, exclusive=True)
    result = replay([LedgerEvent.grant(a), LedgerEvent.grant(b), LedgerEvent.release("a")], limits)
    assert not result.within_limits
    assert "etcd_member to 2, above limit 1" in result.violations[0]
    assert result.peak_of(K.ETCD_MEMBER) == 2
    assert result.unreleased == ("b",)
    overlap = replay([LedgerEvent.grant(a), LedgerEvent.grant(x)], limits)
    assert not overlap.within_limits and "exclusive" in overlap.violations[0]


def test_replay_accepts_exclusive_beyond_limits() -> None:
    limits = Limits.from_topology(stacked(3))
    x = Claim("x", {K.ETCD_MEMBER: 2}, exclusive=True)
    result = replay([LedgerEvent.grant(x), LedgerEvent.release("x")], limits)
    assert result.within_limits
    assert result.peak_of(K.ETCD_MEMBER) == 2
    assert result.shared_peak_of(K.ETCD_MEMBER) == 0


def test_replay_rejects_corrupt_logs() -> None:
    limits = Limits.from_topology(stacked(3))
    with pytest.raises(LedgerError, match="holds no claim"):
        replay([LedgerEvent.release("ghost")], limits)
    claim = Claim("a", {K.WORKER_NODE: 1})
    with pytest.raises(LedgerError, match="second grant"):
        replay([LedgerEvent.grant(claim), LedgerEvent.grant(claim)], limits)


limits_strategy = st.builds(
    Limits,
    st.fixed_dictionaries({kind: st.integers(min_value=0, max_value=3) for kind in ResourceKind}),
    st.sampled_from(EtcdMode),
    ingress_nodes_are_workers=st.booleans(),
)
resources_strategy = st.dictionaries(st.sampled_from(ResourceKind), st.integers(min_value=0, max_value=3), max_size=3)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int, dict[ResourceKind, int], bool]]:
    """A script of ("claim", holder, resources, exclusive) and ("release", holder, {}, False) steps."""
    steps: list[tuple[str, int, dict[ResourceKind, int], bool]] = []
    for _ in range(draw(st.integers(min_value=1, max_value=40))):
        holder = draw(st.integers(min_value=0, max_value=7))
        if draw(st.booleans()):
            steps.append(("release", holder, {}, False))
        else:
            exclusive = draw(st.integers(min_value=0, max_value=9)) == 0
            resources = draw(resources_strategy)
            if not any(resources.values()):
                resources = {K.WORKER_NODE: 1}
            steps.append(("claim", holder, resources, exclusive))
    return steps


@given(limits_strategy, operations())
def test_grants_from_decide_never_exceed_limits(
    limits: Limits, steps: list[tuple[str, int, dict[ResourceKind, int], bool]]
) -> None:
    active: dict[str, Claim] = {}
    ledger: list[LedgerEvent] = []
    expected_peak: Counter[ResourceKind] = Counter()
    for action, number, resources, exclusive in steps:
        holder = f"test-{number}"
        if action == "release":
            if holder in active:
                del active[holder]
                ledger.append(LedgerEvent.release(holder))
            continue
        if holder in active:
            continue
        claim = Claim(holder, resources, exclusive=exclusive)
        decision = decide(list(active.values()), claim, limits)
        if not decision.granted:
            continue
        active[claim.holder] = claim
        ledger.append(LedgerEvent.grant(claim))
        totals: Counter[ResourceKind] = Counter()
        for held in active.values():
            totals.update(dict(limits.usage(held)))
        for kind, count in totals.items():
            expected_peak[kind] = max(expected_peak[kind], count)
        if any(held.exclusive for held in active.values()):
            assert len(active) == 1
        else:
            assert all(count <= limits.limit(kind) for kind, count in totals.items())
    result = replay_json([event.to_dict() for event in ledger], limits)
    assert result.within_limits, result.violations
    assert all(count <= limits.limit(kind) for kind, count in result.shared_peak)
    assert dict(result.peak) == {kind: count for kind, count in expected_peak.items() if count}
    assert set(result.unreleased) == set(active)


@given(limits_strategy, resources_strategy.filter(lambda r: any(r.values())))
def test_never_fits_exactly_when_alone_exceeds_limits(limits: Limits, resources: dict[ResourceKind, int]) -> None:
    claim = Claim("t", resources)
    decision = decide([], claim, limits)
    alone_fits = all(count <= limits.limit(kind) for kind, count in limits.usage(claim))
    assert decision.granted == alone_fits
    assert decision.never_fits == (not alone_fits)


def test_tolerances_map_onto_limits() -> None:
    tolerances = Tolerances(2, 4, 2, 4, 4, 3, 1, 0)
    limits = Limits.from_tolerances(tolerances, etcd_mode=EtcdMode.EXTERNAL)
    assert [limits.limit(kind) for kind in ResourceKind] == [2, 2, 4, 3, 1, 4, 4, 0]
