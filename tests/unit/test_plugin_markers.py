"""The kubeha markers: registration, parsing into claims and controls, and the errors misuse produces."""

from __future__ import annotations

import pytest

from kubeha.core.budget import ResourceKind
from kubeha.core.topology import EtcdMember, EtcdMode, Node, Role, Topology
from kubeha.plugin import ControlSpec, Needs, item_markers, unmet_needs

pytest_plugins = ["pytester"]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "kubeha.plugin", "-p", "no:cacheprovider", "--strict-markers", *args)


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.disruptive(control_plane_nodes=0, etcd_members=0, api_servers=0, workers=0, ingress_nodes=0,*",
            "@pytest.mark.control(id, title, statement):*",
            "@pytest.mark.serial:*",
            "@pytest.mark.needs(control_planes=0, etcd_members=0, workers=0, ingress_nodes=0):*",
        ]
    )


def test_marked_tests_run_under_strict_markers_without_a_cluster(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.serial
        @pytest.mark.control("HA-DOC-01", "Docs", "The suite MUST document its controls")
        def test_documented():
            pass
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_disruptive_marker_becomes_a_claim(pytester: pytest.Pytester) -> None:
    item = pytester.getitem(
        """
        import pytest

        @pytest.mark.disruptive(control_plane_nodes=1, etcd_members=1, reason="stop one control-plane node")
        def test_func():
            pass
        """
    )
    markers = item_markers(item)
    assert markers.claim is not None
    assert markers.claim.holder == item.nodeid
    assert markers.claim.resources == ((ResourceKind.CONTROL_PLANE_NODE, 1), (ResourceKind.ETCD_MEMBER, 1))
    assert markers.claim.exclusive is False
    assert markers.claim.reason == "stop one control-plane node"
    assert markers.tags() == ("disruptive",)


def test_exclusive_claim_may_name_nothing(pytester: pytest.Pytester) -> None:
    item = pytester.getitem(
        "import pytest\n\n@pytest.mark.disruptive(exclusive=True)\n@pytest.mark.serial\ndef test_func():\n    pass\n"
    )
    markers = item_markers(item)
    assert markers.claim is not None and markers.claim.exclusive and markers.claim.resources == ()
    assert markers.serial is True
    assert markers.tags() == ("disruptive", "exclusive", "serial")


def test_control_marker_positional_and_keyword(pytester: pytest.Pytester) -> None:
    item = pytester.getitem(
        """
        import pytest

        @pytest.mark.control("HA-API-01", title="API survives", statement="The API MUST stay up")
        def test_func():
            pass
        """
    )
    assert item_markers(item).control == ControlSpec("HA-API-01", "API survives", "The API MUST stay up")


def test_closest_marker_wins(pytester: pytest.Pytester) -> None:
    item = pytester.getitem(
        """
        import pytest

        pytestmark = pytest.mark.needs(workers=1)

        @pytest.mark.needs(workers=3)
        def test_func():
            pass
        """
    )
    assert item_markers(item).needs == Needs(workers=3)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("disruptive(1)", "takes keyword arguments only"),
        ("disruptive(nodes=1)", "unknown argument(s)*'nodes'*use control_plane_nodes"),
        ("disruptive()", "names nothing the test breaks"),
        ("disruptive(workers=-1)", "workers must be a whole number >= 0"),
        ("disruptive(workers=True)", "workers must be a whole number >= 0"),
        ("disruptive(workers=1, exclusive='yes')", "pass True or False"),
        ("control('HA-API-01', 'title')", "needs non-empty strings for statement"),
        ("control('api 1', 't', 'It MUST work')", "is not a stable control ID"),
        ("control('HA-API-01', 't', 'It should work')", "has no MUST"),
        ("control('HA-API-01', 't', 'It MUST work', id='HA-API-02')", "got id twice"),
        ("needs(3)", "takes keyword arguments only"),
        ("needs(nodes=3)", "use control_planes, etcd_members, workers, ingress_nodes"),
        ("serial(True)", "takes no arguments"),
    ],
)
def test_marker_misuse_is_a_setup_error_with_the_fix(pytester: pytest.Pytester, marker: str, message: str) -> None:
    pytester.makepyfile(f"import pytest\n\n@pytest.mark.{marker}\ndef test_it():\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*UsageError*{message}*"])


def _topology(control_planes: int, workers: int, ingress: int = 0) -> Topology:
    nodes = [Node(f"cp-{i}", frozenset({Role.CONTROL_PLANE}), f"10.0.0.{i}") for i in range(control_planes)]
    nodes += [
        Node(f"w-{i}", frozenset({Role.WORKER, Role.INGRESS} if i < ingress else {Role.WORKER}), f"10.0.1.{i}")
        for i in range(workers)
    ]
    members = [EtcdMember(f"cp-{i}", f"https://10.0.0.{i}:2380", f"https://10.0.0.{i}:2379", f"cp-{i}") for i in range(control_planes)]
    return Topology(nodes=tuple(nodes), etcd_members=tuple(members), etcd_mode=EtcdMode.STACKED)


def test_unmet_needs_reasons() -> None:
    topology = _topology(control_planes=1, workers=1)
    assert unmet_needs(Needs(workers=2), topology) == "cluster has 1 worker, test needs 2"
    assert unmet_needs(Needs(control_planes=3, etcd_members=3), topology) == (
        "cluster has 1 control-plane node, test needs 3; cluster has 1 etcd member, test needs 3"
    )
    assert unmet_needs(Needs(ingress_nodes=1), topology) == "cluster has 0 ingress nodes, test needs 1"
    assert unmet_needs(Needs(control_planes=1, workers=1), topology) is None
    assert unmet_needs(Needs(workers=3), _topology(3, 2)) == "cluster has 2 workers, test needs 3"
