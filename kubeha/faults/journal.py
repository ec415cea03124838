"""The undo journal: what must be done to restore a cluster if the process that broke it dies.

Before a fault is injected, its undo action is appended to a JSON-lines file; after the fault is restored, a state
record marks it done. A run that crashed (killed, power cut, Ctrl-C during restore) leaves entries pending; the next
session replays them with `replay`, newest first, and fails loudly on any it cannot undo. A process is gone when its
pid no longer exists, names another process (pid reuse, reboot), or names a zombie (exited, not yet reaped by its
parent). `replay_processes` undoes the entries of given processes whatever their liveness: the xdist controller uses
it for a worker that xdist reported down, and a process for its own faults whose restore failed.

Layout: ``<state_dir>/journal-<cluster id>/<pid>-<random>.jsonl``, one file per process, so writers rarely share a
file. ``state_dir`` defaults to ``$XDG_STATE_HOME/kubeha`` (``~/.local/state/kubeha``). Every append happens under
the cluster directory's file lock and is fsynced before the fault is injected. A replay of a dead process's entries
appends its state records to that process's file, under the same lock; a second lock makes replays exclusive.

Records (one JSON object per line):

- ``{"record": "entry", "id", "created", "pid", "process", "host", "worker", "provider", "cluster", "undo"}``
- ``{"record": "state", "id", "state": "done" | "failed", "at", "pid", "error"}``

An entry is pending until a ``done`` record follows it. A ``failed`` record (a replay that could not undo it) keeps
it unresolved: the fault is still in place, so the next replay tries again.
"""

from __future__ import annotations

import enum
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import filelock

from kubeha.core.jsonfields import (
    JsonFormatError,
    JsonObject,
    JsonValue,
    as_object,
    get_float,
    get_int,
    get_list,
    get_object,
    get_optional_str,
    get_str,
)
from kubeha.providers.base import CapabilityError, Component, LoadBalancerConfig, Provider, ProviderError

__all__ = [
    "EntryState",
    "Journal",
    "JournalEntry",
    "ReplayFailure",
    "ReplayResult",
    "ReplaySkip",
    "UndoAction",
    "UndoLog",
    "UndoOp",
    "cluster_journal_dir",
    "default_state_dir",
    "entries",
    "pending",
    "process_alive",
    "process_identity",
    "prune",
    "replay",
    "replay_processes",
]

# Appends are quick; a writer that cannot get the lock this long is stuck behind a dead NFS lock or similar.
LOCK_TIMEOUT_S = 30.0
# A replay may start nodes and wait for components: another replay waits at most this long for it.
REPLAY_LOCK_TIMEOUT_S = 1800.0
_CLUSTER_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class UndoOp(enum.Enum):
    START_NODE = "start_node"
    RESUME_NODE = "resume_node"
    START_COMPONENT = "start_component"
    HEAL_NODE = "heal_node"
    SET_LOAD_BALANCER_CONFIG = "set_load_balancer_config"
    START_LOAD_BALANCER = "start_load_balancer"


_NODE_OPS = frozenset({UndoOp.START_NODE, UndoOp.RESUME_NODE, UndoOp.START_COMPONENT, UndoOp.HEAL_NODE})


