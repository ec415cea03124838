"""Faults as context managers: inject on enter, restore on exit, whatever happens in between.

Each fault appends its undo action to the journal before touching anything, injects, yields a `FaultRecord`, and
restores on every way out of the ``with`` block (normal exit, exception, KeyboardInterrupt, and an injection that
failed half way), then marks the journal entry done. A restore that fails raises
`FaultRestoreError`, which names the target and the manual fix, and leaves the entry pending for the next session's
replay. A fault the provider cannot inject at all raises the provider's `CapabilityError` unchanged (nothing was
broken, so the entry is marked done).

`FaultPlan` is the dry run: it stands in for both the provider and the journal, records every call that would have
been made, and touches nothing::

    plan = FaultPlan(node_names=("cp-1", "cp-2"))
    with node_stopped(plan, "cp-1", journal=plan):
        ...
    plan.describe()  # "stop_node cp-1", "start_node cp-1"
"""

from __future__ import annotations

import enum
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from kubeha.faults.journal import JournalEntry, UndoAction, UndoLog, UndoOp, process_identity
from kubeha.providers.base import (
    CapabilityError,
    Component,
    LoadBalancerConfig,
    NodeState,
    Provider,
    ProviderError,
)

__all__ = [
    "FaultKind",
    "FaultPlan",
    "FaultRecord",
    "FaultRestoreError",
    "PlannedCall",
    "component_stopped",
    "load_balancer_config_replaced",
    "load_balancer_stopped",
    "node_isolated",
    "node_paused",
    "node_stopped",
]

LOAD_BALANCER_TARGET = "load-balancer"


class FaultKind(enum.Enum):
    NODE_STOPPED = "node-stopped"
    NODE_KILLED = "node-killed"
    NODE_PAUSED = "node-paused"
    COMPONENT_STOPPED = "component-stopped"
    NODE_ISOLATED = "node-isolated"
    LOAD_BALANCER_CONFIG_REPLACED = "load-balancer-config-replaced"
    LOAD_BALANCER_STOPPED = "load-balancer-stopped"


@dataclass(frozen=True)
class FaultRecord:
    """One injected fault. Times are taken just before the inject call and once it returned (fault in effect)."""

    kind: FaultKind
    target: str
    detail: str
    provider: str
    journal_entry: str
    started_mono: float
    started_wall: float
    injected_mono: float
    injected_wall: float

    def describe(self) -> str:
        suffix = f" ({self.detail})" if self.detail else ""
        return f"{self.kind.value} {self.target}{suffix} via {self.provider}"


class FaultRestoreError(RuntimeError):
    """A fault could not be undone: the cluster is still broken. Loud on purpose."""

    def __init__(
        self,
        target: str,
        undo: UndoAction,
        provider: str,
        entry: JournalEntry,
        cause: BaseException,
        interrupted: BaseException | None = None,
    ) -> None:
        self.target = target
        self.undo = undo
        self.entry = entry
        self.interrupted = interrupted
        where = f" in {entry.path}" if entry.path is not None else ""
        during = "" if interrupted is None else (
            f" (the block inside the fault had already failed with {type(interrupted).__name__}: {interrupted})"
        )
        super().__init__(
            f"could not {undo.describe()} after the fault on {target}: {cause}{during}. The cluster is still "
            f"degraded: {undo.manual_fix(provider)}. The undo entry {entry.id} stays pending{where} and the next "
            "session replays it"
        )


def _undo(
    provider: Provider,
    undo: UndoAction,
    target: str,
    journal: UndoLog,
    entry: JournalEntry,
    interrupted: BaseException | None = None,
) -> None:
    try:
        undo.apply(provider)
    except (ProviderError, CapabilityError, OSError) as error:
        raise FaultRestoreError(target, undo, provider.name, entry, error, interrupted) from error
    journal.mark_done(entry)


