"""etcd as its members see it: ``etcdctl`` run inside the stacked etcd static pods, its JSON output, and the audit.

With stacked etcd (kubeadm) every control-plane node runs an etcd static pod whose image carries ``etcdctl`` and a
shell, and whose host-path mount holds the etcd PKI. `EtcdPod.from_pod` reads, from the pod's etcd command line, the
CA and the directory of the client certificate kubeadm issues for health checks (``healthcheck-client.crt``), the
local client URL, and the raft timing flags. `Etcdctl` runs ``etcdctl`` in one such pod through `PodExec`.

The parsers (`parse_member_list`, `parse_endpoint_status`, `parse_endpoint_health`, `parse_hashkv`) read
``etcdctl -w json`` output; `audit` judges a `Snapshot` against the HA rules: an odd number of at least
`min_ha_members()` voting members, all started and healthy, one leader that every member agrees on, one raft term,
and the same HashKV at the same revision. `election_observer_script` is the shell loop that watches one member's
view of the leader during a leader kill; `leader_changes` reads its output.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from kubeha.cluster.discovery import PodInfo, parse_flags
from kubeha.core.quorum import fault_tolerance
from kubeha.core.topology import EtcdMode
from suites.ha._support.podexec import ExecResult, PodExec

__all__ = [
    "ETCDCTL",
    "EtcdAudit",
    "EtcdOutputError",
    "EtcdPod",
    "Etcdctl",
    "EndpointHash",
    "EndpointHealth",
    "EndpointStatus",
    "MemberInfo",
    "Snapshot",
    "audit",
    "election_observer_script",
    "leader_changes",
    "min_ha_members",
    "parse_endpoint_health",
    "parse_endpoint_status",
    "parse_hashkv",
    "parse_member_list",
]

ETCDCTL = "/usr/local/bin/etcdctl"
ETCD_CONTAINER = "etcd"
# kubeadm issues this client certificate next to the etcd CA for the etcd liveness checks.
HEALTHCHECK_CLIENT_CERT = "healthcheck-client.crt"
HEALTHCHECK_CLIENT_KEY = "healthcheck-client.key"
DEFAULT_LOCAL_CLIENT_URL = "https://127.0.0.1:2379"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# etcdctl's own limits for one command (connect, then the request), shorter than the exec deadline around it.
ETCDCTL_DIAL_TIMEOUT_S = 2.0
ETCDCTL_COMMAND_TIMEOUT_S = 5.0
# The exec around one etcdctl command: its timeouts plus the exec round trip on a loaded API server.
ETCDCTL_EXEC_TIMEOUT_S = 30.0
# Marker at the start of every line the election observer prints.
OBSERVER_MARK = "S"
# Pause between two status reads of the election observer (a fraction of a second, as `sleep` takes it).
OBSERVER_PAUSE = "0.1"
OBSERVER_COMMAND_TIMEOUT = "500ms"
OBSERVER_DIAL_TIMEOUT = "300ms"
DETAIL_CHARS = 500


class EtcdOutputError(ValueError):
    """etcdctl printed something that is not the JSON it documents."""


def min_ha_members() -> int:
    """The fewest voting members that survive the loss of one: the smallest n with fault_tolerance(n) >= 1."""
    members = 1
    while fault_tolerance(members) < 1:
        members += 1
    return members


# -- the pods ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdPod:
    """A stacked etcd member's static pod and how to talk to its member from inside it."""

    name: str
    node: str
    member_name: str
    ca_file: str
    cert_file: str
    key_file: str
    local_url: str
    election_timeout: str | None = None
    heartbeat_interval: str | None = None

    @classmethod
    def from_pod(cls, pod: PodInfo) -> EtcdPod:
        flags = parse_flags(pod.main_command())
        ca = flags.get("trusted-ca-file")
        if ca is None:
            raise EtcdOutputError(
                f"etcd pod {pod.name} has no --trusted-ca-file flag: the suite reads the etcd PKI location from the "
                "static pod command kubeadm writes"
            )
        pki = posixpath.dirname(ca)
        local = DEFAULT_LOCAL_CLIENT_URL
        for url in (flags.get("listen-client-urls") or "").split(","):
            url = url.strip()
            if url.startswith("https://") and (urlsplit(url).hostname or "") in LOOPBACK_HOSTS:
                local = url
                break
        return cls(
            name=pod.name,
            node=pod.node,
            member_name=flags.get("name") or pod.node,
            ca_file=ca,
            cert_file=posixpath.join(pki, HEALTHCHECK_CLIENT_CERT),
            key_file=posixpath.join(pki, HEALTHCHECK_CLIENT_KEY),
            local_url=local,
            election_timeout=flags.get("election-timeout"),
            heartbeat_interval=flags.get("heartbeat-interval"),
        )

    def tls_flags(self) -> tuple[str, ...]:
        return (f"--cacert={self.ca_file}", f"--cert={self.cert_file}", f"--key={self.key_file}")


