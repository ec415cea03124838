"""Topology discovery and the health gate from API records, without a cluster."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client import ApiClient, CoreV1Api, V1Namespace, V1ObjectMeta

from kubeha.cluster.client import (
    DryRunRefusal,
    KubeconfigError,
    KubeconfigTarget,
    ReadOnlyApiClient,
    new_api_client,
    read_kubeconfig,
    server_host_port,
)
from kubeha.cluster.discovery import (
    CONTROL_PLANE_LABEL,
    DEFAULT_LEASE_DURATION_S,
    DEFAULT_RENEW_DEADLINE_S,
    DEFAULT_RETRY_PERIOD_S,
    ContainerInfo,
    DaemonSetInfo,
    DiscoveryError,
    NodeInfo,
    PodInfo,
    Snapshot,
    build_topology,
    etcd_member_from_command,
    etcd_servers,
    is_ingress_daemonset,
    leader_election_from_command,
    parse_bool,
    parse_flags,
    parse_go_duration,
    parse_initial_cluster,
)
from kubeha.cluster import health
from kubeha.cluster.health import ReadyzAnswer, assess
from kubeha.core.topology import EtcdMode, Role

# -- flags -----------------------------------------------------------------------------------------------------------


def test_flags_in_equals_and_separate_forms() -> None:
    flags = parse_flags(["kube-scheduler", "--leader-elect=true", "--v", "2", "-bind-address=0.0.0.0", "extra"])
    assert flags.get("leader-elect") == "true"
    assert flags.get("v") == "2"
    assert flags.get("bind-address") == "0.0.0.0"
    assert flags.positional == ("extra",)
    assert flags.get("absent") is None


def test_boolean_flag_alone_is_true_and_never_takes_the_next_token() -> None:
    flags = parse_flags(["kube-controller-manager", "--leader-elect", "--profiling", "positional"])
    assert flags.get("leader-elect") == "true"
    assert flags.get("profiling") == "true"
    assert flags.positional == ("positional",)


def test_last_repeated_flag_wins_and_values_may_contain_equals() -> None:
    flags = parse_flags(["etcd", "--initial-cluster=a=https://1:2380,b=https://2:2380", "--name=x", "--name=y"])
    assert flags.get("name") == "y"
    assert flags.get("initial-cluster") == "a=https://1:2380,b=https://2:2380"


def test_double_dash_ends_flags() -> None:
    flags = parse_flags(["prog", "--a=1", "--", "--b=2"])
    assert flags.get("b") is None
    assert flags.positional == ("--b=2",)


def test_command_without_program_name_is_all_flags() -> None:
    assert parse_flags(["--leader-elect=false"]).get("leader-elect") == "false"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("0", 0.0),
        ("2.5s", 2.5),
        ("100us", 1e-4),
        ("100\u00b5s", 1e-4),
        ("1h2m3s4ms", 3723.004),
        ("-1s", -1.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert math.isclose(parse_go_duration(text), seconds, rel_tol=1e-12)


@pytest.mark.parametrize("text", ["", "15", "s", "1x", "1s2", "abc", "1.5.5s"])
def test_invalid_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="Go duration"):
        parse_go_duration(text)


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=59))
def test_minutes_and_seconds_add_up(minutes: int, seconds: int) -> None:
    assert parse_go_duration(f"{minutes}m{seconds}s") == minutes * 60 + seconds


@pytest.mark.parametrize(("text", "value"), [("true", True), ("1", True), ("T", True), ("false", False), ("0", False)])
def test_booleans(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_invalid_boolean() -> None:
    with pytest.raises(ValueError, match="expected true or false"):
        parse_bool("maybe")


# -- leader election --------------------------------------------------------------------------------------------------


def test_leader_election_defaults_when_flags_absent() -> None:
    election, notes = leader_election_from_command("kube-scheduler", ["kube-scheduler", "--kubeconfig=/etc/x"])
    assert election.enabled is True
    assert (election.lease_duration_s, election.renew_deadline_s, election.retry_period_s) == (
        DEFAULT_LEASE_DURATION_S,
        DEFAULT_RENEW_DEADLINE_S,
        DEFAULT_RETRY_PERIOD_S,
    )
    assert (DEFAULT_LEASE_DURATION_S, DEFAULT_RENEW_DEADLINE_S, DEFAULT_RETRY_PERIOD_S) == (15.0, 10.0, 2.0)
    assert notes == ()


def test_leader_election_from_flags() -> None:
    election, notes = leader_election_from_command(
        "kube-controller-manager",
        [
            "kube-controller-manager",
            "--leader-elect=true",
            "--leader-elect-lease-duration=30s",
            "--leader-elect-renew-deadline=20s",
            "--leader-elect-retry-period",
            "4s",
        ],
    )
    assert (election.lease_duration_s, election.renew_deadline_s, election.retry_period_s) == (30.0, 20.0, 4.0)
    assert election.component == "kube-controller-manager"
    assert notes == ()


def test_leader_election_disabled() -> None:
    election, _ = leader_election_from_command("kube-scheduler", ["kube-scheduler", "--leader-elect=false"])
    assert election.enabled is False


def test_scheduler_config_file_is_noted() -> None:
    election, notes = leader_election_from_command(
        "kube-scheduler", ["kube-scheduler", "--config=/etc/kubernetes/scheduler-config.yaml"]
    )
    assert election.lease_duration_s == DEFAULT_LEASE_DURATION_S
    assert len(notes) == 1
    assert "--config /etc/kubernetes/scheduler-config.yaml" in notes[0]
    assert "not visible through the API" in notes[0]


def test_unparsable_duration_falls_back_to_default_with_a_note() -> None:
    election, notes = leader_election_from_command(
        "kube-scheduler", ["kube-scheduler", "--leader-elect-lease-duration=soon"]
    )
    assert election.lease_duration_s == DEFAULT_LEASE_DURATION_S
    assert "--leader-elect-lease-duration=soon" in notes[0]


# -- etcd -------------------------------------------------------------------------------------------------------------

KUBEADM_ETCD = [
    "etcd",
    "--advertise-client-urls=https://172.18.0.3:2379",
    "--cert-file=/etc/kubernetes/pki/etcd/server.crt",
    "--initial-advertise-peer-urls=https://172.18.0.3:2380",
    "--initial-cluster=kubeha-control-plane=https://172.18.0.3:2380",
    "--listen-client-urls=https://127.0.0.1:2379,https://172.18.0.3:2379",
    "--name=kubeha-control-plane",
]


def test_initial_cluster() -> None:
    assert parse_initial_cluster("a=https://1:2380, b=https://2:2380,") == (("a", "https://1:2380"), ("b", "https://2:2380"))
    with pytest.raises(ValueError, match="name=peer-url"):
        parse_initial_cluster("broken")


def test_etcd_member_from_kubeadm_command() -> None:
    member = etcd_member_from_command(KUBEADM_ETCD, "kubeha-control-plane")
    assert member.name == "kubeha-control-plane"
    assert member.peer_url == "https://172.18.0.3:2380"
    assert member.client_url == "https://172.18.0.3:2379"
    assert member.node == "kubeha-control-plane"


def test_etcd_peer_url_from_initial_cluster_when_not_advertised() -> None:
    command = ["etcd", "--name=m2", "--initial-cluster=m1=https://a:2380,m2=https://b:2380", "--advertise-client-urls=https://b:2379"]
    assert etcd_member_from_command(command, "node-b").peer_url == "https://b:2380"


def test_etcd_member_without_urls_is_an_error_naming_the_flag() -> None:
    with pytest.raises(DiscoveryError, match="--advertise-client-urls"):
        etcd_member_from_command(["etcd", "--name=x", "--initial-advertise-peer-urls=https://a:2380"], "n")


def test_etcd_servers() -> None:
    command = ["kube-apiserver", "--etcd-servers=https://10.0.0.5:2379,https://10.0.0.6:2379"]
    assert etcd_servers(command) == ("https://10.0.0.5:2379", "https://10.0.0.6:2379")
    assert etcd_servers(["kube-apiserver"]) == ()


# -- topology assembly ------------------------------------------------------------------------------------------------


def _node(name: str, address: str, *, control_plane: bool = False, labels: dict[str, str] | None = None,
          ready: bool = True, kind: bool = True) -> NodeInfo:
    all_labels = dict(labels or {})
    if control_plane:
        all_labels[CONTROL_PLANE_LABEL] = ""
    return NodeInfo(
        name=name,
        labels=all_labels,
        addresses=(("InternalIP", address), ("Hostname", name)),
        ready=ready,
        ready_reason="KubeletReady" if ready else "NodeStatusUnknown",
        provider_id=f"kind://docker/kubeha/{name}" if kind else "",
    )


def _static_pod(component: str, node: str, command: Sequence[str], *, ready: bool = True, phase: str = "Running") -> PodInfo:
    return PodInfo(
        namespace="kube-system",
        name=f"{component}-{node}",
        node=node,
        labels={"component": component, "tier": "control-plane"},
        phase=phase,
        ready=ready,
        host_network=True,
        owner_kind="Node",
        owner_name=node,
        containers=(ContainerInfo(name=component, image=f"registry.k8s.io/{component}:v1.34.3", command=tuple(command)),),
        not_ready_containers=() if ready else (component,),
    )


def _etcd_command(name: str, address: str, initial: str) -> list[str]:
    return [
        "etcd",
        f"--name={name}",
        f"--advertise-client-urls=https://{address}:2379",
        f"--initial-advertise-peer-urls=https://{address}:2380",
        f"--initial-cluster={initial}",
    ]


CPS = (("cp1", "172.18.0.3"), ("cp2", "172.18.0.4"), ("cp3", "172.18.0.5"))


def _kind_ha_snapshot(*, server: str = "https://127.0.0.1:38451", scheduler_flags: Sequence[str] = ()) -> Snapshot:
    nodes = [_node(name, address, control_plane=True) for name, address in CPS]
    nodes += [_node("w1", "172.18.0.6", labels={"ingress-ready": "true"}), _node("w2", "172.18.0.7")]
    initial = ",".join(f"{name}=https://{address}:2380" for name, address in CPS[:2])
    pods = []
    for name, address in CPS:
        pods.append(_static_pod("etcd", name, _etcd_command(name, address, initial)))
        pods.append(_static_pod("kube-apiserver", name, ["kube-apiserver", "--etcd-servers=https://127.0.0.1:2379"]))
        pods.append(_static_pod("kube-controller-manager", name, ["kube-controller-manager", "--leader-elect=true"]))
        pods.append(_static_pod("kube-scheduler", name, ["kube-scheduler", *scheduler_flags]))
    return Snapshot(server_url=server, nodes=tuple(nodes), kube_system_pods=tuple(pods))


def test_stacked_kind_cluster() -> None:
    found = build_topology(_kind_ha_snapshot())
    topology = found.topology
    assert [node.name for node in topology.control_planes()] == ["cp1", "cp2", "cp3"]
    assert [node.name for node in topology.workers()] == ["w1", "w2"]
    assert [node.name for node in topology.ingress_nodes()] == ["w1"]
    assert topology.etcd_mode is EtcdMode.STACKED
    assert [(m.name, m.node, m.client_url) for m in topology.etcd_members] == [
        (name, name, f"https://{address}:2379") for name, address in CPS
    ]
    assert all(node.has(Role.ETCD) for node in topology.control_planes())
    assert topology.node("cp2").address == "172.18.0.4"
    assert topology.load_balancer is not None
    assert (topology.load_balancer.host, topology.load_balancer.port, topology.load_balancer.kind) == (
        "127.0.0.1",
        38451,
        "haproxy",
    )
    assert found.lb_distinct_from_nodes is True
    scheduler = topology.leader_election("kube-scheduler")
    assert scheduler is not None and scheduler.lease_duration_s == 15.0
    assert topology.leader_election("kube-controller-manager") is not None
    assert found.notes == ()


def test_server_url_on_a_node_is_not_a_load_balancer() -> None:
    found = build_topology(_kind_ha_snapshot(server="https://172.18.0.4:6443"))
    assert found.topology.load_balancer is None
    assert found.lb_distinct_from_nodes is False
    assert any("node cp2 itself" in note for note in found.notes)


def test_scheduler_with_config_file_is_noted() -> None:
    found = build_topology(_kind_ha_snapshot(scheduler_flags=["--config=/etc/kubernetes/kube-scheduler.yaml"]))
    assert any("kube-scheduler runs with --config" in note for note in found.notes)


def test_external_etcd_from_apiserver_flags() -> None:
    nodes = (_node("cp1", "10.0.0.1", control_plane=True, kind=False), _node("w1", "10.0.0.2", kind=False))
    pods = (
        _static_pod("kube-apiserver", "cp1", ["kube-apiserver", "--etcd-servers=https://10.1.0.1:2379,https://10.1.0.2:2379"]),
    )
    found = build_topology(Snapshot(server_url="https://lb.example:6443", nodes=nodes, kube_system_pods=pods))
    topology = found.topology
    assert topology.etcd_mode is EtcdMode.EXTERNAL
    assert [(m.name, m.node) for m in topology.etcd_members] == [("10.1.0.1", None), ("10.1.0.2", None)]
    assert [m.peer_url for m in topology.etcd_members] == [None, None]
    assert topology.load_balancer is not None and topology.load_balancer.kind == "external"
    assert any("etcd is external" in note for note in found.notes)
    assert any("no kube-controller-manager static pod" in note for note in found.notes)


def test_etcd_servers_on_nodes_without_etcd_pods_is_an_error() -> None:
    nodes = (_node("cp1", "10.0.0.1", control_plane=True),)
    pods = (_static_pod("kube-apiserver", "cp1", ["kube-apiserver", "--etcd-servers=https://10.0.0.1:2379"]),)
    with pytest.raises(DiscoveryError, match="point at cluster nodes"):
        build_topology(Snapshot(server_url="https://127.0.0.1:6443", nodes=nodes, kube_system_pods=pods))


def test_no_control_plane_label_is_an_error_with_the_fix() -> None:
    with pytest.raises(DiscoveryError, match="kubectl label node"):
        build_topology(Snapshot(server_url="https://x:6443", nodes=(_node("n", "10.0.0.1"),), kube_system_pods=()))


def test_ingress_from_host_network_daemonset_pods() -> None:
    snapshot = _kind_ha_snapshot()
    controller = DaemonSetInfo(
        namespace="ingress-nginx",
        name="ingress-nginx-controller",
        labels={"app.kubernetes.io/name": "ingress-nginx"},
        host_network=True,
        images=("registry.k8s.io/ingress-nginx/controller:v1.11.0",),
    )
    pod = PodInfo(
        namespace="ingress-nginx",
        name="ingress-nginx-controller-abcde",
        node="w2",
        labels={},
        phase="Running",
        ready=True,
        host_network=True,
        owner_kind="DaemonSet",
        owner_name="ingress-nginx-controller",
    )
    found = build_topology(Snapshot(snapshot.server_url, snapshot.nodes, snapshot.kube_system_pods, (pod,), (controller,)))
    assert [node.name for node in found.topology.ingress_nodes()] == ["w1", "w2"]


def test_ingress_daemonset_detection() -> None:
    base = DaemonSetInfo(namespace="x", name="traefik", labels={}, host_network=True, images=())
    assert is_ingress_daemonset(base)
    assert not is_ingress_daemonset(DaemonSetInfo("x", "traefik", {}, False, ()))
    assert not is_ingress_daemonset(DaemonSetInfo("kube-system", "kube-proxy", {"k8s-app": "kube-proxy"}, True, ()))


def test_server_host_port() -> None:
    assert server_host_port("https://127.0.0.1:6443") == ("127.0.0.1", 6443)
    assert server_host_port("https://api.example") == ("api.example", 443)
    assert server_host_port("https://[::1]:6443") == ("::1", 6443)
    with pytest.raises(KubeconfigError, match="has no host"):
        server_host_port("not a url")


# -- health assessment ------------------------------------------------------------------------------------------------

READY = ReadyzAnswer(status=200, body="ok")


def test_steady_state() -> None:
    snapshot = _kind_ha_snapshot()
    assert assess(snapshot.nodes, snapshot.kube_system_pods, READY, expected_etcd_pods=3) == ()


def test_every_departure_from_steady_state_is_named() -> None:
    snapshot = _kind_ha_snapshot()
    nodes = (*snapshot.nodes[:-1], _node("w2", "172.18.0.7", ready=False))
    pods = [pod for pod in snapshot.kube_system_pods if pod.name != "etcd-cp3"]
    pods.append(_static_pod("etcd", "cp3", ["etcd"], ready=False))
    pods.append(_static_pod("kube-scheduler", "cp9", ["kube-scheduler"], phase="Pending", ready=False))
    problems = assess(nodes, pods, ReadyzAnswer(status=500, body="[-]etcd failed\nreadyz check failed"), expected_etcd_pods=3)
    text = "\n".join(problems)
    assert "node w2 is not Ready (NodeStatusUnknown)" in text
    assert "etcd member on cp3 is not healthy" in text
    assert "kube-scheduler-cp9 on cp9 is Pending" in text
    assert "kube-system pod etcd-cp3 on cp3 is not ready (etcd)" in text
    assert "/readyz through the load balancer answered 500: [-]etcd failed readyz check failed" in text


def test_missing_etcd_pod_and_unreachable_readyz() -> None:
    snapshot = _kind_ha_snapshot()
    pods = [pod for pod in snapshot.kube_system_pods if pod.name != "etcd-cp1"]
    problems = assess(snapshot.nodes, pods, ReadyzAnswer(error="ConnectionRefusedError"), expected_etcd_pods=3)
    assert "2 etcd pod(s) in kube-system, the topology has 3 stacked member(s)" in problems
    assert any("ConnectionRefusedError" in problem for problem in problems)


def test_completed_pods_do_not_break_the_steady_state() -> None:
    snapshot = _kind_ha_snapshot()
    done = PodInfo("kube-system", "job-xyz", "w1", {}, "Succeeded", False)
    assert assess(snapshot.nodes, (*snapshot.kube_system_pods, done), READY, expected_etcd_pods=3) == ()


# check_once is replaced in these tests, so the client is never used.
NO_CLIENT = cast(ApiClient, None)


def test_wait_for_steady_state_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    answers = iter([("node w1 is not Ready (NodeStatusUnknown)",)] * 100)
    monkeypatch.setattr(health, "check_once", lambda client, expected_etcd_pods=None: next(answers))

    def sleep(seconds: float) -> None:
        now[0] += seconds

    report = health.wait_for_steady_state(
        NO_CLIENT, timeout_s=10.0, poll_s=3.0, clock=lambda: now[0], sleep=sleep
    )
    assert not report.ok
    assert report.assessments == 4
    assert report.waited_s <= 10.0
    assert report.describe().startswith("not in steady state after 9.0 s: node w1 is not Ready")


def test_wait_for_steady_state_returns_once_steady(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([("etcd member on cp1 is not healthy",), ()])
    monkeypatch.setattr(health, "check_once", lambda client, expected_etcd_pods=None: next(answers))
    report = health.wait_for_steady_state(NO_CLIENT, timeout_s=60.0, poll_s=0.0, sleep=lambda seconds: None)
    assert report.ok and report.assessments == 2


# -- clients ------------------------------------------------------------------------------------------------------------


def test_read_only_client_refuses_writes_before_sending_them(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {token: secret-token}}]\n"
    )
    client = new_api_client(KubeconfigTarget(kubeconfig), read_only=True)
    assert isinstance(client, ReadOnlyApiClient)
    with pytest.raises(DryRunRefusal, match="dry run: refusing POST /api/v1/namespaces"):
        CoreV1Api(client).create_namespace(V1Namespace(metadata=V1ObjectMeta(name="x")))
    assert not isinstance(new_api_client(KubeconfigTarget(kubeconfig)), ReadOnlyApiClient)
    assert read_kubeconfig(KubeconfigTarget(kubeconfig)).server == "https://127.0.0.1:9"
