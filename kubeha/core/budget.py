"""The fault budget: which disruptive tests may run at the same time.

A disruptive test holds a `Claim` on the members it breaks. `decide` grants a claim only if, together with every
active claim, no kind of member goes above the cluster's `Limits`; an exclusive claim runs alone and may break more
than the limits allow (quorum-loss tests need that). Claims are expanded before counting: stopping a control-plane
node also stops its API server, controller manager and scheduler, and, with stacked etcd, its etcd member.
Expansion adds to whatever the claim already names, so a claim should name only the outermost thing it breaks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kubeha.core.jsonfields import (
    JsonFormatError,
    JsonObject,
    as_object,
    get_bool,
    get_int,
    get_object,
    get_str,
)
from kubeha.core.tolerances import Tolerances
from kubeha.core.topology import EtcdMode, Role, Topology

__all__ = [
    "Claim",
    "Decision",
    "LedgerAction",
    "LedgerError",
    "LedgerEvent",
    "LedgerReplay",
    "Limits",
    "ResourceInput",
    "ResourceKind",
    "ResourcePairs",
    "decide",
    "expand",
    "replay",
    "replay_json",
]


class ResourceKind(enum.Enum):
    CONTROL_PLANE_NODE = "control_plane_node"
    ETCD_MEMBER = "etcd_member"
    API_SERVER = "api_server"
    WORKER_NODE = "worker_node"
    INGRESS_NODE = "ingress_node"
    CONTROLLER_MANAGER = "controller_manager"
    SCHEDULER = "scheduler"
    LOAD_BALANCER = "load_balancer"


ResourcePairs = tuple[tuple[ResourceKind, int], ...]
ResourceInput = Mapping[ResourceKind, int] | Iterable[tuple[ResourceKind, int]]

_KIND_ORDER = {kind: index for index, kind in enumerate(ResourceKind)}

# What else goes down with one control-plane node, whatever the etcd mode.
_CONTROL_PLANE_COMPONENTS = (ResourceKind.API_SERVER, ResourceKind.CONTROLLER_MANAGER, ResourceKind.SCHEDULER)


def _pairs(resources: ResourceInput, owner: str) -> ResourcePairs:
    """Canonical form: one pair per kind with a positive count, in `ResourceKind` declaration order."""
    items = list(resources.items()) if isinstance(resources, Mapping) else list(resources)
    seen: dict[ResourceKind, int] = {}
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"{owner}: resources must map ResourceKind to int, got item {item!r}")
        kind, count = item
        if not isinstance(kind, ResourceKind):
            raise TypeError(f"{owner}: resource {kind!r} is not a ResourceKind: use e.g. ResourceKind.ETCD_MEMBER")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{owner}: count for {kind.value} must be an int >= 0, got {count!r}")
        if kind in seen:
            raise ValueError(f"{owner}: {kind.value} is listed twice: give each kind once with the total count")
        seen[kind] = count
    return tuple(sorted(((k, n) for k, n in seen.items() if n > 0), key=lambda pair: _KIND_ORDER[pair[0]]))


def _add(*parts: ResourcePairs) -> ResourcePairs:
    totals = {kind: 0 for kind in ResourceKind}
    for part in parts:
        for kind, count in part:
            totals[kind] += count
    return tuple((kind, count) for kind, count in totals.items() if count > 0)


def _amount(pairs: ResourcePairs, kind: ResourceKind) -> int:
    return next((count for pair_kind, count in pairs if pair_kind is kind), 0)


def _describe(pairs: ResourcePairs) -> str:
    return ", ".join(f"{count} {kind.value}" for kind, count in pairs) or "nothing"


def _pairs_to_json(pairs: ResourcePairs) -> JsonObject:
    return {kind.value: count for kind, count in pairs}


def _pairs_from_json(obj: JsonObject, where: str) -> ResourcePairs:
    items: list[tuple[ResourceKind, int]] = []
    for name in obj:
        try:
            kind = ResourceKind(name)
        except ValueError:
            raise JsonFormatError(
                f"{where}: unknown resource kind {name!r}, expected one of {[k.value for k in ResourceKind]}"
            ) from None
        items.append((kind, get_int(obj, name, where)))
    return _pairs(items, where)


def expand(
    resources: ResourceInput,
    etcd_mode: EtcdMode,
    *,
    ingress_nodes_are_workers: bool = False,
) -> ResourcePairs:
    """Everything that goes down with `resources`: the claimed members plus the members they carry."""
    claimed = _pairs(resources, "expand")
    implied: list[tuple[ResourceKind, int]] = []
    nodes = _amount(claimed, ResourceKind.CONTROL_PLANE_NODE)
    if nodes:
        implied.extend((kind, nodes) for kind in _CONTROL_PLANE_COMPONENTS)
        if etcd_mode is EtcdMode.STACKED:
            implied.append((ResourceKind.ETCD_MEMBER, nodes))
    ingress = _amount(claimed, ResourceKind.INGRESS_NODE)
    if ingress and ingress_nodes_are_workers:
        implied.append((ResourceKind.WORKER_NODE, ingress))
    return _add(claimed, tuple(implied))


@dataclass(frozen=True, init=False)
class Claim:
    """What one test (`holder`, its node id) breaks at once. `resources` is stored in canonical pair form."""

    holder: str
    resources: ResourcePairs
    exclusive: bool
    reason: str

    def __init__(self, holder: str, resources: ResourceInput, exclusive: bool = False, reason: str = "") -> None:
        if not isinstance(holder, str) or not holder:
            raise ValueError(f"Claim.holder must be a non-empty string, got {holder!r}: pass the test's node id")
        pairs = _pairs(resources, f"claim by {holder}")
        if not pairs and not exclusive:
            raise ValueError(
                f"claim by {holder} names no resources and is not exclusive: declare what the test breaks, "
                "or mark it exclusive to run it alone"
            )
        object.__setattr__(self, "holder", holder)
        object.__setattr__(self, "resources", pairs)
        object.__setattr__(self, "exclusive", bool(exclusive))
        object.__setattr__(self, "reason", reason)

    def amount(self, kind: ResourceKind) -> int:
        return _amount(self.resources, kind)

    def describe(self) -> str:
        mode = "exclusive" if self.exclusive else "shared"
        return f"{self.holder} ({mode}: {_describe(self.resources)})"

    def to_dict(self) -> JsonObject:
        return {
            "holder": self.holder,
            "resources": _pairs_to_json(self.resources),
            "exclusive": self.exclusive,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str = "claim") -> Claim:
        return cls(
            holder=get_str(obj, "holder", where),
            resources=_pairs_from_json(get_object(obj, "resources", where), f"{where}.resources"),
            exclusive=get_bool(obj, "exclusive", where),
            reason=get_str(obj, "reason", where),
        )


@dataclass(frozen=True, init=False)
class Limits:
    """Maximum concurrent count per `ResourceKind` (a kind not given is limited to 0) and how claims expand."""

    maxima: ResourcePairs
    etcd_mode: EtcdMode
    ingress_nodes_are_workers: bool

    def __init__(
        self,
        maxima: ResourceInput,
        etcd_mode: EtcdMode,
        *,
        ingress_nodes_are_workers: bool = False,
    ) -> None:
        if not isinstance(etcd_mode, EtcdMode):
            raise TypeError(f"Limits.etcd_mode must be an EtcdMode, got {etcd_mode!r}: pass topology.etcd_mode")
        object.__setattr__(self, "maxima", _pairs(maxima, "limits"))
        object.__setattr__(self, "etcd_mode", etcd_mode)
        object.__setattr__(self, "ingress_nodes_are_workers", bool(ingress_nodes_are_workers))

    @classmethod
    def from_tolerances(
        cls,
        tolerances: Tolerances,
        *,
        etcd_mode: EtcdMode,
        ingress_nodes_are_workers: bool = False,
    ) -> Limits:
        maxima = {
            ResourceKind.CONTROL_PLANE_NODE: tolerances.control_plane_nodes,
            ResourceKind.ETCD_MEMBER: tolerances.etcd_members,
            ResourceKind.API_SERVER: tolerances.api_servers,
            ResourceKind.WORKER_NODE: tolerances.workers,
            ResourceKind.INGRESS_NODE: tolerances.ingress_nodes,
            ResourceKind.CONTROLLER_MANAGER: tolerances.controller_managers,
            ResourceKind.SCHEDULER: tolerances.schedulers,
            ResourceKind.LOAD_BALANCER: tolerances.load_balancers,
        }
        return cls(maxima, etcd_mode, ingress_nodes_are_workers=ingress_nodes_are_workers)

    @classmethod
    def from_topology(cls, topology: Topology) -> Limits:
        return cls.from_tolerances(
            Tolerances.from_topology(topology),
            etcd_mode=topology.etcd_mode,
            ingress_nodes_are_workers=any(node.has(Role.WORKER) for node in topology.ingress_nodes()),
        )

    def limit(self, kind: ResourceKind) -> int:
        return _amount(self.maxima, kind)

    def usage(self, claim: Claim) -> ResourcePairs:
        """What `claim` takes down, after expansion."""
        return expand(claim.resources, self.etcd_mode, ingress_nodes_are_workers=self.ingress_nodes_are_workers)

    def to_dict(self) -> JsonObject:
        return {
            "maxima": _pairs_to_json(self.maxima),
            "etcd_mode": self.etcd_mode.value,
            "ingress_nodes_are_workers": self.ingress_nodes_are_workers,
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str = "limits") -> Limits:
        mode_name = get_str(obj, "etcd_mode", where)
        try:
            mode = EtcdMode(mode_name)
        except ValueError:
            raise JsonFormatError(f"{where}.etcd_mode: unknown etcd mode {mode_name!r}") from None
        return cls(
            _pairs_from_json(get_object(obj, "maxima", where), f"{where}.maxima"),
            mode,
            ingress_nodes_are_workers=get_bool(obj, "ingress_nodes_are_workers", where),
        )


@dataclass(frozen=True)
class Decision:
    granted: bool
    reason: str
    never_fits: bool = False

    def __post_init__(self) -> None:
        if self.granted and self.never_fits:
            raise ValueError("a Decision cannot be both granted and never_fits")


def _over_limits(usage: ResourcePairs, limits: Limits) -> list[tuple[ResourceKind, int, int]]:
    return [(kind, count, limits.limit(kind)) for kind, count in usage if count > limits.limit(kind)]


def decide(active: Sequence[Claim], claim: Claim, limits: Limits) -> Decision:
    """Whether `claim` may start now, given the `active` claims already granted."""
    holders = [held.holder for held in active]
    if claim.holder in holders:
        raise ValueError(
            f"{claim.holder} already holds a claim: release it before claiming again (one claim per test at a time)"
        )
    blocking = next((held for held in active if held.exclusive), None)
    if blocking is not None:
        return Decision(False, f"waiting: exclusive claim {blocking.describe()} is active")
    if claim.exclusive:
        if active:
            return Decision(False, f"exclusive claim waits for {len(active)} active claim(s) to end: {holders}")
        return Decision(True, f"granted exclusive claim {claim.describe()}: no other claim is active")
    usage = limits.usage(claim)
    alone = _over_limits(usage, limits)
    if alone:
        needs = ", ".join(f"{count} {kind.value} (limit {limit})" for kind, count, limit in alone)
        return Decision(
            False,
            f"claim {claim.describe()} can never be granted: on its own it takes down {needs}, more than this "
            "cluster tolerates at once; mark the test exclusive to run it alone, or run it on a larger cluster",
            never_fits=True,
        )
    held = _add(*(limits.usage(other) for other in active))
    total = _add(held, usage)
    over = _over_limits(total, limits)
    if over:
        detail = ", ".join(
            f"{kind.value}: {_amount(held, kind)} held + {_amount(usage, kind)} requested > limit {limit}"
            for kind, _count, limit in over
        )
        return Decision(False, f"waiting: {detail} (active: {holders})")
    within = ", ".join(f"{kind.value} {count}/{limits.limit(kind)}" for kind, count in total)
    return Decision(True, f"granted {claim.describe()} within limits ({within})")


class LedgerAction(enum.Enum):
    GRANT = "grant"
    RELEASE = "release"


class LedgerError(ValueError):
    """A grant/release log that cannot have been produced by a working coordinator."""


@dataclass(frozen=True)
class LedgerEvent:
    """One line of the coordinator log. A GRANT carries the claim; a RELEASE names only the holder."""

    action: LedgerAction
    holder: str
    claim: Claim | None = None

    def __post_init__(self) -> None:
        if self.action is LedgerAction.GRANT and (self.claim is None or self.claim.holder != self.holder):
            raise ValueError(f"a GRANT event for {self.holder} must carry that holder's claim: use LedgerEvent.grant")
        if self.action is LedgerAction.RELEASE and self.claim is not None:
            raise ValueError(f"a RELEASE event for {self.holder} carries no claim: use LedgerEvent.release")

    @classmethod
    def grant(cls, claim: Claim) -> LedgerEvent:
        return cls(LedgerAction.GRANT, claim.holder, claim)

    @classmethod
    def release(cls, holder: str) -> LedgerEvent:
        return cls(LedgerAction.RELEASE, holder)

    def to_dict(self) -> JsonObject:
        return {
            "action": self.action.value,
            "holder": self.holder,
            "claim": None if self.claim is None else self.claim.to_dict(),
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str = "event") -> LedgerEvent:
        action_name = get_str(obj, "action", where)
        try:
            action = LedgerAction(action_name)
        except ValueError:
            raise JsonFormatError(
                f"{where}.action: unknown action {action_name!r}, expected grant or release"
            ) from None
        raw_claim = obj.get("claim")
        claim = None if raw_claim is None else Claim.from_dict(as_object(raw_claim, f"{where}.claim"), f"{where}.claim")
        return cls(action, get_str(obj, "holder", where), claim)


@dataclass(frozen=True)
class LedgerReplay:
    """Peak concurrent usage seen in a coordinator log.

    `peak` covers every moment; `shared_peak` only moments without an exclusive claim, which is what the limits
    bind. `violations` lists every moment the limits or exclusivity were broken; empty means the log proves the
    budget held.
    """

    peak: ResourcePairs
    shared_peak: ResourcePairs
    max_active: int
    violations: tuple[str, ...]
    unreleased: tuple[str, ...]

    @property
    def within_limits(self) -> bool:
        return not self.violations

    def peak_of(self, kind: ResourceKind) -> int:
        return _amount(self.peak, kind)

    def shared_peak_of(self, kind: ResourceKind) -> int:
        return _amount(self.shared_peak, kind)


def _maximum(left: ResourcePairs, right: ResourcePairs) -> ResourcePairs:
    return tuple(
        (kind, count)
        for kind in ResourceKind
        if (count := max(_amount(left, kind), _amount(right, kind))) > 0
    )


def replay(events: Iterable[LedgerEvent], limits: Limits) -> LedgerReplay:
    """Replay a coordinator log in order and report the peak usage and any breach of `limits` or exclusivity."""
    active: dict[str, Claim] = {}
    peak: ResourcePairs = ()
    shared_peak: ResourcePairs = ()
    max_active = 0
    violations: list[str] = []
    for index, event in enumerate(events):
        if event.action is LedgerAction.RELEASE:
            if event.holder not in active:
                raise LedgerError(f"event {index}: release of {event.holder}, which holds no claim: the log is corrupt")
            del active[event.holder]
            continue
        claim = event.claim
        if claim is None:
            raise LedgerError(f"event {index}: grant to {event.holder} carries no claim: the log is corrupt")
        if claim.holder in active:
            raise LedgerError(f"event {index}: second grant to {claim.holder} without a release: the log is corrupt")
        others = list(active.values())
        active[claim.holder] = claim
        max_active = max(max_active, len(active))
        usage = _add(*(limits.usage(held) for held in active.values()))
        peak = _maximum(peak, usage)
        exclusive_holders = [held.holder for held in active.values() if held.exclusive]
        if exclusive_holders:
            if others:
                violations.append(
                    f"event {index}: {claim.holder} granted while {len(active)} claims are active including "
                    f"exclusive {exclusive_holders}"
                )
            continue
        shared_peak = _maximum(shared_peak, usage)
        violations.extend(
            f"event {index}: grant to {claim.holder} brings {kind.value} to {count}, above limit {limit}"
            for kind, count, limit in _over_limits(usage, limits)
        )
    return LedgerReplay(
        peak=peak,
        shared_peak=shared_peak,
        max_active=max_active,
        violations=tuple(violations),
        unreleased=tuple(active),
    )


def replay_json(lines: Iterable[JsonObject], limits: Limits) -> LedgerReplay:
    """`replay` over decoded JSON log records (as written by `LedgerEvent.to_dict`)."""
    return replay((LedgerEvent.from_dict(line, f"log record {index}") for index, line in enumerate(lines)), limits)
