"""How chaos activities name their cluster: arguments over configuration, consent, remembered identity; and what
the activities answer when the API cannot be reached."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaoslib.exceptions import ActivityFailed
from chaos.kubeha_chaos import actions, probes
from chaos.kubeha_chaos.session import (
    ClusterArguments,
    ConsentRefused,
    IdentityMemory,
    check_consent,
    kind_cluster_of,
)
from kubeha.cluster.discovery import NodeInfo
from kubeha.cluster.identity import ClusterIdentity
from kubeha.providers import ProviderKind

UID = "0b5e1d6a-2c57-4d6f-9a51-1f1c6c2a9e01"
IDENTITY = ClusterIdentity(api_url="https://127.0.0.1:6443", kube_system_uid=UID, kubernetes_version="v1.34.3")


def kubeconfig(path: Path, server: str = "https://127.0.0.1:6443") -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
        "users: [{name: u, user: {token: not-a-real-token}}]\n"
    )
    return path


def test_arguments_win_over_configuration(tmp_path: Path) -> None:
    resolved = ClusterArguments.resolve(
        kubeconfig_path=str(tmp_path / "given"), kind_cluster="given",
        configuration={"kubeha_kubeconfig": "/from/config", "kubeha_kind_cluster": "config", "kubeha_context": "ctx",
                       "kubeha_state_dir": str(tmp_path / "state")},
    )
    assert resolved.kubeconfig == tmp_path / "given"
    assert resolved.kind_cluster == "given"
    assert resolved.context == "ctx"
    assert resolved.provider is ProviderKind.KIND
    assert resolved.state_dir == tmp_path / "state"
    assert resolved.chaos_dir(UID) == tmp_path / "state" / "chaos" / UID


def test_empty_configuration_values_mean_absent() -> None:
    resolved = ClusterArguments.resolve(configuration={
        "kubeha_kubeconfig": "~/kc", "kubeha_context": "", "kubeha_provider": "", "kubeha_kind_cluster": "kubeha",
        "kubeha_inventory": "", "kubeha_allowed_cluster_uid": "", "kubeha_state_dir": "",
    })
    assert resolved.context is None
    assert resolved.allowed_cluster_uid is None
    assert resolved.kubeconfig == Path("~/kc").expanduser()
    assert resolved.state_dir.name == "kubeha"  # the journal's default, shared with the pytest plugin


def test_an_inventory_means_ssh() -> None:
    resolved = ClusterArguments.resolve(kubeconfig_path="kc", inventory="nodes.yaml", kind_cluster="kubeha")
    assert resolved.provider is ProviderKind.SSH
    assert resolved.inventory == Path("nodes.yaml")
    assert resolved.kind_cluster is None
    assert resolved.machines == "inventory nodes.yaml"


def test_uid_is_normalised() -> None:
    assert ClusterArguments.resolve(kubeconfig_path="kc", kind_cluster="k",
                                    allowed_cluster_uid=UID.upper()).allowed_cluster_uid == UID


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "no kubeconfig: pass kubeconfig_path, or set the experiment configuration key kubeha_kubeconfig"),
        ({"kubeconfig_path": "kc"}, 'provider "kind" needs the kind cluster\'s name: pass kind_cluster'),
        ({"kubeconfig_path": "kc", "provider": "ssh"}, 'provider "ssh" needs an inventory file'),
        ({"kubeconfig_path": "kc", "provider": "attach"}, 'provider "attach" cannot act on the cluster\'s machines'),
        ({"kubeconfig_path": "kc", "provider": "vagrant"}, "provider 'vagrant' is not known"),
        ({"kubeconfig_path": "kc", "kind_cluster": "k", "allowed_cluster_uid": "kube-system"},
         "allowed_cluster_uid 'kube-system' is not a UID: pass the UID of the cluster's kube-system namespace"),
        ({"kubeconfig_path": 3}, "kubeconfig_path must be a string, got int 3"),
    ],
)
def test_resolve_errors_say_what_to_pass(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        ClusterArguments.resolve(**arguments)  # type: ignore[arg-type]
    assert message in str(raised.value)


def kind_node(name: str, cluster: str = "kubeha") -> NodeInfo:
    return NodeInfo(name=name, labels={}, addresses=(), ready=True, provider_id=f"kind://docker/{cluster}/{name}")


def test_kind_cluster_of_provider_ids() -> None:
    assert kind_cluster_of("kind://docker/kubeha/kubeha-worker") == "kubeha"
    assert kind_cluster_of("kind://podman/other/other-control-plane") == "other"
    assert kind_cluster_of("aws:///eu-west-1a/i-0abc") is None
    assert kind_cluster_of("kind://docker/kubeha") is None


def test_consent_for_the_named_kind_cluster() -> None:
    nodes = [kind_node("kubeha-control-plane"), kind_node("kubeha-worker")]
    assert check_consent(IDENTITY, nodes, kind_cluster="kubeha", kind_containers=("kubeha-worker",
                                                                                  "kubeha-control-plane"),
                         allowed_cluster_uid=None) == "kind cluster kubeha"


def test_no_consent_without_a_uid_or_kind_cluster() -> None:
    with pytest.raises(ConsentRefused) as refused:
        check_consent(IDENTITY, [kind_node("a")], kind_cluster=None, allowed_cluster_uid=None)
    assert str(refused.value) == (
        "refusing to touch the cluster at https://127.0.0.1:6443: no consent was given for it; if every node of this "
        f"cluster may be disrupted, pass allowed_cluster_uid={UID} (configuration key kubeha_allowed_cluster_uid)"
    )


def test_no_consent_when_the_kubeconfig_reaches_another_cluster_than_the_kind_one() -> None:
    with pytest.raises(ConsentRefused, match=r"it is not the kind cluster kubeha: nodes \['prod-1'\] do not carry"):
        check_consent(IDENTITY, [NodeInfo(name="prod-1", labels={}, addresses=(), ready=True,
                                          provider_id="aws:///eu-west-1a/i-0abc")],
                      kind_cluster="kubeha", kind_containers=("kubeha-control-plane",), allowed_cluster_uid=None)


def test_no_consent_when_the_kind_containers_differ() -> None:
    with pytest.raises(ConsentRefused, match=r"its nodes \['kubeha-worker'\] are not the node containers"):
        check_consent(IDENTITY, [kind_node("kubeha-worker")], kind_cluster="kubeha",
                      kind_containers=("kubeha-worker", "kubeha-worker2"), allowed_cluster_uid=None)


def test_a_uid_for_another_cluster_is_refused_even_on_kind() -> None:
    other = "9f0e1d6a-2c57-4d6f-9a51-1f1c6c2a9e99"
    with pytest.raises(ConsentRefused, match=f"that consent is for another cluster; .* pass allowed_cluster_uid={UID}"):
        check_consent(IDENTITY, [kind_node("kubeha-worker")], kind_cluster="kubeha",
                      kind_containers=("kubeha-worker",), allowed_cluster_uid=other)


def test_identity_is_remembered_per_kubeconfig_and_machines(tmp_path: Path) -> None:
    memory = IdentityMemory(tmp_path)
    arguments = ClusterArguments.resolve(kubeconfig_path=str(kubeconfig(tmp_path / "kc")), kind_cluster="kubeha",
                                         state_dir=str(tmp_path))
    other = ClusterArguments.resolve(kubeconfig_path=str(tmp_path / "kc"), kind_cluster="other",
                                     state_dir=str(tmp_path))
    assert memory.recall(arguments) is None
    memory.remember(arguments, IDENTITY)
    assert memory.recall(arguments) == IDENTITY
    assert memory.recall(other) is None
    assert not any(path.name.endswith(".tmp") for path in memory.directory.iterdir())


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port nothing listens on (bound without listen, so connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_probes_answer_false_when_the_api_is_unreachable(tmp_path: Path, closed_port: int) -> None:
    path = str(kubeconfig(tmp_path / "kc", f"https://127.0.0.1:{closed_port}"))
    assert probes.api_available(timeout_s=1.0, kubeconfig_path=path) is False
    assert probes.nodes_ready(kubeconfig_path=path) is False
    assert probes.etcd_members_healthy(kubeconfig_path=path) is False
    assert probes.api_write_succeeds(timeout_s=1.0, kubeconfig_path=path) is False


def test_outage_probe_measures_an_unreachable_api_as_one_open_outage(tmp_path: Path, closed_port: int) -> None:
    path = str(kubeconfig(tmp_path / "kc", f"https://127.0.0.1:{closed_port}"))
    longest = probes.api_outage_during(seconds=0.5, interval_s=0.05, kubeconfig_path=path)
    assert 0.3 <= longest <= 0.6


def test_probe_arguments_are_checked() -> None:
    with pytest.raises(ActivityFailed, match="no kubeconfig"):
        probes.api_available()
    with pytest.raises(ActivityFailed, match="count must be a whole number >= 1"):
        probes.nodes_ready(count=0, kubeconfig_path="kc")
    with pytest.raises(ActivityFailed, match="seconds must be a positive number of seconds"):
        probes.api_outage_during(seconds=-1, kubeconfig_path="kc")


def test_actions_report_argument_errors_as_activity_failures(tmp_path: Path) -> None:
    with pytest.raises(ActivityFailed, match="no kubeconfig"):
        actions.stop_nodes(role="control-plane")
    with pytest.raises(ActivityFailed, match="component 'etcd3' is not known"):
        actions.stop_component("etcd3", role="control-plane", kubeconfig_path="kc", kind_cluster="k")
    with pytest.raises(ActivityFailed, match="allow_beyond_tolerance must be true or false, got 'yes'"):
        actions.kill_nodes(role="worker", allow_beyond_tolerance="yes",  # type: ignore[arg-type]
                           kubeconfig_path=str(kubeconfig(tmp_path / "kc")), kind_cluster="kubeha-unit-absent")
    with pytest.raises(ActivityFailed, match="count=2 needs a role"):
        actions.start_nodes(count=2, kubeconfig_path=str(tmp_path / "kc"), kind_cluster="kubeha-unit-absent")
