"""The kubeha pytest plugin: options, markers, fixtures, and the wiring between the xdist controller and workers.

Session life cycle
------------------
On the xdist controller (or the single process without xdist), at session start:

1. the cluster is set up only if the session needs one: ``--kubeconfig``/``--cluster`` was given, or an
   implementation of ``pytest_kubeha_cluster_required`` (see `kubeha.hooks`) answered True;
2. the embedded kind cluster is built and started (`fixtures.kind.api.ensure_cluster`), or the attached one is
   checked; its identity (`kubeha.cluster.identity`) is read and consent to inject faults is bound to it;
3. undo-journal entries left by crashed runs are replayed (`kubeha.faults.journal.replay`);
4. the topology is discovered and the health gate checks the steady state;
5. the kubeconfig path, context, run directory and consent are handed to each xdist worker in
   ``pytest_configure_node``; every process builds its own API client from them.

Per test, an autouse fixture enforces the markers: ``needs`` (unmet: not-run), ``serial`` (runs alone), and
``disruptive`` (consent, health, then the claim is acquired from the cross-process coordinator around the test; after
it, own leftover undo entries are replayed and the health gate runs; a cluster that does not return to its steady
state makes the test error and later disruptive tests not-run).

Not-run is an outcome of its own: ``pytest.skip`` with a reason starting with ``not-run: `` and `Verdict.NOT_RUN` in
the control's result. With ``--profile certification`` any skip or not-run fails the session.

At session end the controller gathers the per-test results written by every process to the run directory, builds
the `RunReport`, hands it to the ``pytest_kubeha_write_reports`` implementations, and deletes the embedded cluster
unless ``--keep-cluster`` was given or it existed before the session.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn, Protocol

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubeha import hooks
from kubeha.cluster.client import KubeconfigError, KubeconfigInfo, KubeconfigTarget, new_api_client, read_kubeconfig
from kubeha.cluster.discovery import Discovery, DiscoveryError, discover
from kubeha.cluster.health import HealthReport, SteadyStateGate
from kubeha.cluster.identity import ClusterIdentity, IdentityError, read_identity
from kubeha.consent import Consent, ConsentError, ConsentSource, check_consent, consent_for, validate_uid
from kubeha.coordination import BudgetImpossible, BudgetTimeout, Coordinator, Grant
from kubeha.core import model
from kubeha.core.budget import Claim, Limits, ResourceKind
from kubeha.core.jsonfields import JsonFormatError, JsonObject, JsonValue, as_object, get_object, get_optional_str, get_str
from kubeha.core.model import Comparison, ControlResult, Evidence, Measurement, ProbeSpan, Profile, RunReport, Verdict
from kubeha.core.outage import OutageWindow
from kubeha.core.timeline import Timeline, TimelineEvent
from kubeha.core.topology import Topology
from kubeha.faults import FaultPlan, Journal, JournalEntry, pending, replay
from kubeha.faults.journal import process_identity
from kubeha.providers import AttachProvider, ProviderKind, make_provider
from kubeha.providers.attach import NEEDS_INVENTORY
from kubeha.providers.base import (
    CapabilityError,
    Component,
    LoadBalancerConfig,
    NodeState,
    Provider,
    ProviderError,
)
from kubeha.providers.inventory import Inventory, InventoryError, check_inventory_matches, load_inventory

__all__ = [
    "CLUSTER_REQUIRED_FIXTURES",
    "ClusterHandle",
    "ControlSpec",
    "ItemMarkers",
    "KubehaCluster",
    "NOT_RUN_PREFIX",
    "Needs",
    "ResultRecorder",
    "RunContext",
    "Settings",
    "item_markers",
    "not_run",
    "run_context",
    "settings",
    "unmet_needs",
]

NOT_RUN_PREFIX = "not-run: "
DRY_RUN_REASON = "dry run"
EMBEDDED_KIND = "kind"
DEFAULT_CLUSTER_NAME = "kubeha"
DEFAULT_REPORT_DIR = Path("out") / "reports"
WORKERINPUT_KEY = "kubeha"

# Named bounds of every wait the plugin itself makes.
CLAIM_TIMEOUT_S = 1800.0  # a disruptive test waiting for the fault budget
GATE_CLAIM_TIMEOUT_S = 1800.0  # the health gate waiting to run alone after a disruptive test
SERIAL_LOCK_TIMEOUT_S = 3600.0  # a serial test waiting for the cluster to itself (or others waiting for it)
SERIAL_LOCK_POLL_S = 0.5

# Fixtures that talk to the cluster: a test using any of them is a cluster test (dry run, serial lock).
CLUSTER_REQUIRED_FIXTURES = frozenset(
    {"kubeha_cluster", "api_client", "provider", "kubeha_provider", "journal", "fault_budget", "fault_coordinator",
     "steady_state"}
)

NO_CLUSTER_MESSAGE = (
    "this test needs a Kubernetes cluster but the session has none: pass --cluster kind for the embedded cluster or "
    "--kubeconfig PATH to attach to one, or make pytest_kubeha_cluster_required return True in the suite's conftest.py"
)

_KIND_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_CONTROL_ID = re.compile(r"^[A-Z][A-Z0-9]*(-[A-Z0-9]+)+$")


# ---------------------------------------------------------------------------------------------------------------------
# Settings: the validated command line
# ---------------------------------------------------------------------------------------------------------------------


class ClusterSource(enum.Enum):
    EMBEDDED = "embedded"  # the suite's own kind cluster
    ATTACH = "attach"  # any cluster reached through --kubeconfig


@dataclass(frozen=True)
class Settings:
    source: ClusterSource
    explicit: bool  # --kubeconfig or --cluster given: the session needs a cluster whatever the hooks say
    kubeconfig: KubeconfigInfo | None
    cluster_name: str
    inventory: Inventory | None
    allow_faults: str | None
    keep_cluster: bool
    dry_run: bool
    profile: Profile
    report_dir: Path


SETTINGS_KEY = pytest.StashKey[Settings]()
RUN_KEY = pytest.StashKey["RunContext"]()
CONTROLLER_KEY = pytest.StashKey["_Controller"]()
ITEM_KEY = pytest.StashKey["_ItemState"]()


def settings(config: pytest.Config) -> Settings:
    """The validated kubeha options of this session."""
    return config.stash[SETTINGS_KEY]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kubeha", "kubeha: Kubernetes high-availability conformance")
    group.addoption(
        "--kubeconfig",
        metavar="PATH",
        default=None,
        help="attach to the cluster of this kubeconfig (default: the embedded kind cluster)",
    )
    group.addoption("--context", metavar="NAME", default=None, help="kubeconfig context to use with --kubeconfig")
    group.addoption(
        "--cluster",
        choices=(EMBEDDED_KIND,),
        default=None,
        help="run against the embedded kind cluster, creating it if needed (the default without --kubeconfig)",
    )
    group.addoption(
        "--cluster-name",
        metavar="NAME",
        default=None,
        help=f"name of the embedded kind cluster (default: {DEFAULT_CLUSTER_NAME})",
    )
    group.addoption(
        "--inventory",
        metavar="FILE",
        default=None,
        help="SSH access to the nodes of an attached cluster (YAML, see kubeha.providers.inventory)",
    )
    group.addoption(
        "--allow-faults",
        metavar="CLUSTER_UID",
        default=None,
        help="consent to inject faults into the attached cluster whose kube-system namespace has this UID",
    )
    group.addoption(
        "--keep-cluster",
        action="store_true",
        default=False,
        help="keep the embedded cluster after the session (by default it is deleted if the session created it)",
    )
    group.addoption(
        "--dry-run",
        action="store_true",
        default=False,
        help="print the faults disruptive tests would inject and their targets; touch nothing",
    )
    group.addoption(
        "--profile",
        choices=tuple(profile.value for profile in Profile),
        default=Profile.DEFAULT.value,
        help="certification: any skipped or not-run test fails the session",
    )
    group.addoption(
        "--report-dir",
        metavar="DIR",
        default=None,
        help=f"where the run's reports are written (default: ./{DEFAULT_REPORT_DIR})",
    )


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


def _resolve(config: pytest.Config, raw: str) -> Path:
    path = Path(raw).expanduser()
    return path if path.is_absolute() else config.invocation_params.dir / path


def parse_settings(config: pytest.Config) -> Settings:
    """Validate the kubeha options; every error is a `pytest.UsageError` saying what to pass instead."""
    option = config.option
    raw_kubeconfig: str | None = option.kubeconfig
    context: str | None = option.context
    cluster: str | None = option.cluster
    cluster_name: str | None = option.cluster_name
    raw_inventory: str | None = option.inventory
    allow_faults: str | None = option.allow_faults
    keep_cluster: bool = option.keep_cluster
    attach = raw_kubeconfig is not None

    if attach and cluster is not None:
        raise pytest.UsageError(
            f"--kubeconfig and --cluster {cluster} both choose a cluster: pass --kubeconfig PATH to attach to an "
            "existing cluster, or --cluster kind for the embedded one, not both"
        )
    if context is not None and not attach:
        raise pytest.UsageError(
            f"--context {context} selects a context of --kubeconfig, which was not given: pass --kubeconfig PATH "
            "too, or omit --context to use the embedded kind cluster"
        )
    if attach and cluster_name is not None:
        raise pytest.UsageError(
            f"--cluster-name {cluster_name} names the embedded kind cluster, but --kubeconfig attaches to another "
            "cluster: omit --cluster-name, or omit --kubeconfig to use the embedded cluster"
        )
    if attach and keep_cluster:
        raise pytest.UsageError(
            "--keep-cluster applies to the embedded kind cluster only (an attached cluster is never deleted): "
            "omit --keep-cluster"
        )
    if not attach and allow_faults is not None:
        raise pytest.UsageError(
            f"--allow-faults {allow_faults} gives consent for an attached cluster, but no --kubeconfig was given: "
            "the embedded kind cluster needs no consent; omit --allow-faults, or pass --kubeconfig PATH"
        )
    if not attach and raw_inventory is not None:
        raise pytest.UsageError(
            f"--inventory {raw_inventory} describes the machines of an attached cluster, but no --kubeconfig was "
            "given: the embedded kind cluster is reached through docker; omit --inventory, or pass --kubeconfig PATH"
        )
    name = cluster_name if cluster_name is not None else DEFAULT_CLUSTER_NAME
    if not _KIND_NAME.match(name):
        raise pytest.UsageError(
            f"--cluster-name {name}: not a valid kind cluster name; use lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )

    kubeconfig: KubeconfigInfo | None = None
    if raw_kubeconfig is not None:
        try:
            kubeconfig = read_kubeconfig(KubeconfigTarget(_resolve(config, raw_kubeconfig), context))
        except KubeconfigError as error:
            raise pytest.UsageError(str(error)) from None

    inventory: Inventory | None = None
    if raw_inventory is not None:
        try:
            inventory = load_inventory(_resolve(config, raw_inventory))
        except InventoryError as error:
            raise pytest.UsageError(f"--inventory {raw_inventory}: {error}") from None

    if allow_faults is not None:
        try:
            allow_faults = validate_uid(allow_faults)
        except ConsentError as error:
            raise pytest.UsageError(str(error)) from None

    raw_report_dir: str | None = option.report_dir
    report_dir = _resolve(config, raw_report_dir if raw_report_dir is not None else str(DEFAULT_REPORT_DIR))
    if report_dir.exists() and not report_dir.is_dir():
        raise pytest.UsageError(
            f"--report-dir {report_dir}: exists and is not a directory; pass a directory path (it is created if "
            "missing)"
        )

    return Settings(
        source=ClusterSource.ATTACH if attach else ClusterSource.EMBEDDED,
        explicit=attach or cluster is not None,
        kubeconfig=kubeconfig,
        cluster_name=name,
        inventory=inventory,
        allow_faults=allow_faults,
        keep_cluster=keep_cluster,
        dry_run=bool(option.dry_run),
        profile=Profile(option.profile),
        report_dir=report_dir,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Markers
# ---------------------------------------------------------------------------------------------------------------------

MARKERS = (
    "disruptive(control_plane_nodes=0, etcd_members=0, api_servers=0, workers=0, ingress_nodes=0, "
    "controller_managers=0, schedulers=0, load_balancers=0, exclusive=False, reason=''): the test breaks these "
    "cluster members at once; it runs only within the fault budget (kubeha.core.budget.Claim), with consent, from "
    "a steady state",
    "control(id, title, statement): the HA control this test proves: a stable ID such as HA-API-01, a short title "
    "and the MUST statement",
    "serial: the test runs while no other test uses the cluster",
    "needs(control_planes=0, etcd_members=0, workers=0, ingress_nodes=0): minimum topology; on a smaller cluster "
    "the test is not-run with the reason",
)

CLAIM_KWARGS: Mapping[str, ResourceKind] = MappingProxyType(
    {
        "control_plane_nodes": ResourceKind.CONTROL_PLANE_NODE,
        "etcd_members": ResourceKind.ETCD_MEMBER,
        "api_servers": ResourceKind.API_SERVER,
        "workers": ResourceKind.WORKER_NODE,
        "ingress_nodes": ResourceKind.INGRESS_NODE,
        "controller_managers": ResourceKind.CONTROLLER_MANAGER,
        "schedulers": ResourceKind.SCHEDULER,
        "load_balancers": ResourceKind.LOAD_BALANCER,
    }
)
NEEDS_KWARGS = ("control_planes", "etcd_members", "workers", "ingress_nodes")
_NEEDS_NOUNS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "control_planes": ("control-plane node", "control-plane nodes"),
        "etcd_members": ("etcd member", "etcd members"),
        "workers": ("worker", "workers"),
        "ingress_nodes": ("ingress node", "ingress nodes"),
    }
)


@dataclass(frozen=True)
class ControlSpec:
    id: str
    title: str
    statement: str


@dataclass(frozen=True)
class Needs:
    control_planes: int = 0
    etcd_members: int = 0
    workers: int = 0
    ingress_nodes: int = 0


@dataclass(frozen=True)
class ItemMarkers:
    claim: Claim | None = None
    control: ControlSpec | None = None
    needs: Needs | None = None
    serial: bool = False

    def tags(self) -> tuple[str, ...]:
        tags: list[str] = []
        if self.claim is not None:
            tags.append("disruptive")
            if self.claim.exclusive:
                tags.append("exclusive")
        if self.serial:
            tags.append("serial")
        return tuple(tags)


def _count(value: object, marker: str, name: str, nodeid: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise pytest.UsageError(
            f"{nodeid}: @pytest.mark.{marker}({name}={value!r}): {name} must be a whole number >= 0, "
            f"e.g. @pytest.mark.{marker}({name}=1)"
        )
    return value


def _one_marker(item: pytest.Item, name: str) -> pytest.Mark | None:
    marks = list(item.iter_markers(name))
    return marks[0] if marks else None


def _parse_claim(mark: pytest.Mark, nodeid: str) -> Claim:
    if mark.args:
        raise pytest.UsageError(
            f"{nodeid}: @pytest.mark.disruptive takes keyword arguments only, got {mark.args!r}: write e.g. "
            "@pytest.mark.disruptive(control_plane_nodes=1)"
        )
    unknown = sorted(set(mark.kwargs) - set(CLAIM_KWARGS) - {"exclusive", "reason"})
    if unknown:
        raise pytest.UsageError(
            f"{nodeid}: @pytest.mark.disruptive got unknown argument(s) {unknown}: use "
            f"{', '.join(CLAIM_KWARGS)}, exclusive or reason"
        )
    resources = {
        kind: _count(mark.kwargs.get(name, 0), "disruptive", name, nodeid) for name, kind in CLAIM_KWARGS.items()
    }
    exclusive = mark.kwargs.get("exclusive", False)
    reason = mark.kwargs.get("reason", "")
    if not isinstance(exclusive, bool):
        raise pytest.UsageError(f"{nodeid}: @pytest.mark.disruptive(exclusive={exclusive!r}): pass True or False")
    if not isinstance(reason, str):
        raise pytest.UsageError(f"{nodeid}: @pytest.mark.disruptive(reason={reason!r}): pass a string")
    if not exclusive and not any(resources.values()):
        raise pytest.UsageError(
            f"{nodeid}: @pytest.mark.disruptive names nothing the test breaks: declare it, e.g. "
            "@pytest.mark.disruptive(control_plane_nodes=1), or pass exclusive=True to run the test alone"
        )
    return Claim(nodeid, resources, exclusive=exclusive, reason=reason)


def _parse_control(mark: pytest.Mark, nodeid: str) -> ControlSpec:
    names = ("id", "title", "statement")
    if len(mark.args) > len(names):
        raise pytest.UsageError(
            f"{nodeid}: @pytest.mark.control takes (id, title, statement), got {len(mark.args)} positional arguments"
        )
    values: dict[str, object] = dict(zip(names, mark.args))
    for key, value in mark.kwargs.items():
        if key not in names:
            raise pytest.UsageError(
                f"{nodeid}: @pytest.mark.control got unknown argument {key!r}: use id, title and statement"
            )
        if key in values:
            raise pytest.UsageError(f"{nodeid}: @pytest.mark.control got {key} twice: pass it once")
        values[key] = value
    missing = [name for name in names if not isinstance(values.get(name), str) or not str(values[name]).strip()]
    if missing:
        raise pytest.UsageError(
            f"{nodeid}: @pytest.mark.control needs non-empty strings for {', '.join(missing)}: write e.g. "
            '@pytest.mark.control("HA-API-01", "API survives a control-plane node loss", '
            '"The API MUST stay available while one control-plane node is down")'
        )
    control_id, title, statement = (str(values[name]).strip() for name in names)
    if not _CONTROL_ID.match(control_id):
        raise pytest.UsageError(
            f"{nodeid}: control id {control_id!r} is not a stable control ID: use upper-case words and numbers "
            "joined by '-', e.g. HA-API-01"
        )
    if "MUST" not in statement:
        raise pytest.UsageError(
            f"{nodeid}: the statement of control {control_id} has no MUST: state the requirement the test proves, "
            'e.g. "The API MUST stay available while one control-plane node is down"'
        )
    return ControlSpec(control_id, title, statement)


def _parse_needs(mark: pytest.Mark, nodeid: str) -> Needs:
    if mark.args:
        raise pytest.UsageError(
            f"{nodeid}: @pytest.mark.needs takes keyword arguments only, got {mark.args!r}: write e.g. "
            "@pytest.mark.needs(workers=2)"
        )
    unknown = sorted(set(mark.kwargs) - set(NEEDS_KWARGS))
    if unknown:
        raise pytest.UsageError(
            f"{nodeid}: @pytest.mark.needs got unknown argument(s) {unknown}: use {', '.join(NEEDS_KWARGS)}"
        )
    counts = {name: _count(mark.kwargs.get(name, 0), "needs", name, nodeid) for name in NEEDS_KWARGS}
    return Needs(**counts)


def item_markers(item: pytest.Item) -> ItemMarkers:
    """The kubeha markers of `item`, validated (misuse raises `pytest.UsageError`). The closest marker wins."""
    claim_mark = _one_marker(item, "disruptive")
    control_mark = _one_marker(item, "control")
    needs_mark = _one_marker(item, "needs")
    serial_mark = _one_marker(item, "serial")
    if serial_mark is not None and (serial_mark.args or serial_mark.kwargs):
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.serial takes no arguments")
    return ItemMarkers(
        claim=None if claim_mark is None else _parse_claim(claim_mark, item.nodeid),
        control=None if control_mark is None else _parse_control(control_mark, item.nodeid),
        needs=None if needs_mark is None else _parse_needs(needs_mark, item.nodeid),
        serial=serial_mark is not None,
    )


def unmet_needs(needs: Needs, topology: Topology) -> str | None:
    """Why `topology` is too small for `needs` ("cluster has 1 worker, test needs 2"), or None."""
    have = {
        "control_planes": len(topology.control_planes()),
        "etcd_members": len(topology.etcd_members),
        "workers": len(topology.workers()),
        "ingress_nodes": len(topology.ingress_nodes()),
    }
    reasons = []
    for name in NEEDS_KWARGS:
        wanted = getattr(needs, name)
        if have[name] < wanted:
            singular, plural = _NEEDS_NOUNS[name]
            reasons.append(f"cluster has {have[name]} {singular if have[name] == 1 else plural}, test needs {wanted}")
    return "; ".join(reasons) or None


def not_run(reason: str) -> NoReturn:
    """End the current test as not-run: it proved nothing, for `reason` (never counted as a pass)."""
    pytest.skip(NOT_RUN_PREFIX + reason)


# ---------------------------------------------------------------------------------------------------------------------
# Run context: what every process of the session knows about the cluster and the run directory
# ---------------------------------------------------------------------------------------------------------------------


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


def run_context(config: pytest.Config) -> RunContext:
    """The run context of this process (available from session start on)."""
    try:
        return config.stash[RUN_KEY]
    except KeyError:
        raise pytest.UsageError(
            "the kubeha run context is read before the session started: use it from fixtures or test hooks"
        ) from None


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _worker_input(config: pytest.Config) -> Mapping[str, object]:
    raw = getattr(config, "workerinput", None)
    return raw if isinstance(raw, dict) else {}


def _atomic_write(path: Path, text: str) -> None:
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
    _atomic_write(context.unhealthy_path, json.dumps({"reason": reason, "at": time.time()}))


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


# ---------------------------------------------------------------------------------------------------------------------
# The cluster as tests see it
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubehaCluster:
    """The session's cluster: who it is, how to reach it, what it is made of, and whether faults may be injected."""

    identity: ClusterIdentity
    kubeconfig: Path
    context: str | None
    topology: Topology
    embedded: bool
    name: str
    consent: Consent | None
    lb_distinct_from_nodes: bool = True
    discovery_notes: tuple[str, ...] = ()

    def fault_refusal(self) -> str | None:
        """None when faults may be injected, else why not and the flag that would allow it."""
        return check_consent(self.consent, self.identity)

    def report_identity(self) -> model.ClusterIdentity:
        return model.ClusterIdentity(
            api_url=self.identity.api_url,
            cluster_uid=self.identity.kube_system_uid,
            kubernetes_version=self.identity.kubernetes_version,
        )


