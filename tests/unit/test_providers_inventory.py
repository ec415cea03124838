"""Inventory loading: a valid file becomes frozen data; every mistake is named with its file, field and fix."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeha.core.topology import Role
from kubeha.providers.base import Component
from kubeha.providers.inventory import (
    ComponentMode,
    InventoryError,
    PowerControl,
    check_inventory_matches,
    load_inventory,
)

NOBODY_UID = 65534


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "id_ed25519"
    path.parent.mkdir()
    path.write_text("placeholder, never read by the loader\n")
    path.chmod(0o600)
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


VALID = """
defaults:
  user: kubeha
  key: keys/id_ed25519
  sudo: true
nodes:
  - name: cp-1
    roles: [control-plane, etcd]
    host: 192.0.2.11
    power: {off: "virsh destroy cp-1", on: [virsh, start, cp-1]}
  - name: w-1
    roles: [worker]
    host: w-1.example
    addresses: [10.0.0.21]
    port: 2222
    sudo: false
load_balancer:
  host: 192.0.2.10
  reload: systemctl reload haproxy
  unit: haproxy
"""


def test_valid_inventory(tmp_path: Path, key: Path) -> None:
    inventory = load_inventory(write(tmp_path, VALID))
    assert inventory.node_names() == ("cp-1", "w-1")
    cp, worker = inventory.nodes
    assert cp.roles == frozenset({Role.CONTROL_PLANE, Role.ETCD})
    assert cp.ssh.key_path == key.resolve() and cp.ssh.user == "kubeha" and cp.ssh.sudo and cp.ssh.port == 22
    assert cp.addresses == ("192.0.2.11",)
    assert cp.power == PowerControl(off=("virsh", "destroy", "cp-1"), on=("virsh", "start", "cp-1"))
    assert worker.ssh.port == 2222 and not worker.ssh.sudo and worker.addresses == ("10.0.0.21",)
    assert worker.power is None
    assert inventory.components.mode is ComponentMode.STATIC_PODS
    assert inventory.components.unit(Component.ETCD) is None
    assert inventory.components.unit(Component.KUBELET) == "kubelet"
    assert inventory.components.layout.manifest(Component.ETCD) == "/etc/kubernetes/manifests/etcd.yaml"
    assert inventory.load_balancer is not None
    assert inventory.load_balancer.reload == ("systemctl", "reload", "haproxy")
    assert inventory.load_balancer.config_path == "/etc/haproxy/haproxy.cfg"


def test_systemd_components(tmp_path: Path, key: Path) -> None:
    text = VALID + """
components:
  mode: systemd
  container_runtime_unit: crio
  units:
    kube-apiserver: kube-apiserver.service
    etcd: etcd.service
    kube-controller-manager: kcm.service
    kube-scheduler: sched.service
