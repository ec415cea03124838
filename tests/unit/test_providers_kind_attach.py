"""kind's docker inspect parsing, the attach provider's refusals, and the provider factory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeha.providers import AttachProvider, KindProvider, ProviderKind, SshProvider, make_provider
from kubeha.providers.base import CapabilityError, Component, LoadBalancerConfig, NodeState, Provider
from kubeha.providers.kind import parse_container_state, parse_networks


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"Status": "running", "Running": True, "Paused": False}, NodeState.RUNNING),
        ({"Status": "paused", "Running": True, "Paused": True}, NodeState.PAUSED),
        ({"Status": "exited", "Running": False, "Paused": False, "ExitCode": 137}, NodeState.STOPPED),
        ({"Status": "created", "Running": False}, NodeState.STOPPED),
        ({"Status": "restarting", "Running": True}, NodeState.UNKNOWN),
    ],
)
def test_container_state(state: dict[str, object], expected: NodeState) -> None:
    assert parse_container_state(json.dumps(state)) is expected


def test_networks_give_ipv4_and_global_ipv6() -> None:
    networks = {
        "kind": {"IPAddress": "172.18.0.3", "GlobalIPv6Address": "fc00:f853:ccd:e793::3", "MacAddress": "x"},
        "other": {"IPAddress": "", "GlobalIPv6Address": ""},
    }
    assert parse_networks(json.dumps(networks)) == ("172.18.0.3", "fc00:f853:ccd:e793::3")


def test_attach_refuses_every_machine_operation_with_the_inventory_fix() -> None:
    provider = AttachProvider(("cp-1", "w-1"))
    assert isinstance(provider, Provider)
    assert provider.node_names() == ("cp-1", "w-1")
    calls = [
        lambda: provider.node_state("cp-1"),
        lambda: provider.stop_node("cp-1"),
        lambda: provider.kill_node("cp-1"),
        lambda: provider.start_node("cp-1"),
        lambda: provider.pause_node("cp-1"),
        lambda: provider.resume_node("cp-1"),
        lambda: provider.stop_component("cp-1", Component.ETCD),
        lambda: provider.start_component("cp-1", Component.ETCD),
        lambda: provider.isolate_node("cp-1", ("w-1",)),
        lambda: provider.heal_node("cp-1", ("w-1",)),
        provider.load_balancer_config,
        lambda: provider.set_load_balancer_config(LoadBalancerConfig("haproxy", "")),
        provider.stop_load_balancer,
        provider.start_load_balancer,
    ]
    for call in calls:
        with pytest.raises(CapabilityError, match="pass --inventory FILE describing SSH access to the nodes") as info:
            call()
        assert info.value.provider == "attach"


def test_factory_builds_each_provider(tmp_path: Path) -> None:
    kind = make_provider("kind", kind_cluster="kubeha")
    assert isinstance(kind, KindProvider) and kind.name == "kind" and isinstance(kind, Provider)
    attach = make_provider(ProviderKind.ATTACH, node_names=("a",))
    assert isinstance(attach, AttachProvider) and attach.node_names() == ("a",)
    key = tmp_path / "key"
    key.write_text("not a real key\n")
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("nodes:\n  - {name: a, roles: [worker], host: 10.0.0.1, user: root, key: key}\n")
    for kind_name in ("ssh", "attach"):
        ssh = make_provider(kind_name, inventory=inventory)
        assert isinstance(ssh, SshProvider) and ssh.node_names() == ("a",) and isinstance(ssh, Provider)


def test_factory_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="kind_cluster"):
        make_provider("kind")
    with pytest.raises(ValueError, match="--inventory FILE"):
        make_provider("ssh")
    with pytest.raises(ValueError, match="use one of"):
        make_provider("vagrant")
