"""The SSH provider: machines described by an inventory (`kubeha.providers.inventory`), driven through fabric.

Every command is an argument vector quoted with `shlex.join` and, when the inventory says ``sudo: true``, prefixed
with ``sudo -n --`` (passwordless sudo is required: no password is ever asked, sent, logged or stored). Fabric is
configured not to read any SSH or fabric configuration file, so what runs is exactly what the inventory says. Host
keys are checked against the inventory's ``known_hosts`` file when it names one, and accepted otherwise.

What each node operation does on the machine:

- stop_node does not power the machine off (nothing could start it again over SSH). It stops, in order: the
  control-plane units (systemd mode only), the kubelet unit, every pod sandbox with ``crictl stopp`` (which stops
  their containers, static pods included), and the container runtime unit. To the cluster the node is then down:
  NotReady, its pods and its etcd member gone. sshd keeps running. start_node starts the runtime, the
  control-plane units (systemd mode) and kubelet, which restarts the static pods and pods; it waits until kubelet is
  active.
- kill_node runs the inventory's ``power.off`` command on the controller host; without one it raises
  `CapabilityError`. start_node runs ``power.on`` when the node does not answer SSH and has one, then waits for SSH.
- pause_node freezes the cgroups of ``kubepods.slice``, the kubelet unit, the runtime unit and (systemd mode) the
  control-plane units with ``systemctl freeze``; resume_node thaws them. Requires systemd >= 246, cgroup v2 and
  kubelet's systemd cgroup driver (the kubeadm default). sshd is not frozen, so resume can reach the node.
- stop_component / start_component: static-pods mode moves the manifest to the held directory and back and waits
  for crictl to show the container gone / running; systemd mode runs ``systemctl stop`` / ``start`` on the unit.
  kubelet is always its systemd unit.
- isolate_node / heal_node: iptables rules in the dedicated chain (see `netfilter`) dropping traffic between the
  node and each peer's inventory addresses plus the networks routed through them. Isolation is refused when the
  controller reaches the node from one of those addresses, because the SSH connection needed to heal would be cut.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import shlex
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import invoke.exceptions
import paramiko
from fabric import Config, Connection

from kubeha.providers import netfilter, nodeops
from kubeha.providers.base import CapabilityError, Component, LoadBalancerConfig, NodeState, ProviderError
from kubeha.providers.inventory import ComponentMode, Inventory, InventoryNode, LoadBalancerAccess, SshTarget

__all__ = ["SshProvider"]

log = logging.getLogger(__name__)

SSH_CONNECT_TIMEOUT_S = 10
# Bound for a power command run on the controller host (virsh, ipmitool, a cloud CLI).
POWER_COMMAND_TIMEOUT_S = 120.0
# How long a machine may take to boot and answer SSH again after its power is restored.
BOOT_TIMEOUT_S = 600.0
# Pause between SSH connection attempts while waiting for a machine to boot.
BOOT_POLL_INTERVAL_S = 5.0
# Stopping every pod sandbox of a busy node takes a while (each gets its grace period).
STOP_PODS_TIMEOUT_S = 300.0
KUBEPODS_SLICE = "kubepods.slice"

_CONNECTION_ERRORS = (paramiko.SSHException, OSError, EOFError, invoke.exceptions.ThreadException)


class _WholeInput(io.StringIO):
    """Standard input for a remote command. invoke reads in_stream one character per 10 ms poll when the stream has
    no file descriptor, which makes a 1 kB iptables-restore script take 10 s; this hands over everything at once."""

    def read(self, size: int | None = -1) -> str:
        return super().read()


class _SshShell:
    """`nodeops.NodeShell` over one fabric connection."""

    def __init__(self, provider: SshProvider, node: str, target: SshTarget) -> None:
        self._provider = provider
        self._node = node
        self._target = target

    @property
    def node(self) -> str:
        return self._node

    def run(self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float) -> nodeops.CommandResult:
        return self._provider._run(self._node, self._target, argv, stdin=stdin, timeout_s=timeout_s)


class SshProvider:
    """Provider for the machines listed in `inventory`. Close it (or use it as a context manager) when done."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._connections: dict[tuple[str, int, str], Any] = {}

    @property
    def name(self) -> str:
        return "ssh"

    def __enter__(self) -> SshProvider:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    # -- transport -------------------------------------------------------------------------------------------------

    def _connection(self, target: SshTarget) -> Any:
        key = (target.host, target.port, target.user)
        connection = self._connections.get(key)
        if connection is None:
            config = Config(lazy=True, overrides={"load_ssh_configs": False})
            connection = Connection(
                host=target.host,
                user=target.user,
                port=target.port,
                config=config,
                connect_timeout=SSH_CONNECT_TIMEOUT_S,
                connect_kwargs={
                    "key_filename": str(target.key_path),
                    "look_for_keys": False,
                    "allow_agent": False,
                },
            )
            if target.known_hosts is not None:
                connection.client.load_host_keys(str(target.known_hosts))
                connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            self._connections[key] = connection
        return connection

    def _drop(self, target: SshTarget) -> None:
        connection = self._connections.pop((target.host, target.port, target.user), None)
        if connection is not None:
            connection.close()

    def _run(
        self, node: str, target: SshTarget, argv: Sequence[str], *, stdin: str | None, timeout_s: float
    ) -> nodeops.CommandResult:
        if not argv:
            raise ValueError("empty command: pass the program and its arguments")
        full = ("sudo", "-n", "--", *argv) if target.sudo else tuple(argv)
        command = shlex.join(full)
        log.debug("ssh %s@%s:%d (node %s): %s", target.user, target.host, target.port, node, command)
        connection = self._connection(target)
        try:
            result = connection.run(
                command,
                hide=True,
                warn=True,
                pty=False,
                in_stream=False if stdin is None else _WholeInput(stdin),
                timeout=timeout_s,
            )
        except invoke.exceptions.CommandTimedOut:
            self._drop(target)
            raise ProviderError(
                f"on node {node} ({target.host}): `{command}` did not finish within {timeout_s:.0f} s: "
                "check the machine's load and that the command does not wait for input"
            ) from None
        except paramiko.AuthenticationException as error:
            self._drop(target)
            raise ProviderError(
                f"SSH authentication as {target.user} to node {node} ({target.host}:{target.port}) failed ({error}): "
                f"check that the public key of {target.key_path} is in the user's authorized_keys"
            ) from None
        except paramiko.BadHostKeyException:
            self._drop(target)
            raise ProviderError(
                f"the host key of node {node} ({target.host}) does not match {target.known_hosts}: "
                "update the known_hosts file if the machine was reinstalled, otherwise investigate"
            ) from None
        except _CONNECTION_ERRORS as error:
            self._drop(target)
            raise ProviderError(
                f"cannot reach node {node} over SSH at {target.user}@{target.host}:{target.port} "
                f"({type(error).__name__}: {error}): check that the machine is up and sshd listens there"
            ) from None
        stderr = str(result.stderr)
        if target.sudo and result.exited == 1 and "a password is required" in stderr:
            raise ProviderError(
                f"sudo on node {node} ({target.host}) asks for a password: allow {target.user} passwordless sudo "
                "(NOPASSWD) or connect as root with `sudo: false`"
            )
        return nodeops.CommandResult(argv=tuple(argv), exit_code=int(result.exited), stdout=str(result.stdout),
                                     stderr=stderr)

    def _node(self, node: str) -> InventoryNode:
        try:
            return self.inventory.node(node)
        except KeyError as error:
            raise ProviderError(str(error.args[0])) from None

    def shell(self, node: str) -> nodeops.NodeShell:
        """A shell on `node`, for commands the Provider interface does not cover."""
        entry = self._node(node)
        return _SshShell(self, entry.name, entry.ssh)

    def run(self, node: str, argv: Sequence[str], *, stdin: str | None = None,
            timeout_s: float = nodeops.COMMAND_TIMEOUT_S) -> nodeops.CommandResult:
        """Run `argv` on `node` (with sudo if the inventory says so); a non-zero exit is returned, not raised."""
        return self.shell(node).run(argv, stdin=stdin, timeout_s=timeout_s)

    def reachable(self, node: str) -> bool:
        try:
            return self.run(node, ("true",)).ok
        except ProviderError:
            return False

    def local_address(self, node: str) -> str | None:
        """The controller's address on the SSH connection to `node` (as the node sees it, barring NAT)."""
        entry = self._node(node)
        connection = self._connection(entry.ssh)
        if not connection.is_connected:
            self.run(node, ("true",))
        transport = connection.client.get_transport()
        if transport is None:
            return None
        sockname = transport.sock.getsockname()
        return str(sockname[0]) if isinstance(sockname, tuple) else None

    # -- Provider: nodes -------------------------------------------------------------------------------------------

    def node_names(self) -> tuple[str, ...]:
        return self.inventory.node_names()

    def _node_units(self) -> tuple[str, ...]:
        """Units stopped with the node, in stop order (kubelet before the runtime)."""
        components = self.inventory.components
        units = [unit for _, unit in components.units] if components.mode is ComponentMode.SYSTEMD else []
        return (*units, components.kubelet_unit)

    def node_state(self, node: str) -> NodeState:
        shell = self.shell(node)
        try:
            if nodeops.isolated_peers(shell):
                return NodeState.ISOLATED
            kubelet = self.inventory.components.kubelet_unit
            frozen = shell.run(("systemctl", "show", "--property", "FreezerState", "--value", kubelet),
                               timeout_s=nodeops.COMMAND_TIMEOUT_S)
            if frozen.ok and frozen.stdout.strip() == "frozen":
                return NodeState.PAUSED
            states = {nodeops.unit_state(shell, unit)
                      for unit in (kubelet, self.inventory.components.container_runtime_unit)}
        except ProviderError as error:
            log.info("state of node %s unknown: %s", node, error)
            return NodeState.UNKNOWN
        if states == {"active"}:
            return NodeState.RUNNING
        if "active" not in states:
            return NodeState.STOPPED
        return NodeState.UNKNOWN

    def stop_node(self, node: str) -> None:
        shell = self.shell(node)
        components = self.inventory.components
        for unit in self._node_units():
            nodeops.stop_unit(shell, unit)
        if nodeops.unit_state(shell, components.container_runtime_unit) == "active":
            crictl = components.layout.crictl
            pods = nodeops.check(shell, (crictl, "pods", "--quiet"), timeout_s=nodeops.COMMAND_TIMEOUT_S,
                                 fix=f"check that {crictl} can reach the container runtime on the node").split()
            if pods:
                nodeops.check(shell, (crictl, "stopp", *pods), timeout_s=STOP_PODS_TIMEOUT_S,
                              fix=f"stop the pods by hand with `{crictl} stopp` on the node")
        nodeops.stop_unit(shell, components.container_runtime_unit)

    def start_node(self, node: str) -> None:
        entry = self._node(node)
        if entry.power is not None and not self.reachable(node):
            self._power(entry, entry.power.on, "on")
            self._wait_for_ssh(entry)
        shell = self.shell(node)
        components = self.inventory.components
        nodeops.start_unit(shell, components.container_runtime_unit)
        for unit in reversed(self._node_units()):
            nodeops.start_unit(shell, unit)

    def kill_node(self, node: str) -> None:
        entry = self._node(node)
        if entry.power is None:
            raise CapabilityError(
                "kill a node (hard power-off)",
                self.name,
                f"add `power: {{off: [...], on: [...]}}` to node {node} in the inventory {self.inventory.path} with "
                "commands run on this host that cut and restore its power (e.g. virsh destroy/start, "
                "ipmitool chassis power off/on)",
            )
        self._drop(entry.ssh)
        self._power(entry, entry.power.off, "off")

    def _power(self, entry: InventoryNode, argv: Sequence[str], what: str) -> None:
        log.info("power %s node %s: %s", what, entry.name, shlex.join(argv))
        try:
            result = subprocess.run(list(argv), capture_output=True, text=True, timeout=POWER_COMMAND_TIMEOUT_S,
                                    check=False)
        except FileNotFoundError:
            raise ProviderError(
                f"power {what} command for node {entry.name} not found: {argv[0]!r}; install it on this host or fix "
                f"power.{what} in {self.inventory.path}"
            ) from None
        except subprocess.TimeoutExpired:
            raise ProviderError(
                f"power {what} command for node {entry.name} did not finish within {POWER_COMMAND_TIMEOUT_S:.0f} s: "
                f"check `{shlex.join(argv)}` by hand"
            ) from None
        if result.returncode != 0:
            raise ProviderError(
                f"power {what} command `{shlex.join(argv)}` for node {entry.name} exited {result.returncode}: "
                f"{result.stderr.strip()[-500:]}: run it by hand and fix power.{what} in {self.inventory.path}"
            )

    def _wait_for_ssh(self, entry: InventoryNode) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not self.reachable(entry.name):
            if time.monotonic() >= deadline:
                raise ProviderError(
                    f"node {entry.name} did not answer SSH at {entry.ssh.host}:{entry.ssh.port} within "
                    f"{BOOT_TIMEOUT_S:.0f} s after power on: check its console"
                )
            time.sleep(BOOT_POLL_INTERVAL_S)

    def _freeze_units(self) -> tuple[str, ...]:
        components = self.inventory.components
        units = [unit for _, unit in components.units] if components.mode is ComponentMode.SYSTEMD else []
        return (KUBEPODS_SLICE, components.kubelet_unit, components.container_runtime_unit, *units)

    def _set_frozen(self, node: str, frozen: bool) -> None:
        shell = self.shell(node)
        verb, wanted = ("freeze", "frozen") if frozen else ("thaw", "running")
        for unit in self._freeze_units():
            state = nodeops.check(
                shell, ("systemctl", "show", "--property", "FreezerState", "--value", unit),
                timeout_s=nodeops.COMMAND_TIMEOUT_S, fix="check that the node runs systemd",
            ).strip()
            if not state:
                raise ProviderError(
                    f"systemd on node {node} reports no FreezerState for {unit}: pausing needs systemd >= 246 with "
                    "cgroup v2 and kubelet's systemd cgroup driver; use stop_node on this node instead"
                )
            if state == wanted:
                continue
            nodeops.check(shell, ("systemctl", verb, unit), timeout_s=nodeops.COMMAND_TIMEOUT_S,
                          fix=f"check that {unit} exists and that cgroup v2 is mounted on the node")

    def pause_node(self, node: str) -> None:
        self._set_frozen(node, True)

    def resume_node(self, node: str) -> None:
        self._set_frozen(node, False)

    # -- Provider: components --------------------------------------------------------------------------------------

    def stop_component(self, node: str, component: Component) -> None:
        shell = self.shell(node)
        unit = self.inventory.components.unit(component)
        if unit is not None:
            nodeops.stop_unit(shell, unit)
        else:
            nodeops.stop_static_pod(shell, component, self.inventory.components.layout)

    def start_component(self, node: str, component: Component) -> None:
        shell = self.shell(node)
        unit = self.inventory.components.unit(component)
        if unit is not None:
            nodeops.start_unit(shell, unit)
        else:
            nodeops.start_static_pod(shell, component, self.inventory.components.layout)

    # -- Provider: network -----------------------------------------------------------------------------------------

    def isolate_node(self, node: str, peers: tuple[str, ...]) -> None:
        if not peers:
            raise ValueError(f"isolate_node({node!r}) got no peers: name the nodes to cut {node} off from")
        if node in peers:
            raise ValueError(f"node {node} cannot be isolated from itself: remove it from peers")
        peer_addresses = {peer: self._node(peer).addresses for peer in peers}
        shell = self.shell(node)
        controller = self.local_address(node)
        if controller is not None:
            controller_ip = ipaddress.ip_address(controller)
            for peer, addresses in peer_addresses.items():
                if any(controller_ip in netfilter.to_network(address) for address in addresses):
                    raise ProviderError(
                        f"this host reaches node {node} from {controller}, an address of peer {peer}: isolating "
                        f"{node} from {peer} would cut the SSH connection needed to heal it; run kubeha from a "
                        "machine outside the cluster"
                    )
        nodeops.isolate(shell, peer_addresses)

    def heal_node(self, node: str, peers: tuple[str, ...]) -> None:
        nodeops.heal(self.shell(node), peers)

    # -- Provider: load balancer -----------------------------------------------------------------------------------

    def _load_balancer(self, operation: str) -> tuple[LoadBalancerAccess, nodeops.NodeShell]:
        access = self.inventory.load_balancer
        if access is None:
            raise CapabilityError(
                operation,
                self.name,
                f"add a `load_balancer:` section (host, config_path, reload, unit) to {self.inventory.path}",
            )
        return access, _SshShell(self, f"load-balancer {access.ssh.host}", access.ssh)

    def load_balancer_config(self) -> LoadBalancerConfig:
        access, shell = self._load_balancer("read the load balancer configuration")
        text = nodeops.check(shell, ("cat", access.config_path), timeout_s=nodeops.COMMAND_TIMEOUT_S,
                             fix=f"check load_balancer.config_path in {self.inventory.path}")
        return LoadBalancerConfig(kind=access.kind, text=text)

    def set_load_balancer_config(self, config: LoadBalancerConfig) -> None:
        access, shell = self._load_balancer("replace the load balancer configuration")
        if config.kind != access.kind:
            raise ValueError(
                f"the load balancer in {self.inventory.path} is {access.kind}, got a {config.kind!r} configuration: "
                f"pass LoadBalancerConfig(kind={access.kind!r}, text=...)"
            )
        nodeops.check(shell, ("cp", "/dev/stdin", access.config_path), stdin=config.text,
                      timeout_s=nodeops.COMMAND_TIMEOUT_S,
                      fix=f"check that {access.config_path} is writable by the SSH user (sudo: true?)")
        nodeops.check(shell, access.reload, timeout_s=nodeops.COMMAND_TIMEOUT_S,
                      fix=f"the new configuration may be invalid; check it and load_balancer.reload in "
                          f"{self.inventory.path}")

    def _load_balancer_unit(self, operation: str) -> tuple[nodeops.NodeShell, str]:
        access, shell = self._load_balancer(operation)
        if access.unit is None:
            raise CapabilityError(operation, self.name,
                                  f"add `unit:` (the load balancer's systemd unit) to load_balancer in "
                                  f"{self.inventory.path}")
        return shell, access.unit

    def stop_load_balancer(self) -> None:
        shell, unit = self._load_balancer_unit("stop the load balancer")
        nodeops.stop_unit(shell, unit)

    def start_load_balancer(self) -> None:
        shell, unit = self._load_balancer_unit("start the load balancer")
        nodeops.start_unit(shell, unit)
