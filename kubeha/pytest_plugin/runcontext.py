"""The run context: what every process of the session knows about the cluster, and the run directory they share.

The controller makes the `RunContext` at session start and hands it to each xdist worker through ``workerinput``. Its
run directory (``<report dir>/runs/<run id>/``) holds what the processes share:

- ``coordinator/``: the cross-process fault budget (`kubeha.coordination`);
- ``results/<digest>.json``: one control result per test (`kubeha.pytest_plugin.results`);
- ``timeline/<pid>.jsonl``: timeline events, one file per process (`record_event`);
- ``unhealthy.json``: why disruptive tests may no longer start, once the cluster left its steady state;
- ``workers/<worker id>.<pid>.json``: the processes that ran as each xdist worker, so that the controller can undo
  the faults and free the claims of one that crashed;
- ``serial.lock`` and ``serial-waiting/``: the serial lock (`kubeha.pytest_plugin.serial`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubeha.cluster.identity import ClusterIdentity
from kubeha.consent import Consent, ConsentSource
from kubeha.core.jsonfields import JsonFormatError, JsonObject, JsonValue, as_object, get_object, get_optional_str, get_str
from kubeha.core.model import Profile
from kubeha.core.timeline import Timeline, TimelineEvent
from kubeha.faults.journal import process_identity

__all__ = [
    "ClusterHandle",
    "RUN_KEY",
    "RunContext",
    "WORKERINPUT_KEY",
    "atomic_write",
    "is_worker",
    "mark_unhealthy",
    "read_timeline",
    "record_event",
    "register_worker_process",
    "run_context",
    "unhealthy_reason",
    "worker_context",
    "worker_processes",
]

WORKERINPUT_KEY = "kubeha"


@dataclass(frozen=True)
class ClusterHandle:
    """How to reach the session's cluster, and the consent bound to it. Handed to every xdist worker."""

    kubeconfig: Path
    context: str | None
    embedded: bool
    name: str
    identity: ClusterIdentity
    consent: Consent | None
    created: bool = False

    def to_json(self) -> JsonObject:
        return {
            "kubeconfig": str(self.kubeconfig),
            "context": self.context,
            "embedded": self.embedded,
            "name": self.name,
            "created": self.created,
            "identity": {
                "api_url": self.identity.api_url,
                "kube_system_uid": self.identity.kube_system_uid,
                "kubernetes_version": self.identity.kubernetes_version,
            },
            "consent": None
            if self.consent is None
            else {
                "kube_system_uid": self.consent.kube_system_uid,
                "api_url": self.consent.api_url,
                "source": self.consent.source.value,
            },
        }

    @classmethod
    def from_json(cls, obj: JsonObject, where: str) -> ClusterHandle:
        identity = get_object(obj, "identity", where)
        raw_consent = obj.get("consent")
        consent = None
        if raw_consent is not None:
            consent_obj = as_object(raw_consent, f"{where}.consent")
            consent = Consent(
                kube_system_uid=get_str(consent_obj, "kube_system_uid", f"{where}.consent"),
                api_url=get_str(consent_obj, "api_url", f"{where}.consent"),
                source=ConsentSource(get_str(consent_obj, "source", f"{where}.consent")),
            )
        embedded = obj.get("embedded")
        created = obj.get("created")
        return cls(
            kubeconfig=Path(get_str(obj, "kubeconfig", where)),
            context=get_optional_str(obj, "context", where),
            embedded=embedded is True,
            name=get_str(obj, "name", where),
            identity=ClusterIdentity(
                api_url=get_str(identity, "api_url", f"{where}.identity"),
                kube_system_uid=get_str(identity, "kube_system_uid", f"{where}.identity"),
                kubernetes_version=get_str(identity, "kubernetes_version", f"{where}.identity"),
            ),
            consent=consent,
            created=created is True,
        )


