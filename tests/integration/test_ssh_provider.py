"""The SSH provider against real sshd servers, one per network namespace created here.

Topology (addresses in 10.251.N.0/24, N chosen free on this machine)::

    this host .1 --veth-- .2 node-a .9 ==veth== .10 node-b .6 --veth-- .5 this host

Each node runs Debian's sshd inside its namespace, reachable from this host over its own veth; node-a and node-b
talk over a direct link, which is what isolation cuts. Both nodes share this machine's file system, so a node's
"static pod manifest directory" is a temporary directory, watched by a fake kubelet (a thread here) that marks a
component running while its manifest is present; a fake crictl reports those marks to the provider over SSH.
Everything runs for real: sshd, fabric, iptables in each namespace. Namespaces, veths and servers are removed in
``finally``.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.kind.api import ClusterError, ensure_apt_packages
from fixtures.kind.progress import Progress
from kubeha.faults import Journal, node_isolated, pending, replay
from kubeha.faults.faults import load_balancer_config_replaced
from kubeha.providers.base import CapabilityError, Component, LoadBalancerConfig, NodeState, ProviderError
from kubeha.providers.inventory import check_inventory_matches, load_inventory
from kubeha.providers.ssh import SshProvider

pytestmark = pytest.mark.integration

SSHD = "/usr/sbin/sshd"
SSHD_PACKAGE = "openssh-server"  # Debian's; installed here when missing, as the cluster's own packages are
SSHD_READY_TIMEOUT_S = 15.0
COMMAND_TIMEOUT_S = 30.0
FAKE_KUBELET_DELAY_S = 0.5
FAKE_KUBELET_LIFETIME_S = 900.0
PROBE_TIMEOUT_S = 1.0
CLUSTER = "ssh-netns"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr.strip()}")
    return result


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates network namespaces, veth pairs and iptables rules, and runs sshd"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed, so `ip netns` is unavailable"
    probe = f"kubeha-probe-{os.getpid()}"
    created = _run("ip", "netns", "add", probe, check=False)
    if created.returncode != 0:
        return f"`ip netns add` is unavailable here: {created.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    ssh_address: str
    link_address: str
    root: Path


@dataclass(frozen=True)
class Lab:
    a: Host
    b: Host
    controller_address: str
    pod_cidr_of_b: str
    inventory: Path
    crictl: Path


def _free_octet() -> int:
    routes = _run("ip", "-4", "route", "show", "table", "all").stdout
    addresses = _run("ip", "-4", "-o", "addr").stdout
    for _ in range(50):
        octet = 10 + secrets.randbelow(240)
        prefix = f"10.251.{octet}."
        if prefix not in routes and prefix not in addresses and f"10.252.{octet}." not in routes:
            return octet
    raise RuntimeError("no free 10.251.N.0/24 found on this machine: remove stale kubeha test namespaces")


def _in(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run("ip", "netns", "exec", netns, *argv, check=check)


def _can_connect(netns: str, address: str, port: int = 22) -> bool:
    script = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection((sys.argv[1], {port}), timeout={PROBE_TIMEOUT_S}).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    return _in(netns, sys.executable, "-c", script, address, check=False).returncode == 0


def _wait_for_port(address: str, port: int = 22) -> None:
    deadline = time.monotonic() + SSHD_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=PROBE_TIMEOUT_S).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd on {address}:{port} did not accept connections within {SSHD_READY_TIMEOUT_S} s")


def _chain(netns: str) -> str:
    result = _in(netns, "iptables", "-S", "KUBEHA-ISOLATE", check=False)
    return result.stdout if result.returncode == 0 else ""


def _write_sshd_config(host: Host, authorized_keys: Path) -> Path:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.root / "host_key"))
    config = host.root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "Port 22",
                "ListenAddress 0.0.0.0",
                f"HostKey {host.root / 'host_key'}",
                f"PidFile {host.root / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized_keys}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PrintMotd no",
                "",
            ]
        )
    )
    return config


FAKE_CRICTL = '''#!{python}
"""crictl stand-in: `ps --name ^NAME$ --state running --quiet` lists NAME if the fake kubelet marked it running."""
import sys
from pathlib import Path

args = sys.argv[1:]
if args[:1] != ["ps"]:
    sys.exit("fake crictl supports only ps")
name = args[args.index("--name") + 1].strip("^$")
if (Path({marks!r}) / (name + ".running")).exists():
    print("fake-" + name)
'''


def _fake_kubelet(manifests: Path, marks: Path, stop: threading.Event) -> None:
    """Mark a component running while its manifest is in `manifests`, with kubelet-like delay."""
    deadline = time.monotonic() + FAKE_KUBELET_LIFETIME_S
    while not stop.is_set() and time.monotonic() < deadline:
        present = {path.stem for path in manifests.glob("*.yaml")}
        running = {path.stem for path in marks.glob("*.running")}
        if present != running:
            stop.wait(FAKE_KUBELET_DELAY_S)
            for name in present - running:
                (marks / f"{name}.running").touch()
            for name in running - present:
                (marks / f"{name}.running").unlink()
        stop.wait(0.05)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    if not Path(SSHD).exists():
        try:
            ensure_apt_packages((SSHD_PACKAGE,), Progress())
        except ClusterError as error:
            pytest.fail(f"{SSHD} is missing and could not be installed: {error}", pytrace=False)
        if not Path(SSHD).exists():
            pytest.fail(f"{SSHD} is still missing after installing {SSHD_PACKAGE}", pytrace=False)
    base = tmp_path_factory.mktemp("ssh-lab")
    token = secrets.token_hex(3)
    octet = _free_octet()
    net = f"10.251.{octet}"
    hosts = (
        Host("node-a", f"kubeha-{token}-a", f"{net}.2", f"{net}.9", base / "a"),
        Host("node-b", f"kubeha-{token}-b", f"{net}.6", f"{net}.10", base / "b"),
    )
    root_side = {"node-a": f"{net}.1", "node-b": f"{net}.5"}
    servers: list[subprocess.Popen[bytes]] = []
    stop_kubelet = threading.Event()
    created_run_sshd = False
    namespaces: list[str] = []
    try:
        if not Path("/run/sshd").exists():
            Path("/run/sshd").mkdir(mode=0o755)
            created_run_sshd = True
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kubeha-test", "-f", str(base / "id_ed25519"))
        authorized_keys = base / "authorized_keys"
        shutil.copy(base / "id_ed25519.pub", authorized_keys)
        known_hosts = base / "known_hosts"
        lines = []
        for index, host in enumerate(hosts):
            host.root.mkdir()
            _run("ip", "netns", "add", host.netns)
            namespaces.append(host.netns)
            _in(host.netns, "ip", "link", "set", "lo", "up")
            outside, inside = f"kh{token}{index}h", f"kh{token}{index}n"
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", host.netns)
            _run("ip", "addr", "add", f"{root_side[host.name]}/30", "dev", outside)
            _run("ip", "link", "set", outside, "up")
            _in(host.netns, "ip", "addr", "add", f"{host.ssh_address}/30", "dev", inside)
            _in(host.netns, "ip", "link", "set", inside, "up")
            config = _write_sshd_config(host, authorized_keys)
            servers.append(subprocess.Popen(
                ["ip", "netns", "exec", host.netns, SSHD, "-D", "-e", "-f", str(config)],
                stdout=subprocess.DEVNULL, stderr=open(host.root / "sshd.log", "wb"),
            ))
            public = (host.root / "host_key.pub").read_text().split()
            lines.append(f"{host.ssh_address} {public[0]} {public[1]}")
        known_hosts.write_text("\n".join(lines) + "\n")
        a, b = hosts
        link_a, link_b = f"kh{token}ab", f"kh{token}ba"
        _run("ip", "link", "add", link_a, "netns", a.netns, "type", "veth", "peer", "name", link_b, "netns", b.netns)
        _in(a.netns, "ip", "addr", "add", f"{a.link_address}/30", "dev", link_a)
        _in(b.netns, "ip", "addr", "add", f"{b.link_address}/30", "dev", link_b)
        _in(a.netns, "ip", "link", "set", link_a, "up")
        _in(b.netns, "ip", "link", "set", link_b, "up")
        # Like a host-gateway CNI: node-a routes node-b's pod network through node-b.
        pod_cidr = f"10.252.{octet}.0/24"
        _in(a.netns, "ip", "route", "add", pod_cidr, "via", b.link_address)
        for host in hosts:
            _wait_for_port(host.ssh_address)

        manifests, held, marks = a.root / "manifests", a.root / "held", a.root / "marks"
        for directory in (manifests, marks):
            directory.mkdir()
        (manifests / "kube-scheduler.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: kube-scheduler}\n")
        crictl = base / "crictl"
        crictl.write_text(FAKE_CRICTL.format(python=sys.executable, marks=str(marks)))
        crictl.chmod(0o755)
        threading.Thread(target=_fake_kubelet, args=(manifests, marks, stop_kubelet), daemon=True).start()

        inventory = base / "inventory.yaml"
        inventory.write_text(
            f"""
