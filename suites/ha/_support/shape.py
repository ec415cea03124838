"""The cluster's shape at collection time: how many control-plane nodes and etcd members there are.

Some tests are parametrised by the cluster (one test per control-plane node; the number of etcd members a fault
stops), so the shape must be known before the first test runs. The xdist controller (or the only process) discovers
it once, right after the plugin set the cluster up, and hands it to every worker through the worker input, so every
process collects the same tests. Tests map a parameter (an index into the sorted node names) to a node at run time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kubeha.core.topology import Topology

__all__ = ["ClusterShape", "WORKERINPUT_KEY"]

WORKERINPUT_KEY = "kubeha_ha_shape"


@dataclass(frozen=True)
class ClusterShape:
    control_planes: int
    etcd_members: int

    @classmethod
    def of(cls, topology: Topology) -> ClusterShape:
        return cls(control_planes=len(topology.control_planes()), etcd_members=len(topology.etcd_members))

    def to_json(self) -> str:
        return json.dumps({"control_planes": self.control_planes, "etcd_members": self.etcd_members})

    @classmethod
    def from_json(cls, text: str) -> ClusterShape:
        decoded = json.loads(text)
        if not isinstance(decoded, dict):
            raise ValueError(f"cluster shape {text!r:.200} is not a JSON object")
        values = {key: decoded.get(key) for key in ("control_planes", "etcd_members")}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"cluster shape {key} must be an int >= 0, got {value!r}")
        return cls(control_planes=int(decoded["control_planes"]), etcd_members=int(decoded["etcd_members"]))