"""
    components = load_inventory(write(tmp_path, text)).components
    assert components.mode is ComponentMode.SYSTEMD
    assert components.unit(Component.KUBE_CONTROLLER_MANAGER) == "kcm.service"
    assert components.container_runtime_unit == "crio"


def test_missing_file_names_the_path_and_the_option(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InventoryError, match=f"{missing} does not exist: pass --inventory"):
        load_inventory(missing)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes: [\n  - {name: a\n")
    with pytest.raises(InventoryError, match=f"(?s)inventory file {path} is not valid YAML: .*line 2"):
        load_inventory(path)


def test_node_without_host(tmp_path: Path, key: Path) -> None:
    path = write(tmp_path, "defaults: {user: u, key: keys/id_ed25519}\nnodes:\n  - {name: cp-1, roles: [worker]}\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    message = str(info.value)
    assert str(path) in message and r"nodes[0] (cp-1).host" in message and "host name or IP address" in message


def test_missing_key_file_names_field_path_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes:\n  - {name: a, roles: [worker], host: 10.0.0.1, user: u, key: keys/absent}\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    message = str(info.value)
    assert str(path) in message
    assert "nodes[0] (a).key" in message
    assert str(tmp_path / "keys" / "absent") in message
    assert "does not exist" in message and "relative paths start at the inventory's directory" in message


def test_missing_key_field(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes:\n  - {name: a, roles: [worker], host: 10.0.0.1, user: u}\n")
    with pytest.raises(InventoryError, match=r"nodes\[0\] \(a\)\.key is missing: give the path of the SSH private key"):
        load_inventory(path)


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    # tmp_path is private to root; the unprivileged reader below must be able to reach the files.
    directory = Path(tempfile.mkdtemp(prefix="kubeha-inventory-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()


def _load_message(path: Path) -> str:
    try:
        load_inventory(path)
    except InventoryError as error:
        return str(error)
    return "no error"


def test_unreadable_key_file(world_readable_dir: Path) -> None:
    key = world_readable_dir / "id_ed25519"
    key.write_text("secret\n")
    key.chmod(0)
    path = world_readable_dir / "inventory.yaml"
    path.write_text(f"nodes:\n  - {{name: a, roles: [worker], host: 10.0.0.1, user: u, key: {key}}}\n")
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    if os.geteuid() != 0:
        message = _load_message(path)
    else:
        # root reads any file: check the way an unprivileged user would meet it, in a child that drops to nobody.
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(read_end)
                os.setgid(NOBODY_UID)
                os.setuid(NOBODY_UID)
                os.write(write_end, _load_message(path).encode())
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            message = reader.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, message
    assert f"names {key}, which cannot be read" in message
    assert "nodes[0] (a).key" in message and str(path) in message and "chmod 600" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the document is empty"),
        ("nodes: []\n", "nodes must be a non-empty list"),
        ("nodez: []\n", r"unknown keys \['nodez'\]"),
        ("nodes:\n  - {name: a, roles: [master], host: 10.0.0.1}\n", "unknown role 'master'"),
        ("nodes:\n  - {name: a, roles: [worker], host: a.example}\n", "host 'a.example' is not an IP address"),
        ("nodes:\n  - {name: a, roles: [worker], host: 10.0.0.1, port: 0}\n", "must be a port number"),
        ("nodes:\n  - {name: a, roles: [worker], host: 10.0.0.1, sudo: 'yes'}\n", "must be true or false"),
        ("nodes:\n  - {name: a, roles: [worker], host: 10.0.0.1, power: {off: x}}\n", "needs both `off` and `on`"),
        (
            "nodes:\n  - {name: a, roles: [worker], host: 10.0.0.1}\n  - {name: a, roles: [worker], host: 10.0.0.2}\n",
            r"lists \['a'\] more than once",
        ),
        ("components: {mode: systemd}\nnodes:\n  - {name: a, roles: [worker], host: 10.0.0.1}\n",
         "has no unit for"),
        ("components: {mode: podman}\nnodes:\n  - {name: a, roles: [worker], host: 10.0.0.1}\n",
         "components.mode is 'podman'"),
        ("components: {held_dir: /etc/kubernetes/manifests/held}\n"
         "nodes:\n  - {name: a, roles: [worker], host: 10.0.0.1}\n",
         "inside manifest_dir"),
        ("components: {manifest_dir: etc/manifests}\nnodes:\n  - {name: a, roles: [worker], host: 10.0.0.1}\n",
         "must be an absolute path"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, key: Path, text: str, expected: str) -> None:
    defaults = "defaults: {user: u, key: keys/id_ed25519}\n" if text else ""
    path = write(tmp_path, defaults + text)
    with pytest.raises(InventoryError, match=expected) as info:
        load_inventory(path)
    assert str(path) in str(info.value)


def test_check_inventory_matches(tmp_path: Path, key: Path) -> None:
    inventory = load_inventory(write(tmp_path, VALID))
    same = check_inventory_matches(inventory, ["w-1", "cp-1"])
    assert same.matches
    differs = check_inventory_matches(inventory, ["cp-1", "cp-2"])
    assert not differs.matches
    assert differs.only_in_inventory == ("w-1",)
    assert differs.only_in_cluster == ("cp-2",)
    message = differs.describe()
    assert "['w-1']" in message and "['cp-2']" in message and "kubectl get nodes" in message
