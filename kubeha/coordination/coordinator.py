"""The cross-process fault budget: disruptive tests on several xdist workers never break more than the cluster takes.

A run directory shared by the xdist controller and its workers holds:

- ``state.json``: the limits and the active claims (holder, pid, process identity, worker, grant times);
- ``log.jsonl``: every request, wait, grant, release, reclaim, deferred reclaim, refusal and timeout, each with
  monotonic and wall times. Grants, releases and reclaims carry a ``ledger`` object
  (`kubeha.core.budget.LedgerEvent`), so `usage_from_log` can prove after the fact that the limits held;
- ``coordinator.lock``: the file lock every read-modify-write of the two files happens under.

`Coordinator.acquire` blocks, re-checking every `POLL_INTERVAL_S`, until `kubeha.core.budget.decide` grants the
claim; it raises `BudgetTimeout` naming the holders when the timeout passes, and `BudgetImpossible` at once for a
claim that could never be granted.

Claims held by processes that no longer run (a worker that crashed, including one that exited and was not reaped
yet) are reclaimed, and the reclaim is logged. A dead holder's claim stands for faults that may still be in place:
when the coordinator knows the cluster's undo journal (``journal_cluster_id``), it keeps the claim of a dead holder
whose journal entries for that cluster are not all undone, and logs ``reclaim-deferred``; the claim is freed once
they are (by the xdist controller, which replays a crashed worker's entries and then calls `Coordinator.reclaim`, or
by the next session's replay). Without ``journal_cluster_id`` a dead holder's claim is freed at once, which is right
only for callers whose faults never outlive their process.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import filelock

from kubeha.core.budget import Claim, LedgerEvent, LedgerReplay, Limits, decide, replay_json
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
from kubeha.faults.journal import pending, process_alive, process_identity

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

POLL_INTERVAL_S = 0.5
# Every critical section is a few small file operations; a lock held longer belongs to a stuck process.
LOCK_TIMEOUT_S = 60.0
STATE_FILE = "state.json"
LOG_FILE = "log.jsonl"
LOCK_FILE = "coordinator.lock"
STATE_VERSION = 1


class BudgetTimeout(TimeoutError):
    """A claim was not granted within its timeout; the message names who holds what."""


class BudgetImpossible(ValueError):
    """A claim that no amount of waiting can grant: it exceeds the limits on its own."""


@dataclass(frozen=True)
class ActiveClaim:
    claim: Claim
    pid: int
    process: str
    host: str
    worker: str | None
    granted_wall: float
    granted_mono: float

    def to_dict(self) -> JsonObject:
        return {
            "claim": self.claim.to_dict(),
            "pid": self.pid,
            "process": self.process,
            "host": self.host,
            "worker": self.worker,
            "granted_wall": self.granted_wall,
            "granted_mono": self.granted_mono,
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str) -> ActiveClaim:
        return cls(
            claim=Claim.from_dict(get_object(obj, "claim", where), f"{where}.claim"),
            pid=get_int(obj, "pid", where),
            process=get_str(obj, "process", where),
            host=get_str(obj, "host", where),
            worker=get_optional_str(obj, "worker", where),
            granted_wall=get_float(obj, "granted_wall", where),
            granted_mono=get_float(obj, "granted_mono", where),
        )

    def describe(self, now_mono: float) -> str:
        worker = f" worker {self.worker}" if self.worker else ""
        return f"{self.claim.describe()} held by pid {self.pid}{worker} for {now_mono - self.granted_mono:.1f} s"


@dataclass(frozen=True)
class Grant:
    """A granted claim, as yielded by `Coordinator.acquire`."""

    claim: Claim
    granted_mono: float
    granted_wall: float
    waited_s: float
    reason: str


@dataclass(frozen=True)
class LogRecord:
    """One line of ``log.jsonl``."""

    event: str
    holder: str
    pid: int
    worker: str | None
    mono: float
    wall: float
    detail: str
    ledger: LedgerEvent | None = None

    def to_dict(self) -> JsonObject:
        return {
            "event": self.event,
            "holder": self.holder,
            "pid": self.pid,
            "worker": self.worker,
            "mono": self.mono,
            "wall": self.wall,
            "detail": self.detail,
            "ledger": None if self.ledger is None else self.ledger.to_dict(),
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str) -> LogRecord:
        raw = obj.get("ledger")
        return cls(
            event=get_str(obj, "event", where),
            holder=get_str(obj, "holder", where),
            pid=get_int(obj, "pid", where),
            worker=get_optional_str(obj, "worker", where),
            mono=get_float(obj, "mono", where),
            wall=get_float(obj, "wall", where),
            detail=get_str(obj, "detail", where),
            ledger=None if raw is None else LedgerEvent.from_dict(as_object(raw, f"{where}.ledger"), f"{where}.ledger"),
        )


@dataclass(frozen=True)
class _State:
    limits: Limits
    active: tuple[ActiveClaim, ...]

    def to_dict(self) -> JsonObject:
        return {
            "version": STATE_VERSION,
            "limits": self.limits.to_dict(),
            "active": [held.to_dict() for held in self.active],
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str) -> _State:
        version = get_int(obj, "version", where)
        if version != STATE_VERSION:
            raise JsonFormatError(f"{where}: version {version}, expected {STATE_VERSION}: use a fresh run directory")
        return cls(
            limits=Limits.from_dict(get_object(obj, "limits", where), f"{where}.limits"),
            active=tuple(
                ActiveClaim.from_dict(as_object(item, f"{where}.active[{index}]"), f"{where}.active[{index}]")
                for index, item in enumerate(get_list(obj, "active", where))
            ),
        )


def _alive(held: ActiveClaim) -> bool:
    """Whether the holder still runs; a holder on another host is assumed to (its liveness cannot be checked)."""
    if held.host != socket.gethostname():
        return True
    return process_alive(held.pid, held.process)


def _read_limits(run_dir: Path) -> Limits | None:
    """The limits recorded in `run_dir`'s state file, or None when no claim was ever made there."""
    state_path = run_dir / STATE_FILE
    try:
        text = state_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        decoded: JsonValue = json.loads(text)
    except json.JSONDecodeError as error:
        raise JsonFormatError(
            f"coordinator state {state_path} is not JSON ({error}): it is written atomically, so it was edited by "
            "hand; remove the run directory and rerun"
        ) from None
    return _State.from_dict(as_object(decoded, str(state_path)), str(state_path)).limits


