"""Operations run inside one node, shared by the kind provider (``docker exec``) and the SSH provider.

A `NodeShell` runs one command, given as an argument list, on one node. Nothing here builds a shell string: every
command is an argument vector, and scripts for iptables-restore travel on standard input.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from kubeha.providers import netfilter
from kubeha.providers.base import Component, ProviderError

__all__ = [
    "CommandResult",
    "NodeShell",
    "POLL_INTERVAL_S",
    "StaticPodLayout",
    "heal",
    "isolated_peers",
    "isolate",
    "routes_via",
    "start_static_pod",
    "start_unit",
    "stop_static_pod",
    "stop_unit",
    "unit_state",
    "wait_until",
]

POLL_INTERVAL_S = 1.0
# A static pod's containers get the pod's termination grace period (30 s by default for control-plane pods) plus
# the time kubelet needs to notice the manifest is gone.
STATIC_POD_STOP_TIMEOUT_S = 120.0
# kubelet re-reads the manifest directory at least every 20 s; etcd and the API server can take a while to start.
STATIC_POD_START_TIMEOUT_S = 180.0
UNIT_TIMEOUT_S = 120.0

DEFAULT_MANIFEST_DIR = "/etc/kubernetes/manifests"
DEFAULT_HELD_DIR = "/etc/kubernetes/kubeha-held"
DEFAULT_CRICTL = "crictl"


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        output = (self.stderr.strip() or self.stdout.strip())[-500:]
        return f"`{' '.join(self.argv)}` exited {self.exit_code}: {output or '(no output)'}"


class NodeShell(Protocol):
    """Runs commands on one node."""

    @property
    def node(self) -> str: ...

    def run(self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float) -> CommandResult:
        """Run `argv`; a non-zero exit is returned, not raised. Unreachable node: `ProviderError`."""
        ...


def check(shell: NodeShell, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float, fix: str) -> str:
    """Run `argv` and return its standard output; a non-zero exit raises `ProviderError` ending with `fix`."""
    result = shell.run(argv, stdin=stdin, timeout_s=timeout_s)
    if not result.ok:
        raise ProviderError(f"on node {shell.node}: {result.describe()}: {fix}")
    return result.stdout


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str, fix: str) -> None:
    """Poll `condition` every `POLL_INTERVAL_S` until it holds; `ProviderError` naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProviderError(f"timed out after {timeout_s:.0f} s waiting for {what}: {fix}")
        time.sleep(min(POLL_INTERVAL_S, remaining))


# Exit status of a command the shell or exec could not find.
COMMAND_NOT_FOUND_EXIT = 127
# Short commands (mv, test, systemctl is-active, crictl ps) must answer well within this.
COMMAND_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class StaticPodLayout:
    """Where kubelet reads static pod manifests, where a stopped component's manifest is held, and the crictl path."""

    manifest_dir: str = DEFAULT_MANIFEST_DIR
    held_dir: str = DEFAULT_HELD_DIR
    crictl: str = DEFAULT_CRICTL

    def __post_init__(self) -> None:
        for label, path in (("manifest_dir", self.manifest_dir), ("held_dir", self.held_dir)):
            if not path.startswith("/"):
                raise ValueError(f"{label} must be an absolute path, got {path!r}: give the full path on the node")
        if self.held_dir.rstrip("/") == self.manifest_dir.rstrip("/") or self.held_dir.startswith(
            self.manifest_dir.rstrip("/") + "/"
        ):
            raise ValueError(
                f"held_dir {self.held_dir!r} is inside manifest_dir {self.manifest_dir!r}, where kubelet would still "
                "run the held manifests: choose a directory outside it"
            )

    def manifest(self, component: Component) -> str:
        return f"{self.manifest_dir.rstrip('/')}/{component.value}.yaml"

    def held(self, component: Component) -> str:
        return f"{self.held_dir.rstrip('/')}/{component.value}.yaml"


def _exists(shell: NodeShell, path: str) -> bool:
    result = shell.run(("test", "-e", path), timeout_s=COMMAND_TIMEOUT_S)
    if result.exit_code not in (0, 1):
        raise ProviderError(f"on node {shell.node}: {result.describe()}: check that the node is running")
    return result.ok


