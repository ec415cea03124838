"""Network isolation of one node with iptables, as plain data: what to add, what to remove, how to read it back.

A node is isolated from a peer by DROP rules in a dedicated chain, `CHAIN`, jumped to first from INPUT, OUTPUT and
FORWARD of the filter table, in the node's own network namespace. Every rule carries the comment
``kubeha-peer=<peer node name>``, so healing removes exactly the rules that isolation added for that peer, even if
the peer's address changed in between, and never touches a rule kube-proxy, the CNI or an operator added. The chain
and its jumps are removed once the chain is empty.

Addresses of a peer are its node addresses plus every network the isolated node routes through them (the pod CIDR
of the peer with host-gateway CNIs such as kindnet), so pod traffic is cut as well as host traffic.

The rules are applied with ``iptables-restore --noflush`` (``ip6tables-restore`` for IPv6), one transaction per
address family, reading the script from standard input: no shell, and no partial state if a rule is rejected.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "CHAIN",
    "COMMENT_PREFIX",
    "HOOK_CHAINS",
    "Family",
    "IsolationRule",
    "RuleSet",
    "heal_script",
    "isolate_script",
    "parse_rules",
    "parse_routes",
    "peer_networks",
]

CHAIN = "KUBEHA-ISOLATE"
COMMENT_PREFIX = "kubeha-peer="
HOOK_CHAINS = ("INPUT", "OUTPUT", "FORWARD")
# Seconds iptables waits for the xtables lock held by kube-proxy or the CNI before failing.
XTABLES_LOCK_WAIT_S = 10

_PEER_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Family(enum.Enum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"

    @property
    def save_command(self) -> tuple[str, ...]:
        return ("iptables-save", "-t", "filter") if self is Family.IPV4 else ("ip6tables-save", "-t", "filter")

    @property
    def restore_command(self) -> tuple[str, ...]:
        tool = "iptables-restore" if self is Family.IPV4 else "ip6tables-restore"
        return (tool, "--noflush", "--wait", str(XTABLES_LOCK_WAIT_S))

    @property
    def route_command(self) -> tuple[str, ...]:
        return ("ip", "-4", "-o", "route", "show") if self is Family.IPV4 else ("ip", "-6", "-o", "route", "show")

    @staticmethod
    def of(network: Network) -> Family:
        return Family.IPV4 if network.version == 4 else Family.IPV6


def _check_peer_name(peer: str) -> None:
    if not _PEER_NAME.match(peer):
        raise ValueError(
            f"peer name {peer!r} cannot be used in an iptables comment: pass the Kubernetes node name "
            "(letters, digits, '.', '_' and '-')"
        )


def to_network(address: str) -> Network:
    """`address` (an IP or a CIDR) as a network; a bare IP becomes a /32 or /128."""
    try:
        return ipaddress.ip_network(address.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"{address!r} is neither an IP address nor a CIDR: give peer addresses as IPs (resolve host names first)"
        ) from None


@dataclass(frozen=True, order=True)
class IsolationRule:
    """One DROP rule: traffic from (`inbound`) or to (not `inbound`) `network`, tagged for `peer`."""

    peer: str
    network: str
    inbound: bool

    def __post_init__(self) -> None:
        _check_peer_name(self.peer)
        object.__setattr__(self, "network", str(to_network(self.network)))

    @property
    def family(self) -> Family:
        return Family.of(to_network(self.network))

    def spec(self) -> tuple[str, ...]:
        """The rule's match and target, in the canonical order iptables-save prints them."""
        direction = "-s" if self.inbound else "-d"
        return (direction, self.network, "-m", "comment", "--comment", f"{COMMENT_PREFIX}{self.peer}", "-j", "DROP")


@dataclass(frozen=True)
class RuleSet:
    """What exists in one address family's filter table: whether `CHAIN` exists, which hooks jump to it, its rules."""

    chain_exists: bool
    hooked: frozenset[str]
    rules: tuple[IsolationRule, ...]
    foreign_rules: tuple[str, ...]