class _Gate(Protocol):
    def check(self) -> HealthReport: ...

    def wait(self, timeout_s: float = ...) -> HealthReport: ...


# ---------------------------------------------------------------------------------------------------------------------
# Per-test result recording
# ---------------------------------------------------------------------------------------------------------------------


class ResultRecorder:
    """What a test proved: measurements against budgets, evidence, outage windows, timeline events.

    At the end of the test the plugin turns it into a `ControlResult` (for a test marked ``control``) and JUnit
    properties. A passing test with a measurement outside its budget fails.
    """

    def __init__(self, nodeid: str, control: ControlSpec | None, context: RunContext | None) -> None:
        self.nodeid = nodeid
        self.control = control
        self._context = context
        self._lock = threading.Lock()
        self._measurements: list[Measurement] = []
        self._evidence: list[Evidence] = []
        self._windows: list[OutageWindow] = []
        self._tags: list[str] = []
        self._probe_span: ProbeSpan | None = None

    def measure(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        budget: float | None = None,
        comparison: Comparison = Comparison.AT_MOST,
    ) -> Measurement:
        measurement = Measurement(name=name, value=value, unit=unit, budget=budget, comparison=comparison)
        self.add_measurement(measurement)
        return measurement

    def add_measurement(self, measurement: Measurement) -> None:
        with self._lock:
            self._measurements.append(measurement)

    def evidence(self, label: str, text: str) -> None:
        with self._lock:
            self._evidence.append(Evidence(label=label, text=text))

    def windows(self, windows: Iterable[OutageWindow]) -> None:
        with self._lock:
            self._windows.extend(windows)

    def probe_span(self, start: float, end: float) -> None:
        with self._lock:
            self._probe_span = ProbeSpan(start=start, end=end)

    def tag(self, *tags: str) -> None:
        with self._lock:
            self._tags.extend(tags)

    def event(self, kind: str, detail: str, *, source: str = "test") -> None:
        """Add an event to the run's timeline, attributed to this test."""
        if self._context is not None:
            record_event(self._context, source, kind, detail, self.nodeid)

    def broken_budgets(self) -> tuple[Measurement, ...]:
        with self._lock:
            return tuple(m for m in self._measurements if m.within_budget is False)

    def build(
        self, verdict: Verdict, reason: str, started_wall: float, duration_s: float, tags: Sequence[str]
    ) -> ControlResult | None:
        if self.control is None:
            return None
        with self._lock:
            return ControlResult(
                control_id=self.control.id,
                title=self.control.title,
                statement=self.control.statement,
                verdict=verdict,
                reason=reason,
                started_wall=started_wall,
                duration_s=max(duration_s, 0.0),
                measurements=tuple(self._measurements),
                evidence=tuple(self._evidence),
                windows=tuple(self._windows),
                tags=(*tags, *self._tags),
                probe_span=self._probe_span,
            )


