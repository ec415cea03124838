"""The budgets the HA controls are measured against: derived from the cluster's own settings, overridable by file.

Every budget has a default computed from what the cluster is configured to do (the load balancer's health checks,
etcd's election timeout, each component's leader-election timings, the API server's endpoint reconciler) and a
`source` saying how it was computed. A YAML file given with ``--ha-config FILE`` overrides any of them::

    api_outage_s: 20                       # seconds
    rolling_restart_failed_requests: 0     # a count

`HaConfig.load` rejects unknown keys and values of the wrong type with the list of valid keys. The README of the
suite (suites/ha/README.md) documents every key.

Pure, apart from reading the configuration file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml

from kubeha.core.topology import LeaderElection
from kubeha.probes.api import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_REQUEST_TIMEOUT_S
from kubeha.probes.leases import CLOCK_SKEW_TOLERANCE_S, DEFAULT_POLL_INTERVAL_S
from suites.ha._support.haproxy import HaproxyChecks

__all__ = [
    "API_OUTAGE_UNKNOWN_LB_S",
    "Budget",
    "CONFIG_KEYS",
    "ConfigError",
    "ENDPOINT_RECONCILER_INTERVAL_S",
    "ENDPOINT_RECONCILER_TTL_S",
    "EtcdTiming",
    "HaConfig",
    "api_outage_budget",
    "controller_action_budget",
    "endpoint_readmission_budget",
    "endpoint_removal_budget",
    "etcd_election_budget",
    "leader_takeover_budget",
    "quorum_recovery_budget",
    "rolling_restart_failed_requests_budget",
]

# One probe attempt that began just before recovery may still fail: a connect plus two requests (/readyz, a read).
PROBE_ATTEMPT_SLACK_S = DEFAULT_CONNECT_TIMEOUT_S + 2 * DEFAULT_REQUEST_TIMEOUT_S
# Detection time assumed when the load balancer's health checks cannot be read (not haproxy, or no access to it):
# a typical cloud load balancer checks every 10 s and needs 3 failures.
API_OUTAGE_UNKNOWN_LB_S = 30.0
# kube-apiserver's lease endpoint reconciler (pkg/controlplane: DefaultEndpointReconcilerTTL and
# DefaultEndpointReconcilerInterval): an API server's lease lives 15 s after its last renewal, and every API server
# rewrites the kubernetes Service's endpoints from the live leases every 10 s.
ENDPOINT_RECONCILER_TTL_S = 15.0
ENDPOINT_RECONCILER_INTERVAL_S = 10.0
# The EndpointSlice follows the Endpoints written by the reconciler, and the suite polls it.
ENDPOINT_OBSERVATION_SLACK_S = 5.0
# A restarted API server re-registers once it serves (its post-start hooks ran); starting takes this long at most on
# a loaded machine, and the reconciler interval comes on top.
API_SERVER_START_ALLOWANCE_S = 60.0
# The etcd defaults (etcd's --election-timeout and --heartbeat-interval, in milliseconds).
ETCD_DEFAULT_ELECTION_TIMEOUT_MS = 1000.0
ETCD_DEFAULT_HEARTBEAT_MS = 100.0
# raft randomises each follower's election timeout in [timeout, 2 x timeout); one further round is allowed for a
# split vote.
ETCD_ELECTION_ROUNDS_ALLOWED = 2
# The in-pod observer polls `etcdctl endpoint status` about every 0.1 s plus the time etcdctl takes to start.
ETCD_ELECTION_OBSERVATION_SLACK_S = 1.0
# After etcd members are back, the API servers reconnect to etcd with backoff and the load balancer readmits them.
QUORUM_RECOVERY_ALLOWANCE_S = 60.0
# The Lease watcher polls every DEFAULT_POLL_INTERVAL_S, one read may take a request timeout, and renewTime comes
# from the new holder's clock.
LEASE_OBSERVATION_SLACK_S = DEFAULT_POLL_INTERVAL_S + DEFAULT_REQUEST_TIMEOUT_S + CLOCK_SKEW_TOLERANCE_S
# A controller-manager that just became leader starts its controllers and syncs its informers before acting.
CONTROLLER_ACTION_DEFAULT_S = 60.0


class ConfigError(ValueError):
    """The --ha-config file cannot be used; the message says how to fix it."""


# key -> (kind, meaning). "seconds" keys take a positive number, "count" keys an integer >= 0.
CONFIG_KEYS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "api_outage_s": ("seconds", "HA-API-01, HA-API-02, HA-ETCD-02: how long the API through the load balancer "
                         "may fail after a control-plane fault"),
        "rolling_restart_failed_requests": ("count", "HA-API-02: failed probe attempts and writes allowed during a "
                                            "rolling restart of the API servers (default: not bounded)"),
        "endpoint_removal_s": ("seconds", "HA-API-05: time for a stopped API server to leave the kubernetes "
                               "Service's EndpointSlices"),
        "endpoint_readmission_s": ("seconds", "HA-API-05: time for a restarted API server to be listed again"),
        "etcd_election_s": ("seconds", "HA-ETCD-04: time from the etcd leader's death to a new leader"),
        "quorum_recovery_s": ("seconds", "HA-ETCD-03: time from a majority of etcd members running again to the "
                              "first acknowledged write"),
        "leader_takeover_s": ("seconds", "HA-LE-02, HA-LE-03: time from the Lease holder's loss to a new holder"),
        "controller_action_s": ("seconds", "HA-LE-02, HA-LE-03: time for the new leader to act (pods created, pod "
                                "scheduled)"),
    }
)


@dataclass(frozen=True)
class Budget:
    """A limit and where it came from (derived from a setting, a documented default, or the configuration file)."""

    name: str
    value: float
    unit: str
    source: str

    def describe(self) -> str:
        return f"{self.name} = {self.value:g} {self.unit}: {self.source}"


@dataclass(frozen=True)
class HaConfig:
    """Budget overrides read from the --ha-config file (empty without one)."""

    values: Mapping[str, float]
    path: Path | None = None

    @classmethod
    def empty(cls) -> HaConfig:
        return cls(values=MappingProxyType({}))

    @classmethod
    def load(cls, path: Path) -> HaConfig:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"--ha-config {path}: cannot read it ({error.strerror}): pass a readable YAML file") from None
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"--ha-config {path}: not valid YAML ({error})") from None
        if document is None:
            return cls(values=MappingProxyType({}), path=path)
        if not isinstance(document, dict):
            raise ConfigError(f"--ha-config {path}: expected a mapping of budget names to numbers, e.g. api_outage_s: 20")
        return cls(values=MappingProxyType(cls.validate(document, str(path))), path=path)

    @staticmethod
    def validate(document: Mapping[object, object], where: str) -> dict[str, float]:
        values: dict[str, float] = {}
        valid = ", ".join(sorted(CONFIG_KEYS))
        for key, value in document.items():
            if not isinstance(key, str) or key not in CONFIG_KEYS:
                raise ConfigError(f"--ha-config {where}: unknown key {key!r}; valid keys: {valid}")
            kind, _ = CONFIG_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"--ha-config {where}: {key} must be a number, got {value!r}")
            if kind == "count" and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"--ha-config {where}: {key} must be a whole number >= 0, got {value!r}")
            if kind == "seconds" and value <= 0:
                raise ConfigError(f"--ha-config {where}: {key} must be a positive number of seconds, got {value!r}")
            values[key] = float(value)
        return values

    def override(self, key: str, unit: str) -> Budget | None:
        if key not in CONFIG_KEYS:
            raise KeyError(f"{key} is not a budget key; valid keys: {sorted(CONFIG_KEYS)}")
        value = self.values.get(key)
        if value is None:
            return None
        return Budget(key, value, unit, f"set in {self.path}")


def api_outage_budget(config: HaConfig, checks: HaproxyChecks | None, note: str = "") -> Budget:
    """How long the API through the load balancer may fail after one API server dies.

    With haproxy health checks: the longest detection time of any backend server plus one probe attempt. Without
    readable checks: `API_OUTAGE_UNKNOWN_LB_S` plus one probe attempt, and the source says why.
    """
    configured = config.override("api_outage_s", "s")
    if configured is not None:
        return configured
    detection = checks.detection_bound_s() if checks is not None else None
    if checks is not None and detection is not None:
        return Budget(
            "api_outage_s",
            detection + PROBE_ATTEMPT_SLACK_S,
            "s",
            f"haproxy detection bound {detection:g} s ({checks.describe()}) + one probe attempt "
            f"{PROBE_ATTEMPT_SLACK_S:g} s",
        )
    if checks is not None and checks.unchecked():
        why = "haproxy has no health check on " + ", ".join(server.server for server in checks.unchecked())
    else:
        why = note or "the load balancer's health checks are unknown"
    return Budget(
        "api_outage_s",
        API_OUTAGE_UNKNOWN_LB_S + PROBE_ATTEMPT_SLACK_S,
        "s",
        f"{why}; assumed detection {API_OUTAGE_UNKNOWN_LB_S:g} s (10 s checks, 3 failures) + one probe attempt "
        f"{PROBE_ATTEMPT_SLACK_S:g} s; set api_outage_s in --ha-config for this load balancer",
    )


def rolling_restart_failed_requests_budget(config: HaConfig) -> Budget | None:
    return config.override("rolling_restart_failed_requests", "requests")


def endpoint_removal_budget(config: HaConfig) -> Budget:
    configured = config.override("endpoint_removal_s", "s")
    if configured is not None:
        return configured
    value = ENDPOINT_RECONCILER_TTL_S + ENDPOINT_RECONCILER_INTERVAL_S + ENDPOINT_OBSERVATION_SLACK_S
    return Budget(
        "endpoint_removal_s",
        value,
        "s",
        f"kube-apiserver endpoint lease TTL {ENDPOINT_RECONCILER_TTL_S:g} s + reconcile interval "
        f"{ENDPOINT_RECONCILER_INTERVAL_S:g} s + observation {ENDPOINT_OBSERVATION_SLACK_S:g} s",
    )


def endpoint_readmission_budget(config: HaConfig) -> Budget:
    configured = config.override("endpoint_readmission_s", "s")
    if configured is not None:
        return configured
    value = API_SERVER_START_ALLOWANCE_S + ENDPOINT_RECONCILER_INTERVAL_S + ENDPOINT_OBSERVATION_SLACK_S
    return Budget(
        "endpoint_readmission_s",
        value,
        "s",
        f"API server start allowance {API_SERVER_START_ALLOWANCE_S:g} s + reconcile interval "
        f"{ENDPOINT_RECONCILER_INTERVAL_S:g} s + observation {ENDPOINT_OBSERVATION_SLACK_S:g} s",
    )


@dataclass(frozen=True)
class EtcdTiming:
    """etcd's raft timing, from its --election-timeout and --heartbeat-interval flags (milliseconds)."""

    election_timeout_ms: float = ETCD_DEFAULT_ELECTION_TIMEOUT_MS
    heartbeat_ms: float = ETCD_DEFAULT_HEARTBEAT_MS
    source: str = "etcd defaults"

    @classmethod
    def from_flags(cls, election_timeout: str | None, heartbeat: str | None, where: str) -> EtcdTiming:
        def millis(raw: str | None, default: float, flag: str) -> float:
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{where}: --{flag}={raw} is not a number of milliseconds") from None
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{where}: --{flag}={raw} is not a positive number of milliseconds")
            return value

        election = millis(election_timeout, ETCD_DEFAULT_ELECTION_TIMEOUT_MS, "election-timeout")
        beat = millis(heartbeat, ETCD_DEFAULT_HEARTBEAT_MS, "heartbeat-interval")
        given = [f"--{flag}" for flag, raw in (("election-timeout", election_timeout), ("heartbeat-interval", heartbeat)) if raw is not None]
        source = f"{where}: " + (", ".join(given) + " flags" if given else "etcd defaults (flags not set)")
        return cls(election_timeout_ms=election, heartbeat_ms=beat, source=source)

    @property
    def election_timeout_s(self) -> float:
        return self.election_timeout_ms / 1000.0

    def election_bound_s(self) -> float:
        """Longest election after the leader dies: the longest randomised timeout, per round allowed."""
        return ETCD_ELECTION_ROUNDS_ALLOWED * 2 * self.election_timeout_s