def parse_rules(save_output: str) -> RuleSet:
    """Read `CHAIN`, its jumps and its rules from ``iptables-save -t filter`` output."""
    chain_exists = False
    hooked: set[str] = set()
    rules: list[IsolationRule] = []
    foreign: list[str] = []
    for raw in save_output.splitlines():
        line = raw.strip()
        if line.startswith(f":{CHAIN} "):
            chain_exists = True
            continue
        if not line.startswith("-A "):
            continue
        tokens = shlex.split(line)
        chain = tokens[1]
        if chain in HOOK_CHAINS and tokens[2:] == ["-j", CHAIN]:
            hooked.add(chain)
            continue
        if chain != CHAIN:
            continue
        rule = _parse_rule(tokens[2:])
        if rule is None:
            foreign.append(line)
        else:
            rules.append(rule)
    return RuleSet(
        chain_exists=chain_exists, hooked=frozenset(hooked), rules=tuple(rules), foreign_rules=tuple(foreign)
    )


def _parse_rule(tokens: Sequence[str]) -> IsolationRule | None:
    if len(tokens) != 8 or tokens[0] not in ("-s", "-d") or tokens[2:5] != ["-m", "comment", "--comment"]:
        return None
    if tokens[6:] != ["-j", "DROP"] or not tokens[5].startswith(COMMENT_PREFIX):
        return None
    try:
        return IsolationRule(peer=tokens[5][len(COMMENT_PREFIX):], network=tokens[1], inbound=tokens[0] == "-s")
    except ValueError:
        return None


def parse_routes(route_output: str) -> dict[str, tuple[str, ...]]:
    """Map each gateway address to the destinations routed through it, from ``ip -o route show`` output."""
    via: dict[str, list[str]] = {}
    for raw in route_output.splitlines():
        tokens = raw.split()
        if len(tokens) < 3 or "via" not in tokens:
            continue
        destination = tokens[0]
        if destination in ("default", "unreachable", "blackhole", "prohibit"):
            continue
        index = tokens.index("via")
        if index + 1 >= len(tokens):
            continue
        gateway = tokens[index + 1]
        if gateway in ("inet", "inet6") and index + 2 < len(tokens):
            gateway = tokens[index + 2]
        try:
            gateway_ip = str(ipaddress.ip_address(gateway))
            network = str(to_network(destination))
        except ValueError:
            continue
        via.setdefault(gateway_ip, []).append(network)
    return {gateway: tuple(networks) for gateway, networks in via.items()}


def peer_networks(addresses: Iterable[str], routes: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """A peer's addresses plus the networks routed through them, as canonical CIDRs, sorted, without duplicates."""
    networks: set[Network] = set()
    for address in addresses:
        network = to_network(address)
        networks.add(network)
        if network.num_addresses == 1:
            for routed in routes.get(str(network.network_address), ()):
                networks.add(to_network(routed))
    return tuple(str(network) for network in sorted(networks, key=lambda n: (n.version, n)))


def isolation_rules(peers: Mapping[str, Sequence[str]]) -> tuple[IsolationRule, ...]:
    """Both directions for every network of every peer."""
    return tuple(
        sorted(
            IsolationRule(peer=peer, network=network, inbound=inbound)
            for peer, networks in peers.items()
            for network in networks
            for inbound in (True, False)
        )
    )


def isolate_script(existing: RuleSet, wanted: Iterable[IsolationRule]) -> str | None:
    """An ``iptables-restore --noflush`` script adding what `wanted` needs beyond `existing`; None if nothing."""
    lines: list[str] = []
    if not existing.chain_exists:
        lines.append(f":{CHAIN} - [0:0]")
    present = set(existing.rules)
    lines.extend(shlex.join(("-A", CHAIN, *rule.spec())) for rule in wanted if rule not in present)
    for hook in HOOK_CHAINS:
        if hook not in existing.hooked:
            lines.append(shlex.join(("-I", hook, "1", "-j", CHAIN)))
    if not lines:
        return None
    return "\n".join(["*filter", *lines, "COMMIT", ""])


def heal_script(existing: RuleSet, peers: Iterable[str]) -> str | None:
    """A script removing every rule tagged for `peers`; the chain and its jumps go too once nothing else is left."""
    healed = set(peers)
    for peer in healed:
        _check_peer_name(peer)
    removed = [rule for rule in existing.rules if rule.peer in healed]
    remaining = [rule for rule in existing.rules if rule.peer not in healed]
    lines = [shlex.join(("-D", CHAIN, *rule.spec())) for rule in removed]
    if existing.chain_exists and not remaining and not existing.foreign_rules:
        lines.extend(shlex.join(("-D", hook, "-j", CHAIN)) for hook in HOOK_CHAINS if hook in existing.hooked)
        lines.append(shlex.join(("-X", CHAIN)))
    if not lines:
        return None
    return "\n".join(["*filter", *lines, "COMMIT", ""])
