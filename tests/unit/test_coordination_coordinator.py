"""The cross-process fault budget, exercised by real processes contending through one run directory.

Every contention test checks the log two ways: the core ledger replay (peak usage per resource kind) and the raw
grant/release intervals, which must not overlap when the limit is one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from kubeha.coordination import BudgetImpossible, BudgetTimeout, Coordinator, Grant, read_log, usage_from_log
from kubeha.core.budget import Claim, Limits, ResourceKind
from kubeha.core.topology import EtcdMode
from kubeha.faults import FaultPlan, Journal, UndoAction, UndoOp, replay

FORK = multiprocessing.get_context("fork")
K = ResourceKind
CHILD_TIMEOUT_S = 60.0
POLL_S = 0.05
HOLD_S = 0.15
WORKERS = 4
ROUNDS = 3


def limits(control_planes: int = 1) -> Limits:
    return Limits(
        {
            K.CONTROL_PLANE_NODE: control_planes,
            K.ETCD_MEMBER: control_planes,
            K.API_SERVER: control_planes,
            K.CONTROLLER_MANAGER: control_planes,
            K.SCHEDULER: control_planes,
            K.WORKER_NODE: 1,
        },
        EtcdMode.STACKED,
    )


def _contend(run_dir: Path, worker: str, control_planes: int, start: Event) -> None:
    coordinator = Coordinator(run_dir, limits(control_planes), worker_id=worker, poll_interval_s=POLL_S)
    start.wait(CHILD_TIMEOUT_S)
    for round_ in range(ROUNDS):
        claim = Claim(f"test_stop_cp[{worker}-{round_}]", {K.CONTROL_PLANE_NODE: 1})
        with coordinator.acquire(claim, timeout_s=CHILD_TIMEOUT_S):
            time.sleep(HOLD_S)


def _run_workers(run_dir: Path, control_planes: int) -> None:
    start = FORK.Event()
    children = [
        FORK.Process(target=_contend, args=(run_dir, f"gw{i}", control_planes, start)) for i in range(WORKERS)
    ]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join(CHILD_TIMEOUT_S)
        assert child.exitcode == 0


def _intervals(run_dir: Path) -> list[tuple[float, float]]:
    granted: dict[str, float] = {}
    spans: list[tuple[float, float]] = []
    for record in read_log(run_dir):
        if record.event == "grant":
            granted[record.holder] = record.mono
        elif record.event == "release":
            spans.append((granted.pop(record.holder), record.mono))
    assert granted == {}, f"claims never released: {granted}"
    return sorted(spans)


def test_one_control_plane_node_down_at_a_time_across_processes(tmp_path: Path) -> None:
    _run_workers(tmp_path, control_planes=1)
    usage = usage_from_log(tmp_path)
    assert usage.within_limits, usage.violations
    assert usage.peak_of(K.CONTROL_PLANE_NODE) == 1
    assert usage.peak_of(K.ETCD_MEMBER) == 1  # stacked etcd goes down with its node
    assert usage.max_active == 1 and usage.unreleased == ()
    spans = _intervals(tmp_path)
    assert len(spans) == WORKERS * ROUNDS
    for (_, end), (next_start, _) in zip(spans, spans[1:]):
        assert end <= next_start, "two control-plane claims overlapped"
    events = [record.event for record in read_log(tmp_path)]
    assert events.count("request") == WORKERS * ROUNDS and "wait" in events
    assert {record.worker for record in read_log(tmp_path)} == {f"gw{i}" for i in range(WORKERS)}


def test_log_shows_real_concurrency_when_the_limit_allows_it(tmp_path: Path) -> None:
    # The same workload with a limit of two: the log must show two at once, or the measurement above proves nothing.
    _run_workers(tmp_path, control_planes=2)
    usage = usage_from_log(tmp_path)
    assert usage.within_limits
    assert usage.peak_of(K.CONTROL_PLANE_NODE) == 2


def _hold_until(run_dir: Path, claim: Claim, held: Event, release: Event) -> None:
    coordinator = Coordinator(run_dir, limits(), worker_id="gw9", poll_interval_s=POLL_S)
    with coordinator.acquire(claim, timeout_s=CHILD_TIMEOUT_S):
        held.set()
        release.wait(CHILD_TIMEOUT_S)


def test_timeout_names_who_holds_what(tmp_path: Path) -> None:
    held, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(
        target=_hold_until, args=(tmp_path, Claim("test_kill_etcd", {K.ETCD_MEMBER: 1}), held, release)
    )
    holder.start()
    try:
        assert held.wait(CHILD_TIMEOUT_S)
        coordinator = Coordinator(tmp_path, limits(), worker_id="gw0", poll_interval_s=POLL_S)
        started = time.monotonic()
        with pytest.raises(BudgetTimeout) as info:
            with coordinator.acquire(Claim("test_stop_cp", {K.CONTROL_PLANE_NODE: 1}), timeout_s=0.5):
                pytest.fail("granted although etcd is already at its limit")
        assert time.monotonic() - started >= 0.5
    finally:
        release.set()
        holder.join(CHILD_TIMEOUT_S)
    message = str(info.value)
    assert "test_stop_cp" in message and "test_kill_etcd" in message
    assert f"pid {holder.pid} worker gw9" in message and "etcd_member" in message
    assert [record.event for record in read_log(tmp_path)][-1] == "release"
    assert "timeout" in [record.event for record in read_log(tmp_path)]


def test_claim_that_can_never_fit_fails_at_once(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, limits(), poll_interval_s=POLL_S)
    started = time.monotonic()
    with pytest.raises(BudgetImpossible, match="can never be granted"):
        coordinator.acquire(Claim("test_two_down", {K.CONTROL_PLANE_NODE: 2}), timeout_s=30)
    assert time.monotonic() - started < 5 * POLL_S
    assert [record.event for record in read_log(tmp_path)] == ["refuse"]


def _die_holding(run_dir: Path) -> None:
    coordinator = Coordinator(run_dir, limits(), worker_id="gw5", poll_interval_s=POLL_S)
    with coordinator.acquire(Claim("test_crashes", {K.CONTROL_PLANE_NODE: 1}), timeout_s=CHILD_TIMEOUT_S):
        os._exit(3)


def test_claims_of_dead_processes_are_reclaimed_and_logged(tmp_path: Path) -> None:
    child = FORK.Process(target=_die_holding, args=(tmp_path,))
    child.start()
    child.join(CHILD_TIMEOUT_S)
    assert child.exitcode == 3
    coordinator = Coordinator(tmp_path, limits(), worker_id="gw0", poll_interval_s=POLL_S)
    assert coordinator.active() == ()
    with coordinator.acquire(Claim("test_after_crash", {K.CONTROL_PLANE_NODE: 1}), timeout_s=1.0) as grant:
        assert grant.waited_s < 1.0
    log = read_log(tmp_path)
    reclaims = [record for record in log if record.event == "reclaim"]
    assert [record.holder for record in reclaims] == ["test_crashes"]
    assert f"process {child.pid}" in reclaims[0].detail
    usage = usage_from_log(tmp_path)
    assert usage.within_limits and usage.unreleased == () and usage.peak_of(K.CONTROL_PLANE_NODE) == 1


def test_exclusive_claim_runs_alone(tmp_path: Path) -> None:
    held, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(
        target=_hold_until, args=(tmp_path, Claim("test_worker_down", {K.WORKER_NODE: 1}), held, release)
    )
    holder.start()
    try:
        assert held.wait(CHILD_TIMEOUT_S)
        coordinator = Coordinator(tmp_path, limits(), worker_id="gw0", poll_interval_s=POLL_S)
        exclusive = Claim("test_quorum_loss", {K.CONTROL_PLANE_NODE: 2}, exclusive=True)
        with pytest.raises(BudgetTimeout, match="test_worker_down"):
            with coordinator.acquire(exclusive, timeout_s=0.3):
                pytest.fail("exclusive claim granted while another claim is active")
        release.set()
        holder.join(CHILD_TIMEOUT_S)
        with coordinator.acquire(exclusive, timeout_s=CHILD_TIMEOUT_S):
            assert [held_claim.claim.holder for held_claim in coordinator.active()] == ["test_quorum_loss"]
    finally:
        release.set()
        holder.join(CHILD_TIMEOUT_S)
    usage = usage_from_log(tmp_path)
    assert usage.within_limits and usage.max_active == 1
    assert usage.peak_of(K.CONTROL_PLANE_NODE) == 2 and usage.shared_peak_of(K.CONTROL_PLANE_NODE) == 0


def test_processes_must_agree_on_limits(tmp_path: Path) -> None:
    with Coordinator(tmp_path, limits(1)).acquire(Claim("a", {K.WORKER_NODE: 1}), timeout_s=1):
        pass
    with pytest.raises(ValueError, match="same topology"):
        with Coordinator(tmp_path, limits(2)).acquire(Claim("b", {K.WORKER_NODE: 1}), timeout_s=1):
            pass


# -- holders that exited but were not reaped (a crashed xdist worker when xdist reports it down) ----------------------

CLUSTER_ID = "kind-kubeha"
# The ``zombie`` fixture (tests/unit/conftest.py): forks a child running the work, returns its pid once unreaped.
MakeZombie = Callable[[Callable[[], None]], int]


def _acquire_and_exit(run_dir: Path, state_dir: Path | None = None) -> Callable[[], None]:
    """Work for a child that takes a claim, optionally injects a fault through the journal, and exits holding both."""
    held: list[AbstractContextManager[Grant]] = []  # never exited: collecting it would release the claim

    def work() -> None:
        coordinator = Coordinator(run_dir, limits(), worker_id="gw5", poll_interval_s=POLL_S)
        held.append(coordinator.acquire(Claim("test_crashes", {K.CONTROL_PLANE_NODE: 1}), timeout_s=CHILD_TIMEOUT_S))
        held[0].__enter__()
        if state_dir is not None:
            journal = Journal(CLUSTER_ID, provider_name="fake", state_dir=state_dir, worker_id="gw5")
            journal.record(UndoAction(UndoOp.START_NODE, node="cp-1"))

    return work


def _holder(run_dir: Path) -> tuple[int, str]:
    """The (pid, process identity) of the only claim in the state file, read without reclaiming anything."""
    (held,) = json.loads((run_dir / "state.json").read_text())["active"]
    return held["pid"], held["process"]


def test_claim_of_an_unreaped_holder_is_reclaimed(tmp_path: Path, zombie: MakeZombie) -> None:
    pid = zombie(_acquire_and_exit(tmp_path))
    coordinator = Coordinator(tmp_path, limits(), worker_id="gw0", poll_interval_s=POLL_S)
    assert coordinator.active() == ()
    with coordinator.acquire(Claim("test_after_crash", {K.CONTROL_PLANE_NODE: 1}), timeout_s=1.0):
        pass
    reclaims = [record for record in read_log(tmp_path) if record.event == "reclaim"]
    assert [record.holder for record in reclaims] == ["test_crashes"]
    assert f"process {pid} (worker gw5) is gone" in reclaims[0].detail
    usage = usage_from_log(tmp_path)
    assert usage.within_limits and usage.unreleased == ()


def test_claim_stays_until_the_dead_holders_faults_are_undone(tmp_path: Path, zombie: MakeZombie) -> None:
    run_dir, state_dir = tmp_path / "run", tmp_path / "state"
    pid = zombie(_acquire_and_exit(run_dir, state_dir))
    coordinator = Coordinator(
        run_dir, limits(), worker_id="gw0", poll_interval_s=POLL_S, journal_cluster_id=CLUSTER_ID,
        journal_state_dir=state_dir,
    )
    # cp-1 is still stopped: another control-plane fault must wait, however dead the holder is.
    with pytest.raises(BudgetTimeout, match="test_crashes"):
        with coordinator.acquire(Claim("test_stop_cp", {K.CONTROL_PLANE_NODE: 1}), timeout_s=0.3):
            pytest.fail("granted while the dead holder's fault is still in place")
    assert [held.pid for held in coordinator.active()] == [pid]
    deferred = [record for record in read_log(run_dir) if record.event == "reclaim-deferred"]
    assert len(deferred) == 1 and "1 fault(s) it injected are not undone yet" in deferred[0].detail

    plan = FaultPlan(("cp-1",), provider_name="fake")
    assert replay(plan, CLUSTER_ID, state_dir=state_dir).ok
    assert plan.describe() == ("start_node cp-1",)
    with coordinator.acquire(Claim("test_stop_cp", {K.CONTROL_PLANE_NODE: 1}), timeout_s=1.0):
        pass
    events = [(record.event, record.holder) for record in read_log(run_dir)]
    assert events.index(("reclaim", "test_crashes")) < events.index(("grant", "test_stop_cp"))
    assert usage_from_log(run_dir).within_limits


def test_controller_reclaims_a_crashed_workers_claims(tmp_path: Path, zombie: MakeZombie) -> None:
    zombie(_acquire_and_exit(tmp_path))
    pid, process = _holder(tmp_path)
    coordinator = Coordinator.of_run(tmp_path)
    assert coordinator is not None and coordinator.limits == limits()
    assert coordinator.reclaim({(pid + 1, process)}, "worker gw5 crashed") == ()
    (released,) = coordinator.reclaim({(pid, process)}, "worker gw5 crashed; its faults are undone")
    assert released.claim.holder == "test_crashes"
    (record,) = [record for record in read_log(tmp_path) if record.event == "reclaim"]
    assert "worker gw5 crashed; its faults are undone" in record.detail
    assert coordinator.active() == ()
    usage = usage_from_log(tmp_path)
    assert usage.within_limits and usage.unreleased == ()


def test_no_coordinator_for_a_run_without_claims(tmp_path: Path) -> None:
    assert Coordinator.of_run(tmp_path) is None