# -- etcdctl output ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberInfo:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool = False

    @property
    def started(self) -> bool:
        """A member added but never started has no name and no client URL yet."""
        return bool(self.name) and bool(self.client_urls)

    def label(self) -> str:
        return f"{self.name or '(unstarted)'} [{self.id:x}]"


@dataclass(frozen=True)
class EndpointStatus:
    endpoint: str
    member_id: int
    leader: int
    raft_term: int
    raft_index: int
    revision: int
    version: str
    is_learner: bool = False
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class EndpointHealth:
    endpoint: str
    healthy: bool
    error: str = ""


@dataclass(frozen=True)
class EndpointHash:
    endpoint: str
    hash: int
    hash_revision: int
    compact_revision: int


def _loads(text: str, what: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise EtcdOutputError(f"{what}: not JSON ({error.msg}): {text.strip()[:DETAIL_CHARS]!r}") from None


def _obj(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise EtcdOutputError(f"{what}: expected a JSON object, got {str(value)[:DETAIL_CHARS]!r}")
    return value


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise EtcdOutputError(f"{what}: expected a JSON list, got {str(value)[:DETAIL_CHARS]!r}")
    return value


def _int(obj: Mapping[str, object], key: str, what: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise EtcdOutputError(f"{what}.{key}: expected an integer, got {value!r}")
    return value


def _strs(obj: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = obj.get(key) or []
    return tuple(str(item) for item in value) if isinstance(value, list) else ()


def parse_member_list(text: str) -> tuple[MemberInfo, ...]:
    """``etcdctl member list -w json``."""
    document = _obj(_loads(text, "member list"), "member list")
    members: list[MemberInfo] = []
    for index, raw in enumerate(_list(document.get("members") or [], "member list.members")):
        item = _obj(raw, f"member list.members[{index}]")
        members.append(
            MemberInfo(
                id=_int(item, "ID", f"members[{index}]"),
                name=str(item.get("name") or ""),
                peer_urls=_strs(item, "peerURLs"),
                client_urls=_strs(item, "clientURLs"),
                is_learner=item.get("isLearner") is True,
            )
        )
    return tuple(members)


def parse_endpoint_status(text: str) -> tuple[EndpointStatus, ...]:
    """``etcdctl endpoint status -w json`` (one entry per endpoint that answered)."""
    statuses: list[EndpointStatus] = []
    for index, raw in enumerate(_list(_loads(text, "endpoint status"), "endpoint status")):
        entry = _obj(raw, f"endpoint status[{index}]")
        status = _obj(entry.get("Status"), f"endpoint status[{index}].Status")
        header = _obj(status.get("header") or {}, f"endpoint status[{index}].Status.header")
        statuses.append(
            EndpointStatus(
                endpoint=str(entry.get("Endpoint") or ""),
                member_id=_int(header, "member_id", "Status.header"),
                leader=_int(status, "leader", "Status", 0),
                raft_term=_int(status, "raftTerm", "Status", 0),
                raft_index=_int(status, "raftIndex", "Status", 0),
                revision=_int(header, "revision", "Status.header", 0),
                version=str(status.get("version") or ""),
                is_learner=status.get("isLearner") is True,
                errors=_strs(status, "errors"),
            )
        )
    return tuple(statuses)


def parse_endpoint_health(text: str) -> tuple[EndpointHealth, ...]:
    """``etcdctl endpoint health -w json``."""
    found: list[EndpointHealth] = []
    for index, raw in enumerate(_list(_loads(text, "endpoint health"), "endpoint health")):
        entry = _obj(raw, f"endpoint health[{index}]")
        found.append(
            EndpointHealth(
                endpoint=str(entry.get("endpoint") or ""),
                healthy=entry.get("health") is True,
                error=str(entry.get("error") or ""),
            )
        )
    return tuple(found)


def parse_hashkv(text: str) -> tuple[EndpointHash, ...]:
    """``etcdctl endpoint hashkv -w json``."""
    hashes: list[EndpointHash] = []
    for index, raw in enumerate(_list(_loads(text, "endpoint hashkv"), "endpoint hashkv")):
        entry = _obj(raw, f"endpoint hashkv[{index}]")
        body = _obj(entry.get("HashKV"), f"endpoint hashkv[{index}].HashKV")
        header = _obj(body.get("header") or {}, f"endpoint hashkv[{index}].HashKV.header")
        hashes.append(
            EndpointHash(
                endpoint=str(entry.get("Endpoint") or ""),
                hash=_int(body, "hash", "HashKV", 0),
                hash_revision=_int(body, "hash_revision", "HashKV", _int(header, "revision", "HashKV.header", 0)),
                compact_revision=_int(body, "compact_revision", "HashKV", 0),
            )
        )
    return tuple(hashes)


# -- the audit --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What etcdctl reported at one moment, with the raw outputs for the evidence."""

    members: tuple[MemberInfo, ...]
    statuses: tuple[EndpointStatus, ...]
    health: tuple[EndpointHealth, ...]
    hashes: tuple[EndpointHash, ...]
    hash_revision: int
    errors: tuple[str, ...] = ()
    raw: Mapping[str, str] = field(default_factory=dict)

    def voting(self) -> tuple[MemberInfo, ...]:
        return tuple(member for member in self.members if not member.is_learner)

    def name_of(self, member_id: int) -> str:
        for member in self.members:
            if member.id == member_id:
                return member.name or f"{member_id:x}"
        return f"{member_id:x} (not a member)"

    def leaders(self) -> frozenset[int]:
        return frozenset(status.leader for status in self.statuses)

    def leader_name(self) -> str | None:
        leaders = self.leaders()
        if len(leaders) != 1:
            return None
        (leader,) = leaders
        return None if leader == 0 else self.name_of(leader)

    def evidence(self) -> str:
        return "\n\n".join(f"$ etcdctl {command}\n{output.strip()}" for command, output in self.raw.items())


@dataclass(frozen=True)
class EtcdAudit:
    problems: tuple[str, ...]
    facts: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _endpoint_host(url: str) -> str:
    return urlsplit(url).netloc or url


def audit(snapshot: Snapshot, mode: EtcdMode) -> EtcdAudit:
    """Every way `snapshot` breaks the HA rules for etcd (first problem first), and the facts established."""
    problems: list[str] = list(snapshot.errors)
    facts: list[str] = [f"etcd mode: {mode.value}"]
    voting = snapshot.voting()
    count = len(voting)
    minimum = min_ha_members()
    learners = [member.label() for member in snapshot.members if member.is_learner]
    facts.append(f"{count} voting member(s): {', '.join(member.label() for member in voting)}")
    if learners:
        facts.append(f"learners (not voting): {', '.join(learners)}")
    if count < minimum or count % 2 == 0:
        tolerance = fault_tolerance(count) if count else 0
        reasons = []
        if count % 2 == 0:
            reasons.append(
                f"an even count tolerates no more member failures than {count - 1} members would "
                f"(fault tolerance {tolerance}) while adding a member to every quorum"
            )
        if count < minimum:
            reasons.append(f"fewer than {minimum} members cannot survive the loss of one")
        problems.insert(0, f"etcd has {count} voting members, not an odd number of at least {minimum}: " + "; ".join(reasons))
    unstarted = [member.label() for member in snapshot.members if not member.started]
    if unstarted:
        problems.append(f"member(s) added but not started: {', '.join(unstarted)}")

    by_url = {url: member for member in voting for url in member.client_urls}
    health = {item.endpoint: item for item in snapshot.health}
    unhealthy = []
    for member in voting:
        reports = [health[url] for url in member.client_urls if url in health]
        if not reports:
            unhealthy.append(f"{member.label()}: no health answer")
        elif not any(report.healthy for report in reports):
            unhealthy.append(f"{member.label()}: {reports[0].error or 'unhealthy'}")
    if unhealthy:
        problems.append("unhealthy member(s): " + "; ".join(unhealthy))
    else:
        facts.append(f"all {count} voting members healthy")

    statuses = {status.member_id: status for status in snapshot.statuses}
    missing = [member.label() for member in voting if member.id not in statuses]
    if missing:
        problems.append(f"no status from member(s) {', '.join(missing)}")
    leaders = {status.leader for status in snapshot.statuses}
    ids = {member.id for member in voting}
    if len(leaders) != 1:
        views = ", ".join(
            f"{snapshot.name_of(status.member_id)} sees {snapshot.name_of(status.leader) if status.leader else 'no leader'}"
            for status in snapshot.statuses
        )
        problems.append(f"members disagree on the leader ({views})")
    else:
        (leader,) = leaders
        if leader == 0:
            problems.append("no member reports a leader")
        elif leader not in ids:
            problems.append(f"the reported leader {leader:x} is not a voting member")
        else:
            facts.append(f"one leader: {snapshot.name_of(leader)}, agreed by {len(snapshot.statuses)} member(s)")
    terms = {status.raft_term for status in snapshot.statuses}
    if len(terms) > 1:
        views = ", ".join(f"{snapshot.name_of(status.member_id)} term {status.raft_term}" for status in snapshot.statuses)
        problems.append(f"members are on different raft terms ({views})")
    elif terms:
        facts.append(f"raft term {next(iter(terms))} on every member")
    for status in snapshot.statuses:
        if status.errors:
            problems.append(f"{snapshot.name_of(status.member_id)} reports errors: {'; '.join(status.errors)}")

    hashes = {item.endpoint: item for item in snapshot.hashes}
    missing_hash = [
        member.label() for member in voting if not any(url in hashes for url in member.client_urls)
    ]
    if missing_hash:
        problems.append(f"no HashKV from member(s) {', '.join(missing_hash)}")
    distinct = {(item.hash, item.hash_revision) for item in snapshot.hashes}
    if len(distinct) > 1:
        views = ", ".join(
            f"{by_url[item.endpoint].name if item.endpoint in by_url else _endpoint_host(item.endpoint)} "
            f"{item.hash} at revision {item.hash_revision}"
            for item in snapshot.hashes
        )
        problems.append(f"members hold different data: HashKV {views}")
    elif snapshot.hashes:
        item = snapshot.hashes[0]
        facts.append(f"HashKV {item.hash} at revision {item.hash_revision} on {len(snapshot.hashes)} member(s)")
    return EtcdAudit(problems=tuple(problems), facts=tuple(facts))


# -- running etcdctl --------------------------------------------------------------------------------------------------


class Etcdctl:
    """``etcdctl`` inside one etcd pod, through `execs` (a `PodExec` on an API server that can reach that pod)."""

    def __init__(self, execs: PodExec, pod: EtcdPod, namespace: str = "kube-system") -> None:
        self.execs = execs
        self.pod = pod
        self.namespace = namespace

    def argv(self, args: Sequence[str], *, endpoints: str | None = None) -> tuple[str, ...]:
        return (
            ETCDCTL,
            f"--endpoints={endpoints or self.pod.local_url}",
            *self.pod.tls_flags(),
            f"--dial-timeout={ETCDCTL_DIAL_TIMEOUT_S:g}s",
            f"--command-timeout={ETCDCTL_COMMAND_TIMEOUT_S:g}s",
            *args,
        )

    def run(self, args: Sequence[str], *, endpoints: str | None = None, timeout_s: float = ETCDCTL_EXEC_TIMEOUT_S) -> ExecResult:
        return self.execs.run(
            self.namespace, self.pod.name, ETCD_CONTAINER, self.argv(args, endpoints=endpoints), timeout_s=timeout_s
        )

    def members(self) -> tuple[MemberInfo, ...]:
        result = self.run(("member", "list", "-w", "json"))
        if not result.ok:
            raise EtcdOutputError(result.describe())
        return parse_member_list(result.stdout)

    def snapshot(self) -> Snapshot:
        """Members, every member's status and health, and HashKV of every member at one common revision.

        A command that fails for some endpoints still prints the others; their errors go into `Snapshot.errors`.
        """
        raw: dict[str, str] = {}
        errors: list[str] = []

        def json_of(args: Sequence[str]) -> str:
            result = self.run(args)
            raw[" ".join(args)] = result.stdout + (f"\n(stderr) {result.stderr.strip()}" if result.stderr.strip() else "")
            if not result.ok:
                errors.append(result.describe())
            return result.stdout if result.stdout.strip() else "[]"

        members = parse_member_list(json_of(("member", "list", "-w", "json")))
        statuses = parse_endpoint_status(json_of(("endpoint", "status", "--cluster", "-w", "json")))
        health = parse_endpoint_health(json_of(("endpoint", "health", "--cluster", "-w", "json")))
        revision = min((status.revision for status in statuses), default=0)
        hashes: tuple[EndpointHash, ...] = ()
        if revision > 0:
            hashes = parse_hashkv(json_of(("endpoint", "hashkv", "--cluster", f"--rev={revision}", "-w", "json")))
        return Snapshot(
            members=members,
            statuses=statuses,
            health=health,
            hashes=hashes,
            hash_revision=revision,
            errors=tuple(errors),
            raw=raw,
        )

    def remove_member(self, member_id: int) -> ExecResult:
        return self.run(("member", "remove", f"{member_id:x}"))

    def add_member(self, name: str, peer_url: str) -> ExecResult:
        return self.run(("member", "add", name, f"--peer-urls={peer_url}"))


def election_observer_script(pod: EtcdPod, duration_s: float) -> tuple[str, ...]:
    """A shell command printing ``S <endpoint status JSON>`` about every 0.1 s for `duration_s`, from `pod`'s member."""
    command = " ".join(
        shlex.quote(part)
        for part in (
            ETCDCTL,
            f"--endpoints={pod.local_url}",
            *pod.tls_flags(),
            f"--dial-timeout={OBSERVER_DIAL_TIMEOUT}",
            f"--command-timeout={OBSERVER_COMMAND_TIMEOUT}",
            "endpoint",
            "status",
            "-w",
            "json",
        )
    )
    script = (
        f'end=$(( $(date +%s) + {int(duration_s) + 1} )); '
        f'while [ "$(date +%s)" -lt "$end" ]; do '
        f'printf "{OBSERVER_MARK} %s\\n" "$({command} 2>&1 | tr -d "\\n")"; '
        f"sleep {OBSERVER_PAUSE}; done"
    )
    return ("/bin/sh", "-c", script)


@dataclass(frozen=True)
class LeaderView:
    """One reading of a member's view of the leader (0: none), at `t_mono` (arrival on this machine)."""

    t_mono: float
    leader: int | None
    raft_term: int | None
    error: str = ""


def leader_changes(lines: Sequence[tuple[float, str]]) -> tuple[LeaderView, ...]:
    """The readings printed by `election_observer_script`, in arrival order."""
    views: list[LeaderView] = []
    for t_mono, line in lines:
        if not line.startswith(OBSERVER_MARK + " "):
            continue
        body = line[len(OBSERVER_MARK) + 1 :].strip()
        try:
            statuses = parse_endpoint_status(body)
        except EtcdOutputError:
            views.append(LeaderView(t_mono, None, None, body[:DETAIL_CHARS]))
            continue
        if not statuses:
            views.append(LeaderView(t_mono, None, None, "no status"))
            continue
        views.append(LeaderView(t_mono, statuses[0].leader, statuses[0].raft_term))
    return tuple(views)
