"""Cross-process fault budget: lets xdist workers run disruptive tests without exceeding what the cluster tolerates."""

from __future__ import annotations

from kubeha.coordination.coordinator import (
    ActiveClaim,
    BudgetImpossible,
    BudgetTimeout,
    Coordinator,
    Grant,
    LogRecord,
    read_log,
    usage_from_log,
)

__all__ = [
    "ActiveClaim",
    "BudgetImpossible",
    "BudgetTimeout",
    "Coordinator",
    "Grant",
    "LogRecord",
    "read_log",
    "usage_from_log",
]