@dataclass(frozen=True)
class RunContext:
    """The session as every process sees it. `run_dir` is created on first use; it holds the coordinator state,
    per-test results, timeline events and the health state shared by the processes of this session."""

    run_id: str
    run_dir: Path
    started_wall: float
    dry_run: bool
    profile: Profile
    cluster: ClusterHandle | None = None
    worker_id: str | None = None

    @property
    def results_dir(self) -> Path:
        return self.run_dir / "results"

    @property
    def timeline_dir(self) -> Path:
        return self.run_dir / "timeline"

    @property
    def coordinator_dir(self) -> Path:
        return self.run_dir / "coordinator"

    @property
    def unhealthy_path(self) -> Path:
        return self.run_dir / "unhealthy.json"

    @property
    def workers_dir(self) -> Path:
        return self.run_dir / "workers"

    @property
    def serial_lock_path(self) -> Path:
        return self.run_dir / "serial.lock"

    @property
    def serial_waiting_dir(self) -> Path:
        return self.run_dir / "serial-waiting"

    @property
    def steady_lock_path(self) -> Path:
        return self.run_dir / "steady.lock"

    @property
    def steady_waiting_dir(self) -> Path:
        return self.run_dir / "steady-waiting"

    def to_workerinput(self) -> str:
        document: JsonObject = {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "started_wall": self.started_wall,
            "dry_run": self.dry_run,
            "profile": self.profile.value,
            "cluster": None if self.cluster is None else self.cluster.to_json(),
        }
        return json.dumps(document)

    @classmethod
    def from_workerinput(cls, text: str, worker_id: str | None) -> RunContext:
        where = "kubeha worker input"
        decoded: JsonValue = json.loads(text)
        obj = as_object(decoded, where)
        raw_cluster = obj.get("cluster")
        started = obj.get("started_wall")
        if isinstance(started, bool) or not isinstance(started, (int, float)):
            raise JsonFormatError(f"{where}.started_wall must be a number")
        return cls(
            run_id=get_str(obj, "run_id", where),
            run_dir=Path(get_str(obj, "run_dir", where)),
            started_wall=float(started),
            dry_run=obj.get("dry_run") is True,
            profile=Profile(get_str(obj, "profile", where)),
            cluster=None
            if raw_cluster is None
            else ClusterHandle.from_json(as_object(raw_cluster, f"{where}.cluster"), f"{where}.cluster"),
            worker_id=worker_id,
        )


RUN_KEY = pytest.StashKey[RunContext]()


def run_context(config: pytest.Config) -> RunContext:
    """The run context of this process (available from session start on)."""
    try:
        return config.stash[RUN_KEY]
    except KeyError:
        raise pytest.UsageError(
            "the kubeha run context is read before the session started: use it from fixtures or test hooks"
        ) from None


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def worker_context(config: pytest.Config) -> RunContext:
    """The run context an xdist worker got from its controller."""
    raw_input = getattr(config, "workerinput", None)
    workerinput: Mapping[str, object] = raw_input if isinstance(raw_input, dict) else {}
    raw = workerinput.get(WORKERINPUT_KEY)
    worker_id = workerinput.get("workerid")
    if not isinstance(raw, str):
        raise pytest.UsageError(
            "this xdist worker got no kubeha run context from its controller: load the kubeha plugin in the "
            "controller too (it is loaded by the repository's conftest.py)"
        )
    return RunContext.from_workerinput(raw, worker_id if isinstance(worker_id, str) else None)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


# -- cluster health shared between processes ----------------------------------------------------------------------


def unhealthy_reason(context: RunContext) -> str | None:
    """Why disruptive tests may not start (the cluster left its steady state), or None."""
    try:
        text = context.unhealthy_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    decoded: JsonValue = json.loads(text)
    return get_str(as_object(decoded, str(context.unhealthy_path)), "reason", str(context.unhealthy_path))


def mark_unhealthy(context: RunContext, reason: str) -> None:
    """Record that the cluster is not in its steady state: every later disruptive test is not-run with `reason`."""
    if unhealthy_reason(context) is not None:
        return
    atomic_write(context.unhealthy_path, json.dumps({"reason": reason, "at": time.time()}))


# -- timeline events, one JSON-lines file per process -------------------------------------------------------------

_TIMELINE_LOCK = threading.Lock()


def record_event(context: RunContext, source: str, kind: str, detail: str, test_id: str | None = None) -> None:
    event = TimelineEvent(
        t_mono=time.monotonic(), t_wall=time.time(), source=source, kind=kind, detail=detail, test_id=test_id
    )
    path = context.timeline_dir / f"{os.getpid()}.jsonl"
    with _TIMELINE_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event.to_dict(), allow_nan=False) + "\n")


def read_timeline(context: RunContext) -> Timeline:
    timeline = Timeline()
    if context.timeline_dir.is_dir():
        for path in sorted(context.timeline_dir.glob("*.jsonl")):
            timeline.extend(Timeline.from_jsonl(path.read_text(encoding="utf-8")).events())
    return timeline


# -- the processes of each xdist worker -----------------------------------------------------------------------------


def register_worker_process(context: RunContext) -> None:
    """Record this xdist worker's pid so that the controller can undo its faults and free its claims if it crashes."""
    if context.worker_id is None or context.cluster is None:
        return
    document: JsonObject = {"worker": context.worker_id, "pid": os.getpid(), "process": process_identity()}
    atomic_write(context.workers_dir / f"{context.worker_id}.{os.getpid()}.json", json.dumps(document))


def worker_processes(context: RunContext, worker_id: str) -> tuple[tuple[int, str], ...]:
    """(pid, process identity) of every process that ran as xdist worker `worker_id` in this session."""
    found: list[tuple[int, str]] = []
    for path in sorted(context.workers_dir.glob(f"{worker_id}.*.json")) if context.workers_dir.is_dir() else ():
        decoded: JsonValue = json.loads(path.read_text(encoding="utf-8"))
        obj = as_object(decoded, str(path))
        pid = obj.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool):
            found.append((pid, get_str(obj, "process", str(path))))
    return tuple(found)
