"""The fault budget of chaos activities: what a fault takes down, whether the cluster tolerates it, and why not.

A fault action turns its targets into a `kubeha.core.budget.Claim` (`claim_resources`) and asks the cluster's
coordinator (`BudgetStore`) for it. Before that, `precheck` adds what the API already shows broken and no claim
accounts for (a node NotReady, an etcd pod not ready), so a fault is refused on a cluster that is already degraded.
A refusal is explained in the cluster's own terms (`explain_refusal`): "stopping 2 of 3 etcd members exceeds the
tolerance of 1; pass allow_beyond_tolerance=true to break quorum deliberately".

Every chaos process that targets one cluster shares ``<state_dir>/chaos/<kube-system UID>/``:

- ``limits.json``: the `Limits` the active claims were granted against. While a claim is active they are reused as
  they are: a fault can hide members from discovery (a stopped etcd member's static pod disappears from the API),
  and a budget that shrank mid-experiment would refuse to restore order. With no claim active, the limits are
  derived again from the discovered topology;
- ``budget-<digest of the limits>/``: the `kubeha.coordination.Coordinator` run directory for those limits (its
  state file, log and lock);
- ``limits.lock``: held while the limits are chosen and a claim is requested, so no process can switch limits
  between another process's check and grant.

The coordinator knows the cluster's undo journal, so the claim of a chaos process that died with faults in place
stays held until those faults are undone (by the next chaos activity's replay, `restore_all`, or the pytest plugin).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import filelock

from kubeha.cluster.discovery import (
    APISERVER_COMPONENT,
    CONTROLLER_MANAGER_COMPONENT,
    ETCD_COMPONENT,
    SCHEDULER_COMPONENT,
    NodeInfo,
    PodInfo,
)
from kubeha.coordination import Coordinator
from kubeha.core.budget import Claim, Limits, ResourceKind, ResourcePairs, decide
from kubeha.core.jsonfields import JsonFormatError, JsonValue, as_object
from kubeha.core.topology import Node, Role, Topology
from kubeha.providers.base import Component

__all__ = [
    "BudgetStore",
    "Precheck",
    "claim_resources",
    "explain_refusal",
    "observed_down",
    "precheck",
    "resource_of_node",
    "totals",
]

LIMITS_FILE = "limits.json"
LIMITS_LOCK = "limits.lock"
# Choosing the limits is a few small file operations; a lock held longer belongs to a stuck process.
LIMITS_LOCK_TIMEOUT_S = 60.0
OBSERVED_HOLDER = "observed-down"

_COMPONENT_RESOURCES = {
    Component.ETCD: ResourceKind.ETCD_MEMBER,
    Component.KUBE_APISERVER: ResourceKind.API_SERVER,
    Component.KUBE_CONTROLLER_MANAGER: ResourceKind.CONTROLLER_MANAGER,
    Component.KUBE_SCHEDULER: ResourceKind.SCHEDULER,
}
_POD_COMPONENT_RESOURCES = {
    ETCD_COMPONENT: ResourceKind.ETCD_MEMBER,
    APISERVER_COMPONENT: ResourceKind.API_SERVER,
    CONTROLLER_MANAGER_COMPONENT: ResourceKind.CONTROLLER_MANAGER,
    SCHEDULER_COMPONENT: ResourceKind.SCHEDULER,
}
# Order of explanations: what breaks the cluster first comes first.
_EXPLAIN_ORDER = (
    ResourceKind.ETCD_MEMBER,
    ResourceKind.CONTROL_PLANE_NODE,
    ResourceKind.API_SERVER,
    ResourceKind.CONTROLLER_MANAGER,
    ResourceKind.SCHEDULER,
    ResourceKind.WORKER_NODE,
    ResourceKind.INGRESS_NODE,
    ResourceKind.LOAD_BALANCER,
)
_NOUNS = {
    ResourceKind.ETCD_MEMBER: "etcd member",
    ResourceKind.CONTROL_PLANE_NODE: "control-plane node",
    ResourceKind.API_SERVER: "API server",
    ResourceKind.CONTROLLER_MANAGER: "controller manager",
    ResourceKind.SCHEDULER: "scheduler",
    ResourceKind.WORKER_NODE: "worker node",
    ResourceKind.INGRESS_NODE: "ingress node",
    ResourceKind.LOAD_BALANCER: "load balancer",
}


def _noun(kind: ResourceKind, count: int) -> str:
    noun = _NOUNS[kind]
    return noun if count == 1 else noun + "s"


def resource_of_node(node: Node) -> ResourceKind:
    """The budget resource a whole node is: a control-plane node, an ingress node, or a worker."""
    if node.has(Role.CONTROL_PLANE):
        return ResourceKind.CONTROL_PLANE_NODE
    if node.has(Role.INGRESS):
        return ResourceKind.INGRESS_NODE
    return ResourceKind.WORKER_NODE


def claim_resources(nodes: Sequence[Node], component: Component | None = None) -> dict[ResourceKind, int]:
    """What a fault on `nodes` breaks, as claim resources (before expansion).

    A whole-node fault (stop, kill, isolate) claims the node itself; the budget expands a control-plane node into
    its API server, controller manager, scheduler and, with stacked etcd, its etcd member. A component fault claims
    that component; stopping kubelet claims the whole node, since nothing on it is restarted or reported any more.
    """
    resources: dict[ResourceKind, int] = {}
    for node in nodes:
        kind = resource_of_node(node) if component is None else _COMPONENT_RESOURCES.get(component)
        if kind is None:  # kubelet
            kind = resource_of_node(node)
        resources[kind] = resources.get(kind, 0) + 1
    return resources


def totals(topology: Topology) -> dict[ResourceKind, int]:
    """How many of each budget resource the cluster has."""
    control_planes = len(topology.control_planes())
    return {
        ResourceKind.CONTROL_PLANE_NODE: control_planes,
        ResourceKind.ETCD_MEMBER: len(topology.etcd_members),
        ResourceKind.API_SERVER: control_planes,
        ResourceKind.CONTROLLER_MANAGER: control_planes,
        ResourceKind.SCHEDULER: control_planes,
        ResourceKind.WORKER_NODE: len(topology.workers()),
        ResourceKind.INGRESS_NODE: len(topology.ingress_nodes()),
        ResourceKind.LOAD_BALANCER: 0 if topology.load_balancer is None else 1,
    }


def observed_down(
    topology: Topology, nodes: Sequence[NodeInfo], pods: Sequence[PodInfo]
) -> dict[ResourceKind, tuple[str, ...]]:
    """What the API shows down right now, per resource: NotReady nodes, and control-plane pods not ready on Ready
    nodes (a NotReady node's pods are counted with the node)."""
    known = {node.name: node for node in topology.nodes}
    down: dict[ResourceKind, list[str]] = {}
    not_ready = set()
    for info in nodes:
        node = known.get(info.name)
        if node is None or info.ready:
            continue
        not_ready.add(info.name)
        down.setdefault(resource_of_node(node), []).append(f"node {info.name} is NotReady ({info.ready_reason})")
    for pod in pods:
        kind = _POD_COMPONENT_RESOURCES.get(pod.component())
        if kind is None or pod.node in not_ready or (pod.phase == "Running" and pod.ready):
            continue
        down.setdefault(kind, []).append(f"{pod.component()} on {pod.node} is not ready (pod {pod.phase})")
    return {kind: tuple(sorted(found)) for kind, found in down.items()}


def _sum(parts: Iterable[ResourcePairs]) -> dict[ResourceKind, int]:
    total: dict[ResourceKind, int] = {}
    for pairs in parts:
        for kind, count in pairs:
            total[kind] = total.get(kind, 0) + count
    return total


@dataclass(frozen=True)
class Precheck:
    """The outcome of checking a claim against the active claims and what the API shows broken."""

    granted: bool
    message: str
    unaccounted: tuple[str, ...] = ()


def precheck(
    claim: Claim,
    active: Sequence[Claim],
    limits: Limits,
    down: Mapping[ResourceKind, Sequence[str]],
    *,
    verb: str,
    topology: Topology,
) -> Precheck:
    """Whether `claim` fits next to the `active` claims and whatever is `down` that no active claim accounts for.

    What is down counts against the budget only beyond what the active claims hold of the same resource: a node a
    fault of another run stopped is both claimed and NotReady, and counts once. An exclusive claim (a fault beyond
    tolerance, asked for deliberately) only needs no other claim to be active.
    """
    claimed = _sum(held.resources for held in active)
    unaccounted: dict[ResourceKind, int] = {}
    described: list[str] = []
    for kind, found in down.items():
        extra = len(found) - claimed.get(kind, 0)
        if extra > 0:
            unaccounted[kind] = extra
            described.extend(found)
    others = list(active)
    if unaccounted and not claim.exclusive:
        others.append(Claim(OBSERVED_HOLDER, unaccounted, reason="down in the API, claimed by no fault"))
    decision = decide(others, claim, limits)
    if decision.granted:
        return Precheck(True, decision.reason, tuple(described))
    return Precheck(
        False,
        explain_refusal(claim, active, limits, verb=verb, topology=topology, unaccounted=unaccounted,
                        described=described),
        tuple(described),
    )


def explain_refusal(
    claim: Claim,
    active: Sequence[Claim],
    limits: Limits,
    *,
    verb: str,
    topology: Topology,
    unaccounted: Mapping[ResourceKind, int] | None = None,
    described: Sequence[str] = (),
) -> str:
    """Why `claim` is refused, naming each limit it would exceed and how to proceed."""
    if claim.exclusive:
        holders = "; ".join(held.describe() for held in active) or "none"
        return (
            f"allow_beyond_tolerance needs the cluster to itself, but {len(active)} other fault(s) are active "
            f"({holders}): restore them first, or pass budget_timeout_s to wait for them"
        )
    exclusive = [held_claim for held_claim in active if held_claim.exclusive]
    if exclusive:
        return (
            f"a fault beyond tolerance has the cluster to itself ({exclusive[0].describe()}): nothing else is "
            "injected until it is restored; restore it first, or pass budget_timeout_s to wait for it"
        )
    have = totals(topology)
    usage = dict(limits.usage(claim))
    others = list(active)
    if unaccounted:
        # A NotReady control-plane node also takes its etcd member and API server down: expand like a claim.
        others.append(Claim(OBSERVED_HOLDER, unaccounted))
    held = _sum(limits.usage(other) for other in others)
    alone: list[str] = []
    together: list[str] = []
    for kind in _EXPLAIN_ORDER:
        wanted = usage.get(kind, 0)
        limit = limits.limit(kind)
        if wanted == 0:
            continue
        if wanted > limit:
            alone.append(
                f"{verb} {wanted} of {have[kind]} {_noun(kind, have[kind])} exceeds the tolerance of {limit}"
            )
        elif wanted + held.get(kind, 0) > limit:
            down = held.get(kind, 0)
            together.append(
                f"{verb} {wanted} {_noun(kind, wanted)} while {down} {'is' if down == 1 else 'are'} already down "
                f"exceeds the tolerance of {limit} ({have[kind]} in the cluster)"
            )
    quorum = "break quorum" if usage.get(ResourceKind.ETCD_MEMBER, 0) > limits.limit(ResourceKind.ETCD_MEMBER) else (
        "exceed it"
    )
    if alone:
        return "; ".join(alone) + f"; pass allow_beyond_tolerance=true to {quorum} deliberately"
    down_now = [held_claim.describe() for held_claim in active] + list(described)
    reasons = "; ".join(together) or f"the budget refused {claim.describe()}"
    return (
        f"{reasons} (down now: {'; '.join(down_now) or 'nothing known'}); restore that first, pass budget_timeout_s "
        "to wait for it, or pass allow_beyond_tolerance=true to exceed the tolerance deliberately"
    )


def _digest(limits: Limits) -> str:
    text = json.dumps(limits.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class BudgetStore:
    """The fault budget of one cluster, shared by every chaos process through `directory`."""

    def __init__(
        self, directory: Path, *, journal_cluster_id: str, journal_state_dir: Path, worker_id: str = "chaostoolkit"
    ) -> None:
        self.directory = directory
        self.journal_cluster_id = journal_cluster_id
        self.journal_state_dir = journal_state_dir
        self.worker_id = worker_id

    @property
    def limits_path(self) -> Path:
        return self.directory / LIMITS_FILE

    def run_dir(self, limits: Limits) -> Path:
        return self.directory / f"budget-{_digest(limits)}"

    def stored_limits(self) -> Limits | None:
        try:
            text = self.limits_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            decoded: JsonValue = json.loads(text)
        except json.JSONDecodeError as error:
            raise JsonFormatError(
                f"{self.limits_path} is not JSON ({error}): it is written atomically, so it was edited by hand; "
                "remove it when no chaos experiment runs against this cluster"
            ) from None
        return Limits.from_dict(as_object(decoded, str(self.limits_path)), str(self.limits_path))

    def _store(self, limits: Limits) -> None:
        temporary = self.directory / f".{LIMITS_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        temporary.write_text(json.dumps(limits.to_dict(), sort_keys=True), encoding="utf-8")
        os.replace(temporary, self.limits_path)

    def coordinator_for(self, limits: Limits) -> Coordinator:
        return Coordinator(self.run_dir(limits), limits, worker_id=self.worker_id,
                           journal_cluster_id=self.journal_cluster_id, journal_state_dir=self.journal_state_dir)

    @contextmanager
    def choose(self, discovered: Limits) -> Iterator[Coordinator]:
        """The coordinator to claim from, chosen and held under the limits lock for the ``with`` block.

        The stored limits stay while any claim granted against them is active; otherwise `discovered` replaces
        them.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.directory / LIMITS_LOCK), timeout=LIMITS_LOCK_TIMEOUT_S)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise OSError(
                f"the budget lock {self.directory / LIMITS_LOCK} was held for more than {LIMITS_LOCK_TIMEOUT_S:.0f} "
                "s: another chaos process is stuck; end it, or remove the lock file if none runs"
            ) from None
        try:
            stored = self.stored_limits()
            if stored is not None and stored != discovered:
                previous = self.coordinator_for(stored)
                if previous.active():
                    yield previous
                    return
            if stored != discovered:
                self._store(discovered)
            yield self.coordinator_for(discovered)
        finally:
            lock.release()

    def active(self) -> tuple[Claim, ...]:
        """Claims active under the stored limits (none when no fault was ever claimed)."""
        stored = self.stored_limits()
        if stored is None:
            return ()
        return tuple(held.claim for held in self.coordinator_for(stored).active())
