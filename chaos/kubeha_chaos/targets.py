"""Which nodes an activity acts on: explicit node names, or a role and a count.

A fault action picks its targets among the nodes of the discovered `Topology` that are available: not already
broken by this process and Ready in the API. With a role, the first `count` available nodes in name order are
taken, so the same cluster state always gives the same targets. A restore action picks among the targets this
process broke (`select_held`); an empty selector there means all of them.

Everything here is pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubeha.core.topology import Role, Topology

__all__ = ["HeldTarget", "NodeSelector", "SelectionError", "select_held", "select_nodes"]

ROLE_NAMES = tuple(role.value for role in Role)


class SelectionError(ValueError):
    """The selector names no usable node; the message says which nodes exist and what to pass."""


def _count(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise SelectionError(f"count must be a positive whole number, got {value!r}: pass e.g. count=1")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())  # a configuration value read from the environment
    else:
        raise SelectionError(f"count must be a positive whole number, got {value!r}: pass e.g. count=1")
    if number < 1:
        raise SelectionError(f"count must be at least 1, got {number}: pass how many nodes to act on")
    return number


def _names(value: object) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items: list[object] = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise SelectionError(
            f"names must be a list of node names, got {type(value).__name__}: pass e.g. names=[\"cp-1\"]"
        )
    names: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise SelectionError(f"names has {item!r}, which is not a node name: list Kubernetes node names")
        names.append(item.strip())
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SelectionError(f"names lists {repeated} more than once: give each node once")
    return tuple(names)


def _role(value: object) -> Role | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SelectionError(f"role must be one of {list(ROLE_NAMES)}, got {value!r}")
    try:
        return Role(value.strip())
    except ValueError:
        raise SelectionError(f"role {value!r} is not a node role: use one of {list(ROLE_NAMES)}") from None


@dataclass(frozen=True)
class NodeSelector:
    """Explicit `names`, or `role` with `count` (default 1 for faults); empty means "all" for restores."""

    names: tuple[str, ...] = ()
    role: Role | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if self.names and self.role is not None:
            raise SelectionError(
                f"both names {list(self.names)} and role {self.role.value!r} were given: pass names to pick nodes "
                "yourself, or role (and count) to let the activity pick them"
            )
        if self.count is not None and self.role is None:
            raise SelectionError(
                f"count={self.count} needs a role: pass e.g. role=\"control-plane\" and count={self.count}"
            )

    @classmethod
    def parse(cls, names: object = None, role: object = None, count: object = None) -> NodeSelector:
        """A selector from activity arguments: `names` as a list (or comma-separated string), role and count."""
        return cls(names=_names(names), role=_role(role), count=_count(count))

    @property
    def empty(self) -> bool:
        return not self.names and self.role is None

    def describe(self) -> str:
        if self.names:
            return "nodes " + ", ".join(self.names)
        if self.role is not None:
            count = self.count or 1
            return f"{count} {self.role.value} node{'s' if count != 1 else ''}"
        return "no node"


def select_nodes(
    selector: NodeSelector,
    topology: Topology,
    *,
    unavailable: Mapping[str, str],
    required_role: Role | None = None,
    what: str = "act on",
) -> tuple[str, ...]:
    """The nodes a fault acts on.

    `unavailable` maps node names to why they cannot be chosen (already broken by this process, NotReady, ...).
    `required_role` restricts the choice to nodes that carry what the fault breaks (an etcd member, ...).
    """
    known = {node.name: node for node in topology.nodes}
    if selector.empty:
        raise SelectionError(
            f"no node to {what} was named: pass names=[...] or role=\"control-plane\" (or \"worker\") with count"
        )
    if selector.names:
        for name in selector.names:
            node = known.get(name)
            if node is None:
                raise SelectionError(
                    f"node {name!r} is not in the cluster (it has {sorted(known)}): pass a name from `kubectl get "
                    "nodes`"
                )
            if required_role is not None and not node.has(required_role):
                raise SelectionError(
                    f"node {name} has no {required_role.value} role, which \"{what}\" needs: pick one of "
                    f"{sorted(n.name for n in topology.nodes_with(required_role))}"
                )
            if name in unavailable:
                raise SelectionError(f"cannot {what} node {name}: {unavailable[name]}")
        return selector.names
    assert selector.role is not None  # not empty and no names
    wanted = selector.count or 1
    candidates = [
        node.name
        for node in sorted(topology.nodes_with(selector.role), key=lambda node: node.name)
        if required_role is None or node.has(required_role)
    ]
    available = [name for name in candidates if name not in unavailable]
    if len(available) < wanted:
        reasons = "; ".join(f"{name}: {unavailable[name]}" for name in candidates if name in unavailable)
        detail = f" ({reasons})" if reasons else ""
        raise SelectionError(
            f"cannot {what} {wanted} {selector.role.value} node(s): only {len(available)} of the "
            f"{len(candidates)} in the cluster are available{detail}; restore the others first or ask for fewer"
        )
    return tuple(available[:wanted])


@dataclass(frozen=True)
class HeldTarget:
    """A node with a fault this process injected and has not restored."""

    node: str
    roles: frozenset[Role]


def select_held(selector: NodeSelector, held: Sequence[HeldTarget]) -> tuple[str, ...]:
    """The nodes a restore acts on: `names` as given, else the held nodes of `role` (up to `count`), else all held."""
    if selector.names:
        return selector.names
    ordered = sorted({target.node: target for target in held}.values(), key=lambda target: target.node)
    if selector.role is None:
        return tuple(target.node for target in ordered)
    role = selector.role
    matching = [target.node for target in ordered if role in target.roles]
    return tuple(matching if selector.count is None else matching[: selector.count])