@contextmanager
def _fault(
    provider: Provider,
    journal: UndoLog,
    *,
    kind: FaultKind,
    target: str,
    detail: str,
    undo: UndoAction,
    inject: Callable[[], None],
) -> Iterator[FaultRecord]:
    entry = journal.record(undo)
    started_mono, started_wall = time.monotonic(), time.time()
    try:
        inject()
    except CapabilityError:
        journal.mark_done(entry)
        raise
    except BaseException as error:
        # Part of the fault may be in place (one of several rules added, a stop interrupted): undo it all.
        _undo(provider, undo, target, journal, entry, error)
        raise
    record = FaultRecord(
        kind=kind,
        target=target,
        detail=detail,
        provider=provider.name,
        journal_entry=entry.id,
        started_mono=started_mono,
        started_wall=started_wall,
        injected_mono=time.monotonic(),
        injected_wall=time.time(),
    )
    try:
        yield record
    except BaseException as error:  # also KeyboardInterrupt: restore, then let it propagate unchanged
        _undo(provider, undo, target, journal, entry, error)
        raise
    _undo(provider, undo, target, journal, entry)


def node_stopped(
    provider: Provider, node: str, *, journal: UndoLog, hard: bool = False
) -> AbstractContextManager[FaultRecord]:
    """Node `node` down: graceful stop, or a hard power-off with `hard`. Restored with start_node."""
    return _fault(
        provider,
        journal,
        kind=FaultKind.NODE_KILLED if hard else FaultKind.NODE_STOPPED,
        target=node,
        detail="hard" if hard else "graceful",
        undo=UndoAction(UndoOp.START_NODE, node=node),
        inject=(lambda: provider.kill_node(node)) if hard else (lambda: provider.stop_node(node)),
    )


def node_paused(provider: Provider, node: str, *, journal: UndoLog) -> AbstractContextManager[FaultRecord]:
    """Every process on `node` frozen, connections left open. Restored with resume_node."""
    return _fault(
        provider,
        journal,
        kind=FaultKind.NODE_PAUSED,
        target=node,
        detail="",
        undo=UndoAction(UndoOp.RESUME_NODE, node=node),
        inject=lambda: provider.pause_node(node),
    )


def component_stopped(
    provider: Provider, node: str, component: Component, *, journal: UndoLog
) -> AbstractContextManager[FaultRecord]:
    """`component` stopped on `node` so that nothing restarts it. Restored with start_component."""
    return _fault(
        provider,
        journal,
        kind=FaultKind.COMPONENT_STOPPED,
        target=node,
        detail=component.value,
        undo=UndoAction(UndoOp.START_COMPONENT, node=node, component=component),
        inject=lambda: provider.stop_component(node, component),
    )


def node_isolated(
    provider: Provider, node: str, peers: tuple[str, ...], *, journal: UndoLog
) -> AbstractContextManager[FaultRecord]:
    """All traffic between `node` and each of `peers` dropped. Restored with heal_node."""
    if not peers:
        raise ValueError(f"node_isolated({node!r}) got no peers: name the nodes to cut it off from")
    return _fault(
        provider,
        journal,
        kind=FaultKind.NODE_ISOLATED,
        target=node,
        detail="from " + ", ".join(peers),
        undo=UndoAction(UndoOp.HEAL_NODE, node=node, peers=tuple(peers)),
        inject=lambda: provider.isolate_node(node, tuple(peers)),
    )


def load_balancer_config_replaced(
    provider: Provider, config: LoadBalancerConfig, *, journal: UndoLog
) -> AbstractContextManager[FaultRecord]:
    """The load balancer running `config`. The current configuration is read first and restored afterwards."""
    original = provider.load_balancer_config()
    return _fault(
        provider,
        journal,
        kind=FaultKind.LOAD_BALANCER_CONFIG_REPLACED,
        target=LOAD_BALANCER_TARGET,
        detail=f"{config.kind} configuration of {len(config.text)} bytes",
        undo=UndoAction(UndoOp.SET_LOAD_BALANCER_CONFIG, config=original),
        inject=lambda: provider.set_load_balancer_config(config),
    )