class Coordinator:
    """The fault budget for one run, shared through `run_dir` by every process of the run.

    Every process must pass the same `limits` (derive them from the same topology); a mismatch is an error.
    `journal_cluster_id` (the cluster's id in the undo journal, under `journal_state_dir`) makes the reclaim of a
    dead holder's claim wait until its journal entries for that cluster are undone.
    """

    def __init__(
        self,
        run_dir: Path,
        limits: Limits,
        *,
        worker_id: str | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        journal_cluster_id: str | None = None,
        journal_state_dir: Path | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.limits = limits
        self.worker_id = worker_id
        self.poll_interval_s = poll_interval_s
        self.journal_cluster_id = journal_cluster_id
        self.journal_state_dir = journal_state_dir
        self._lock = filelock.FileLock(str(run_dir / LOCK_FILE), timeout=LOCK_TIMEOUT_S)
        self._host = socket.gethostname()
        self._deferred: set[tuple[str, int, str]] = set()  # dead holders whose deferral this process logged

    @classmethod
    def of_run(
        cls,
        run_dir: Path,
        *,
        worker_id: str | None = None,
        journal_cluster_id: str | None = None,
        journal_state_dir: Path | None = None,
    ) -> Coordinator | None:
        """The coordinator of `run_dir` with the limits its state file records, or None when no claim was ever
        made there (so there is nothing to reclaim). For a process that did not discover the topology itself."""
        limits = _read_limits(run_dir)
        if limits is None:
            return None
        return cls(
            run_dir,
            limits,
            worker_id=worker_id,
            journal_cluster_id=journal_cluster_id,
            journal_state_dir=journal_state_dir,
        )

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    # -- files (call with the lock held) ---------------------------------------------------------------------------

    def _load(self) -> _State:
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _State(limits=self.limits, active=())
        try:
            decoded: JsonValue = json.loads(text)
        except json.JSONDecodeError as error:
            raise JsonFormatError(
                f"coordinator state {self.state_path} is not JSON ({error}): it is written atomically, so it was "
                "edited by hand; remove the run directory and rerun"
            ) from None
        state = _State.from_dict(as_object(decoded, str(self.state_path)), str(self.state_path))
        if state.limits != self.limits:
            raise ValueError(
                f"coordinator state {self.state_path} was created with limits {state.limits.to_dict()}, this process "
                f"has {self.limits.to_dict()}: every xdist worker must derive the limits from the same topology; "
                "use a fresh run directory per run"
            )
        return state

    def _save(self, state: _State) -> None:
        temporary = self.run_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(state.to_dict(), handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.state_path)

    def _log(self, event: str, holder: str, detail: str, ledger: LedgerEvent | None = None) -> None:
        record = LogRecord(
            event=event,
            holder=holder,
            pid=os.getpid(),
            worker=self.worker_id,
            mono=time.monotonic(),
            wall=time.time(),
            detail=detail,
            ledger=ledger,
        )
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record.to_dict(), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _reclaim_dead(self, state: _State) -> _State:
        kept: list[ActiveClaim] = []
        for held in state.active:
            if _alive(held):
                kept.append(held)
                continue
            left = self._faults_left_by(held)
            if left:
                kept.append(held)
                self._log_deferral(held, left)
                continue
            self._log(
                "reclaim",
                held.claim.holder,
                f"process {held.pid} (worker {held.worker}) is gone; its claim {held.claim.describe()} is released",
                LedgerEvent.release(held.claim.holder),
            )
        return state if len(kept) == len(state.active) else _State(state.limits, tuple(kept))

    def _faults_left_by(self, held: ActiveClaim) -> int:
        """How many undo-journal entries of the holder's process are not undone (0 without a journal to read)."""
        if self.journal_cluster_id is None:
            return 0
        return sum(
            1
            for entry in pending(self.journal_cluster_id, state_dir=self.journal_state_dir)
            if entry.pid == held.pid and entry.process == held.process and entry.host == held.host
        )

    def _log_deferral(self, held: ActiveClaim, left: int) -> None:
        key = (held.claim.holder, held.pid, held.process)
        if key in self._deferred:
            return
        self._deferred.add(key)
        self._log(
            "reclaim-deferred",
            held.claim.holder,
            f"process {held.pid} (worker {held.worker}) is gone but {left} fault(s) it injected are not undone yet: "
            f"its claim {held.claim.describe()} stays until they are (the xdist controller or the next session "
            "replays them)",
        )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                yield
        except filelock.Timeout:
            raise BudgetTimeout(
                f"the coordinator lock {self.run_dir / LOCK_FILE} was held for more than {LOCK_TIMEOUT_S:.0f} s: "
                "a kubeha process is stuck; end it, or remove the lock file if none runs"
            ) from None

    # -- public ----------------------------------------------------------------------------------------------------

    def active(self) -> tuple[ActiveClaim, ...]:
        """Claims granted and not released, after reclaiming those of dead processes."""
        with self._locked():
            state = self._load()
            fresh = self._reclaim_dead(state)
            if fresh is not state:
                self._save(fresh)
            return fresh.active

    def reclaim(self, processes: Collection[tuple[int, str]], reason: str) -> tuple[ActiveClaim, ...]:
        """Release the claims held on this host by `processes` ((pid, `process_identity`) pairs), whether or not they
        still look alive, logging each as a reclaim with `reason`; returns the claims released.

        For the xdist controller once a crashed worker's faults are undone: xdist reports a worker down before its
        process is reaped, and possibly before it has fully exited.
        """
        wanted = frozenset(processes)
        with self._locked():
            state = self._load()
            released = tuple(
                held for held in state.active if held.host == self._host and (held.pid, held.process) in wanted
            )
            if not released:
                return ()
            self._save(_State(state.limits, tuple(held for held in state.active if held not in released)))
            for held in released:
                self._log(
                    "reclaim",
                    held.claim.holder,
                    f"process {held.pid} (worker {held.worker}): {reason}; its claim {held.claim.describe()} is "
                    "released",
                    LedgerEvent.release(held.claim.holder),
                )
            return released

    def acquire(self, claim: Claim, timeout_s: float) -> AbstractContextManager[Grant]:
        """Block until `claim` fits the budget (at most `timeout_s`), hold it for the ``with`` block, release it."""
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0, got {timeout_s}: pass how long the test may wait")
        alone = decide((), claim, self.limits)
        if alone.never_fits:
            with self._locked():
                self._log("refuse", claim.holder, alone.reason)
            raise BudgetImpossible(alone.reason)
        return self._hold(claim, timeout_s)

    @contextmanager
    def _hold(self, claim: Claim, timeout_s: float) -> Iterator[Grant]:
        grant = self._wait_for_grant(claim, timeout_s)
        try:
            yield grant
        finally:
            self._release(claim)

    def _wait_for_grant(self, claim: Claim, timeout_s: float) -> Grant:
        start = time.monotonic()
        deadline = start + timeout_s
        last_reason = ""
        with self._locked():
            self._log("request", claim.holder, f"{claim.describe()}, timeout {timeout_s:.1f} s")
        while True:
            with self._locked():
                loaded = self._load()
                state = self._reclaim_dead(loaded)
                decision = decide([held.claim for held in state.active], claim, self.limits)
                now = time.monotonic()
                if decision.granted:
                    held = ActiveClaim(
                        claim=claim,
                        pid=os.getpid(),
                        process=process_identity(),  # at grant time: a forked child holds its own claims
                        host=self._host,
                        worker=self.worker_id,
                        granted_wall=time.time(),
                        granted_mono=now,
                    )
                    self._save(_State(state.limits, (*state.active, held)))
                    self._log("grant", claim.holder, decision.reason, LedgerEvent.grant(claim))
                    return Grant(claim, held.granted_mono, held.granted_wall, now - start, decision.reason)
                if state is not loaded:
                    self._save(state)
                if now >= deadline:
                    holders = "; ".join(held.describe(now) for held in state.active) or "nobody"
                    message = (
                        f"claim {claim.describe()} was not granted within {timeout_s:.1f} s ({decision.reason}); "
                        f"active claims: {holders}. Raise the test's budget timeout, or run fewer disruptive tests "
                        "at once (fewer xdist workers)"
                    )
                    self._log("timeout", claim.holder, message)
                    raise BudgetTimeout(message)
                if decision.reason != last_reason:
                    self._log("wait", claim.holder, decision.reason)
                    last_reason = decision.reason
            time.sleep(min(self.poll_interval_s, max(deadline - time.monotonic(), 0.0)))

    def _release(self, claim: Claim) -> None:
        with self._locked():
            state = self._load()
            mine = [held for held in state.active if held.claim.holder == claim.holder and held.pid == os.getpid()]
            if not mine:
                self._log("release-missing", claim.holder,
                          "the claim was no longer in the state file (reclaimed as dead?); nothing to release")
                return
            self._save(_State(state.limits, tuple(held for held in state.active if held not in mine)))
            self._log("release", claim.holder, claim.describe(), LedgerEvent.release(claim.holder))


def read_log(run_dir: Path) -> tuple[LogRecord, ...]:
    """Every record of the coordinator log in `run_dir`, in the order written."""
    path = run_dir / LOG_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return ()
    records: list[LogRecord] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"coordinator log {path} line {number}"
        try:
            decoded: JsonValue = json.loads(line)
        except json.JSONDecodeError as error:
            raise JsonFormatError(f"{where} is not JSON ({error}): the log was truncated or edited") from None
        records.append(LogRecord.from_dict(as_object(decoded, where), where))
    return tuple(records)


def usage_from_log(run_dir: Path, limits: Limits | None = None) -> LedgerReplay:
    """Peak concurrent usage per resource kind over the whole run, replayed from the log.

    `limits` defaults to those recorded in the run's state file. ``result.peak_of(ResourceKind.CONTROL_PLANE_NODE)``
    is the most control-plane nodes ever down at once; ``result.violations`` lists any breach of the limits.
    """
    if limits is None:
        limits = _read_limits(run_dir)
        if limits is None:
            raise FileNotFoundError(
                f"no coordinator state at {run_dir / STATE_FILE}: no claim was ever made in {run_dir}, or pass limits"
            )
    ledger = [record.ledger.to_dict() for record in read_log(run_dir) if record.ledger is not None]
    return replay_json(ledger, limits)