class _ItemState:
    """Bookkeeping for one test across its setup, call and teardown."""

    def __init__(self, markers: ItemMarkers, recorder: ResultRecorder) -> None:
        self.markers = markers
        self.recorder = recorder
        self.started_wall: float | None = None
        self.duration_s = 0.0
        self.verdict: Verdict | None = None
        self.reason = ""
        self.grant: Grant | None = None
        self.cluster_identity: model.ClusterIdentity | None = None


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text.removeprefix("Skipped: ")


def _failure_reason(call: pytest.CallInfo[None]) -> str:
    if call.excinfo is None:
        return "failed"
    text = call.excinfo.exconly().strip()
    first = text.splitlines()[0] if text else call.excinfo.typename
    return first[:500]


def _verdict_of(state: _ItemState, when: str, outcome: str, reason: str) -> None:
    """Fold the outcome of one phase into the test's verdict (the first non-pass wins, as in pytest)."""
    if state.verdict is not None and state.verdict is not Verdict.PASSED:
        return
    if outcome == "passed":
        if when == "call":
            state.verdict = Verdict.PASSED
        return
    if outcome == "skipped":
        if reason.startswith(NOT_RUN_PREFIX):
            state.verdict, state.reason = Verdict.NOT_RUN, reason.removeprefix(NOT_RUN_PREFIX)
        else:
            state.verdict, state.reason = Verdict.SKIPPED, reason
        return
    state.verdict = Verdict.FAILED if when == "call" else Verdict.ERROR
    state.reason = reason if when == "call" else f"{when} error: {reason}"


