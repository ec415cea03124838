"""The kind provider: node containers of a kind cluster, driven through the docker CLI.

A kind cluster named C runs one container per Kubernetes node, named exactly like the node (C-control-plane,
C-control-plane2, C-worker, ...), and with more than one control-plane node a load balancer container
C-external-load-balancer running haproxy. Containers are found by their labels ``io.x-k8s.kind.cluster=C`` and
``io.x-k8s.kind.role``. Every docker call is an argument list passed to `subprocess.run`; nothing goes through a
shell.

What each operation does:

- stop_node: ``docker stop -t NODE_STOP_GRACE_S`` (kind nodes run systemd, which shuts down on the stop signal);
  kill_node: ``docker kill`` (SIGKILL); start_node: ``docker start``, then waits until the container runs.
- pause_node / resume_node: ``docker pause`` / ``docker unpause`` (cgroup freezer: connections stay open).
- stop_component for a static-pod component moves ``/etc/kubernetes/manifests/<c>.yaml`` to
  ``/etc/kubernetes/kubeha-held/`` inside the node and waits until crictl shows no running container of it;
  start_component moves it back and waits until it runs. kubelet is stopped and started with systemctl.
- isolate_node / heal_node: iptables rules in the node container's network namespace (see `netfilter`). Peers may
  be node names or the load balancer container's name.
- load balancer: the haproxy configuration is read and written with ``docker cp`` (which needs no tool inside the
  container) and reloaded with SIGHUP to the container's PID 1, haproxy's master process.

Every operation is idempotent: stopping a stopped node, starting a running one, healing a healed one all succeed.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kubeha.providers import netfilter, nodeops
from kubeha.providers.base import Component, LoadBalancerConfig, NodeState, ProviderError

__all__ = ["KindContainer", "KindProvider", "LOAD_BALANCER_CONFIG_PATH", "parse_container_state", "parse_networks"]

log = logging.getLogger(__name__)

CLUSTER_LABEL = "io.x-k8s.kind.cluster"
ROLE_LABEL = "io.x-k8s.kind.role"
NODE_ROLES = ("control-plane", "worker")
LOAD_BALANCER_ROLE = "external-load-balancer"
LOAD_BALANCER_CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"
LOAD_BALANCER_CONFIG_KIND = "haproxy"

# Seconds docker waits after the stop signal before SIGKILL; systemd in a kind node needs some to stop its units.
NODE_STOP_GRACE_S = 30
# Upper bound for any single docker CLI call that is not a stop.
DOCKER_COMMAND_TIMEOUT_S = 60.0
# `docker stop` returns after at most the grace period plus the time to kill and reap.
DOCKER_STOP_TIMEOUT_S = NODE_STOP_GRACE_S + DOCKER_COMMAND_TIMEOUT_S
# How long a started container may take to report running.
CONTAINER_START_TIMEOUT_S = 60.0
# Where kind's node entrypoint records the node's addresses, and the `docker network connect` flag for each.
NODE_ADDRESS_FILES = (("/kind/old-ipv4", "--ip"), ("/kind/old-ipv6", "--ip6"))
# After a SIGHUP, haproxy's master re-executes; a broken configuration makes the container exit within this time.
LOAD_BALANCER_RELOAD_SETTLE_S = 2.0


@dataclass(frozen=True)
class KindContainer:
    name: str
    role: str


def parse_container_state(state_json: str) -> NodeState:
    """Map the ``.State`` object of ``docker inspect`` to a `NodeState` (without looking at isolation)."""
    state = json.loads(state_json)
    if not isinstance(state, dict):
        raise ProviderError(f"docker inspect returned {state_json!r:.200} for .State: check the docker CLI version")
    status = state.get("Status")
    if status == "running":
        return NodeState.PAUSED if state.get("Paused") is True else NodeState.RUNNING
    if status == "paused":
        return NodeState.PAUSED
    if status in ("exited", "created", "dead"):
        return NodeState.STOPPED
    return NodeState.UNKNOWN


def parse_networks(networks_json: str) -> tuple[str, ...]:
    """IPv4 and global IPv6 addresses from the ``.NetworkSettings.Networks`` object of ``docker inspect``."""
    networks = json.loads(networks_json)
    addresses: list[str] = []
    if not isinstance(networks, dict):
        return ()
    for settings in networks.values():
        if not isinstance(settings, dict):
            continue
        for key in ("IPAddress", "GlobalIPv6Address"):
            value = settings.get(key)
            if isinstance(value, str) and value:
                addresses.append(value)
    return tuple(addresses)


class _Docker:
    def __init__(self, binary: str) -> None:
        self.binary = binary

    def run(
        self, args: Sequence[str], *, stdin: bytes | None = None, timeout_s: float
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [self.binary, *args]
        log.debug("running %s", argv)
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout_s, check=False)
        except FileNotFoundError:
            raise ProviderError(
                f"the docker CLI {self.binary!r} was not found: install docker or pass the path of its CLI"
            ) from None
        except subprocess.TimeoutExpired:
            raise ProviderError(
                f"`{' '.join(argv)}` did not finish within {timeout_s:.0f} s: check that the docker daemon responds "
                "(`docker info`)"
            ) from None

    def check(self, args: Sequence[str], *, stdin: bytes | None = None, timeout_s: float, fix: str) -> bytes:
        result = self.run(args, stdin=stdin, timeout_s=timeout_s)
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip()[-500:]
            raise ProviderError(f"`docker {' '.join(args)}` exited {result.returncode}: {message}: {fix}")
        return result.stdout


class _ExecShell:
    """`nodeops.NodeShell` over ``docker exec``."""

    def __init__(self, docker: _Docker, container: str) -> None:
        self._docker = docker
        self._container = container

    @property
    def node(self) -> str:
        return self._container

    def run(self, argv: Sequence[str], *, stdin: str | None = None, timeout_s: float) -> nodeops.CommandResult:
        args = ["exec", *(["-i"] if stdin is not None else []), self._container, *argv]
        result = self._docker.run(args, stdin=None if stdin is None else stdin.encode(), timeout_s=timeout_s)
        stderr = result.stderr.decode(errors="replace")
        if result.returncode != 0 and "is not running" in stderr:
            raise ProviderError(
                f"cannot run {argv[0]} on node {self._container}: the container is not running; start the node first"
            )
        if result.returncode != 0 and "is paused" in stderr:
            raise ProviderError(
                f"cannot run {argv[0]} on node {self._container}: the container is paused; resume the node first"
            )
        return nodeops.CommandResult(
            argv=tuple(argv),
            exit_code=result.returncode,
            stdout=result.stdout.decode(errors="replace"),
            stderr=stderr,
        )


class KindProvider:
    """Provider for the kind cluster `cluster` (the name given to ``kind create cluster --name``)."""

    def __init__(self, cluster: str, *, docker: str = "docker", layout: nodeops.StaticPodLayout | None = None) -> None:
        if not cluster:
            raise ValueError("kind cluster name is empty: pass the name given to `kind create cluster --name`")
        self.cluster = cluster
        self._docker = _Docker(docker)
        self._layout = layout or nodeops.StaticPodLayout()

    @property
    def name(self) -> str:
        return "kind"

    # -- discovery -------------------------------------------------------------------------------------------------

    def containers(self) -> tuple[KindContainer, ...]:
        out = self._docker.check(
            (
                "ps",
                "--all",
                "--filter",
                f"label={CLUSTER_LABEL}={self.cluster}",
                "--format",
                '{{.Names}}\t{{.Label "' + ROLE_LABEL + '"}}',
            ),
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            fix="check that the docker daemon runs and that this user may use it",
        )
        found: list[KindContainer] = []
        for line in out.decode().splitlines():
            if not line.strip():
                continue
            name, _, role = line.partition("\t")
            found.append(KindContainer(name=name.strip(), role=role.strip()))
        return tuple(sorted(found, key=lambda c: c.name))

    def node_names(self) -> tuple[str, ...]:
        names = tuple(c.name for c in self.containers() if c.role in NODE_ROLES)
        if not names:
            raise ProviderError(
                f"no kind node containers carry the label {CLUSTER_LABEL}={self.cluster}: the cluster does not exist "
                "or has another name; check `kind get clusters` and pass that name"
            )
        return names

    def load_balancer_container(self) -> str:
        balancers = [c.name for c in self.containers() if c.role == LOAD_BALANCER_ROLE]
        if not balancers:
            raise ProviderError(
                f"kind cluster {self.cluster} has no {LOAD_BALANCER_ROLE} container: kind creates one only for "
                "clusters with more than one control-plane node; create the cluster with at least two"
            )
        return balancers[0]

    def _container(self, node: str) -> str:
        known = {c.name for c in self.containers()}
        if node not in known:
            raise ProviderError(
                f"kind cluster {self.cluster} has no container {node!r} (it has {sorted(known)}): "
                "pass a Kubernetes node name of this cluster"
            )
        return node

    def _shell(self, node: str) -> _ExecShell:
        return _ExecShell(self._docker, self._container(node))

    def _raw_state(self, container: str) -> NodeState:
        out = self._docker.check(
            ("inspect", "--type", "container", "--format", "{{json .State}}", container),
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            fix=f"check that container {container} exists (`docker ps -a`)",
        )
        return parse_container_state(out.decode())

    def addresses(self, container: str) -> tuple[str, ...]:
        out = self._docker.check(
            ("inspect", "--type", "container", "--format", "{{json .NetworkSettings.Networks}}", container),
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            fix=f"check that container {container} exists (`docker ps -a`)",
        )
        addresses = parse_networks(out.decode())
        if not addresses:
            raise ProviderError(
                f"container {container} has no IP address (is it stopped?): start it before isolating from it"
            )
        return addresses

    # -- nodes -----------------------------------------------------------------------------------------------------

    def node_state(self, node: str) -> NodeState:
        container = self._container(node)
        state = self._raw_state(container)
        if state is NodeState.RUNNING and nodeops.isolated_peers(_ExecShell(self._docker, container)):
            return NodeState.ISOLATED
        return state

    def stop_node(self, node: str) -> None:
        container = self._container(node)
        if self._raw_state(container) is NodeState.PAUSED:
            self._unpause(container)
        self._docker.check(
            ("stop", "-t", str(NODE_STOP_GRACE_S), container),
            timeout_s=DOCKER_STOP_TIMEOUT_S,
            fix=f"stop it by hand with `docker stop {container}`",
        )
        self._expect_state(container, NodeState.STOPPED, "docker stop")

    def kill_node(self, node: str) -> None:
        container = self._container(node)
        state = self._raw_state(container)
        if state is NodeState.STOPPED:
            return
        if state is NodeState.PAUSED:
            self._unpause(container)
        result = self._docker.run(("kill", "--signal", "KILL", container), timeout_s=DOCKER_COMMAND_TIMEOUT_S)
        if result.returncode != 0 and self._raw_state(container) is not NodeState.STOPPED:
            message = result.stderr.decode(errors="replace").strip()
            raise ProviderError(f"`docker kill {container}` failed: {message}: kill it by hand with `docker kill`")
        nodeops.wait_until(
            lambda: self._raw_state(container) is NodeState.STOPPED,
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            what=f"container {container} to stop after SIGKILL",
            fix="check `docker inspect` of the container and the docker daemon's log",
        )

    def start_node(self, node: str) -> None:
        container = self._container(node)
        state = self._raw_state(container)
        if state is NodeState.PAUSED:
            self._unpause(container)
            return
        if state is NodeState.RUNNING:
            return
        unpinned = self._keep_address(container)
        self._docker.check(
            ("start", container),
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            fix=f"start it by hand with `docker start {container}` and read `docker logs {container}`",
        )
        nodeops.wait_until(
            lambda: self._raw_state(container) is NodeState.RUNNING,
            timeout_s=CONTAINER_START_TIMEOUT_S,
            what=f"container {container} to run after docker start",
            fix=f"read `docker logs {container}`",
        )
        if unpinned is not None:
            network, old = unpinned
            now = self._address(container, network)
            if now != old:
                raise ProviderError(
                    f"node {node} came back at {now or 'no address'} on docker network {network}, not at its old "
                    f"address {old}: its certificates and etcd peer URL name {old}, so the control plane breaks (two "
                    f"nodes restarted together can swap addresses). The network has no fixed subnet, so the address "
                    "could not be pinned: create the cluster with `./run python -m fixtures.kind create` (its nodes "
                    "get a network with a fixed subnet), or restart nodes one at a time"
                )

    def _last_address(self, container: str, path: str) -> str | None:
        """The address kind's node entrypoint recorded in `path` of the (stopped) container, None if absent."""
        result = self._docker.run(("cp", f"{container}:{path}", "-"), timeout_s=DOCKER_COMMAND_TIMEOUT_S)
        if result.returncode != 0:
            return None
        with tarfile.open(fileobj=io.BytesIO(result.stdout), mode="r:") as tar:
            member = next((m for m in tar.getmembers() if m.isfile()), None)
            extracted = None if member is None else tar.extractfile(member)
            text = "" if extracted is None else extracted.read().decode(errors="replace").strip()
        return text or None

    def _networks(self, container: str) -> object:
        """The container's `NetworkSettings.Networks` as docker reports it (network name to endpoint settings)."""
        out = self._docker.check(
            ("inspect", "--type", "container", "--format", "{{json .NetworkSettings.Networks}}", container),
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            fix=f"check that container {container} exists (`docker ps -a`)",
        )
        return json.loads(out.decode())

    def _address(self, container: str, network: str) -> str | None:
        networks = self._networks(container)
        settings = networks.get(network) if isinstance(networks, dict) else None
        address = settings.get("IPAddress") if isinstance(settings, dict) else None
        return str(address) if address else None

    def _keep_address(self, container: str) -> tuple[str, str] | None:
        """Reconnect a stopped node container to its network with the addresses it had, before it starts.

        Returns (network, old IPv4 address) when docker refused to pin the address, so that the caller can check
        which address the node got; None when it was pinned or there is nothing to pin.

        docker gives a restarted container the next free address of its network, not its own. kind's node
        entrypoint then rewrites the manifests and kubeconfigs to the new address, but the certificates (etcd's,
        the API server's) keep naming the old one, and two restarted nodes can even swap addresses: the control
        plane breaks. The entrypoint records the address it last saw in /kind/old-ipv4 and /kind/old-ipv6.
        """
        wanted = [(flag, self._last_address(container, path)) for path, flag in NODE_ADDRESS_FILES]
        flags = [part for flag, address in wanted if address for part in (flag, address)]
        if not flags:
            return None
        networks = self._networks(container)
        if not isinstance(networks, dict) or len(networks) != 1:
            return None
        network, settings = next(iter(networks.items()))
        pinned = (settings or {}).get("IPAMConfig") or {}
        old_ipv4 = dict(wanted).get("--ip")
        if pinned.get("IPv4Address") == old_ipv4:
            return None
        self._docker.check(
            ("network", "disconnect", network, container),
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            fix=f"check `docker network inspect {network}`",
        )
        result = self._docker.run(("network", "connect", *flags, network, container), timeout_s=DOCKER_COMMAND_TIMEOUT_S)
        if result.returncode != 0:
            # Networks without a user-configured subnet (kind creates its network that way; fixtures.kind creates
            # one with a fixed subnet) refuse fixed addresses. Reconnect plainly: docker's IPAM hands out the lowest
            # free address, which is the node's own when nothing else took it meanwhile; start_node checks that.
            self._docker.check(
                ("network", "connect", network, container),
                timeout_s=DOCKER_COMMAND_TIMEOUT_S,
                fix=f"reconnect it by hand with `docker network connect {network} {container}`",
            )
            return (network, old_ipv4) if old_ipv4 else None
        return None

    def pause_node(self, node: str) -> None:
        container = self._container(node)
        state = self._raw_state(container)
        if state is NodeState.PAUSED:
            return
        if state is not NodeState.RUNNING:
            raise ProviderError(f"cannot pause node {node}: its container is {state.value}; start the node first")
        self._docker.check(
            ("pause", container), timeout_s=DOCKER_COMMAND_TIMEOUT_S, fix="check that the docker daemon responds"
        )
        self._expect_state(container, NodeState.PAUSED, "docker pause")

    def resume_node(self, node: str) -> None:
        container = self._container(node)
        state = self._raw_state(container)
        if state is NodeState.RUNNING:
            return
        if state is not NodeState.PAUSED:
            raise ProviderError(
                f"cannot resume node {node}: its container is {state.value}, not paused; use start_node"
            )
        self._unpause(container)

    def _unpause(self, container: str) -> None:
        self._docker.check(
            ("unpause", container),
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            fix=f"unpause it by hand with `docker unpause {container}`",
        )
        self._expect_state(container, NodeState.RUNNING, "docker unpause")

    def _expect_state(self, container: str, expected: NodeState, after: str) -> None:
        state = self._raw_state(container)
        if state is not expected:
            raise ProviderError(
                f"container {container} is {state.value} after `{after}`, expected {expected.value}: "
                f"check `docker inspect {container}` and the docker daemon's log"
            )

    # -- components ------------------------------------------------------------------------------------------------

    def stop_component(self, node: str, component: Component) -> None:
        shell = self._shell(node)
        if component is Component.KUBELET:
            nodeops.stop_unit(shell, "kubelet")
        else:
            nodeops.stop_static_pod(shell, component, self._layout)

    def start_component(self, node: str, component: Component) -> None:
        shell = self._shell(node)
        if component is Component.KUBELET:
            nodeops.start_unit(shell, "kubelet")
        else:
            nodeops.start_static_pod(shell, component, self._layout)

    # -- network ---------------------------------------------------------------------------------------------------

    def isolate_node(self, node: str, peers: tuple[str, ...]) -> None:
        shell = self._shell(node)
        if not peers:
            raise ValueError(f"isolate_node({node!r}) got no peers: name the nodes to cut {node} off from")
        if node in peers:
            raise ValueError(f"node {node} cannot be isolated from itself: remove it from peers")
        nodeops.isolate(shell, {peer: self.addresses(self._container(peer)) for peer in peers})

    def heal_node(self, node: str, peers: tuple[str, ...]) -> None:
        container = self._container(node)
        state = self._raw_state(container)
        if state is NodeState.STOPPED:
            # A stopped container's network namespace is gone, and every rule with it.
            return
        if state is not NodeState.RUNNING:
            raise ProviderError(f"cannot heal node {node}: its container is {state.value}; resume it first")
        nodeops.heal(_ExecShell(self._docker, container), peers)

    # -- load balancer ---------------------------------------------------------------------------------------------

    def load_balancer_config(self) -> LoadBalancerConfig:
        container = self.load_balancer_container()
        archive = self._docker.check(
            ("cp", f"{container}:{LOAD_BALANCER_CONFIG_PATH}", "-"),
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            fix=f"check that {LOAD_BALANCER_CONFIG_PATH} exists in {container}",
        )
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            member = next((m for m in tar.getmembers() if m.isfile()), None)
            extracted = None if member is None else tar.extractfile(member)
            if extracted is None:
                raise ProviderError(
                    f"`docker cp` of {LOAD_BALANCER_CONFIG_PATH} from {container} returned no regular file: "
                    "check that the path is a file in the container"
                )
            text = extracted.read().decode()
        return LoadBalancerConfig(kind=LOAD_BALANCER_CONFIG_KIND, text=text)

    def set_load_balancer_config(self, config: LoadBalancerConfig) -> None:
        if config.kind != LOAD_BALANCER_CONFIG_KIND:
            raise ValueError(
                f"the kind load balancer runs {LOAD_BALANCER_CONFIG_KIND}, got a {config.kind!r} configuration: "
                f"pass LoadBalancerConfig(kind={LOAD_BALANCER_CONFIG_KIND!r}, text=...)"
            )
        container = self.load_balancer_container()
        directory, _, filename = LOAD_BALANCER_CONFIG_PATH.rpartition("/")
        data = config.text.encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(filename)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        self._docker.check(
            ("cp", "-", f"{container}:{directory}"),
            stdin=buffer.getvalue(),
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            fix=f"check that {directory} exists in {container}",
        )
        if self._raw_state(container) is not NodeState.RUNNING:
            return
        self._docker.check(
            ("kill", "--signal", "HUP", container),
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            fix=f"reload haproxy by hand with `docker kill --signal HUP {container}`",
        )
        time.sleep(LOAD_BALANCER_RELOAD_SETTLE_S)
        state = self._raw_state(container)
        if state is not NodeState.RUNNING:
            raise ProviderError(
                f"the load balancer {container} is {state.value} after reloading the new configuration: haproxy "
                f"rejected it; read `docker logs {container}`, write a valid configuration and `docker start` it"
            )

    def stop_load_balancer(self) -> None:
        container = self.load_balancer_container()
        self._docker.check(
            ("stop", "-t", str(NODE_STOP_GRACE_S), container),
            timeout_s=DOCKER_STOP_TIMEOUT_S,
            fix=f"stop it by hand with `docker stop {container}`",
        )

    def start_load_balancer(self) -> None:
        container = self.load_balancer_container()
        if self._raw_state(container) is NodeState.PAUSED:
            self._unpause(container)
            return
        self._docker.check(
            ("start", container),
            timeout_s=DOCKER_COMMAND_TIMEOUT_S,
            fix=f"start it by hand with `docker start {container}` and read `docker logs {container}`",
        )
        nodeops.wait_until(
            lambda: self._raw_state(container) is NodeState.RUNNING,
            timeout_s=CONTAINER_START_TIMEOUT_S,
            what=f"load balancer {container} to run after docker start",
            fix=f"read `docker logs {container}`",
        )