@dataclass(frozen=True)
class UndoAction:
    """One provider call that restores what a fault broke."""

    op: UndoOp
    node: str | None = None
    component: Component | None = None
    peers: tuple[str, ...] = ()
    config: LoadBalancerConfig | None = None

    def __post_init__(self) -> None:
        needs_node = self.op in _NODE_OPS
        if needs_node != (self.node is not None):
            raise ValueError(f"undo {self.op.value} {'needs' if needs_node else 'takes no'} node, got {self.node!r}")
        if (self.op is UndoOp.START_COMPONENT) != (self.component is not None):
            raise ValueError(f"undo {self.op.value}: a component goes with start_component only, got {self.component}")
        if (self.op is UndoOp.HEAL_NODE) != bool(self.peers):
            raise ValueError(
                f"undo {self.op.value}: peers go with heal_node only (and it needs some), got {self.peers}"
            )
        if (self.op is UndoOp.SET_LOAD_BALANCER_CONFIG) != (self.config is not None):
            raise ValueError(f"undo {self.op.value}: a config goes with set_load_balancer_config only")

    def apply(self, provider: Provider) -> None:
        node = self.node or ""
        if self.op is UndoOp.START_NODE:
            provider.start_node(node)
        elif self.op is UndoOp.RESUME_NODE:
            provider.resume_node(node)
        elif self.op is UndoOp.START_COMPONENT and self.component is not None:
            provider.start_component(node, self.component)
        elif self.op is UndoOp.HEAL_NODE:
            provider.heal_node(node, self.peers)
        elif self.op is UndoOp.SET_LOAD_BALANCER_CONFIG and self.config is not None:
            provider.set_load_balancer_config(self.config)
        elif self.op is UndoOp.START_LOAD_BALANCER:
            provider.start_load_balancer()

    def describe(self) -> str:
        if self.op is UndoOp.START_NODE:
            return f"start node {self.node}"
        if self.op is UndoOp.RESUME_NODE:
            return f"resume node {self.node}"
        if self.op is UndoOp.START_COMPONENT and self.component is not None:
            return f"start {self.component.value} on node {self.node}"
        if self.op is UndoOp.HEAL_NODE:
            return f"heal node {self.node} from {', '.join(self.peers)}"
        if self.op is UndoOp.SET_LOAD_BALANCER_CONFIG:
            return "restore the load balancer configuration"
        return "start the load balancer"

    def manual_fix(self, provider: str) -> str:
        """How an operator restores this by hand, with `provider`'s tools."""
        kind = provider == "kind"
        if self.op is UndoOp.START_NODE:
            return (f"`docker start {self.node}`" if kind else
                    f"power node {self.node} on if needed and start the container runtime and kubelet "
                    "(`systemctl start containerd kubelet`)")
        if self.op is UndoOp.RESUME_NODE:
            return (f"`docker unpause {self.node}`" if kind else
                    f"`systemctl thaw kubepods.slice kubelet.service containerd.service` on node {self.node}")
        if self.op is UndoOp.START_COMPONENT and self.component is not None:
            if self.component is Component.KUBELET:
                return f"`systemctl start kubelet` on node {self.node}"
            return (f"move /etc/kubernetes/kubeha-held/{self.component.value}.yaml back to /etc/kubernetes/manifests/ "
                    f"on node {self.node} (or `systemctl start` its unit when components run as systemd units)")
        if self.op is UndoOp.HEAL_NODE:
            return (f"on node {self.node}: delete the jumps to chain KUBEHA-ISOLATE from INPUT, OUTPUT and FORWARD, "
                    "then `iptables -F KUBEHA-ISOLATE && iptables -X KUBEHA-ISOLATE` (and the same with ip6tables)")
        if self.op is UndoOp.SET_LOAD_BALANCER_CONFIG:
            return ("write the original configuration saved in this journal entry back to the load balancer and "
                    "reload it")
        return "start the load balancer (`docker start <cluster>-external-load-balancer` for kind)"

    def to_dict(self) -> JsonObject:
        return {
            "op": self.op.value,
            "node": self.node,
            "component": None if self.component is None else self.component.value,
            "peers": list(self.peers),
            "config": None if self.config is None else {"kind": self.config.kind, "text": self.config.text},
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str) -> UndoAction:
        op_name = get_str(obj, "op", where)
        component_name = get_optional_str(obj, "component", where)
        raw_config = obj.get("config")
        config = None
        if raw_config is not None:
            config_obj = as_object(raw_config, f"{where}.config")
            config = LoadBalancerConfig(kind=get_str(config_obj, "kind", f"{where}.config"),
                                        text=get_str(config_obj, "text", f"{where}.config"))
        peers: list[str] = []
        for index, peer in enumerate(get_list(obj, "peers", where)):
            if not isinstance(peer, str):
                raise JsonFormatError(f"{where}.peers[{index}] must be a node name, found {peer!r}")
            peers.append(peer)
        try:
            return cls(
                op=UndoOp(op_name),
                node=get_optional_str(obj, "node", where),
                component=None if component_name is None else Component(component_name),
                peers=tuple(peers),
                config=config,
            )
        except ValueError as error:
            raise JsonFormatError(f"{where}: {error}: the journal was edited by hand or written by another "
                                  "version of kubeha") from None