def _result_path(context: RunContext, nodeid: str) -> Path:
    digest = hashlib.sha256(nodeid.encode()).hexdigest()[:20]
    return context.results_dir / f"{digest}.json"


def _write_result(context: RunContext, nodeid: str, result: ControlResult, cluster: model.ClusterIdentity | None) -> None:
    document: JsonObject = {
        "nodeid": nodeid,
        "worker": context.worker_id,
        "cluster": None if cluster is None else cluster.to_dict(),
        "result": result.to_dict(),
    }
    _atomic_write(_result_path(context, nodeid), json.dumps(document, allow_nan=False))


@dataclass(frozen=True)
class _StoredResult:
    nodeid: str
    result: ControlResult
    cluster: model.ClusterIdentity | None


def _read_results(context: RunContext) -> tuple[_StoredResult, ...]:
    if not context.results_dir.is_dir():
        return ()
    stored: list[_StoredResult] = []
    for path in sorted(context.results_dir.glob("*.json")):
        where = str(path)
        decoded: JsonValue = json.loads(path.read_text(encoding="utf-8"))
        obj = as_object(decoded, where)
        raw_cluster = obj.get("cluster")
        stored.append(
            _StoredResult(
                nodeid=get_str(obj, "nodeid", where),
                result=ControlResult.from_dict(get_object(obj, "result", where), f"{where}.result"),
                cluster=None
                if raw_cluster is None
                else model.ClusterIdentity.from_dict(as_object(raw_cluster, f"{where}.cluster"), f"{where}.cluster"),
            )
        )
    return tuple(sorted(stored, key=lambda item: (item.result.started_wall, item.nodeid)))


# ---------------------------------------------------------------------------------------------------------------------
# Providers as tests receive them
# ---------------------------------------------------------------------------------------------------------------------


class ReadOnlyProvider:
    """The provider given to a test without a ``disruptive`` marker: it may look, not touch."""

    def __init__(self, inner: Provider, nodeid: str) -> None:
        self._inner = inner
        self._nodeid = nodeid

    def _refuse(self, operation: str) -> NoReturn:
        raise pytest.UsageError(
            f"{self._nodeid} tried to {operation} without declaring it: mark the test "
            "@pytest.mark.disruptive(...) with what it breaks, so that it runs within the fault budget"
        )

    @property
    def name(self) -> str:
        return self._inner.name

    def node_names(self) -> tuple[str, ...]:
        return self._inner.node_names()

    def node_state(self, node: str) -> NodeState:
        return self._inner.node_state(node)

    def load_balancer_config(self) -> LoadBalancerConfig:
        return self._inner.load_balancer_config()

    def stop_node(self, node: str) -> None:
        self._refuse(f"stop node {node}")

    def kill_node(self, node: str) -> None:
        self._refuse(f"kill node {node}")

    def start_node(self, node: str) -> None:
        self._refuse(f"start node {node}")

    def pause_node(self, node: str) -> None:
        self._refuse(f"pause node {node}")

    def resume_node(self, node: str) -> None:
        self._refuse(f"resume node {node}")

    def stop_component(self, node: str, component: Component) -> None:
        self._refuse(f"stop {component.value} on node {node}")

    def start_component(self, node: str, component: Component) -> None:
        self._refuse(f"start {component.value} on node {node}")

    def isolate_node(self, node: str, peers: tuple[str, ...]) -> None:
        self._refuse(f"isolate node {node}")

    def heal_node(self, node: str, peers: tuple[str, ...]) -> None:
        self._refuse(f"heal node {node}")

    def set_load_balancer_config(self, config: LoadBalancerConfig) -> None:
        self._refuse("replace the load balancer configuration")

    def stop_load_balancer(self) -> None:
        self._refuse("stop the load balancer")

    def start_load_balancer(self) -> None:
        self._refuse("start the load balancer")


def _attach_refusal() -> str:
    return str(CapabilityError("act on the cluster's machines", "attach", NEEDS_INVENTORY))


@pytest.hookimpl(trylast=True)
def pytest_kubeha_make_provider(config: pytest.Config, cluster: KubehaCluster) -> Provider:
    """The default provider: kind for the embedded cluster, ssh with --inventory, attach otherwise."""
    if cluster.embedded:
        return make_provider(ProviderKind.KIND, kind_cluster=cluster.name)
    inventory = settings(config).inventory
    node_names = tuple(node.name for node in cluster.topology.nodes)
    if inventory is None:
        return make_provider(ProviderKind.ATTACH, node_names=node_names)
    return make_provider(ProviderKind.SSH, inventory=inventory)


@dataclass(frozen=True)
class _Replayed:
    undone: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()

    def describe(self) -> str:
        lines = [f"undid {len(self.undone)} fault(s) left in place"]
        lines.extend(f"undone: {text}" for text in self.undone)
        lines.extend(f"FAILED: {text}" for text in self.failed)
        return "\n".join(lines)


def _replay_entries(provider: Provider, journal: Journal, entries: Sequence[JournalEntry]) -> _Replayed:
    """Undo `entries` newest first, recording each outcome in the journal."""
    undone: list[str] = []
    failed: list[str] = []
    for entry in sorted(entries, key=lambda entry: entry.created, reverse=True):
        try:
            entry.undo.apply(provider)
        except (ProviderError, CapabilityError, OSError) as error:
            journal.mark_failed(entry, str(error))
            failed.append(
                f"could not {entry.undo.describe()} ({error}); do it by hand: {entry.undo.manual_fix(entry.provider)}"
            )
            continue
        journal.mark_done(entry)
        undone.append(f"{entry.undo.describe()} (pid {entry.pid})")
    return _Replayed(tuple(undone), tuple(failed))


