"""The attach provider: a cluster reached only through its API, with no access to its machines.

Every machine operation raises `CapabilityError`, which the plugin reports as not-run with the fix: describe SSH
access to the nodes in an inventory and pass it with --inventory, which selects the SSH provider instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

from kubeha.providers.base import CapabilityError, Component, LoadBalancerConfig, NodeState

__all__ = ["AttachProvider", "NEEDS_INVENTORY"]

NEEDS_INVENTORY = "it needs an inventory: pass --inventory FILE describing SSH access to the nodes"


class AttachProvider:
    """`node_names` are the Kubernetes node names as the API lists them; they are only reported, never acted on."""

    def __init__(self, node_names: Iterable[str] = ()) -> None:
        self._node_names = tuple(node_names)

    @property
    def name(self) -> str:
        return "attach"

    def _refuse(self, operation: str) -> NoReturn:
        raise CapabilityError(operation, self.name, NEEDS_INVENTORY)

    def node_names(self) -> tuple[str, ...]:
        return self._node_names

    def node_state(self, node: str) -> NodeState:
        self._refuse(f"read the state of node {node}")

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

    def load_balancer_config(self) -> LoadBalancerConfig:
        self._refuse("read the load balancer configuration")

    def set_load_balancer_config(self, config: LoadBalancerConfig) -> None:
        self._refuse("replace the load balancer configuration")

    def stop_load_balancer(self) -> None:
        self._refuse("stop the load balancer")

    def start_load_balancer(self) -> None:
        self._refuse("start the load balancer")