class EntryState(enum.Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class JournalEntry:
    id: str
    created: float
    pid: int
    process: str
    host: str
    worker: str | None
    provider: str
    cluster: str
    undo: UndoAction
    state: EntryState = EntryState.PENDING
    error: str | None = None
    path: Path | None = None

    def to_dict(self) -> JsonObject:
        return {
            "record": "entry",
            "id": self.id,
            "created": self.created,
            "pid": self.pid,
            "process": self.process,
            "host": self.host,
            "worker": self.worker,
            "provider": self.provider,
            "cluster": self.cluster,
            "undo": self.undo.to_dict(),
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str, path: Path) -> JournalEntry:
        return cls(
            id=get_str(obj, "id", where),
            created=get_float(obj, "created", where),
            pid=get_int(obj, "pid", where),
            process=get_str(obj, "process", where),
            host=get_str(obj, "host", where),
            worker=get_optional_str(obj, "worker", where),
            provider=get_str(obj, "provider", where),
            cluster=get_str(obj, "cluster", where),
            undo=UndoAction.from_dict(get_object(obj, "undo", where), f"{where}.undo"),
            path=path,
        )


class UndoLog(Protocol):
    """Where faults write their undo actions: a `Journal`, or a dry-run plan that keeps them in memory."""

    def record(self, undo: UndoAction) -> JournalEntry: ...

    def mark_done(self, entry: JournalEntry) -> None: ...


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kubeha"


def _check_cluster_id(cluster_id: str) -> None:
    if not cluster_id or cluster_id.startswith(".") or not set(cluster_id) <= _CLUSTER_ID_CHARS:
        raise ValueError(
            f"cluster id {cluster_id!r} cannot name a journal directory: use letters, digits, '.', '_' and '-' "
            "(not starting with '.'), e.g. the kind cluster name or a hash of the API server URL"
        )


def cluster_journal_dir(cluster_id: str, state_dir: Path | None = None) -> Path:
    _check_cluster_id(cluster_id)
    return (state_dir or default_state_dir()) / f"journal-{cluster_id}"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


# /proc/<pid>/stat states of a process that has exited: Z (zombie: not yet reaped by its parent, as a crashed xdist
# worker is when xdist reports it down) and X (being reaped). Such a process holds nothing and will undo nothing.
_EXITED_STATES = frozenset({"Z", "X"})


@dataclass(frozen=True)
class _ProcStat:
    state: str
    start_ticks: str | None


def _proc_stat(pid: int) -> _ProcStat | None:
    """The state and start time (clock ticks since boot) of process `pid` from /proc (Linux), or None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces and parentheses: the fields follow the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    if not fields:
        return None
    return _ProcStat(state=fields[0], start_ticks=fields[19] if len(fields) > 19 else None)


def _identity_of(stat: _ProcStat | None) -> str:
    start = stat.start_ticks if stat is not None else None
    return f"{_boot_id()}:{start or 'unknown'}"


def process_identity(pid: int | None = None) -> str:
    """A string naming process `pid` (default: this one) uniquely on this host across pid reuse and reboots."""
    return _identity_of(_proc_stat(os.getpid() if pid is None else pid))


def process_alive(pid: int, identity: str) -> bool:
    """Whether the process `identity` (from `process_identity`) with pid `pid` on this host still runs.

    A process that exited but was not reaped yet (a zombie) is not running, and a pid reused by another process does
    not count either. One read of /proc/<pid>/stat gives both the state and the start time, so the answer is
    consistent even if the pid is reused meanwhile.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user: /proc tells the rest
    stat = _proc_stat(pid)
    if stat is not None and stat.state in _EXITED_STATES:
        return False
    return _identity_of(stat) == identity


def _alive(pid: int, identity: str, host: str) -> bool | None:
    """Whether the process that wrote an entry still runs; None when it ran on another host."""
    if host != socket.gethostname():
        return None
    return process_alive(pid, identity)


class Journal:
    """The undo journal of this process for one cluster."""

    def __init__(
        self,
        cluster_id: str,
        *,
        provider_name: str,
        state_dir: Path | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.provider_name = provider_name
        self.worker_id = worker_id
        self.directory = cluster_journal_dir(cluster_id, state_dir)
        self.path = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"

    def record(self, undo: UndoAction) -> JournalEntry:
        """Append a pending entry for `undo` and fsync it; call before injecting the fault it undoes."""
        entry = JournalEntry(
            id=uuid.uuid4().hex,
            created=time.time(),
            pid=os.getpid(),
            process=process_identity(),
            host=socket.gethostname(),
            worker=self.worker_id,
            provider=self.provider_name,
            cluster=self.cluster_id,
            undo=undo,
            path=self.path,
        )
        _append(self.path, entry.to_dict())
        return entry

    def mark_done(self, entry: JournalEntry) -> None:
        _append(entry.path or self.path, _state_record(entry, EntryState.DONE, None))

    def mark_failed(self, entry: JournalEntry, error: str) -> None:
        _append(entry.path or self.path, _state_record(entry, EntryState.FAILED, error))


def _state_record(entry: JournalEntry, state: EntryState, error: str | None) -> JsonObject:
    return {"record": "state", "id": entry.id, "state": state.value, "at": time.time(), "pid": os.getpid(),
            "error": error}


def _lock(directory: Path, name: str, timeout_s: float) -> filelock.FileLock:
    return filelock.FileLock(str(directory / name), timeout=timeout_s)


def _append(path: Path, record: JsonObject) -> None:
    directory = path.parent
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    if created:
        _fsync_dir(directory.parent)
    line = json.dumps(record, sort_keys=True) + "\n"
    try:
        with _lock(directory, "journal.lock", LOCK_TIMEOUT_S):
            new_file = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            if new_file:
                _fsync_dir(directory)
    except filelock.Timeout:
        raise OSError(
            f"the undo journal lock {directory / 'journal.lock'} was not released within {LOCK_TIMEOUT_S:.0f} s: "
            "another kubeha process is stuck; end it, or remove the lock file if no kubeha process runs"
        ) from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_file(path: Path) -> list[JournalEntry]:
    found: dict[str, JournalEntry] = {}
    order: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"journal {path} line {number}"
        try:
            decoded: JsonValue = json.loads(line)
        except json.JSONDecodeError as error:
            raise JsonFormatError(
                f"{where} is not JSON ({error}): the file was truncated by a crash or edited; "
                "fix or remove that line after checking the cluster by hand"
            ) from None
        obj = as_object(decoded, where)
        kind = get_str(obj, "record", where)
        if kind == "entry":
            entry = JournalEntry.from_dict(obj, where, path)
            found[entry.id] = entry
            order.append(entry.id)
        elif kind == "state":
            entry_id = get_str(obj, "id", where)
            state_name = get_str(obj, "state", where)
            try:
                state = EntryState(state_name)
            except ValueError:
                raise JsonFormatError(f"{where}: unknown state {state_name!r}") from None
            if entry_id in found:
                found[entry_id] = replace(found[entry_id], state=state, error=get_optional_str(obj, "error", where))
        else:
            raise JsonFormatError(f"{where}: unknown record {kind!r}, expected entry or state")
    return [found[entry_id] for entry_id in order]


def _read_all(directory: Path) -> list[JournalEntry]:
    if not directory.is_dir():
        return []
    with _lock(directory, "journal.lock", LOCK_TIMEOUT_S):
        collected = [entry for path in sorted(directory.glob("*.jsonl")) for entry in _read_file(path)]
    return sorted(collected, key=lambda entry: entry.created)


def entries(cluster_id: str, *, state_dir: Path | None = None) -> tuple[JournalEntry, ...]:
    """Every entry ever written for `cluster_id`, oldest first, with its current state."""
    return tuple(_read_all(cluster_journal_dir(cluster_id, state_dir)))


def pending(cluster_id: str, *, state_dir: Path | None = None) -> tuple[JournalEntry, ...]:
    """Entries of `cluster_id` not yet undone (pending, or failed on an earlier replay), oldest first."""
    return tuple(entry for entry in entries(cluster_id, state_dir=state_dir) if entry.state is not EntryState.DONE)


@dataclass(frozen=True)
class ReplayFailure:
    entry: JournalEntry
    error: str

    def describe(self) -> str:
        return (f"could not {self.entry.undo.describe()} ({self.error}); do it by hand: "
                f"{self.entry.undo.manual_fix(self.entry.provider)}; then rerun")


@dataclass(frozen=True)
class ReplaySkip:
    entry: JournalEntry
    reason: str


@dataclass(frozen=True)
class ReplayResult:
    undone: tuple[JournalEntry, ...]
    failed: tuple[ReplayFailure, ...]
    skipped: tuple[ReplaySkip, ...]

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        lines = [f"replayed {len(self.undone)} undo action(s) left by crashed runs"]
        lines.extend(f"undone: {entry.undo.describe()} (pid {entry.pid})" for entry in self.undone)
        lines.extend(f"FAILED: {failure.describe()}" for failure in self.failed)
        lines.extend(f"skipped: {skip.entry.undo.describe()}: {skip.reason}" for skip in self.skipped)
        return "\n".join(lines)


def replay(provider: Provider, cluster_id: str, *, state_dir: Path | None = None) -> ReplayResult:
    """Undo the pending entries of processes that are gone, newest first, and record the outcome of each.

    Entries of live processes (another session or xdist worker still running its fault) are skipped, as are entries
    written on another host, whose liveness cannot be checked from here.
    """

    def skip_reason(entry: JournalEntry) -> str | None:
        alive = _alive(entry.pid, entry.process, entry.host)
        if alive is None:
            return f"written on host {entry.host}: replay it there"
        if alive:
            return f"process {entry.pid} that wrote it is still running"
        return None

    return _replay(provider, cluster_id, state_dir, lambda entry: True, skip_reason)


def replay_processes(
    provider: Provider,
    cluster_id: str,
    processes: Collection[tuple[int, str]],
    *,
    state_dir: Path | None = None,
) -> ReplayResult:
    """Undo the unresolved entries written on this host by `processes` ((pid, `process_identity`) pairs), newest
    first, whether or not those processes still look alive, and record the outcome of each.

    For a caller that knows the processes will inject nothing more: the process itself after a test, or the xdist
    controller once xdist reported a worker down (possibly before that worker's process has fully exited). Entries
    of other processes are left alone (they are not in the result). Runs under the same lock as `replay`, so a
    concurrent replay by another session never undoes an entry twice.
    """
    wanted = frozenset(processes)
    host = socket.gethostname()

    def selected(entry: JournalEntry) -> bool:
        return entry.host == host and (entry.pid, entry.process) in wanted

    return _replay(provider, cluster_id, state_dir, selected, lambda entry: None)


def _replay(
    provider: Provider,
    cluster_id: str,
    state_dir: Path | None,
    selected: Callable[[JournalEntry], bool],
    skip_reason: Callable[[JournalEntry], str | None],
) -> ReplayResult:
    directory = cluster_journal_dir(cluster_id, state_dir)
    if not directory.is_dir():
        return ReplayResult(undone=(), failed=(), skipped=())
    try:
        with _lock(directory, "replay.lock", REPLAY_LOCK_TIMEOUT_S):
            return _replay_locked(provider, cluster_id, directory, selected, skip_reason)
    except filelock.Timeout:
        raise OSError(
            f"another replay of journal {directory} held its lock for {REPLAY_LOCK_TIMEOUT_S:.0f} s: "
            "wait for it to finish, or remove replay.lock there if no kubeha process runs"
        ) from None


def _replay_locked(
    provider: Provider,
    cluster_id: str,
    directory: Path,
    selected: Callable[[JournalEntry], bool],
    skip_reason: Callable[[JournalEntry], str | None],
) -> ReplayResult:
    undone: list[JournalEntry] = []
    failed: list[ReplayFailure] = []
    skipped: list[ReplaySkip] = []
    writer = Journal(cluster_id, provider_name=provider.name, state_dir=directory.parent)
    for entry in reversed(_unresolved(directory)):
        if not selected(entry):
            continue
        reason = skip_reason(entry)
        if reason is not None:
            skipped.append(ReplaySkip(entry, reason))
            continue
        try:
            entry.undo.apply(provider)
        except (ProviderError, CapabilityError, OSError) as error:
            writer.mark_failed(entry, str(error))
            failed.append(ReplayFailure(entry, str(error)))
            continue
        writer.mark_done(entry)
        undone.append(entry)
    return ReplayResult(undone=tuple(undone), failed=tuple(failed), skipped=tuple(skipped))


def _unresolved(directory: Path) -> Sequence[JournalEntry]:
    return [entry for entry in _read_all(directory) if entry.state is not EntryState.DONE]


def prune(cluster_id: str, *, state_dir: Path | None = None) -> tuple[Path, ...]:
    """Delete journal files of finished processes whose entries are all done; returns the files removed.

    Files with an unresolved entry, files of live processes and files written on another host are kept, so nothing
    a replay could still need is ever removed.
    """
    directory = cluster_journal_dir(cluster_id, state_dir)
    if not directory.is_dir():
        return ()
    removed: list[Path] = []
    with _lock(directory, "journal.lock", LOCK_TIMEOUT_S):
        for path in sorted(directory.glob("*.jsonl")):
            found = _read_file(path)
            if not found or any(entry.state is not EntryState.DONE for entry in found):
                continue
            writer = found[0]
            if _alive(writer.pid, writer.process, writer.host) is not False:
                continue
            path.unlink()
            removed.append(path)
    return tuple(removed)


def describe_entries(found: Iterable[JournalEntry]) -> str:
    return "; ".join(f"{entry.undo.describe()} (pid {entry.pid}, {entry.state.value})" for entry in found)