def etcd_election_budget(config: HaConfig, timing: EtcdTiming) -> Budget:
    configured = config.override("etcd_election_s", "s")
    if configured is not None:
        return configured
    bound = timing.election_bound_s()
    return Budget(
        "etcd_election_s",
        bound + ETCD_ELECTION_OBSERVATION_SLACK_S,
        "s",
        f"{ETCD_ELECTION_ROUNDS_ALLOWED} election rounds x 2 x election timeout {timing.election_timeout_ms:g} ms "
        f"({timing.source}) + observation {ETCD_ELECTION_OBSERVATION_SLACK_S:g} s",
    )


def quorum_recovery_budget(config: HaConfig, api_outage: Budget, timing: EtcdTiming) -> Budget:
    configured = config.override("quorum_recovery_s", "s")
    if configured is not None:
        return configured
    value = timing.election_bound_s() + api_outage.value + QUORUM_RECOVERY_ALLOWANCE_S
    return Budget(
        "quorum_recovery_s",
        value,
        "s",
        f"etcd election {timing.election_bound_s():g} s + load balancer {api_outage.value:g} s + API server "
        f"reconnection allowance {QUORUM_RECOVERY_ALLOWANCE_S:g} s",
    )


def leader_takeover_budget(config: HaConfig, election: LeaderElection, source: str) -> Budget:
    configured = config.override("leader_takeover_s", "s")
    if configured is not None:
        return configured
    bound = election.takeover_bound_s()
    return Budget(
        "leader_takeover_s",
        bound + LEASE_OBSERVATION_SLACK_S,
        "s",
        f"{election.component} leaseDuration {election.lease_duration_s:g} s + 2 jittered retryPeriods of "
        f"{election.retry_period_s:g} s = {bound:g} s ({source}) + observation {LEASE_OBSERVATION_SLACK_S:g} s",
    )


def controller_action_budget(config: HaConfig) -> Budget:
    configured = config.override("controller_action_s", "s")
    if configured is not None:
        return configured
    return Budget(
        "controller_action_s",
        CONTROLLER_ACTION_DEFAULT_S,
        "s",
        "default: a new leader starts its controllers and syncs its caches before acting",
    )
