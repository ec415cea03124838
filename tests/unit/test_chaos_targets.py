"""Node selectors of the chaos activities: parsing activity arguments, and picking targets."""

from __future__ import annotations

import pytest

from chaos.kubeha_chaos.targets import HeldTarget, NodeSelector, SelectionError, select_held, select_nodes
from kubeha.core.topology import EtcdMember, EtcdMode, LoadBalancer, Node, Role, Topology

CP = frozenset({Role.CONTROL_PLANE, Role.ETCD})
WORKER = frozenset({Role.WORKER, Role.INGRESS})


def topology() -> Topology:
    nodes = (
        Node("cp-2", CP, "10.0.0.2"),
        Node("cp-1", CP, "10.0.0.1"),
        Node("cp-3", CP, "10.0.0.3"),
        Node("w-1", WORKER, "10.0.1.1"),
        Node("w-2", WORKER, "10.0.1.2"),
    )
    members = tuple(EtcdMember(f"cp-{i}", f"https://10.0.0.{i}:2380", f"https://10.0.0.{i}:2379", f"cp-{i}")
                    for i in (1, 2, 3))
    return Topology(nodes, members, EtcdMode.STACKED, LoadBalancer("127.0.0.1", 6443, "haproxy"))


def test_parse_role_and_count() -> None:
    selector = NodeSelector.parse(role="control-plane", count=2)
    assert selector == NodeSelector(role=Role.CONTROL_PLANE, count=2)
    assert selector.describe() == "2 control-plane nodes"


def test_parse_count_from_environment_text() -> None:
    assert NodeSelector.parse(role="worker", count="1").count == 1


def test_parse_names_list_and_comma_text() -> None:
    assert NodeSelector.parse(names=["cp-1", "w-2"]).names == ("cp-1", "w-2")
    assert NodeSelector.parse(names="cp-1, w-2").names == ("cp-1", "w-2")


def test_parse_empty_values_mean_absent() -> None:
    assert NodeSelector.parse(names="", role="", count="").empty


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"role": "master"}, "role 'master' is not a node role: use one of"),
        ({"role": "worker", "count": 0}, "count must be at least 1"),
        ({"role": "worker", "count": True}, "count must be a positive whole number"),
        ({"role": "worker", "count": "two"}, "count must be a positive whole number"),
        ({"count": 1}, "count=1 needs a role"),
        ({"names": ["cp-1"], "role": "worker"}, "both names ['cp-1'] and role 'worker' were given"),
        ({"names": ["cp-1", "cp-1"]}, "names lists ['cp-1'] more than once"),
        ({"names": [3]}, "names has 3, which is not a node name"),
        ({"names": {"cp-1": 1}}, "names must be a list of node names"),
    ],
)
def test_parse_rejects_with_the_fix(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(SelectionError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        NodeSelector.parse(**arguments)


def test_role_picks_the_first_available_in_name_order() -> None:
    chosen = select_nodes(NodeSelector(role=Role.CONTROL_PLANE, count=2), topology(), unavailable={})
    assert chosen == ("cp-1", "cp-2")


def test_role_count_defaults_to_one() -> None:
    assert select_nodes(NodeSelector(role=Role.WORKER), topology(), unavailable={}) == ("w-1",)


def test_role_skips_unavailable_nodes() -> None:
    chosen = select_nodes(NodeSelector(role=Role.CONTROL_PLANE, count=2), topology(),
                          unavailable={"cp-1": "it is NotReady (NodeStatusUnknown)"})
    assert chosen == ("cp-2", "cp-3")


def test_role_with_too_few_available_names_the_reasons() -> None:
    with pytest.raises(SelectionError) as raised:
        select_nodes(NodeSelector(role=Role.WORKER, count=2), topology(),
                     unavailable={"w-2": "it already has a fault injected by this process (node w-2 down)"}, what="stop")
    assert str(raised.value) == (
        "cannot stop 2 worker node(s): only 1 of the 2 in the cluster are available (w-2: it already has a fault "
        "injected by this process (node w-2 down)); restore the others first or ask for fewer"
    )


def test_required_role_restricts_a_role_choice() -> None:
    chosen = select_nodes(NodeSelector(role=Role.ETCD, count=3), topology(), unavailable={}, required_role=Role.ETCD)
    assert chosen == ("cp-1", "cp-2", "cp-3")


def test_names_are_taken_as_given() -> None:
    assert select_nodes(NodeSelector(names=("w-2", "cp-3")), topology(), unavailable={}) == ("w-2", "cp-3")


def test_unknown_name_lists_the_cluster_nodes() -> None:
    with pytest.raises(SelectionError, match=r"node 'cp-9' is not in the cluster \(it has \['cp-1', 'cp-2', 'cp-3', "):
        select_nodes(NodeSelector(names=("cp-9",)), topology(), unavailable={})


def test_name_without_the_required_role_is_refused() -> None:
    with pytest.raises(SelectionError, match=r'node w-1 has no etcd role, which "stop etcd on" needs: pick one of '
                                             r"\['cp-1', 'cp-2', 'cp-3'\]"):
        select_nodes(NodeSelector(names=("w-1",)), topology(), unavailable={}, required_role=Role.ETCD,
                     what="stop etcd on")


def test_unavailable_name_is_refused_with_the_reason() -> None:
    with pytest.raises(SelectionError, match=r"cannot stop node cp-1: it is NotReady"):
        select_nodes(NodeSelector(names=("cp-1",)), topology(), unavailable={"cp-1": "it is NotReady (x)"},
                     what="stop")


def test_empty_selector_is_refused_for_a_fault() -> None:
    with pytest.raises(SelectionError, match="no node to stop was named"):
        select_nodes(NodeSelector(), topology(), unavailable={}, what="stop")


HELD = [HeldTarget("w-1", WORKER), HeldTarget("cp-3", CP), HeldTarget("cp-1", CP)]


def test_held_selection_empty_means_all() -> None:
    assert select_held(NodeSelector(), HELD) == ("cp-1", "cp-3", "w-1")


def test_held_selection_by_role_and_count() -> None:
    assert select_held(NodeSelector(role=Role.CONTROL_PLANE), HELD) == ("cp-1", "cp-3")
    assert select_held(NodeSelector(role=Role.CONTROL_PLANE, count=1), HELD) == ("cp-1",)
    assert select_held(NodeSelector(role=Role.WORKER), []) == ()


def test_held_selection_by_names_includes_nodes_not_held() -> None:
    assert select_held(NodeSelector(names=("w-2",)), HELD) == ("w-2",)
