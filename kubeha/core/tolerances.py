"""How much of a cluster may be down at once while it keeps its promises, derived from its `Topology`.

Every figure follows from the member counts; none assumes a three-node control plane.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from kubeha.core.quorum import fault_tolerance
from kubeha.core.topology import EtcdMode, Topology

__all__ = ["Tolerances"]

# Replicated components (API servers, controller managers, schedulers, workers, ingress nodes) keep serving while
# at least this many instances remain.
MIN_SURVIVORS = 1


def _all_but_one(count: int) -> int:
    return max(count - MIN_SURVIVORS, 0)


@dataclass(frozen=True)
class Tolerances:
    """Maximum number of each kind of member that may be down at the same time."""

    etcd_members: int
    api_servers: int
    control_plane_nodes: int
    controller_managers: int
    schedulers: int
    workers: int
    ingress_nodes: int
    load_balancers: int

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"Tolerances.{field.name} must be a non-negative int, got {value!r}: "
                    "derive tolerances with Tolerances.from_topology"
                )

    @classmethod
    def from_topology(cls, topology: Topology) -> Tolerances:
        control_planes = len(topology.control_planes())
        api_servers = _all_but_one(control_planes)
        etcd = fault_tolerance(len(topology.etcd_members))
        # In stacked mode a control-plane node also carries an etcd member, so quorum bounds node stops too.
        node_stops = min(api_servers, etcd) if topology.etcd_mode is EtcdMode.STACKED else api_servers
        load_balancers = 1 if topology.load_balancer is not None else 0
        return cls(
            etcd_members=etcd,
            api_servers=api_servers,
            control_plane_nodes=node_stops,
            controller_managers=api_servers,
            schedulers=api_servers,
            workers=_all_but_one(len(topology.workers())),
            ingress_nodes=_all_but_one(len(topology.ingress_nodes())),
            load_balancers=_all_but_one(load_balancers),
        )
