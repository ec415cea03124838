"""The kubeha markers (``disruptive``, ``control``, ``serial``, ``needs``), validated into `ItemMarkers`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import pytest

from kubeha.core.budget import Claim, ResourceKind
from kubeha.core.topology import Topology

__all__ = [
    "CLAIM_KWARGS",
    "ControlSpec",
    "ItemMarkers",
    "MARKERS",
    "NEEDS_KWARGS",
    "Needs",
    "item_markers",
    "unmet_needs",
]

_CONTROL_ID = re.compile(r"^[A-Z][A-Z0-9]*(-[A-Z0-9]+)+$")

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