def _replay_own(provider: Provider, journal: Journal, cluster_id: str) -> _Replayed:
    """Undo this process's pending journal entries (faults whose restore failed)."""
    me = process_identity()
    host = socket.gethostname()
    mine = [
        entry
        for entry in pending(cluster_id)
        if entry.pid == os.getpid() and entry.process == me and entry.host == host
    ]
    return _replay_entries(provider, journal, mine)


def _register_worker_process(context: RunContext) -> None:
    """Record this xdist worker's pid so that the controller can replay its faults if it crashes."""
    if context.worker_id is None or context.cluster is None:
        return
    document: JsonObject = {"worker": context.worker_id, "pid": os.getpid(), "process": process_identity()}
    _atomic_write(context.workers_dir / f"{context.worker_id}.{os.getpid()}.json", json.dumps(document))


def _worker_processes(context: RunContext, worker_id: str) -> tuple[tuple[int, str], ...]:
    """(pid, process identity) of every process that ran as xdist worker `worker_id` in this session."""
    found: list[tuple[int, str]] = []
    for path in sorted(context.workers_dir.glob(f"{worker_id}.*.json")) if context.workers_dir.is_dir() else ():
        decoded: JsonValue = json.loads(path.read_text(encoding="utf-8"))
        obj = as_object(decoded, str(path))
        pid = obj.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool):
            found.append((pid, get_str(obj, "process", str(path))))
    return tuple(found)