def load_balancer_stopped(provider: Provider, *, journal: UndoLog) -> AbstractContextManager[FaultRecord]:
    """The load balancer stopped. Restored with start_load_balancer."""
    return _fault(
        provider,
        journal,
        kind=FaultKind.LOAD_BALANCER_STOPPED,
        target=LOAD_BALANCER_TARGET,
        detail="",
        undo=UndoAction(UndoOp.START_LOAD_BALANCER),
        inject=provider.stop_load_balancer,
    )


@dataclass(frozen=True)
class PlannedCall:
    """One provider call a dry run would have made."""

    operation: str
    node: str | None = None
    component: Component | None = None
    peers: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [self.operation]
        if self.node is not None:
            parts.append(self.node)
        if self.component is not None:
            parts.append(self.component.value)
        if self.peers:
            parts.append("peers=" + ",".join(self.peers))
        return " ".join(parts)


class FaultPlan:
    """Dry run: a `Provider` and an `UndoLog` that record every call and change nothing anywhere.

    `node_state` answers RUNNING and `load_balancer_config` an empty placeholder, so faults that read state before
    injecting can be planned too.
    """

    PLACEHOLDER_CONFIG = LoadBalancerConfig(kind="dry-run", text="")

    def __init__(self, node_names: tuple[str, ...] = (), *, provider_name: str = "dry-run") -> None:
        self._node_names = tuple(node_names)
        self._provider_name = provider_name
        self.calls: list[PlannedCall] = []
        self.journal: list[JournalEntry] = []

    @property
    def name(self) -> str:
        return self._provider_name

    def describe(self) -> tuple[str, ...]:
        return tuple(call.describe() for call in self.calls)

    def _call(self, operation: str, node: str | None = None, component: Component | None = None,
              peers: tuple[str, ...] = ()) -> None:
        self.calls.append(PlannedCall(operation, node, component, tuple(peers)))

    # UndoLog
    def record(self, undo: UndoAction) -> JournalEntry:
        entry = JournalEntry(
            id=f"dry-run-{len(self.journal) + 1}",
            created=time.time(),
            pid=os.getpid(),
            process=process_identity(),
            host=socket.gethostname(),
            worker=None,
            provider=self._provider_name,
            cluster="dry-run",
            undo=undo,
        )
        self.journal.append(entry)
        return entry

    def mark_done(self, entry: JournalEntry) -> None:
        return None

    # Provider
    def node_names(self) -> tuple[str, ...]:
        return self._node_names

    def node_state(self, node: str) -> NodeState:
        return NodeState.RUNNING

    def stop_node(self, node: str) -> None:
        self._call("stop_node", node)

    def kill_node(self, node: str) -> None:
        self._call("kill_node", node)

    def start_node(self, node: str) -> None:
        self._call("start_node", node)

    def pause_node(self, node: str) -> None:
        self._call("pause_node", node)

    def resume_node(self, node: str) -> None:
        self._call("resume_node", node)

    def stop_component(self, node: str, component: Component) -> None:
        self._call("stop_component", node, component)

    def start_component(self, node: str, component: Component) -> None:
        self._call("start_component", node, component)

    def isolate_node(self, node: str, peers: tuple[str, ...]) -> None:
        self._call("isolate_node", node, peers=peers)

    def heal_node(self, node: str, peers: tuple[str, ...]) -> None:
        self._call("heal_node", node, peers=peers)

    def load_balancer_config(self) -> LoadBalancerConfig:
        return self.PLACEHOLDER_CONFIG

    def set_load_balancer_config(self, config: LoadBalancerConfig) -> None:
        self._call("set_load_balancer_config")

    def stop_load_balancer(self) -> None:
        self._call("stop_load_balancer")

    def start_load_balancer(self) -> None:
        self._call("start_load_balancer")
