"""Faults as context managers, and the on-disk undo journal that lets a later session restore a crashed run's."""

from __future__ import annotations

from kubeha.faults.faults import (
    FaultKind,
    FaultPlan,
    FaultRecord,
    FaultRestoreError,
    PlannedCall,
    component_stopped,
    load_balancer_config_replaced,
    load_balancer_stopped,
    node_isolated,
    node_paused,
    node_stopped,
)
from kubeha.faults.journal import (
    EntryState,
    Journal,
    JournalEntry,
    ReplayResult,
    UndoAction,
    UndoLog,
    UndoOp,
    pending,
    replay,
)

__all__ = [
    "EntryState",
    "FaultKind",
    "FaultPlan",
    "FaultRecord",
    "FaultRestoreError",
    "Journal",
    "JournalEntry",
    "PlannedCall",
    "ReplayResult",
    "UndoAction",
    "UndoLog",
    "UndoOp",
    "component_stopped",
    "load_balancer_config_replaced",
    "load_balancer_stopped",
    "node_isolated",
    "node_paused",
    "node_stopped",
    "pending",
    "replay",
]