# ---------------------------------------------------------------------------------------------------------------------
# The serial lock: serial tests run while no other cluster test runs in any process
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _serial_lock(context: RunContext, nodeid: str, exclusive: bool) -> Iterator[None]:
    """Shared for every cluster test, exclusive for a serial one; a waiting serial test goes before new sharers."""
    context.run_dir.mkdir(parents=True, exist_ok=True)
    context.serial_waiting_dir.mkdir(parents=True, exist_ok=True)
    waiting = context.serial_waiting_dir / hashlib.sha256(nodeid.encode()).hexdigest()[:20]
    deadline = time.monotonic() + SERIAL_LOCK_TIMEOUT_S
    fd = os.open(context.serial_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if exclusive:
            waiting.touch()
        try:
            while True:
                if exclusive or not any(context.serial_waiting_dir.iterdir()):
                    try:
                        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                        break
                    except OSError as error:
                        if error.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                if time.monotonic() > deadline:
                    not_run(
                        f"waited {SERIAL_LOCK_TIMEOUT_S:.0f} s for "
                        + ("every other cluster test to finish (the test is serial)" if exclusive
                           else "serial tests to finish")
                    )
                time.sleep(SERIAL_LOCK_POLL_S)
        finally:
            if exclusive:
                waiting.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------------
# The controller: cluster setup, xdist wiring, reports, summary
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Incomplete:
    nodeid: str
    kind: str  # "not-run", "skipped", "xfailed"
    reason: str


@dataclass
class _Summary:
    incomplete: list[_Incomplete] = field(default_factory=list)
    dry_run_plans: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


class _Gateway(Protocol):
    @property
    def id(self) -> str: ...


class _WorkerNode(Protocol):
    """What the plugin uses of xdist's WorkerController."""

    workerinput: dict[str, object]

    @property
    def gateway(self) -> _Gateway: ...


class _Controller:
    """Registered on the xdist controller, or in the only process without xdist."""

    def __init__(self, config: pytest.Config, options: Settings) -> None:
        self.config = config
        self.options = options
        self.summary = _Summary()
        self.discovery: Discovery | None = None
        self.client: ApiClient | None = None
        self.handle: ClusterHandle | None = None
        self.report_verdict: model.RunSummary | None = None
        started = time.time()
        run_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(started)) + f"-{os.getpid()}"
        self.context = RunContext(
            run_id=run_id,
            run_dir=options.report_dir / "runs" / run_id,
            started_wall=started,
            dry_run=options.dry_run,
            profile=options.profile,
        )

    # -- session start ---------------------------------------------------------------------------------------------

    def cluster_required(self) -> bool:
        if self.config.option.collectonly:
            return False  # nothing runs: do not build, create or contact a cluster
        if self.options.explicit:
            return True
        answer = self.config.hook.pytest_kubeha_cluster_required(config=self.config)
        return answer is True

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.cluster_required():
            self.context.run_dir.mkdir(parents=True, exist_ok=True)
            self.handle = self._set_up_cluster()
            self.context = replace(self.context, cluster=self.handle)
        self.config.stash[RUN_KEY] = self.context

    def _set_up_cluster(self) -> ClusterHandle:
        options = self.options
        if options.source is ClusterSource.ATTACH:
            assert options.kubeconfig is not None  # parse_settings: ATTACH comes with a kubeconfig
            target = KubeconfigTarget(options.kubeconfig.path, options.kubeconfig.context)
            return self._attach(target, options.kubeconfig.context, created=False)
        from fixtures.kind.api import delete_cluster, ensure_cluster
        from fixtures.kind.progress import Progress

        kind_cluster = ensure_cluster(options.cluster_name, progress=Progress())
        ready = False
        try:
            handle = self._attach(KubeconfigTarget(kind_cluster.kubeconfig, None), kind_cluster.name, kind_cluster.created)
            ready = True
        finally:
            # pytest does not finish a session whose start failed: remove a cluster this session created.
            if not ready and kind_cluster.created and not options.keep_cluster:
                delete_cluster(kind_cluster.name)
        return handle

    def _attach(self, target: KubeconfigTarget, name: str, created: bool) -> ClusterHandle:
        """Read the cluster's identity and topology, bind consent, replay crashed runs' faults, check its health."""
        options = self.options
        try:
            client = new_api_client(target, read_only=options.dry_run)
            identity = read_identity(client)
            discovery = discover(client)
        except (KubeconfigError, IdentityError, DiscoveryError) as error:
            raise pytest.UsageError(f"cluster {target.describe()}: {error}") from None
        except (ApiException, HTTPError, OSError) as error:
            raise pytest.UsageError(
                f"cannot read the cluster through {target.describe()}: {_describe_request_error(error)}; check that "
                "the cluster is up and the kubeconfig's credentials are valid"
            ) from None
        self.client = client
        self.discovery = discovery
        embedded = options.source is ClusterSource.EMBEDDED
        try:
            consent = consent_for(identity, embedded=embedded, allow_faults=options.allow_faults)
        except ConsentError as error:
            raise pytest.UsageError(str(error)) from None
        if options.inventory is not None:
            mismatch = check_inventory_matches(options.inventory, (node.name for node in discovery.topology.nodes))
            if not mismatch.matches:
                raise pytest.UsageError(f"--inventory: {mismatch.describe()}")
        handle = ClusterHandle(
            kubeconfig=target.path,
            context=target.context,
            embedded=embedded,
            name=name,
            identity=identity,
            consent=consent,
            created=created,
        )
        cluster = _cluster_view(handle, discovery)
        self.context = replace(self.context, cluster=handle)
        if not options.dry_run:
            self._replay_dead(cluster, "at session start")
        self._initial_gate(client, cluster)
        return handle

    def _provider(self, cluster: KubehaCluster) -> Provider:
        made: Provider = self.config.hook.pytest_kubeha_make_provider(config=self.config, cluster=cluster)
        return made

    def _replay_dead(self, cluster: KubehaCluster, when: str) -> None:
        """Undo faults left in place by processes that died; abort the session if any cannot be undone."""
        uid = cluster.identity.kube_system_uid
        left = pending(uid)
        if not left:
            return
        result = replay(self._provider(cluster), uid)
        text = f"{when}: {result.describe()}"
        self.summary.notes.append(text)
        record_event(self.context, "journal", "replay", text)
        if not result.ok:
            raise pytest.UsageError(
                f"undo actions left by a crashed run against {cluster.identity.api_url} could not be replayed; the "
                f"cluster is still degraded:\n{result.describe()}"
            )

    def _initial_gate(self, client: ApiClient, cluster: KubehaCluster) -> None:
        gate = SteadyStateGate(client, cluster.topology)
        report = gate.check() if self.options.dry_run else gate.wait()
        record_event(self.context, "health", "steady-state", report.describe())
        if not report.ok:
            reason = f"the cluster was not in its steady state at session start: {'; '.join(report.problems)}"
            self.summary.notes.append(reason)
            if not self.options.dry_run:
                mark_unhealthy(self.context, reason)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        handle = self.handle
        if handle is None:
            why = "--collect-only runs nothing" if config.option.collectonly else "this session needs none"
            return [f"kubeha: no cluster ({why})"]
        lines = [f"kubeha: cluster {handle.identity.describe()}"]
        if handle.embedded:
            lines.append(
                f"kubeha: embedded kind cluster {handle.name} ({'created by this session' if handle.created else 'existing'})"
            )
        else:
            lines.append(f"kubeha: attached through {handle.kubeconfig} (context {handle.context or 'current'})")
        if handle.consent is not None:
            lines.append(f"kubeha: faults allowed ({handle.consent.source.value} consent)")
        else:
            lines.append(
                "kubeha: faults NOT allowed: disruptive tests will be not-run; pass "
                f"--allow-faults {handle.identity.kube_system_uid} to allow them"
            )
        if self.discovery is not None:
            topology = self.discovery.topology
            lines.append(
                f"kubeha: topology {len(topology.control_planes())} control-plane, {len(topology.workers())} worker, "
                f"{len(topology.etcd_members)} etcd ({topology.etcd_mode.value}), "
                f"{len(topology.ingress_nodes())} ingress node(s); API endpoint "
                + (topology.load_balancer.endpoint if topology.load_balancer is not None else "is a node (no load balancer)")
            )
            lines.extend(f"kubeha: note: {note}" for note in self.discovery.notes)
        lines.append(f"kubeha: run directory {self.context.run_dir}")
        if self.options.dry_run:
            lines.append("kubeha: DRY RUN: nothing is injected, cluster tests are reported not-run")
        return lines

    # -- xdist -----------------------------------------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: _WorkerNode) -> None:
        node.workerinput[WORKERINPUT_KEY] = self.context.to_workerinput()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: _WorkerNode, error: object | None) -> None:
        """A worker died: undo the faults it left in place, then check the steady state again.

        xdist reports the worker down before its process is reaped, so the journal's liveness check would still see
        it running; the entries are picked by the pids the worker registered in the run directory instead.
        """
        if error is None or self.handle is None or self.discovery is None or self.options.dry_run:
            return
        worker = node.gateway.id
        cluster = _cluster_view(self.handle, self.discovery)
        uid = cluster.identity.kube_system_uid
        processes = set(_worker_processes(self.context, worker))
        host = socket.gethostname()
        left = [entry for entry in pending(uid) if (entry.pid, entry.process) in processes and entry.host == host]
        text = f"worker {worker} crashed ({error})"
        if not left:
            self.summary.notes.append(f"{text}; it left no fault in place")
            record_event(self.context, "journal", "worker-crash", text)
            return
        provider = self._provider(cluster)
        journal = Journal(uid, provider_name=provider.name)
        replayed = _replay_entries(provider, journal, left)
        detail = f"{text}; {replayed.describe()}"
        self.summary.notes.append(detail)
        record_event(self.context, "journal", "replay", detail)
        if replayed.failed:
            self.summary.failures.append(detail)
            mark_unhealthy(self.context, f"faults left by crashed worker {worker} could not be undone")
            return
        if self.client is not None:
            report = SteadyStateGate(self.client, cluster.topology).wait()
            record_event(self.context, "health", "steady-state", report.describe())
            if not report.ok:
                mark_unhealthy(self.context, f"after worker {worker} crashed: {report.describe()}")

    # -- outcomes --------------------------------------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped:
            wasxfail = getattr(report, "wasxfail", None)
            if isinstance(wasxfail, str):
                self.summary.incomplete.append(_Incomplete(report.nodeid, "xfailed", wasxfail or "expected failure"))
            else:
                reason = _skip_reason(report)
                kind = "not-run" if reason.startswith(NOT_RUN_PREFIX) else "skipped"
                self.summary.incomplete.append(
                    _Incomplete(report.nodeid, kind, reason.removeprefix(NOT_RUN_PREFIX))
                )
        for key, content in report.sections if report.when == "setup" else ():
            if DRY_RUN_SECTION in key:
                self.summary.dry_run_plans.append((report.nodeid, content))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:
            reason = _skip_reason(report)
            kind = "not-run" if reason.startswith(NOT_RUN_PREFIX) else "skipped"
            self.summary.incomplete.append(_Incomplete(report.nodeid, kind, reason.removeprefix(NOT_RUN_PREFIX)))

    # -- session end -----------------------------------------------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        try:
            self._write_reports()
        finally:
            if self.client is not None:
                self.client.close()  # type: ignore[no-untyped-call]
            self._tear_down_cluster()
        passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        if self.options.profile is Profile.CERTIFICATION and session.exitstatus in passing:
            verdict = self.report_verdict
            if verdict is not None and verdict.verdict is not Verdict.PASSED and not self.summary.incomplete:
                # e.g. no control produced a result: the pytest outcomes alone would not show it.
                self.summary.failures.append(f"run report verdict {verdict.verdict.value}: {'; '.join(verdict.reasons)}")
            if self.summary.incomplete or self.summary.failures:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        elif self.summary.failures and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _write_reports(self) -> None:
        if self.options.dry_run:
            return
        stored = _read_results(self.context)
        if not stored and self.handle is None:
            return
        if self.handle is not None:
            identity = model.ClusterIdentity(
                api_url=self.handle.identity.api_url,
                cluster_uid=self.handle.identity.kube_system_uid,
                kubernetes_version=self.handle.identity.kubernetes_version,
            )
        else:
            seen = next((item.cluster for item in stored if item.cluster is not None), None)
            identity = seen or model.ClusterIdentity(api_url="unknown", cluster_uid="unknown", kubernetes_version="unknown")
        report = RunReport(
            cluster=identity,
            started_wall=self.context.started_wall,
            finished_wall=max(time.time(), self.context.started_wall),
            results=tuple(item.result for item in stored),
            profile=self.options.profile,
        )
        self.report_verdict = report.summary()
        self.options.report_dir.mkdir(parents=True, exist_ok=True)
        written = self.config.hook.pytest_kubeha_write_reports(
            config=self.config, report=report, timeline=read_timeline(self.context), directory=self.options.report_dir
        )
        for paths in written:
            self.summary.written.extend(paths)

    def _tear_down_cluster(self) -> None:
        handle = self.handle
        if handle is None or not handle.embedded:
            return
        if self.options.keep_cluster:
            self.summary.notes.append(f"embedded cluster {handle.name} kept (--keep-cluster)")
            return
        if not handle.created:
            self.summary.notes.append(f"embedded cluster {handle.name} kept: it existed before this session")
            return
        from fixtures.kind.api import delete_cluster

        delete_cluster(handle.name)
        self.summary.notes.append(f"embedded cluster {handle.name} deleted (pass --keep-cluster to keep it)")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
        summary = self.summary
        write = terminalreporter.write_line
        if summary.dry_run_plans:
            terminalreporter.section("kubeha dry run: planned faults")
            for nodeid, plan in summary.dry_run_plans:
                write(nodeid)
                for line in plan.splitlines():
                    write(f"    {line}")
        if summary.incomplete:
            certification = self.options.profile is Profile.CERTIFICATION
            title = "kubeha: tests that proved nothing"
            terminalreporter.section(title + (" (certification: each one fails the run)" if certification else ""))
            for entry in summary.incomplete:
                write(f"{entry.kind.upper()} {entry.nodeid}: {entry.reason}")
        if summary.notes or summary.failures or summary.written:
            terminalreporter.section("kubeha")
            for note in summary.notes:
                write(note)
            for failure in summary.failures:
                write(f"FAILED: {failure}")
            for path in summary.written:
                write(f"report written: {path}")
        if self.options.profile is Profile.CERTIFICATION and (summary.incomplete or summary.failures):
            write(
                f"kubeha certification FAILED: {len(summary.incomplete)} test(s) skipped or not run"
                + (f", {len(summary.failures)} other failure(s)" if summary.failures else ""),
                red=True,
                bold=True,
            )
        if self.handle is not None and not summary.written and not self.options.dry_run:
            write(
                "kubeha: no report writer is registered: add the reports plugin to pytest_plugins to write the "
                f"JSON and HTML reports into {self.options.report_dir}"
            )


