"""Providers as tests receive them: read-only without a ``disruptive`` marker, and the default provider hook."""

from __future__ import annotations

from typing import NoReturn

import pytest

from kubeha.providers import ProviderKind, make_provider
from kubeha.providers.attach import NEEDS_INVENTORY
from kubeha.providers.base import CapabilityError, Component, LoadBalancerConfig, NodeState, Provider
from kubeha.pytest_plugin.cluster import KubehaCluster
from kubeha.pytest_plugin.options import settings

__all__ = ["ReadOnlyProvider", "attach_refusal", "pytest_kubeha_make_provider"]


class ReadOnlyProvider:
    """The provider given to a test without a ``disruptive`` marker: it may look, not touch."""

    def __init__(self, inner: Provider, nodeid: str) -> None:
        self._inner = inner
        self._nodeid = nodeid

    def _refuse(self, operation: str) -> NoReturn:
        raise pytest.UsageError(
            f"{self._nodeid} tried to {operation} without declaring it: mark the test "
            "@pytest.mark.disruptive(...) with what it breaks, so that it runs within the fault budget"
        )

    @property
    def name(self) -> str:
        return self._inner.name

    def node_names(self) -> tuple[str, ...]:
        return self._inner.node_names()

    def node_state(self, node: str) -> NodeState:
        return self._inner.node_state(node)

    def load_balancer_config(self) -> LoadBalancerConfig:
        return self._inner.load_balancer_config()

    def stop_node(self, node: str) -> None:
        self._refuse(f"stop node {node}")

    def kill_node(self, node: str) -> None:
        self._refuse(f"kill node {node}")

    def start_node(self, node: str) -> None:
        self._refuse(f"start node {node}")

    def pause_node(self, node: str) -> None:
        self._refuse(f"pause node {node}")

    def resume_node(self, node: str) -> None:
        self._refuse(f"resume node {node}")

    def stop_component(self, node: str, component: Component) -> None:
        self._refuse(f"stop {component.value} on node {node}")

    def start_component(self, node: str, component: Component) -> None:
        self._refuse(f"start {component.value} on node {node}")

    def isolate_node(self, node: str, peers: tuple[str, ...]) -> None:
        self._refuse(f"isolate node {node}")

    def heal_node(self, node: str, peers: tuple[str, ...]) -> None:
        self._refuse(f"heal node {node}")

    def set_load_balancer_config(self, config: LoadBalancerConfig) -> None:
        self._refuse("replace the load balancer configuration")

    def stop_load_balancer(self) -> None:
        self._refuse("stop the load balancer")

    def start_load_balancer(self) -> None:
        self._refuse("start the load balancer")


def attach_refusal() -> str:
    return str(CapabilityError("act on the cluster's machines", "attach", NEEDS_INVENTORY))


@pytest.hookimpl(trylast=True)
def pytest_kubeha_make_provider(config: pytest.Config, cluster: KubehaCluster) -> Provider:
    """The default provider: kind for the embedded cluster, ssh with --inventory, attach otherwise."""
    if cluster.embedded:
        return make_provider(ProviderKind.KIND, kind_cluster=cluster.name)
    inventory = settings(config).inventory
    node_names = tuple(node.name for node in cluster.topology.nodes)
    if inventory is None:
        return make_provider(ProviderKind.ATTACH, node_names=node_names)
    return make_provider(ProviderKind.SSH, inventory=inventory)
