"""The chaos engine: inject faults within the budget, journal them, hold them across activities, restore them.

chaostoolkit calls an experiment's actions one at a time, so a fault injected by one action is restored by a later
one (usually a rollback). Between the two the fault lives in this process's `FaultRegistry`: the fault's context
manager from `kubeha.faults` (entered, so its undo action is already in the journal) and the coordinator grant of
its budget claim (entered, so other runs see it). Restoring closes both; a process that dies with faults in place
leaves pending journal entries, which the next chaos activity against that cluster (or the pytest plugin) replays,
and a claim the coordinator reclaims because its process is gone.

A fault action, in order:

1. reads the cluster's identity and checks consent (`session.check_consent`);
2. replays journal entries left by processes that died (`kubeha.faults.journal.replay`);
3. discovers the topology, picks the targets (`targets.select_nodes`), skipping nodes this process already broke
   and nodes the API shows NotReady;
4. checks the budget (`budget.precheck`: active claims of every chaos process on this cluster plus whatever is down
   without a claim) and takes the claim from the cluster's coordinator; a claim beyond tolerance is refused unless
   `allow_beyond_tolerance`, which makes it exclusive;
5. injects on every target, in parallel threads when there are several; if any injection fails, the others are
   restored and the claim released, so a fault is all or nothing.

A restore closes the held faults, waits (bounded) until the restored nodes or components are back (node Ready with a
kubelet heartbeat newer than the restore, and its control-plane pods ready), and only then releases the claim, so
another run cannot break a second member while the first one is still rejoining.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from chaoslib.exceptions import ActivityFailed
from chaos.kubeha_chaos.budget import BudgetStore, claim_resources, explain_refusal, observed_down, precheck
from chaos.kubeha_chaos.session import ClusterArguments, ClusterReader, ConsentRefused, IdentityMemory, check_consent
from chaos.kubeha_chaos.targets import HeldTarget, NodeSelector, select_held, select_nodes
from kubeha.cluster.discovery import (
    APISERVER_COMPONENT,
    CONTROLLER_MANAGER_COMPONENT,
    ETCD_COMPONENT,
    SCHEDULER_COMPONENT,
    DiscoveryError,
    NodeInfo,
    PodInfo,
    build_topology,
)
from kubeha.cluster.identity import ClusterIdentity, IdentityError
from kubeha.coordination import BudgetImpossible, BudgetTimeout
from kubeha.core.budget import Claim, Limits
from kubeha.core.topology import Role, Topology
from kubeha.faults import FaultRecord, FaultRestoreError, Journal, component_stopped, node_isolated, node_stopped
from kubeha.faults.journal import UndoOp, process_identity, replay, replay_processes
from kubeha.providers import ProviderKind
from kubeha.providers.base import CapabilityError, Component, Provider, ProviderError

__all__ = [
    "ChaosEngine",
    "FaultRegistry",
    "FaultType",
    "READY_TIMEOUT_S",
    "RestoreReport",
    "SETTLE_TIMEOUT_S",
]

log = logging.getLogger("chaostoolkit")

WORKER_ID = "chaostoolkit"
# How long a restore waits for the restored nodes or components to be back (Ready, pods ready).
READY_TIMEOUT_S = 300.0
# Pause between two reads of the API while waiting for recovery or for the budget.
POLL_INTERVAL_S = 2.0
# How long a restore waits for fault injections of this process that are still running (background activities).
SETTLE_TIMEOUT_S = 180.0
# Backstop for one injection or restore thread; every provider call inside is bounded by the provider's own timeouts.
THREAD_TIMEOUT_S = 600.0
CONTROL_PLANE_PODS = frozenset({ETCD_COMPONENT, APISERVER_COMPONENT, CONTROLLER_MANAGER_COMPONENT, SCHEDULER_COMPONENT})
# Errors an operation on the cluster reports in its message (provider, journal, API); anything else is a bug.
OPERATION_ERRORS = (ProviderError, CapabilityError, FaultRestoreError, OSError, ValueError)
API_ERRORS = (ApiException, HTTPError, OSError, IdentityError)


class FaultType(enum.Enum):
    """What a held fault broke; a restore of one type only touches faults of that type."""

    NODE = "node"  # stopped or killed
    COMPONENT = "component"
    ISOLATION = "isolation"


@dataclass(frozen=True)
class _Key:
    cluster_uid: str
    node: str
    type: FaultType
    component: Component | None = None

    def describe(self) -> str:
        if self.type is FaultType.COMPONENT and self.component is not None:
            return f"{self.component.value} stopped on {self.node}"
        return f"node {self.node} {'isolated' if self.type is FaultType.ISOLATION else 'down'}"


class _Held:
    """One injected fault: its key, the entered fault context, and the group (claim) it belongs to."""

    def __init__(
        self, key: _Key, roles: frozenset[Role], stack: ExitStack, record: FaultRecord, group: _Group
    ) -> None:
        self.key = key
        self.roles = roles
        self.stack = stack
        self.record = record
        self.group = group


class _Group:
    """The faults of one fault action and the budget claim they hold together."""

    def __init__(self, claim: Claim, cluster_uid: str, planned: tuple[_Key, ...], claim_stack: ExitStack) -> None:
        self.claim = claim
        self.cluster_uid = cluster_uid
        self.planned = planned
        self.claim_stack = claim_stack
        self.faults: dict[_Key, _Held] = {}
        self.failed_entries: set[str] = set()  # journal entries whose restore failed: the fault is still in place
        self.settled = False

    @property
    def finished(self) -> bool:
        return self.settled and not self.faults and not self.failed_entries


class FaultRegistry:
    """Faults this process injected and has not restored, grouped by the budget claim they hold.

    `selection` is held by a fault action from choosing its targets until its claim is granted and registered, so
    two background actions of one experiment never pick the same node.
    """

    def __init__(self) -> None:
        self.selection = threading.Lock()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._groups: list[_Group] = []
        self._journals: dict[tuple[str, str, Path], Journal] = {}

    def journal(self, cluster_uid: str, provider_name: str, state_dir: Path) -> Journal:
        """This process's journal for the cluster (one file per process, as the journal expects)."""
        with self._lock:
            key = (cluster_uid, provider_name, state_dir)
            if key not in self._journals:
                self._journals[key] = Journal(cluster_uid, provider_name=provider_name, state_dir=state_dir,
                                              worker_id=WORKER_ID)
            return self._journals[key]

    def busy(self, cluster_uid: str) -> dict[str, str]:
        """Nodes with a fault of this process (planned or in place), and which."""
        with self._lock:
            found: dict[str, str] = {}
            for group in self._groups:
                if group.cluster_uid != cluster_uid:
                    continue
                for key in (*group.planned, *group.faults):
                    found[key.node] = f"it already has a fault injected by this process ({key.describe()})"
            return found

    def add(self, group: _Group) -> None:
        with self._changed:
            self._groups.append(group)
            self._changed.notify_all()

    def settle(self, group: _Group, held: Iterable[_Held]) -> None:
        with self._changed:
            for fault in held:
                group.faults[fault.key] = fault
            group.settled = True
            self._changed.notify_all()

    def drop(self, group: _Group) -> None:
        with self._changed:
            if group in self._groups:
                self._groups.remove(group)
            self._changed.notify_all()

    def wait_settled(self, cluster_uid: str, timeout_s: float) -> tuple[str, ...]:
        """Wait until no fault action of this process is still injecting; the holders still at it on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                unsettled = [g.claim.holder for g in self._groups if g.cluster_uid == cluster_uid and not g.settled]
                remaining = deadline - time.monotonic()
                if not unsettled or remaining <= 0:
                    return tuple(unsettled)
                self._changed.wait(remaining)

    def held(self, cluster_uid: str, fault_type: FaultType | None = None,
             component: Component | None = None) -> list[_Held]:
        with self._lock:
            return [
                fault
                for group in self._groups
                if group.cluster_uid == cluster_uid
                for fault in group.faults.values()
                if (fault_type is None or fault.key.type is fault_type)
                and (component is None or fault.key.component is component)
            ]

    def take(self, faults: Iterable[_Held]) -> list[_Held]:
        """Remove `faults` from their groups (a restore now owns them); those another restore took are left out."""
        taken: list[_Held] = []
        with self._lock:
            for fault in faults:
                if fault.group.faults.get(fault.key) is fault:
                    del fault.group.faults[fault.key]
                    taken.append(fault)
        return taken

    def restore_failed(self, fault: _Held) -> None:
        with self._lock:
            fault.group.failed_entries.add(fault.record.journal_entry)

    def entry_restored(self, entry_id: str) -> None:
        with self._lock:
            for group in self._groups:
                group.failed_entries.discard(entry_id)

    def finished(self, cluster_uid: str) -> list[_Group]:
        """Remove and return the groups of `cluster_uid` whose faults are all restored (their claims can go)."""
        with self._changed:
            done = [g for g in self._groups if g.cluster_uid == cluster_uid and g.finished]
            for group in done:
                self._groups.remove(group)
            self._changed.notify_all()
            return done


_REGISTRY = FaultRegistry()


@dataclass(frozen=True)
class _Observation:
    """One read of the API while waiting for recovery."""

    nodes: Mapping[str, NodeInfo]
    pods: Sequence[PodInfo]
    leases: Mapping[str, float]
    starts: Mapping[tuple[str, str], float]


class Recovery(Protocol):
    def met(self, seen: _Observation) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class _NodeBack:
    """A restored node is back: Ready, its kubelet renewed its Lease since before the fault, its control-plane pods
    ready and, after a restart (`restarted`), their containers started after that last pre-fault renewal.

    The freshness conditions matter after a short outage: the API keeps showing a node and its pods as they were
    until the node-monitor grace period passes, and a restarted kubelet renews its Lease before it reports its pods.
    Lease and container times both come from the node's clock.
    """

    node: str
    lease_before: float | None
    restarted: bool

    def met(self, seen: _Observation) -> bool:
        info = seen.nodes.get(self.node)
        if info is None or not info.ready:
            return False
        renewed = seen.leases.get(self.node)
        if self.lease_before is not None and (renewed is None or renewed <= self.lease_before):
            return False
        for pod in seen.pods:
            if pod.node != self.node or pod.component() not in CONTROL_PLANE_PODS:
                continue
            if pod.phase != "Running" or not pod.ready:
                return False
            started = seen.starts.get((self.node, pod.component()))
            if self.restarted and self.lease_before is not None and (started is None or started <= self.lease_before):
                return False
        return True

    def describe(self) -> str:
        restarted = " (started again since the fault)" if self.restarted else ""
        return f"node {self.node} Ready with a fresh kubelet heartbeat and its control-plane pods ready{restarted}"


@dataclass(frozen=True)
class _ComponentBack:
    node: str
    component: Component

    def met(self, seen: _Observation) -> bool:
        nodes, pods = seen.nodes, seen.pods
        if self.component is Component.KUBELET:
            info = nodes.get(self.node)
            return info is not None and info.ready
        return any(
            pod.node == self.node and pod.component() == self.component.value and pod.phase == "Running" and pod.ready
            for pod in pods
        )

    def describe(self) -> str:
        if self.component is Component.KUBELET:
            return f"node {self.node} Ready again (kubelet running)"
        return f"{self.component.value} pod on {self.node} Running and ready"


@dataclass(frozen=True)
class RestoreReport:
    """What `ChaosEngine.restore_all` did (`to_dict` is the activity's JSON output)."""

    restored: tuple[str, ...]
    replayed: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[str, ...]

    def to_dict(self) -> dict[str, list[str]]:
        return {"restored": list(self.restored), "replayed": list(self.replayed), "skipped": list(self.skipped),
                "failed": list(self.failed)}


# Which nodes can carry a component at all.
_COMPONENT_ROLES = {
    Component.ETCD: Role.ETCD,
    Component.KUBE_APISERVER: Role.CONTROL_PLANE,
    Component.KUBE_CONTROLLER_MANAGER: Role.CONTROL_PLANE,
    Component.KUBE_SCHEDULER: Role.CONTROL_PLANE,
}

# Enters one fault on a node: (node, journal, topology) -> the fault's context manager.
FaultFactory = Callable[[str, Journal, Topology], AbstractContextManager[FaultRecord]]
_UNDO_TYPES = {UndoOp.START_COMPONENT: FaultType.COMPONENT, UndoOp.HEAL_NODE: FaultType.ISOLATION}


def _api_error(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"API error {error.status} {error.reason}".strip()
    return f"{type(error).__name__}: {error}"


class ChaosEngine:
    """Faults and restores on one cluster, reached through `reader` (the API) and `provider` (the machines)."""

    def __init__(
        self,
        arguments: ClusterArguments,
        provider: Provider,
        reader: ClusterReader,
        *,
        registry: FaultRegistry | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.arguments = arguments
        self.provider = provider
        self.reader = reader
        self.registry = registry or _REGISTRY
        self.poll_interval_s = poll_interval_s
        self.memory = IdentityMemory(arguments.state_dir)

    # -- identity, consent, journal --------------------------------------------------------------------------------

    def _kind_containers(self) -> tuple[str, ...]:
        return self.provider.node_names() if self.arguments.provider is ProviderKind.KIND else ()

    def consented_identity(self) -> ClusterIdentity:
        """The cluster's identity, read from the API, after checking consent (raises `ActivityFailed`)."""
        try:
            identity = self.reader.identity()
            nodes = self.reader.nodes()
        except API_ERRORS as error:
            raise ActivityFailed(
                f"cannot read the cluster through {self.arguments.target.describe()}: {_api_error(error)}; check that "
                "the cluster is up and the kubeconfig's credentials are valid"
            ) from None
        self._consent(identity, nodes)
        return identity

    def _consent(self, identity: ClusterIdentity, nodes: Sequence[NodeInfo]) -> None:
        try:
            how = check_consent(identity, nodes, kind_cluster=self.arguments.kind_cluster,
                                kind_containers=self._kind_containers(),
                                allowed_cluster_uid=self.arguments.allowed_cluster_uid)
        except ConsentRefused as refused:
            raise ActivityFailed(str(refused)) from None
        except OPERATION_ERRORS as error:
            raise ActivityFailed(f"cannot list the machines of {self.arguments.machines}: {error}") from None
        log.debug("consent for %s: %s", identity.api_url, how)
        try:
            self.memory.remember(self.arguments, identity)
        except OSError as error:
            raise ActivityFailed(
                f"cannot remember the identity of {identity.api_url} under {self.memory.directory} ({error}); "
                "restores need it while the API is down: make the state directory writable or pass state_dir"
            ) from None

    def restore_identity(self) -> ClusterIdentity:
        """The identity for a restore: from the API with consent, else remembered from when faults were injected."""
        try:
            identity = self.reader.identity()
            nodes = self.reader.nodes()
        except API_ERRORS as error:
            remembered = self.memory.recall(self.arguments)
            if remembered is not None:
                log.info("the API is unreachable (%s): restoring the cluster remembered as %s", _api_error(error),
                         remembered.describe())
                return remembered
            uid = self.arguments.allowed_cluster_uid
            if uid is not None:
                return ClusterIdentity(api_url=str(self.arguments.target.describe()), kube_system_uid=uid,
                                       kubernetes_version="unknown")
            raise ActivityFailed(
                f"cannot read the cluster through {self.arguments.target.describe()} ({_api_error(error)}) and no "
                f"fault was injected into it from this kubeconfig and {self.arguments.machines}: pass "
                "allowed_cluster_uid to name the cluster whose journal to restore"
            ) from None
        self._consent(identity, nodes)
        return identity

    def budget_store(self, cluster_uid: str) -> BudgetStore:
        """The fault budget shared by every chaos process targeting the cluster."""
        return BudgetStore(self.arguments.chaos_dir(cluster_uid), journal_cluster_id=cluster_uid,
                           journal_state_dir=self.arguments.state_dir, worker_id=WORKER_ID)

    def journal(self, cluster_uid: str) -> Journal:
        return self.registry.journal(cluster_uid, self.provider.name, self.arguments.state_dir)

    def replay_dead(self, cluster_uid: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """Undo faults left by chaos or test processes that died: (undone, skipped, failed) descriptions."""
        try:
            result = replay(self.provider, cluster_uid, state_dir=self.arguments.state_dir)
        except (OSError, ValueError) as error:
            raise ActivityFailed(f"cannot replay the undo journal of cluster {cluster_uid}: {error}") from None
        undone = tuple(f"{entry.undo.describe()} (left by pid {entry.pid})" for entry in result.undone)
        for text in undone:
            log.info("replayed the journal of a process that died: %s", text)
        skipped = tuple(f"{skip.entry.undo.describe()}: {skip.reason}" for skip in result.skipped
                        if skip.entry.pid != os.getpid())
        failed = tuple(failure.describe() for failure in result.failed)
        return undone, skipped, failed

    # -- faults ----------------------------------------------------------------------------------------------------

    def stop_nodes(self, selector: NodeSelector, *, hard: bool, allow_beyond_tolerance: bool,
                   budget_timeout_s: float) -> tuple[str, ...]:
        """Stop (or, with `hard`, kill) the selected nodes within the budget; returns their names."""
        verb = "killing" if hard else "stopping"

        def enter(node: str, journal: Journal, topology: Topology) -> AbstractContextManager[FaultRecord]:
            return node_stopped(self.provider, node, journal=journal, hard=hard)

        return self._inject(selector, verb=verb, what="kill" if hard else "stop", fault_type=FaultType.NODE,
                            component=None, enter=enter, allow_beyond_tolerance=allow_beyond_tolerance,
                            budget_timeout_s=budget_timeout_s)

    def stop_component(self, selector: NodeSelector, component: Component, *, allow_beyond_tolerance: bool,
                       budget_timeout_s: float) -> tuple[str, ...]:
        def enter(node: str, journal: Journal, topology: Topology) -> AbstractContextManager[FaultRecord]:
            return component_stopped(self.provider, node, component, journal=journal)

        # A kubelet fault is budgeted as its whole node ("stopping kubelet on 2 of 3 control-plane nodes"); a
        # control-plane component as that component ("stopping 2 of 3 etcd members").
        verb = "stopping kubelet on" if component is Component.KUBELET else "stopping"
        return self._inject(selector, verb=verb, what=f"stop {component.value} on", fault_type=FaultType.COMPONENT,
                            component=component, enter=enter, allow_beyond_tolerance=allow_beyond_tolerance,
                            budget_timeout_s=budget_timeout_s)

    def isolate_nodes(self, selector: NodeSelector, peers: tuple[str, ...], *, allow_beyond_tolerance: bool,
                      budget_timeout_s: float) -> tuple[str, ...]:
        """Cut the selected nodes off from `peers` (default: every other node of the cluster)."""
        def enter(node: str, journal: Journal, topology: Topology) -> AbstractContextManager[FaultRecord]:
            others = tuple(peer for peer in (peers or tuple(n.name for n in topology.nodes)) if peer != node)
            return node_isolated(self.provider, node, others, journal=journal)

        return self._inject(selector, verb="isolating", what="isolate", fault_type=FaultType.ISOLATION,
                            component=None, enter=enter, allow_beyond_tolerance=allow_beyond_tolerance,
                            budget_timeout_s=budget_timeout_s, peers=peers)

    def _inject(
        self,
        selector: NodeSelector,
        *,
        verb: str,
        what: str,
        fault_type: FaultType,
        component: Component | None,
        enter: FaultFactory,
        allow_beyond_tolerance: bool,
        budget_timeout_s: float,
        peers: tuple[str, ...] = (),
    ) -> tuple[str, ...]:
        if budget_timeout_s < 0:
            raise ActivityFailed(f"budget_timeout_s must be >= 0, got {budget_timeout_s}: pass how long to wait")
        identity = self.consented_identity()
        uid = identity.kube_system_uid
        _undone, _skipped, failed = self.replay_dead(uid)
        if failed:
            raise ActivityFailed(
                "faults left in place by a process that died could not be undone, so no new fault is injected: "
                + "; ".join(failed)
            )
        try:
            snapshot = self.reader.snapshot()
            topology = build_topology(snapshot).topology
        except API_ERRORS as error:
            raise ActivityFailed(
                f"cannot discover the cluster's topology to check the fault budget: {_api_error(error)}; the API "
                "must answer before a fault is injected"
            ) from None
        except DiscoveryError as error:
            raise ActivityFailed(f"cannot check the fault budget: {error}") from None
        all_nodes = sorted(node.name for node in topology.nodes)
        unknown_peers = sorted(set(peers) - set(all_nodes))
        if unknown_peers:
            raise ActivityFailed(f"peers {unknown_peers} are not nodes of the cluster {all_nodes}: pass node names "
                                 "from `kubectl get nodes`")
        journal = self.journal(uid)
        with self.registry.selection:
            unavailable = {info.name: f"it is NotReady ({info.ready_reason})" for info in snapshot.nodes
                           if not info.ready}
            unavailable.update(self.registry.busy(uid))
            required = _COMPONENT_ROLES.get(component) if component is not None else None
            try:
                targets = select_nodes(selector, topology, unavailable=unavailable, required_role=required, what=what)
            except ValueError as error:
                raise ActivityFailed(str(error)) from None
            nodes = [topology.node(name) for name in targets]
            claim = Claim(
                f"chaos/{socket.gethostname()}/{os.getpid()}/{what.replace(' ', '-')}/{'+'.join(targets)}/"
                f"{uuid.uuid4().hex[:8]}",
                claim_resources(nodes, component),
                exclusive=allow_beyond_tolerance,
                reason=f"chaostoolkit: {what} {', '.join(targets)}",
            )
            claim_stack = self._claim(claim, uid, topology, snapshot.nodes, snapshot.kube_system_pods, verb=verb,
                                      budget_timeout_s=budget_timeout_s)
            keys = tuple(_Key(uid, name, fault_type, component) for name in targets)
            group = _Group(claim, uid, keys, claim_stack)
            self.registry.add(group)
        roles = {node.name: node.roles for node in nodes}
        held: list[_Held] = []
        settled = False
        try:
            outcomes = self._parallel(targets, lambda node: self._enter(enter, node, journal, topology))
            failures: list[str] = []
            for key, outcome in zip(keys, outcomes):
                if isinstance(outcome, BaseException):
                    failures.append(f"{key.node}: {outcome}")
                    if isinstance(outcome, FaultRestoreError):  # half injected and not undone: still in place
                        group.failed_entries.add(outcome.entry.id)
                else:
                    stack, record = outcome
                    held.append(_Held(key, roles[key.node], stack, record, group))
            if failures:
                errors = self._close_all(held)
                held.clear()
                still = ("; the claim stays held until restore_all undoes what is still in place: "
                         + "; ".join(errors.values())
                         if group.failed_entries else "; the other targets were restored and the claim released")
                raise ActivityFailed(f"{what} failed on {'; '.join(failures)}; a fault is all or nothing{still}")
            self.registry.settle(group, held)
            settled = True
        finally:
            if not settled:
                self._close_all(held)
                if group.failed_entries:
                    self.registry.settle(group, ())  # keeps the claim: faults remain that restore_all must undo
                else:
                    self.registry.drop(group)
                    claim_stack.close()
        if allow_beyond_tolerance:
            log.warning("%s %s beyond the cluster's tolerance, as asked (allow_beyond_tolerance)", verb,
                        ", ".join(targets))
        log.info("%s %s: done (budget claim %s)", verb, ", ".join(targets), claim.holder)
        return targets

    def _claim(self, claim: Claim, uid: str, topology: Topology, nodes: Sequence[NodeInfo], pods: Sequence[PodInfo],
               *, verb: str, budget_timeout_s: float) -> ExitStack:
        """Hold `claim` in the cluster's coordinator, or raise `ActivityFailed` explaining the refusal."""
        store = self.budget_store(uid)
        deadline = time.monotonic() + budget_timeout_s
        try:
            with store.choose(Limits.from_topology(topology)) as coordinator:
                limits = coordinator.limits
                while True:
                    active = tuple(held.claim for held in coordinator.active())
                    check = precheck(claim, active, limits, observed_down(topology, nodes, pods), verb=verb,
                                     topology=topology)
                    remaining = deadline - time.monotonic()
                    if check.granted:
                        break
                    if remaining <= 0:
                        raise ActivityFailed(check.message)
                    time.sleep(min(self.poll_interval_s, remaining))
                    try:
                        nodes, pods = self.reader.nodes(), self.reader.kube_system_pods()
                    except API_ERRORS as error:
                        log.debug("reading the API while waiting for the budget failed: %s", _api_error(error))
                stack = ExitStack()
                try:
                    stack.enter_context(coordinator.acquire(claim, timeout_s=0.0))
                except (BudgetImpossible, BudgetTimeout):
                    active = tuple(held.claim for held in coordinator.active())
                    raise ActivityFailed(explain_refusal(claim, active, limits, verb=verb, topology=topology)) from None
                return stack
        except OSError as error:
            raise ActivityFailed(f"the fault budget in {store.directory} cannot be used: {error}") from None

    @staticmethod
    def _enter(enter: FaultFactory, node: str, journal: Journal, topology: Topology) -> tuple[ExitStack, FaultRecord]:
        stack = ExitStack()
        record = stack.enter_context(enter(node, journal, topology))
        return stack, record

    @staticmethod
    def _parallel(
        items: Sequence[str], work: Callable[[str], tuple[ExitStack, FaultRecord]]
    ) -> list[tuple[ExitStack, FaultRecord] | BaseException]:
        """`work` on every item, in threads when there are several: each result, or the error it raised."""
        def one(item: str) -> tuple[ExitStack, FaultRecord] | BaseException:
            try:
                return work(item)
            except OPERATION_ERRORS as error:
                return error

        if len(items) == 1:
            return [one(items[0])]
        with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="kubeha-chaos") as pool:
            futures = [pool.submit(one, item) for item in items]
            outcomes: list[tuple[ExitStack, FaultRecord] | BaseException] = []
            for future in futures:
                try:
                    outcomes.append(future.result(timeout=THREAD_TIMEOUT_S))
                except TimeoutError:
                    outcomes.append(TimeoutError(
                        f"did not finish within {THREAD_TIMEOUT_S:.0f} s; its journal entry stays pending and "
                        "restore_all or the next chaos run replays it"))
            return outcomes

    def _close_all(self, held: Sequence[_Held]) -> dict[_Key, str]:
        """Restore `held` (newest first); the faults that could not be restored, with why."""
        errors: dict[_Key, str] = {}
        for fault in sorted(held, key=lambda fault: fault.record.injected_mono, reverse=True):
            try:
                fault.stack.close()
            except FaultRestoreError as error:
                self.registry.restore_failed(fault)
                errors[fault.key] = str(error)
        return errors

    # -- restores --------------------------------------------------------------------------------------------------

    def restore(
        self,
        selector: NodeSelector,
        fault_type: FaultType,
        *,
        component: Component | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        settle_timeout_s: float = SETTLE_TIMEOUT_S,
    ) -> tuple[str, ...]:
        """Restore faults of `fault_type` on the selected nodes (default: all this process holds); their names.

        Nodes named explicitly are restored even without a fault of this process on them (the provider operations
        are idempotent), so a rollback can also repair what a crashed run left.
        """
        identity = self.restore_identity()
        uid = identity.kube_system_uid
        unsettled = self.registry.wait_settled(uid, settle_timeout_s)
        if unsettled:
            raise ActivityFailed(
                f"fault injections {list(unsettled)} are still running after {settle_timeout_s:.0f} s: raise "
                "settle_timeout_s, or run restore_all once they finished"
            )
        held = self.registry.held(uid, fault_type, component)
        names = select_held(selector, [HeldTarget(fault.key.node, fault.roles) for fault in held])
        held_nodes = {fault.key.node for fault in held}
        if any(name not in held_nodes for name in names):
            try:
                known = set(self.provider.node_names())
            except OPERATION_ERRORS as error:
                raise ActivityFailed(f"cannot list the machines of {self.arguments.machines}: {error}") from None
            unknown = sorted(set(names) - known)
            if unknown:
                raise ActivityFailed(f"nodes {unknown} are not machines of {self.arguments.machines} (it has "
                                     f"{sorted(known)}): pass node names of this cluster")
        taken = self.registry.take(fault for fault in held if fault.key.node in names)
        taken_nodes = {fault.key.node for fault in taken}
        loose = [name for name in names if name not in taken_nodes]
        leases = self._read_leases()
        failed = self._close_all(taken)
        errors = list(failed.values())
        broken = {key.node for key in failed}
        for name in loose:
            problem = self._restore_loose(fault_type, name, component)
            if problem is not None:
                errors.append(problem)
                broken.add(name)
        checks = [self._recovery(fault_type, name, component, leases) for name in names if name not in broken]
        missing = self._wait_recovered(checks, ready_timeout_s) if checks else ()
        released = self._release_finished(uid)
        if released:
            log.info("released budget claims %s", ", ".join(released))
        if errors or missing:
            raise ActivityFailed("; ".join([*errors, *self._not_back(missing, ready_timeout_s)]))
        if names:
            log.info("restored %s", ", ".join(names))
        return names

    def _restore_loose(self, fault_type: FaultType, node: str, component: Component | None) -> str | None:
        try:
            if fault_type is FaultType.NODE:
                self.provider.start_node(node)
            elif fault_type is FaultType.COMPONENT and component is not None:
                self.provider.start_component(node, component)
            elif fault_type is FaultType.ISOLATION:
                self.provider.heal_node(node, tuple(peer for peer in self.provider.node_names() if peer != node))
        except OPERATION_ERRORS as error:
            return f"could not restore node {node}: {error}"
        return None

    def _recovery(self, fault_type: FaultType, node: str, component: Component | None,
                  leases: Mapping[str, float]) -> Recovery:
        if fault_type is FaultType.COMPONENT and component is not None:
            return _ComponentBack(node, component)
        return _NodeBack(node, leases.get(node), restarted=fault_type is FaultType.NODE)

    def _read_leases(self) -> Mapping[str, float]:
        try:
            return self.reader.node_leases()
        except API_ERRORS as error:
            log.debug("cannot read node Leases (%s): recovery is judged without heartbeats", _api_error(error))
            return {}

    def _wait_recovered(self, checks: Sequence[Recovery], timeout_s: float) -> tuple[str, ...]:
        """Poll the API until every check is met; the descriptions of those unmet at the deadline."""
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while True:
            unmet: list[Recovery] = list(checks)
            try:
                seen = _Observation(
                    nodes={info.name: info for info in self.reader.nodes()},
                    pods=self.reader.kube_system_pods(),
                    leases=self.reader.node_leases(),
                    starts=self.reader.container_starts(),
                )
            except API_ERRORS as error:
                last_error = _api_error(error)
            else:
                unmet = [check for check in checks if not check.met(seen)]
                last_error = ""
                if not unmet:
                    return ()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                suffix = f" (last API error: {last_error})" if last_error else ""
                return tuple(check.describe() + suffix for check in unmet)
            time.sleep(min(self.poll_interval_s, remaining))

    @staticmethod
    def _not_back(missing: Sequence[str], timeout_s: float) -> list[str]:
        return [
            f"not back within {timeout_s:.0f} s: {text}; read the node's kubelet log (`journalctl -u kubelet` on the "
            "node, or `docker exec NODE journalctl -u kubelet` for kind) and raise ready_timeout_s if it is slow"
            for text in missing
        ]

    def _release_finished(self, uid: str) -> list[str]:
        released: list[str] = []
        for group in self.registry.finished(uid):
            group.claim_stack.close()
            released.append(group.claim.holder)
        return released

    def restore_all(self, *, ready_timeout_s: float = READY_TIMEOUT_S,
                    settle_timeout_s: float = SETTLE_TIMEOUT_S) -> RestoreReport:
        """Restore every fault this process holds on the cluster, retry its failed restores, and replay the journal
        entries of processes that died."""
        identity = self.restore_identity()
        uid = identity.kube_system_uid
        unsettled = self.registry.wait_settled(uid, settle_timeout_s)
        if unsettled:
            raise ActivityFailed(
                f"fault injections {list(unsettled)} are still running after {settle_timeout_s:.0f} s: raise "
                "settle_timeout_s, or run restore_all again once they finished"
            )
        leases = self._read_leases()
        taken = self.registry.take(self.registry.held(uid))
        not_restored = self._close_all(taken)
        failed = list(not_restored.values())
        back = [fault for fault in taken if fault.key not in not_restored]
        checks: list[Recovery] = [self._recovery(f.key.type, f.key.node, f.key.component, leases) for f in back]
        restored = [fault.key.describe() for fault in back]
        # This process's own entries still pending are faults whose restore failed: retry them.
        try:
            own = replay_processes(self.provider, uid, [(os.getpid(), process_identity())],
                                   state_dir=self.arguments.state_dir)
        except (OSError, ValueError) as error:
            raise ActivityFailed(f"cannot replay the undo journal of cluster {uid}: {error}") from None
        replayed: list[str] = []
        for entry in own.undone:
            self.registry.entry_restored(entry.id)
            replayed.append(f"{entry.undo.describe()} (restore retried)")
            if entry.undo.node is not None:
                fault_type = _UNDO_TYPES.get(entry.undo.op, FaultType.NODE)
                checks.append(self._recovery(fault_type, entry.undo.node, entry.undo.component, leases))
        failed.extend(failure.describe() for failure in own.failed)
        undone, skipped, dead_failed = self.replay_dead(uid)
        replayed.extend(undone)
        failed.extend(dead_failed)
        missing = self._wait_recovered(checks, ready_timeout_s) if checks else ()
        self._release_finished(uid)
        report = RestoreReport(
            restored=tuple(restored),
            replayed=tuple(replayed),
            skipped=skipped,
            failed=tuple([*failed, *self._not_back(missing, ready_timeout_s)]),
        )
        if report.failed:
            raise ActivityFailed("restore_all could not restore everything: " + "; ".join(report.failed))
        log.info("restore_all: restored %d fault(s), replayed %d journal entr(ies)", len(restored), len(replayed))
        return report
