"""The one interface through which the suite touches cluster machines.

A provider acts on the machines behind a cluster: kind node containers through docker, virtual machines over SSH,
or nothing at all for a plain attach. Suites and faults only ever see this interface. An operation a provider cannot
perform raises `CapabilityError`, which the plugin reports as not-run with the error's reason, never as a pass.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "CapabilityError",
    "Component",
    "NodeState",
    "ProviderError",
    "Provider",
    "LoadBalancerConfig",
]


class Component(enum.Enum):
    """Control-plane and node components a fault can stop on one node."""

    KUBE_APISERVER = "kube-apiserver"
    ETCD = "etcd"
    KUBE_CONTROLLER_MANAGER = "kube-controller-manager"
    KUBE_SCHEDULER = "kube-scheduler"
    KUBELET = "kubelet"


class NodeState(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    ISOLATED = "isolated"
    UNKNOWN = "unknown"


class ProviderError(RuntimeError):
    """An operation the provider supports failed on the machine (command failed, host unreachable, ...)."""


class CapabilityError(NotImplementedError):
    """The provider cannot perform this operation at all; `fix` says what would make it possible."""

    def __init__(self, operation: str, provider: str, fix: str) -> None:
        self.operation = operation
        self.provider = provider
        self.fix = fix
        super().__init__(f"the {provider} provider cannot {operation}: {fix}")


@dataclass(frozen=True)
class LoadBalancerConfig:
    """The load balancer's configuration as text, in the load balancer's own format (haproxy.cfg for kind)."""

    kind: str
    text: str


@runtime_checkable
class Provider(Protocol):
    """Node and component operations. `node` is always the Kubernetes node name."""

    @property
    def name(self) -> str:
        """Short provider name used in messages and the journal ("kind", "ssh", "attach")."""
        ...

    def node_names(self) -> tuple[str, ...]:
        """The Kubernetes node names this provider can act on."""
        ...

    def node_state(self, node: str) -> NodeState: ...

    def stop_node(self, node: str) -> None:
        """Graceful shutdown (SIGTERM and wait, or `shutdown`)."""
        ...

    def kill_node(self, node: str) -> None:
        """Hard power-off: no graceful shutdown of anything on the node."""
        ...

    def start_node(self, node: str) -> None: ...

    def pause_node(self, node: str) -> None:
        """Freeze every process on the node without closing its connections."""
        ...

    def resume_node(self, node: str) -> None: ...

    def stop_component(self, node: str, component: Component) -> None:
        """Stop one component on one node so that nothing restarts it until `start_component`."""
        ...

    def start_component(self, node: str, component: Component) -> None: ...

    def isolate_node(self, node: str, peers: tuple[str, ...]) -> None:
        """Drop all traffic between `node` and each of `peers` (node names), both directions."""
        ...

    def heal_node(self, node: str, peers: tuple[str, ...]) -> None: ...

    def load_balancer_config(self) -> LoadBalancerConfig:
        """The current load-balancer configuration."""
        ...

    def set_load_balancer_config(self, config: LoadBalancerConfig) -> None:
        """Replace the load-balancer configuration and reload it."""
        ...

    def stop_load_balancer(self) -> None: ...

    def start_load_balancer(self) -> None: ...
