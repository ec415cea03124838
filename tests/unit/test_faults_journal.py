"""The undo journal on disk: append, fold, replay of crashed processes' entries, concurrent writers.

Crashes are real: a forked child injects a fault through the journal and dies with os._exit inside the fault, so
its entry is left pending exactly as a killed test run leaves it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from kubeha.core.jsonfields import JsonFormatError
from kubeha.faults import EntryState, FaultPlan, Journal, UndoAction, UndoOp, node_stopped, pending, replay
from kubeha.faults.journal import (
    cluster_journal_dir,
    entries,
    process_alive,
    process_identity,
    prune,
    replay_processes,
)
from kubeha.providers.base import Component, LoadBalancerConfig, ProviderError

CLUSTER = "kind-kubeha"
FORK = multiprocessing.get_context("fork")
CHILD_TIMEOUT_S = 30.0
# The ``zombie`` fixture (tests/unit/conftest.py): forks a child running the work, returns its pid once unreaped.
MakeZombie = Callable[[Callable[[], None]], int]


class FailingPlan(FaultPlan):
    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        super().__init__(("cp-1", "cp-2"), provider_name="fake")
        self.failing = failing

    def _call(self, operation: str, node: str | None = None, component: Component | None = None,
              peers: tuple[str, ...] = ()) -> None:
        super()._call(operation, node, component, peers)
        if operation in self.failing:
            raise ProviderError(f"{operation} failed on purpose")


ALL_UNDOS = [
    UndoAction(UndoOp.START_NODE, node="cp-1"),
    UndoAction(UndoOp.RESUME_NODE, node="cp-1"),
    UndoAction(UndoOp.START_COMPONENT, node="cp-1", component=Component.KUBE_SCHEDULER),
    UndoAction(UndoOp.HEAL_NODE, node="cp-1", peers=("cp-2", "cp-3")),
    UndoAction(UndoOp.SET_LOAD_BALANCER_CONFIG, config=LoadBalancerConfig("haproxy", "global\n  maxconn 10\n")),
    UndoAction(UndoOp.START_LOAD_BALANCER),
]


@pytest.mark.parametrize("undo", ALL_UNDOS, ids=[u.op.value for u in ALL_UNDOS])
def test_undo_actions_survive_the_disk(tmp_path: Path, undo: UndoAction) -> None:
    journal = Journal(CLUSTER, provider_name="kind", state_dir=tmp_path, worker_id="gw3")
    written = journal.record(undo)
    (read,) = pending(CLUSTER, state_dir=tmp_path)
    assert read == written
    assert read.undo == undo and read.pid == os.getpid() and read.worker == "gw3" and read.provider == "kind"
    assert read.state is EntryState.PENDING and read.cluster == CLUSTER


@pytest.mark.parametrize(
    "kwargs",
    [
        {"op": UndoOp.START_NODE},
        {"op": UndoOp.START_COMPONENT, "node": "cp-1"},
        {"op": UndoOp.HEAL_NODE, "node": "cp-1"},
        {"op": UndoOp.START_LOAD_BALANCER, "node": "cp-1"},
        {"op": UndoOp.SET_LOAD_BALANCER_CONFIG},
    ],
)
def test_incoherent_undo_actions_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="undo"):
        UndoAction(**kwargs)  # type: ignore[arg-type]


def test_journal_is_one_fsynced_jsonl_file_per_process_under_the_cluster_dir(tmp_path: Path) -> None:
    journal = Journal(CLUSTER, provider_name="kind", state_dir=tmp_path)
    entry = journal.record(ALL_UNDOS[0])
    journal.mark_done(entry)
    assert journal.path.parent == cluster_journal_dir(CLUSTER, tmp_path) == tmp_path / f"journal-{CLUSTER}"
    assert journal.path.name.startswith(f"{os.getpid()}-")
    records = [json.loads(line) for line in journal.path.read_text().splitlines()]
    assert [record["record"] for record in records] == ["entry", "state"]
    assert records[1] == records[1] | {"id": entry.id, "state": "done"}
    assert pending(CLUSTER, state_dir=tmp_path) == ()


def _crash_inside_fault(state_dir: Path, node: str) -> None:
    plan = FaultPlan(("cp-1", "cp-2"), provider_name="fake")
    journal = Journal(CLUSTER, provider_name="fake", state_dir=state_dir, worker_id="gw1")
    with node_stopped(plan, node, journal=journal):
        os._exit(17)  # killed mid-fault: no restore, no journal update


def _crash(state_dir: Path, node: str) -> int:
    child = FORK.Process(target=_crash_inside_fault, args=(state_dir, node))
    child.start()
    child.join(CHILD_TIMEOUT_S)
    assert child.exitcode == 17
    assert child.pid is not None
    return child.pid


def test_crashed_process_entries_are_replayed_newest_first(tmp_path: Path) -> None:
    first = _crash(tmp_path, "cp-1")
    second = _crash(tmp_path, "cp-2")
    left = pending(CLUSTER, state_dir=tmp_path)
    assert [(entry.pid, entry.undo.node) for entry in left] == [(first, "cp-1"), (second, "cp-2")]

    provider = FailingPlan()
    result = replay(provider, CLUSTER, state_dir=tmp_path)
    assert result.ok and result.skipped == ()
    assert [entry.undo.node for entry in result.undone] == ["cp-2", "cp-1"]
    assert provider.describe() == ("start_node cp-2", "start_node cp-1")
    assert pending(CLUSTER, state_dir=tmp_path) == ()
    # A second replay has nothing left to do.
    assert replay(FailingPlan(), CLUSTER, state_dir=tmp_path).undone == ()


def test_entries_of_live_processes_are_not_replayed(tmp_path: Path) -> None:
    journal = Journal(CLUSTER, provider_name="fake", state_dir=tmp_path)
    mine = journal.record(ALL_UNDOS[0])
    provider = FailingPlan()
    result = replay(provider, CLUSTER, state_dir=tmp_path)
    assert result.undone == () and provider.describe() == ()
    assert [(skip.entry.id, "still running" in skip.reason) for skip in result.skipped] == [(mine.id, True)]
    assert [entry.id for entry in pending(CLUSTER, state_dir=tmp_path)] == [mine.id]


def _record_and_exit(state_dir: Path, node: str) -> Callable[[], None]:
    """Work for a child that injects a fault and exits without restoring it, as a crashed xdist worker does."""

    def work() -> None:
        Journal(CLUSTER, provider_name="fake", state_dir=state_dir, worker_id="gw1").record(
            UndoAction(UndoOp.START_NODE, node=node)
        )

    return work


def test_unreaped_process_counts_as_dead(tmp_path: Path, zombie: MakeZombie) -> None:
    pid = zombie(_record_and_exit(tmp_path, "cp-1"))
    (entry,) = pending(CLUSTER, state_dir=tmp_path)
    assert entry.pid == pid
    # The zombie still has its pid and start time: only its state tells that it exited.
    assert process_identity(pid) == entry.process
    assert not process_alive(pid, entry.process)
    assert process_alive(os.getpid(), process_identity())
    assert not process_alive(os.getpid(), "another-boot:12345")  # the identity check still applies

    provider = FailingPlan()
    result = replay(provider, CLUSTER, state_dir=tmp_path)
    assert [undone.id for undone in result.undone] == [entry.id] and result.skipped == ()
    assert provider.describe() == ("start_node cp-1",)
    assert pending(CLUSTER, state_dir=tmp_path) == ()


def test_replay_of_given_processes_leaves_the_others(tmp_path: Path, zombie: MakeZombie) -> None:
    crashed = zombie(_record_and_exit(tmp_path, "cp-1"))
    other = zombie(_record_and_exit(tmp_path, "cp-2"))
    mine = Journal(CLUSTER, provider_name="fake", state_dir=tmp_path).record(UndoAction(UndoOp.START_NODE, node="w-1"))
    identities = {entry.pid: entry.process for entry in pending(CLUSTER, state_dir=tmp_path)}

    provider = FailingPlan()
    result = replay_processes(provider, CLUSTER, {(crashed, identities[crashed])}, state_dir=tmp_path)
    assert [entry.undo.node for entry in result.undone] == ["cp-1"] and result.ok and result.skipped == ()
    assert provider.describe() == ("start_node cp-1",)
    # A live process is replayed too when named (a process undoing its own faults), whatever its liveness.
    own = replay_processes(provider, CLUSTER, {(os.getpid(), process_identity())}, state_dir=tmp_path)
    assert [entry.id for entry in own.undone] == [mine.id]
    assert [entry.pid for entry in pending(CLUSTER, state_dir=tmp_path)] == [other]


def _append_raw(path: Path, record: dict[str, object]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def test_reused_pid_counts_as_dead_and_other_hosts_are_skipped(tmp_path: Path) -> None:
    journal = Journal(CLUSTER, provider_name="fake", state_dir=tmp_path)
    reused = journal.record(UndoAction(UndoOp.START_NODE, node="cp-1"))
    foreign = journal.record(UndoAction(UndoOp.START_NODE, node="cp-2"))
    # Rewrite the file as if an earlier process with this pid had written the first entry, and another host the second.
    records = [json.loads(line) for line in journal.path.read_text().splitlines()]
    records[0]["process"] = "another-boot:12345"
    records[1]["host"] = socket.gethostname() + "-elsewhere"
    journal.path.write_text("".join(json.dumps(record) + "\n" for record in records))

    provider = FailingPlan()
    result = replay(provider, CLUSTER, state_dir=tmp_path)
    assert [entry.id for entry in result.undone] == [reused.id]
    assert [(skip.entry.id, "replay it there" in skip.reason) for skip in result.skipped] == [(foreign.id, True)]
    assert provider.describe() == ("start_node cp-1",)


def test_failed_replay_is_recorded_and_retried(tmp_path: Path) -> None:
    _crash(tmp_path, "cp-1")
    failing = replay(FailingPlan(frozenset({"start_node"})), CLUSTER, state_dir=tmp_path)
    assert not failing.ok and failing.undone == ()
    (failure,) = failing.failed
    assert "start_node failed on purpose" in failure.error
    assert "docker start cp-1" not in failure.describe()  # written by the fake provider, not kind
    assert "start node cp-1" in failing.describe() and "FAILED" in failing.describe()
    (still,) = pending(CLUSTER, state_dir=tmp_path)
    assert still.state is EntryState.FAILED and still.error is not None and "on purpose" in still.error

    healed = replay(FailingPlan(), CLUSTER, state_dir=tmp_path)
    assert healed.ok and [entry.id for entry in healed.undone] == [still.id]
    assert pending(CLUSTER, state_dir=tmp_path) == ()
    assert [entry.state for entry in entries(CLUSTER, state_dir=tmp_path)] == [EntryState.DONE]


WRITERS = 4
ENTRIES_PER_WRITER = 25


def _write_many(state_dir: Path, worker: str) -> None:
    journal = Journal(CLUSTER, provider_name="fake", state_dir=state_dir, worker_id=worker)
    for index in range(ENTRIES_PER_WRITER):
        entry = journal.record(UndoAction(UndoOp.START_NODE, node=f"n{index}"))
        if index % 2:
            journal.mark_done(entry)


def test_prune_removes_only_finished_files_of_dead_processes(tmp_path: Path) -> None:
    _crash(tmp_path, "cp-1")  # dead, pending until replayed
    live = Journal(CLUSTER, provider_name="fake", state_dir=tmp_path)
    live.mark_done(live.record(ALL_UNDOS[0]))  # done, but this process still runs
    assert prune(CLUSTER, state_dir=tmp_path) == ()
    (crashed,) = pending(CLUSTER, state_dir=tmp_path)
    assert replay(FailingPlan(), CLUSTER, state_dir=tmp_path).ok
    assert prune(CLUSTER, state_dir=tmp_path) == (crashed.path,)
    assert live.path.exists() and [entry.path for entry in entries(CLUSTER, state_dir=tmp_path)] == [live.path]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    children = [FORK.Process(target=_write_many, args=(tmp_path, f"gw{i}")) for i in range(WRITERS)]
    for child in children:
        child.start()
    for child in children:
        child.join(CHILD_TIMEOUT_S)
        assert child.exitcode == 0
    everything = entries(CLUSTER, state_dir=tmp_path)
    assert len(everything) == WRITERS * ENTRIES_PER_WRITER
    assert len(pending(CLUSTER, state_dir=tmp_path)) == WRITERS * (ENTRIES_PER_WRITER - ENTRIES_PER_WRITER // 2)
    assert len({entry.id for entry in everything}) == len(everything)


def test_corrupt_line_names_file_and_line(tmp_path: Path) -> None:
    journal = Journal(CLUSTER, provider_name="fake", state_dir=tmp_path)
    journal.record(ALL_UNDOS[0])
    with open(journal.path, "a") as handle:
        handle.write('{"record": "entry", "id": \n')
    with pytest.raises(JsonFormatError, match=f"journal {journal.path} line 2 is not JSON"):
        pending(CLUSTER, state_dir=tmp_path)


def test_nothing_to_replay_for_an_unknown_cluster(tmp_path: Path) -> None:
    assert replay(FailingPlan(), "never-seen", state_dir=tmp_path).undone == ()
    assert pending("never-seen", state_dir=tmp_path) == ()


@pytest.mark.parametrize("cluster_id", ["", "../etc", ".hidden", "a/b", "sp ace"])
def test_cluster_ids_that_cannot_name_a_directory(tmp_path: Path, cluster_id: str) -> None:
    with pytest.raises(ValueError, match="cannot name a journal directory"):
        Journal(cluster_id, provider_name="fake", state_dir=tmp_path)


def test_process_identity_is_stable_and_unknown_for_missing_pids() -> None:
    assert process_identity() == process_identity(os.getpid())
    missing_pid = 2**22 + 1  # above Linux's pid_max limit
    assert process_identity(missing_pid).endswith(":unknown")
