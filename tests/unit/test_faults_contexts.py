"""Fault context managers: journal before inject, restore on every way out, loud failure when restore fails.

The provider is `FaultPlan`, the project's recording provider (it implements the Provider protocol and changes
nothing), optionally made to fail at one operation.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from kubeha.faults import (
    EntryState,
    FaultKind,
    FaultPlan,
    FaultRecord,
    FaultRestoreError,
    Journal,
    UndoOp,
    component_stopped,
    load_balancer_config_replaced,
    load_balancer_stopped,
    node_isolated,
    node_paused,
    node_stopped,
    pending,
)
from kubeha.faults.journal import entries
from kubeha.providers.base import CapabilityError, Component, LoadBalancerConfig, ProviderError

CLUSTER = "unit-cluster"
NEW_CONFIG = LoadBalancerConfig("haproxy", "frontend broken\n")
OLD_CONFIG = LoadBalancerConfig("haproxy", "frontend ok\n")


class FailingPlan(FaultPlan):
    """Records calls like FaultPlan; the operations named in `fail` raise the given error instead."""

    def __init__(self, fail: dict[str, BaseException] | None = None) -> None:
        super().__init__(("cp-1", "cp-2", "cp-3"), provider_name="fake")
        self.fail = fail or {}

    def _call(self, operation: str, node: str | None = None, component: Component | None = None,
              peers: tuple[str, ...] = ()) -> None:
        super()._call(operation, node, component, peers)
        error = self.fail.get(operation)
        if error is not None:
            raise error

    def load_balancer_config(self) -> LoadBalancerConfig:
        return OLD_CONFIG


FaultFactory = Callable[[FailingPlan, Journal], AbstractContextManager[FaultRecord]]

# (fault, expected inject call, expected restore call, undo op)
FAULTS: list[tuple[str, FaultFactory, str, str, UndoOp]] = [
    ("stop", lambda p, j: node_stopped(p, "cp-1", journal=j), "stop_node cp-1", "start_node cp-1", UndoOp.START_NODE),
    ("kill", lambda p, j: node_stopped(p, "cp-1", journal=j, hard=True), "kill_node cp-1", "start_node cp-1",
     UndoOp.START_NODE),
    ("pause", lambda p, j: node_paused(p, "cp-2", journal=j), "pause_node cp-2", "resume_node cp-2",
     UndoOp.RESUME_NODE),
    ("component", lambda p, j: component_stopped(p, "cp-3", Component.ETCD, journal=j), "stop_component cp-3 etcd",
     "start_component cp-3 etcd", UndoOp.START_COMPONENT),
    ("isolate", lambda p, j: node_isolated(p, "cp-1", ("cp-2", "cp-3"), journal=j),
     "isolate_node cp-1 peers=cp-2,cp-3", "heal_node cp-1 peers=cp-2,cp-3", UndoOp.HEAL_NODE),
    ("lb-config", lambda p, j: load_balancer_config_replaced(p, NEW_CONFIG, journal=j), "set_load_balancer_config",
     "set_load_balancer_config", UndoOp.SET_LOAD_BALANCER_CONFIG),
    ("lb-stop", lambda p, j: load_balancer_stopped(p, journal=j), "stop_load_balancer", "start_load_balancer",
     UndoOp.START_LOAD_BALANCER),
]
IDS = [fault[0] for fault in FAULTS]
PARAMS = [fault[1:] for fault in FAULTS]


def journal(tmp_path: Path) -> Journal:
    return Journal(CLUSTER, provider_name="fake", state_dir=tmp_path, worker_id="gw0")


@pytest.mark.parametrize(("fault", "inject", "restore", "op"), PARAMS, ids=IDS)
def test_journal_entry_is_written_before_inject_and_done_after_restore(
    tmp_path: Path, fault: FaultFactory, inject: str, restore: str, op: UndoOp
) -> None:
    plan, log = FailingPlan(), journal(tmp_path)
    manager = fault(plan, log)
    assert plan.describe() == ()
    with manager as record:
        assert plan.describe() == (inject,)
        waiting = pending(CLUSTER, state_dir=tmp_path)
        assert [entry.undo.op for entry in waiting] == [op]
        assert waiting[0].id == record.journal_entry and waiting[0].worker == "gw0"
        assert record.started_mono <= record.injected_mono
        assert record.provider == "fake"
    assert plan.describe() == (inject, restore)
    assert pending(CLUSTER, state_dir=tmp_path) == ()
    assert [entry.state for entry in entries(CLUSTER, state_dir=tmp_path)] == [EntryState.DONE]


@pytest.mark.parametrize("interrupt", [RuntimeError("test body failed"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
@pytest.mark.parametrize(("fault", "inject", "restore", "op"), PARAMS, ids=IDS)
def test_restored_when_the_body_raises(
    tmp_path: Path, fault: FaultFactory, inject: str, restore: str, op: UndoOp, interrupt: BaseException
) -> None:
    plan, log = FailingPlan(), journal(tmp_path)
    with pytest.raises(type(interrupt)):
        with fault(plan, log):
            raise interrupt
    assert plan.describe() == (inject, restore)
    assert pending(CLUSTER, state_dir=tmp_path) == ()


@pytest.mark.parametrize(("fault", "inject", "restore", "op"), PARAMS, ids=IDS)
def test_failed_restore_is_loud_and_leaves_the_entry_pending(
    tmp_path: Path, fault: FaultFactory, inject: str, restore: str, op: UndoOp
) -> None:
    undo_operation = restore.split()[0]
    plan = FailingPlan({undo_operation: ProviderError("docker daemon went away")})
    with pytest.raises(FaultRestoreError) as info:
        with fault(plan, journal(tmp_path)):
            pass
    message = str(info.value)
    assert "docker daemon went away" in message
    assert "still degraded" in message and "stays pending" in message
    target = inject.split()[1] if op not in (UndoOp.SET_LOAD_BALANCER_CONFIG, UndoOp.START_LOAD_BALANCER) else "load"
    assert target in message
    assert info.value.undo.manual_fix("fake") in message
    assert [entry.undo.op for entry in pending(CLUSTER, state_dir=tmp_path)] == [op]


def test_failed_restore_after_body_error_keeps_the_body_error_as_context(tmp_path: Path) -> None:
    plan = FailingPlan({"start_node": ProviderError("node does not boot")})
    with pytest.raises(FaultRestoreError) as info:
        with node_stopped(plan, "cp-1", journal=journal(tmp_path)):
            raise AssertionError("availability below budget")
    assert "node does not boot" in str(info.value)
    assert isinstance(info.value.interrupted, AssertionError)
    assert "AssertionError: availability below budget" in str(info.value)
    assert isinstance(info.value.__cause__, ProviderError)


def test_partial_injection_is_undone(tmp_path: Path) -> None:
    plan = FailingPlan({"isolate_node": ProviderError("second iptables rule rejected")})
    with pytest.raises(ProviderError, match="second iptables rule rejected"):
        with node_isolated(plan, "cp-1", ("cp-2",), journal=journal(tmp_path)):
            pytest.fail("the body must not run when injection failed")
    assert plan.describe() == ("isolate_node cp-1 peers=cp-2", "heal_node cp-1 peers=cp-2")
    assert pending(CLUSTER, state_dir=tmp_path) == ()


def test_capability_error_passes_through_without_undo(tmp_path: Path) -> None:
    refusal = CapabilityError("kill a node (hard power-off)", "ssh", "add power commands")
    plan = FailingPlan({"kill_node": refusal, "start_node": CapabilityError("start", "ssh", "never called")})
    with pytest.raises(CapabilityError) as info:
        with node_stopped(plan, "cp-1", journal=journal(tmp_path), hard=True):
            pytest.fail("the body must not run when the provider cannot inject")
    assert info.value is refusal
    assert plan.describe() == ("kill_node cp-1",)
    assert pending(CLUSTER, state_dir=tmp_path) == ()


def test_load_balancer_undo_restores_the_configuration_read_before(tmp_path: Path) -> None:
    plan = FailingPlan()
    with load_balancer_config_replaced(plan, NEW_CONFIG, journal=journal(tmp_path)):
        (entry,) = pending(CLUSTER, state_dir=tmp_path)
        assert entry.undo.config == OLD_CONFIG


def test_dry_run_plans_and_touches_nothing(tmp_path: Path) -> None:
    plan = FaultPlan(("cp-1", "cp-2"))
    with node_stopped(plan, "cp-1", journal=plan) as record:
        assert record.kind is FaultKind.NODE_STOPPED
        with component_stopped(plan, "cp-2", Component.KUBE_APISERVER, journal=plan):
            pass
    assert plan.describe() == (
        "stop_node cp-1",
        "stop_component cp-2 kube-apiserver",
        "start_component cp-2 kube-apiserver",
        "start_node cp-1",
    )
    assert [entry.undo.op for entry in plan.journal] == [UndoOp.START_NODE, UndoOp.START_COMPONENT]
    assert list(tmp_path.iterdir()) == []


def test_isolation_needs_peers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name the nodes"):
        node_isolated(FailingPlan(), "cp-1", (), journal=journal(tmp_path))