defaults: {{user: root, key: id_ed25519, known_hosts: known_hosts}}
components:
  mode: static-pods
  manifest_dir: {manifests}
  held_dir: {held}
  crictl: {crictl}
nodes:
  - {{name: node-a, roles: [control-plane, etcd], host: {a.ssh_address}, addresses: [{a.link_address}]}}
  - {{name: node-b, roles: [control-plane, etcd], host: {b.ssh_address}, addresses: [{b.link_address}]}}
  - {{name: controller, roles: [worker], host: {root_side['node-a']}}}
load_balancer:
  host: {b.ssh_address}
  config_path: {b.root / 'haproxy.cfg'}
  reload: [touch, {b.root / 'reloaded'}]
"""
        )
        (b.root / "haproxy.cfg").write_text("frontend original\n")
        yield Lab(a=a, b=b, controller_address=root_side["node-a"], pod_cidr_of_b=pod_cidr, inventory=inventory,
                  crictl=crictl)
    finally:
        stop_kubelet.set()
        for server in servers:
            server.terminate()
            try:
                server.wait(COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(COMMAND_TIMEOUT_S)
        for namespace in namespaces:
            _run("ip", "netns", "del", namespace, check=False)
        if created_run_sshd:
            shutil.rmtree("/run/sshd", ignore_errors=True)


@pytest.fixture
def ssh(lab: Lab) -> Iterator[SshProvider]:
    with SshProvider(load_inventory(lab.inventory)) as provider:
        yield provider
        provider.heal_node("node-a", ("node-b", "controller"))
    assert _chain(lab.a.netns) == ""


def test_commands_run_on_the_right_host(lab: Lab, ssh: SshProvider) -> None:
    result = ssh.run("node-a", ("ip", "-o", "-4", "addr", "show"))
    assert result.ok
    assert lab.a.ssh_address in result.stdout and lab.a.link_address in result.stdout
    assert lab.b.ssh_address not in result.stdout
    failed = ssh.run("node-b", ("sh", "-c", "echo out; echo err >&2; exit 3"))
    assert (failed.exit_code, failed.stdout.strip(), failed.stderr.strip()) == (3, "out", "err")
    echoed = ssh.run("node-b", ("cat",), stdin="text with 'quotes' and $HOME\n")
    assert echoed.stdout == "text with 'quotes' and $HOME\n"


def test_inventory_matches_the_cluster(lab: Lab) -> None:
    inventory = load_inventory(lab.inventory)
    assert check_inventory_matches(inventory, ["node-a", "node-b", "controller"]).matches
    assert check_inventory_matches(inventory, ["node-a"]).only_in_inventory == ("controller", "node-b")


def test_isolate_and_heal(lab: Lab, ssh: SshProvider) -> None:
    a, b = lab.a, lab.b
    assert _can_connect(a.netns, b.link_address) and _can_connect(b.netns, a.link_address)
    ssh.isolate_node("node-a", ("node-b",))
    rules = _chain(a.netns)
    assert f"-s {b.link_address}/32" in rules and f"-d {b.link_address}/32" in rules
    assert f"-d {lab.pod_cidr_of_b}" in rules  # the route through node-b is cut too
    assert "kubeha-peer=node-b" in rules
    for hook in ("INPUT", "OUTPUT", "FORWARD"):
        assert f"-A {hook} -j KUBEHA-ISOLATE" in _in(a.netns, "iptables", "-S", hook).stdout
    assert not _can_connect(a.netns, b.link_address)
    assert not _can_connect(b.netns, a.link_address)
    assert ssh.node_state("node-a") is NodeState.ISOLATED
    assert _chain(b.netns) == ""  # only node-a carries rules

    ssh.isolate_node("node-a", ("node-b",))
    assert _chain(a.netns) == rules  # idempotent: nothing added twice

    ssh.heal_node("node-a", ("node-b",))
    assert _chain(a.netns) == ""
    assert "KUBEHA-ISOLATE" not in _in(a.netns, "iptables", "-S").stdout
    assert _can_connect(a.netns, b.link_address) and _can_connect(b.netns, a.link_address)
    ssh.heal_node("node-a", ("node-b",))  # healing a healed node is fine


def test_isolation_that_would_cut_the_controller_is_refused(lab: Lab, ssh: SshProvider) -> None:
    with pytest.raises(ProviderError, match=f"reaches node node-a from {lab.controller_address}.*cut the SSH"):
        ssh.isolate_node("node-a", ("controller",))
    assert _chain(lab.a.netns) == ""


def test_static_pod_component_stop_and_start(lab: Lab, ssh: SshProvider) -> None:
    manifest = lab.a.root / "manifests" / "kube-scheduler.yaml"
    held = lab.a.root / "held" / "kube-scheduler.yaml"
    mark = lab.a.root / "marks" / "kube-scheduler.running"
    deadline = time.monotonic() + SSHD_READY_TIMEOUT_S
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mark.exists(), "the fake kubelet never started the component"

    ssh.stop_component("node-a", Component.KUBE_SCHEDULER)
    assert not manifest.exists() and held.exists() and not mark.exists()
    ssh.stop_component("node-a", Component.KUBE_SCHEDULER)  # already stopped: fine

    ssh.start_component("node-a", Component.KUBE_SCHEDULER)
    assert manifest.exists() and not held.exists() and mark.exists()
    ssh.start_component("node-a", Component.KUBE_SCHEDULER)  # already running: fine

    with pytest.raises(ProviderError, match="has no static pod manifest .*etcd.yaml"):
        ssh.stop_component("node-a", Component.ETCD)


def test_isolation_fault_restores_and_journals(lab: Lab, ssh: SshProvider, tmp_path: Path) -> None:
    journal = Journal(CLUSTER, provider_name=ssh.name, state_dir=tmp_path)
    with node_isolated(ssh, "node-a", ("node-b",), journal=journal):
        assert "kubeha-peer=node-b" in _chain(lab.a.netns)
        assert len(pending(CLUSTER, state_dir=tmp_path)) == 1
    assert _chain(lab.a.netns) == ""
    assert pending(CLUSTER, state_dir=tmp_path) == ()


def _isolate_and_die(inventory: Path, state_dir: Path) -> None:
    ssh = SshProvider(load_inventory(inventory))
    journal = Journal(CLUSTER, provider_name=ssh.name, state_dir=state_dir)
    with node_isolated(ssh, "node-a", ("node-b",), journal=journal):
        os._exit(9)


def test_crashed_run_is_healed_by_replay(lab: Lab, ssh: SshProvider, tmp_path: Path) -> None:
    child = multiprocessing.get_context("fork").Process(target=_isolate_and_die, args=(lab.inventory, tmp_path))
    child.start()
    child.join(COMMAND_TIMEOUT_S * 2)
    assert child.exitcode == 9
    assert "kubeha-peer=node-b" in _chain(lab.a.netns), "the crashed run should have left node-a isolated"
    (left,) = pending(CLUSTER, state_dir=tmp_path)
    assert left.pid == child.pid
    result = replay(ssh, CLUSTER, state_dir=tmp_path)
    assert result.ok and [entry.id for entry in result.undone] == [left.id]
    assert _chain(lab.a.netns) == ""
    assert _can_connect(lab.a.netns, lab.b.link_address)


def test_load_balancer_config_fault(lab: Lab, ssh: SshProvider, tmp_path: Path) -> None:
    config_file, reloaded = lab.b.root / "haproxy.cfg", lab.b.root / "reloaded"
    reloaded.unlink(missing_ok=True)
    assert ssh.load_balancer_config() == LoadBalancerConfig("haproxy", "frontend original\n")
    journal = Journal(CLUSTER, provider_name=ssh.name, state_dir=tmp_path)
    broken = LoadBalancerConfig("haproxy", "frontend broken\n")
    with load_balancer_config_replaced(ssh, broken, journal=journal):
        assert config_file.read_text() == "frontend broken\n" and reloaded.exists()
        reloaded.unlink()
    assert config_file.read_text() == "frontend original\n" and reloaded.exists()
    with pytest.raises(CapabilityError, match="add `unit:`"):
        ssh.stop_load_balancer()


def test_kill_without_power_control_is_a_capability_error(ssh: SshProvider) -> None:
    with pytest.raises(CapabilityError, match="power: {off: \\[...\\], on: \\[...\\]}") as info:
        ssh.kill_node("node-b")
    assert info.value.provider == "ssh"


def test_unknown_host_key_is_rejected(lab: Lab, tmp_path: Path) -> None:
    key = tmp_path / "id"
    shutil.copy(lab.inventory.parent / "id_ed25519", key)
    other_known_hosts = tmp_path / "known_hosts"
    other_known_hosts.write_text(
        f"{lab.a.ssh_address} " + " ".join((lab.b.root / "host_key.pub").read_text().split()[:2]) + "\n"
    )
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        f"nodes:\n  - {{name: node-a, roles: [worker], host: {lab.a.ssh_address}, user: root, key: id, "
        "known_hosts: known_hosts}\n"
    )
    with SshProvider(load_inventory(inventory)) as ssh:
        with pytest.raises(ProviderError, match="host key of node node-a .* does not match"):
            ssh.run("node-a", ("true",))