def running_containers(shell: NodeShell, name: str, layout: StaticPodLayout) -> tuple[str, ...]:
    """IDs of running containers named exactly `name`, as crictl reports them."""
    out = check(
        shell,
        (layout.crictl, "ps", "--name", f"^{name}$", "--state", "running", "--quiet"),
        timeout_s=COMMAND_TIMEOUT_S,
        fix=f"check that {layout.crictl} is installed and can reach the container runtime on the node",
    )
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def stop_static_pod(shell: NodeShell, component: Component, layout: StaticPodLayout) -> None:
    """Move the component's manifest out of kubelet's sight and wait until its container is gone. Idempotent."""
    manifest, held = layout.manifest(component), layout.held(component)
    if _exists(shell, manifest):
        check(
            shell,
            ("mkdir", "-p", layout.held_dir),
            timeout_s=COMMAND_TIMEOUT_S,
            fix=f"check that {layout.held_dir} can be created on the node",
        )
        check(
            shell,
            ("mv", "-f", manifest, held),
            timeout_s=COMMAND_TIMEOUT_S,
            fix=f"check the permissions of {layout.manifest_dir} and {layout.held_dir}",
        )
    elif not _exists(shell, held):
        raise ProviderError(
            f"node {shell.node} has no static pod manifest {manifest} (nor a held copy at {held}): "
            f"{component.value} does not run as a static pod there; pick a control-plane node, or describe how "
            "components run (manifest directory or systemd units) in the inventory"
        )
    wait_until(
        lambda: not running_containers(shell, component.value, layout),
        timeout_s=STATIC_POD_STOP_TIMEOUT_S,
        what=f"{component.value} to stop on node {shell.node} after its manifest moved to {held}",
        fix="check that kubelet is running on the node (it removes the pod once the manifest is gone)",
    )


def start_static_pod(shell: NodeShell, component: Component, layout: StaticPodLayout) -> None:
    """Move a held manifest back and wait until the component's container runs. Idempotent."""
    manifest, held = layout.manifest(component), layout.held(component)
    if _exists(shell, held):
        check(
            shell,
            ("mv", "-f", held, manifest),
            timeout_s=COMMAND_TIMEOUT_S,
            fix=f"move {held} back to {manifest} by hand",
        )
    elif not _exists(shell, manifest):
        raise ProviderError(
            f"node {shell.node} has neither {manifest} nor the held copy {held}: the manifest of "
            f"{component.value} was removed by something else; restore it from a backup or re-run "
            "`kubeadm init phase control-plane` (or `kubeadm init phase etcd local`) on that node"
        )
    wait_until(
        lambda: bool(running_containers(shell, component.value, layout)),
        timeout_s=STATIC_POD_START_TIMEOUT_S,
        what=f"{component.value} to run again on node {shell.node} after restoring {manifest}",
        fix="check kubelet's log on the node (journalctl -u kubelet) for why the static pod does not start",
    )


def unit_state(shell: NodeShell, unit: str) -> str:
    """``systemctl is-active`` of `unit`: active, inactive, failed, activating, ..."""
    result = shell.run(("systemctl", "is-active", unit), timeout_s=COMMAND_TIMEOUT_S)
    state = result.stdout.strip()
    if not state:
        raise ProviderError(
            f"on node {shell.node}: {result.describe()}: check that the node runs systemd and that unit {unit} exists"
        )
    return state


def stop_unit(shell: NodeShell, unit: str) -> None:
    """``systemctl stop`` (a no-op for a stopped unit) and check the unit is no longer active."""
    check(
        shell,
        ("systemctl", "stop", unit),
        timeout_s=UNIT_TIMEOUT_S,
        fix=f"check `systemctl status {unit}` on the node",
    )
    state = unit_state(shell, unit)
    if state in ("active", "activating", "reloading"):
        raise ProviderError(
            f"unit {unit} on node {shell.node} is {state} right after `systemctl stop`: something restarts it; "
            f"check `systemctl status {unit}` and units that depend on it"
        )


