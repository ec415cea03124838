"""Undoing faults left in place by processes of this session: a test's own faults whose restore failed, and those of
an xdist worker that crashed. Both go through `kubeha.faults.journal.replay_processes`, under the journal's replay
lock, and record every outcome in the journal."""

from __future__ import annotations

import os
import socket
from collections.abc import Collection
from dataclasses import dataclass

from kubeha.faults.journal import JournalEntry, ReplayResult, pending, process_identity, replay_processes
from kubeha.providers.base import Provider

__all__ = ["Replayed", "faults_left_by", "undo_faults_of", "undo_own_faults"]


@dataclass(frozen=True)
class Replayed:
    """What an undo did, as lines for the terminal summary and the timeline."""

    undone: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()

    def describe(self) -> str:
        lines = [f"undid {len(self.undone)} fault(s) left in place"]
        lines.extend(f"undone: {text}" for text in self.undone)
        lines.extend(f"FAILED: {text}" for text in self.failed)
        return "\n".join(lines)

    @classmethod
    def of(cls, result: ReplayResult) -> Replayed:
        return cls(
            undone=tuple(f"{entry.undo.describe()} (pid {entry.pid})" for entry in result.undone),
            failed=tuple(
                f"could not {failure.entry.undo.describe()} ({failure.error}); do it by hand: "
                f"{failure.entry.undo.manual_fix(failure.entry.provider)}"
                for failure in result.failed
            ),
        )


def faults_left_by(cluster_id: str, processes: Collection[tuple[int, str]]) -> tuple[JournalEntry, ...]:
    """The journal entries of `processes` ((pid, process identity) pairs on this host) not undone yet."""
    host = socket.gethostname()
    return tuple(
        entry for entry in pending(cluster_id) if entry.host == host and (entry.pid, entry.process) in processes
    )


def undo_faults_of(provider: Provider, cluster_id: str, processes: Collection[tuple[int, str]]) -> Replayed:
    """Undo, newest first, the faults that `processes` ((pid, process identity) pairs on this host) left in place.

    The journal is read first without the replay lock, so that a process with nothing to undo never waits for a
    replay of others' entries.
    """
    if not faults_left_by(cluster_id, processes):
        return Replayed()
    return Replayed.of(replay_processes(provider, cluster_id, processes))


def undo_own_faults(provider: Provider, cluster_id: str) -> Replayed:
    """Undo this process's faults still in place (their restore failed)."""
    return undo_faults_of(provider, cluster_id, {(os.getpid(), process_identity())})