DRY_RUN_SECTION = "kubeha dry run"


def _describe_request_error(error: ApiException | HTTPError | OSError) -> str:
    if isinstance(error, ApiException):
        return f"API error {error.status} {error.reason}".strip()
    return f"{type(error).__name__}: {error}"


def _cluster_view(handle: ClusterHandle, discovery: Discovery) -> KubehaCluster:
    return KubehaCluster(
        identity=handle.identity,
        kubeconfig=handle.kubeconfig,
        context=handle.context,
        topology=discovery.topology,
        embedded=handle.embedded,
        name=handle.name,
        consent=handle.consent,
        lb_distinct_from_nodes=discovery.lb_distinct_from_nodes,
        discovery_notes=discovery.notes,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and per-test hooks
# ---------------------------------------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    options = parse_settings(config)
    config.stash[SETTINGS_KEY] = options
    if _is_worker(config):
        raw = _worker_input(config).get(WORKERINPUT_KEY)
        worker_id = _worker_input(config).get("workerid")
        if not isinstance(raw, str):
            raise pytest.UsageError(
                "this xdist worker got no kubeha run context from its controller: load the kubeha plugin in the "
                "controller too (it is loaded by the repository's conftest.py)"
            )
        context = RunContext.from_workerinput(raw, worker_id if isinstance(worker_id, str) else None)
        config.stash[RUN_KEY] = context
        _register_worker_process(context)
        return
    controller = _Controller(config, options)
    config.stash[CONTROLLER_KEY] = controller
    config.pluginmanager.register(controller, "kubeha-controller")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Read the test's markers (misuse is a setup error with the fix) before any fixture runs."""
    context = item.config.stash.get(RUN_KEY, None)
    markers = item_markers(item)
    item.stash[ITEM_KEY] = _ItemState(markers, ResultRecorder(item.nodeid, markers.control, context))
    try:
        return (yield)
    except CapabilityError as error:
        not_run(str(error))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A provider that cannot do what the test asks makes the test not-run, with the provider's reason."""
    try:
        return (yield)
    except CapabilityError as error:
        not_run(str(error))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    state = item.stash.get(ITEM_KEY, None)
    if state is None:
        return (yield)
    if state.started_wall is None:
        state.started_wall = call.start
    state.duration_s += call.duration
    if call.when == "teardown":
        if call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception):
            _verdict_of(state, "teardown", "failed", _failure_reason(call))
        result = _build_result(item, state)
        if result is not None:
            properties = item.config.hook.pytest_kubeha_junit_properties(result=result)
            if properties:
                item.user_properties.extend(properties)
        report = yield
        context = item.config.stash.get(RUN_KEY, None)
        if result is not None and context is not None:
            _write_result(context, item.nodeid, result, state.cluster_identity)
        return report
    report = yield
    if call.when == "call" and report.passed:
        broken = state.recorder.broken_budgets()
        if broken:
            report.outcome = "failed"
            report.longrepr = "measurement(s) outside their budget: " + "; ".join(
                f"{m.name} = {m.describe()}" for m in broken
            )
            _verdict_of(state, "call", "failed", str(report.longrepr))
            return report
    if report.skipped:
        wasxfail = getattr(report, "wasxfail", None)
        reason = f"expected failure: {wasxfail}" if isinstance(wasxfail, str) else _skip_reason(report)
        _verdict_of(state, call.when, "skipped", reason)
    elif report.failed:
        _verdict_of(state, call.when, "failed", _failure_reason(call) if call.excinfo else str(report.longrepr))
    else:
        _verdict_of(state, call.when, "passed", "")
    return report