def start_unit(shell: NodeShell, unit: str) -> None:
    """``systemctl start`` (a no-op for a running unit) and wait until the unit is active."""
    check(
        shell,
        ("systemctl", "start", unit),
        timeout_s=UNIT_TIMEOUT_S,
        fix=f"check `systemctl status {unit}` and `journalctl -u {unit}` on the node",
    )
    wait_until(
        lambda: unit_state(shell, unit) == "active",
        timeout_s=UNIT_TIMEOUT_S,
        what=f"unit {unit} to become active on node {shell.node}",
        fix=f"check `journalctl -u {unit}` on the node",
    )


def routes_via(shell: NodeShell, families: Sequence[netfilter.Family]) -> dict[str, tuple[str, ...]]:
    """Networks the node routes through each gateway address, for `families`."""
    routes: dict[str, tuple[str, ...]] = {}
    for family in families:
        out = check(
            shell,
            family.route_command,
            timeout_s=COMMAND_TIMEOUT_S,
            fix="check that iproute2 (`ip`) is installed on the node",
        )
        routes.update(netfilter.parse_routes(out))
    return routes


def _ruleset(shell: NodeShell, family: netfilter.Family) -> netfilter.RuleSet:
    out = check(
        shell,
        family.save_command,
        timeout_s=COMMAND_TIMEOUT_S,
        fix=f"check that {family.save_command[0]} is installed on the node and that the user may run it (root)",
    )
    return netfilter.parse_rules(out)


def _restore(shell: NodeShell, family: netfilter.Family, script: str) -> None:
    check(
        shell,
        family.restore_command,
        stdin=script,
        timeout_s=COMMAND_TIMEOUT_S,
        fix=f"check that {family.restore_command[0]} works on the node (root, the comment match module loaded)",
    )


def isolate(shell: NodeShell, peer_addresses: Mapping[str, Sequence[str]]) -> None:
    """Drop traffic between the node and every address of every peer (and the networks routed through them)."""
    wanted_addresses = [netfilter.to_network(a) for addresses in peer_addresses.values() for a in addresses]
    families = sorted({netfilter.Family.of(n) for n in wanted_addresses}, key=lambda f: f.value)
    routes = routes_via(shell, families)
    networks = {peer: netfilter.peer_networks(addresses, routes) for peer, addresses in peer_addresses.items()}
    rules = netfilter.isolation_rules(networks)
    for family in families:
        script = netfilter.isolate_script(_ruleset(shell, family), [r for r in rules if r.family is family])
        if script is not None:
            _restore(shell, family, script)


def _ruleset_if_supported(shell: NodeShell, family: netfilter.Family) -> netfilter.RuleSet | None:
    """The family's rule set, or None for IPv6 on a node without ip6tables (nothing can have been added there)."""
    if family is netfilter.Family.IPV4:
        return _ruleset(shell, family)
    result = shell.run(family.save_command, timeout_s=COMMAND_TIMEOUT_S)
    if result.ok:
        return netfilter.parse_rules(result.stdout)
    if result.exit_code == COMMAND_NOT_FOUND_EXIT:
        return None
    raise ProviderError(
        f"on node {shell.node}: {result.describe()}: check that {family.save_command[0]} works on the node (root)"
    )


def heal(shell: NodeShell, peers: Sequence[str]) -> None:
    """Remove the rules `isolate` added for `peers`, in both address families. Idempotent."""
    for family in netfilter.Family:
        existing = _ruleset_if_supported(shell, family)
        if existing is None:
            continue
        script = netfilter.heal_script(existing, peers)
        if script is not None:
            _restore(shell, family, script)


def isolated_peers(shell: NodeShell) -> frozenset[str]:
    """Peers the node currently has isolation rules for, in either address family."""
    peers: set[str] = set()
    for family in netfilter.Family:
        existing = _ruleset_if_supported(shell, family)
        if existing is not None:
            peers.update(rule.peer for rule in existing.rules)
    return frozenset(peers)