def _build_result(item: pytest.Item, state: _ItemState) -> ControlResult | None:
    verdict = state.verdict
    reason = state.reason
    if verdict is None:
        verdict, reason = Verdict.ERROR, "the test did not run its body (interrupted?)"
    broken = state.recorder.broken_budgets()
    if verdict is Verdict.PASSED and broken:
        # Recorded after the call phase (in a fixture's teardown): the control still failed.
        verdict = Verdict.FAILED
        reason = "measurement(s) outside their budget: " + "; ".join(f"{m.name} = {m.describe()}" for m in broken)
    if verdict is not Verdict.PASSED and not reason.strip():
        reason = verdict.value
    return state.recorder.build(
        verdict,
        reason if verdict is not Verdict.PASSED else "",
        state.started_wall if state.started_wall is not None else time.time(),
        state.duration_s,
        (*state.markers.tags(), f"test={item.nodeid}"),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------------


def _item_state(request: pytest.FixtureRequest) -> _ItemState:
    node: pytest.Item = request.node
    state = node.stash.get(ITEM_KEY, None)
    if state is None:
        raise pytest.UsageError(f"{request.node.nodeid}: kubeha test state is missing (is the plugin loaded twice?)")
    return state


@pytest.fixture(scope="session")
def kubeha_run(pytestconfig: pytest.Config) -> RunContext:
    """This session's run context; probes and tests keep their samples under ``kubeha_run.run_dir``."""
    return run_context(pytestconfig)


@pytest.fixture(scope="session")
def api_client(pytestconfig: pytest.Config) -> Iterator[ApiClient]:
    """An API client for the session's cluster, built in this process from the kubeconfig path.

    In a dry run it refuses every request that would change the cluster (`ReadOnlyApiClient`).
    """
    handle = run_context(pytestconfig).cluster
    if handle is None:
        raise pytest.UsageError(NO_CLUSTER_MESSAGE)
    client = new_api_client(
        KubeconfigTarget(handle.kubeconfig, handle.context), read_only=run_context(pytestconfig).dry_run
    )
    try:
        yield client
    finally:
        client.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def kubeha_cluster(pytestconfig: pytest.Config, api_client: ApiClient) -> KubehaCluster:
    """The session's cluster: identity, kubeconfig, topology and consent, as this process reads them."""
    handle = run_context(pytestconfig).cluster
    if handle is None:
        raise pytest.UsageError(NO_CLUSTER_MESSAGE)
    identity = read_identity(api_client)
    discovery = discover(api_client)
    # The consent stays bound to the identity read at session start: if this process reaches another cluster,
    # `KubehaCluster.fault_refusal` says so and disruptive tests are not-run.
    return KubehaCluster(
        identity=identity,
        kubeconfig=handle.kubeconfig,
        context=handle.context,
        topology=discovery.topology,
        embedded=handle.embedded,
        name=handle.name,
        consent=handle.consent,
        lb_distinct_from_nodes=discovery.lb_distinct_from_nodes,
        discovery_notes=discovery.notes,
    )


@pytest.fixture(scope="session")
def steady_state(kubeha_cluster: KubehaCluster, api_client: ApiClient) -> SteadyStateGate:
    """The health gate: ``steady_state.wait()`` blocks (bounded) until the cluster is in its steady state."""
    return SteadyStateGate(api_client, kubeha_cluster.topology)


@pytest.fixture(scope="session")
def kubeha_provider(pytestconfig: pytest.Config, kubeha_cluster: KubehaCluster) -> Provider:
    """This process's provider: in a dry run a `FaultPlan` that records calls and touches nothing."""
    if run_context(pytestconfig).dry_run:
        return FaultPlan(tuple(node.name for node in kubeha_cluster.topology.nodes))
    made: Provider = pytestconfig.hook.pytest_kubeha_make_provider(config=pytestconfig, cluster=kubeha_cluster)
    return made


@pytest.fixture
def provider(request: pytest.FixtureRequest, kubeha_provider: Provider) -> Provider:
    """The provider for this test: full access for a ``disruptive`` test, read-only for any other.

    With an attached cluster and no ``--inventory`` the test is not-run: nothing can act on the machines.
    """
    if isinstance(kubeha_provider, AttachProvider):
        not_run(_attach_refusal())
    if _item_state(request).markers.claim is None:
        return ReadOnlyProvider(kubeha_provider, request.node.nodeid)
    return kubeha_provider


@pytest.fixture(scope="session")
def journal(pytestconfig: pytest.Config, kubeha_cluster: KubehaCluster, kubeha_provider: Provider) -> Journal | FaultPlan:
    """Where faults record their undo actions (``journal=journal``); the `FaultPlan` itself in a dry run."""
    if isinstance(kubeha_provider, FaultPlan):
        return kubeha_provider
    return Journal(
        kubeha_cluster.identity.kube_system_uid,
        provider_name=kubeha_provider.name,
        worker_id=run_context(pytestconfig).worker_id,
    )


@pytest.fixture(scope="session")
def fault_coordinator(pytestconfig: pytest.Config, kubeha_cluster: KubehaCluster) -> Coordinator:
    """The cross-process fault budget of this run (its log proves the limits held)."""
    context = run_context(pytestconfig)
    return Coordinator(
        context.coordinator_dir, Limits.from_topology(kubeha_cluster.topology), worker_id=context.worker_id
    )


@pytest.fixture
def fault_budget(request: pytest.FixtureRequest) -> Grant:
    """The fault-budget grant this ``disruptive`` test holds (acquired before the test, released after it)."""
    state = _item_state(request)
    if state.markers.claim is None:
        raise pytest.UsageError(
            f"{request.node.nodeid} uses fault_budget without @pytest.mark.disruptive(...): declare what the test "
            "breaks"
        )
    if state.grant is None:
        raise pytest.UsageError(f"{request.node.nodeid}: the fault budget was not acquired (was the plugin disabled?)")
    return state.grant


@pytest.fixture
def kubeha_result(request: pytest.FixtureRequest) -> ResultRecorder:
    """Record measurements and evidence; they become the control's result and JUnit properties."""
    state = _item_state(request)
    if state.markers.control is None:
        raise pytest.UsageError(
            f"{request.node.nodeid} uses kubeha_result without @pytest.mark.control(id, title, statement): name the "
            "control whose result it records"
        )
    return state.recorder


@pytest.fixture(autouse=True)
def _kubeha_gate(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Iterator[None]:
    """Enforce the markers around every test: dry run, needs, serial, consent, health, fault budget."""
    state = _item_state(request)
    markers = state.markers
    context = pytestconfig.stash.get(RUN_KEY, None)
    uses_cluster = (
        bool(CLUSTER_REQUIRED_FIXTURES & set(request.fixturenames))
        or markers.claim is not None
        or markers.needs is not None
    )
    if context is None or not uses_cluster:
        yield
        return
    nodeid = request.node.nodeid
    cluster = request.getfixturevalue("kubeha_cluster")
    assert isinstance(cluster, KubehaCluster), "kubeha_cluster must return a KubehaCluster"
    state.cluster_identity = cluster.report_identity()
    if markers.needs is not None:
        unmet = unmet_needs(markers.needs, cluster.topology)
        if unmet is not None:
            not_run(unmet)
    if context.dry_run:
        if markers.claim is not None:
            request.node.add_report_section("setup", DRY_RUN_SECTION, _dry_run_plan(markers.claim, cluster))
        not_run(DRY_RUN_REASON)
    with _serial_lock(context, nodeid, exclusive=markers.serial):
        claim = markers.claim
        if claim is None:
            yield
            return
        unhealthy = unhealthy_reason(context)
        if unhealthy is not None:
            not_run(unhealthy)
        refusal = cluster.fault_refusal()
        if refusal is not None:
            not_run(refusal)
        raw_provider: Provider = request.getfixturevalue("kubeha_provider")
        if isinstance(raw_provider, AttachProvider):
            not_run(_attach_refusal())
        journal_value: Journal | FaultPlan = request.getfixturevalue("journal")
        gate: _Gate = request.getfixturevalue("steady_state")
        coordinator: Coordinator = request.getfixturevalue("fault_coordinator")
        with contextlib.ExitStack() as held:
            try:
                state.grant = held.enter_context(coordinator.acquire(claim, CLAIM_TIMEOUT_S))
            except BudgetImpossible as error:
                not_run(str(error))
            except BudgetTimeout as error:
                not_run(str(error))
            record_event(context, "coordinator", "grant", claim.describe(), nodeid)
            yield
            problems = _after_disruptive(context, nodeid, cluster, raw_provider, journal_value)
            held.close()
            record_event(context, "coordinator", "release", claim.describe(), nodeid)
        problems.extend(_health_gate(context, coordinator, gate, nodeid))
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


def _after_disruptive(
    context: RunContext, nodeid: str, cluster: KubehaCluster, provider: Provider, journal: Journal | FaultPlan
) -> list[str]:
    """Replay this process's undo entries the test's faults left pending; return what could not be undone."""
    if not isinstance(journal, Journal):
        return []
    replayed = _replay_own(provider, journal, cluster.identity.kube_system_uid)
    if replayed.undone:
        record_event(context, "journal", "replay", "; ".join(replayed.undone), nodeid)
    if replayed.failed:
        mark_unhealthy(context, f"faults injected by {nodeid} could not be undone: {'; '.join(replayed.failed)}")
        return [f"faults this test injected are still in place: {'; '.join(replayed.failed)}"]
    return []


def _health_gate(context: RunContext, coordinator: Coordinator, gate: _Gate, nodeid: str) -> list[str]:
    """Wait, alone in the fault budget, for the steady state; on failure later disruptive tests are not-run."""
    gate_claim = Claim(f"{nodeid} [health gate]", (), exclusive=True, reason="steady-state check after a disruptive test")
    try:
        with coordinator.acquire(gate_claim, GATE_CLAIM_TIMEOUT_S):
            report: HealthReport = gate.wait()
    except BudgetTimeout as error:
        reason = f"the health gate after {nodeid} could not run alone within {GATE_CLAIM_TIMEOUT_S:.0f} s: {error}"
        mark_unhealthy(context, reason)
        return [reason]
    record_event(context, "health", "steady-state", report.describe(), nodeid)
    if report.ok:
        return []
    mark_unhealthy(context, f"the cluster did not return to its steady state after {nodeid}: {report.describe()}")
    return [f"the cluster did not return to its steady state after this test: {report.describe()}"]


def _dry_run_plan(claim: Claim, cluster: KubehaCluster) -> str:
    """What a disruptive test would break, what that takes down with it, and the candidate targets."""
    limits = Limits.from_topology(cluster.topology)
    usage = limits.usage(claim)
    topology = cluster.topology
    candidates: Mapping[ResourceKind, Sequence[str]] = {
        ResourceKind.CONTROL_PLANE_NODE: [node.name for node in topology.control_planes()],
        ResourceKind.API_SERVER: [node.name for node in topology.control_planes()],
        ResourceKind.CONTROLLER_MANAGER: [node.name for node in topology.control_planes()],
        ResourceKind.SCHEDULER: [node.name for node in topology.control_planes()],
        ResourceKind.ETCD_MEMBER: [member.name for member in topology.etcd_members],
        ResourceKind.WORKER_NODE: [node.name for node in topology.workers()],
        ResourceKind.INGRESS_NODE: [node.name for node in topology.ingress_nodes()],
        ResourceKind.LOAD_BALANCER: [topology.load_balancer.endpoint] if topology.load_balancer is not None else [],
    }
    lines = [f"claim: {claim.describe()}" + (f" - {claim.reason}" if claim.reason else "")]
    lines.append(
        "takes down: "
        + (", ".join(f"{count} {kind.value} (limit {limits.limit(kind)})" for kind, count in usage) or "nothing")
    )
    for kind, count in claim.resources:
        names = candidates.get(kind, ())
        lines.append(f"targets: {count} of {kind.value}: {', '.join(names) if names else 'none in this cluster'}")
    refusal = cluster.fault_refusal()
    if refusal is not None:
        lines.append(f"would be not-run: {refusal}")
    return "\n".join(lines)
