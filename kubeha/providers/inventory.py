"""The inventory: how to reach the machines of a cluster over SSH and how its components run.

An inventory is a YAML file::

    defaults:                 # optional; any node field below except name, roles, host, addresses, power
      user: kubeha
      key: keys/id_ed25519    # relative paths are relative to the inventory file
      sudo: true              # prefix commands with `sudo -n` (passwordless sudo is required)
      port: 22
      known_hosts: known_hosts  # optional: verify host keys against this file instead of accepting them
    components:
      mode: static-pods       # or: systemd
      manifest_dir: /etc/kubernetes/manifests    # static-pods only (this is the default)
      held_dir: /etc/kubernetes/kubeha-held      # where a stopped component's manifest waits (default)
      crictl: crictl          # path of crictl on the nodes (default: crictl on PATH)
      kubelet_unit: kubelet
      container_runtime_unit: containerd
      units:                  # systemd only: the unit of each component
        kube-apiserver: kube-apiserver.service
        etcd: etcd.service
        kube-controller-manager: kube-controller-manager.service
        kube-scheduler: kube-scheduler.service
    nodes:
      - name: cp-1            # the Kubernetes node name
        roles: [control-plane, etcd]
        host: 192.0.2.11      # what SSH connects to
        addresses: [10.0.0.11]  # optional: the node's cluster addresses, used to isolate it (default: host)
        power:                # optional: commands run on the controller host to cut and restore power
          off: [virsh, destroy, cp-1]
          on: [virsh, start, cp-1]
    load_balancer:            # optional
      kind: haproxy
      host: 192.0.2.10
      config_path: /etc/haproxy/haproxy.cfg
      reload: [systemctl, reload, haproxy]
      unit: haproxy

Commands (power, reload) are argument lists, or strings split like a POSIX shell would split them; they never run
through a shell. Loading checks everything a test would otherwise trip over later: every error names the file, the
field and the fix. The key file is checked for existence and readability; its content is never read here, logged
or stored.
"""

from __future__ import annotations

import enum
import ipaddress
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from kubeha.core.topology import Role
from kubeha.providers.base import Component
from kubeha.providers.nodeops import DEFAULT_CRICTL, DEFAULT_HELD_DIR, DEFAULT_MANIFEST_DIR, StaticPodLayout

__all__ = [
    "ComponentMode",
    "Components",
    "DEFAULT_SSH_PORT",
    "Inventory",
    "InventoryError",
    "InventoryMismatch",
    "InventoryNode",
    "LoadBalancerAccess",
    "PowerControl",
    "SshTarget",
    "check_inventory_matches",
    "load_inventory",
    "parse_inventory",
]

DEFAULT_SSH_PORT = 22
DEFAULT_KUBELET_UNIT = "kubelet"
DEFAULT_RUNTIME_UNIT = "containerd"
STATIC_POD_COMPONENTS = (
    Component.KUBE_APISERVER,
    Component.ETCD,
    Component.KUBE_CONTROLLER_MANAGER,
    Component.KUBE_SCHEDULER,
)
_YAML_BOOL_KEYS = {False: "off", True: "on"}
_SSH_FIELDS = ("user", "key", "sudo", "port", "known_hosts")


class InventoryError(ValueError):
    """The inventory file is missing, unreadable or does not describe a usable cluster."""


class ComponentMode(enum.Enum):
    STATIC_PODS = "static-pods"
    SYSTEMD = "systemd"


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    user: str
    key_path: Path
    sudo: bool
    known_hosts: Path | None = None


@dataclass(frozen=True)
class PowerControl:
    """Argument vectors run on the controller host to cut (`off`) and restore (`on`) a machine's power."""

    off: tuple[str, ...]
    on: tuple[str, ...]


@dataclass(frozen=True)
class InventoryNode:
    name: str
    roles: frozenset[Role]
    ssh: SshTarget
    addresses: tuple[str, ...]
    power: PowerControl | None = None


@dataclass(frozen=True)
class Components:
    mode: ComponentMode
    layout: StaticPodLayout
    kubelet_unit: str
    container_runtime_unit: str
    units: tuple[tuple[Component, str], ...]

    def unit(self, component: Component) -> str | None:
        """The systemd unit of `component` (kubelet always has one), or None if it runs as a static pod."""
        if component is Component.KUBELET:
            return self.kubelet_unit
        return next((unit for known, unit in self.units if known is component), None)


@dataclass(frozen=True)
class LoadBalancerAccess:
    kind: str
    ssh: SshTarget
    config_path: str
    reload: tuple[str, ...]
    unit: str | None


@dataclass(frozen=True)
class Inventory:
    path: Path
    nodes: tuple[InventoryNode, ...]
    components: Components
    load_balancer: LoadBalancerAccess | None = None

    def node(self, name: str) -> InventoryNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(
            f"node {name!r} is not in the inventory {self.path} (it lists {[n.name for n in self.nodes]}): "
            "add it under `nodes:` or pass a node the inventory describes"
        )

    def node_names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.nodes)


@dataclass(frozen=True)
class InventoryMismatch:
    """Differences between the inventory's nodes and the cluster's nodes as the API reports them."""

    inventory: Path
    only_in_inventory: tuple[str, ...]
    only_in_cluster: tuple[str, ...]

    @property
    def matches(self) -> bool:
        return not self.only_in_inventory and not self.only_in_cluster

    def describe(self) -> str:
        if self.matches:
            return f"inventory {self.inventory} describes exactly the cluster's nodes"
        parts = []
        if self.only_in_inventory:
            parts.append(f"nodes in the inventory but not in the cluster: {list(self.only_in_inventory)}")
        if self.only_in_cluster:
            parts.append(f"nodes in the cluster but not in the inventory: {list(self.only_in_cluster)}")
        return (
            f"inventory {self.inventory} does not match the cluster ({'; '.join(parts)}): list every node under "
            "`nodes:` with its Kubernetes node name (`kubectl get nodes`), or pass the inventory of this cluster"
        )


def check_inventory_matches(inventory: Inventory, node_names_from_api: Iterable[str]) -> InventoryMismatch:
    listed = set(inventory.node_names())
    actual = set(node_names_from_api)
    return InventoryMismatch(
        inventory=inventory.path,
        only_in_inventory=tuple(sorted(listed - actual)),
        only_in_cluster=tuple(sorted(actual - listed)),
    )


def load_inventory(path: Path | str) -> Inventory:
    """Read and validate the inventory at `path`."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(
            f"inventory file {file} does not exist: pass --inventory with the path of a YAML file describing SSH "
            "access to the nodes (see kubeha.providers.inventory for the format)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise InventoryError(
            f"inventory file {file} cannot be read ({error}): check its permissions and encoding"
        ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InventoryError(
            f"inventory file {file} is not valid YAML: {error}; fix the syntax at that position"
        ) from None
    return parse_inventory(document, path=file)


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, field: str, problem: str, fix: str) -> InventoryError:
        return InventoryError(f"inventory {self.path}: {field} {problem}: {fix}")

    def mapping(self, value: object, field: str) -> Mapping[str, object]:
        if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
            raise self.error(field, f"must be a mapping of names to values, got {type(value).__name__}", "fix the YAML")
        return value

    def text(self, value: object, field: str, fix: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, f"must be a non-empty string, got {value!r}", fix)
        return value.strip()

    def optional_text(self, value: object, field: str, fix: str) -> str | None:
        return None if value is None else self.text(value, field, fix)

    def port(self, value: object, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.error(field, f"must be a port number 1..65535, got {value!r}", "give the SSH port, e.g. 22")
        return value

    def flag(self, value: object, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(field, f"must be true or false, got {value!r}", "write true or false without quotes")
        return value

    def command(self, value: object, field: str) -> tuple[str, ...]:
        if isinstance(value, str):
            try:
                argv = tuple(shlex.split(value))
            except ValueError as error:
                raise self.error(field, f"cannot be split into arguments ({error})", "balance the quotes") from None
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            argv = tuple(value)
        else:
            raise self.error(field, f"must be a command (list of arguments or a string), got {value!r}",
                             'write e.g. [virsh, destroy, cp-1]')
        if not argv or not argv[0]:
            raise self.error(field, "is an empty command", "give the program and its arguments")
        return argv

    def readable_file(self, value: object, field: str, what: str) -> Path:
        raw = self.text(value, field, f"give the path of the {what}")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = (self.path.parent / path).resolve()
        if not path.is_file():
            raise self.error(field, f"names {path}, which does not exist or is not a file",
                             f"create the {what} there or correct the path "
                             "(relative paths start at the inventory's directory)")
        try:
            with path.open("rb"):
                pass
        except OSError as error:
            raise self.error(field, f"names {path}, which cannot be read ({error.strerror})",
                             f"make the {what} readable by this user (chmod 600 and the right owner)") from None
        return path

    def absolute_path(self, value: object, field: str, default: str) -> str:
        raw = default if value is None else self.text(value, field, "give an absolute path on the node")
        if not raw.startswith("/"):
            raise self.error(field, f"must be an absolute path on the node, got {raw!r}", "start it with /")
        return raw


def _known_keys(reader: _Reader, obj: Mapping[str, object], field: str, allowed: Iterable[str]) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise reader.error(field, f"has unknown keys {unknown}", f"use only {sorted(allowed)} (check the spelling)")


def _ssh_target(reader: _Reader, host: str, merged: Mapping[str, object], field: str) -> SshTarget:
    if merged.get("user") is None:
        raise reader.error(f"{field}.user", "is missing", "give the SSH user on the entry or under `defaults:`")
    if merged.get("key") is None:
        raise reader.error(f"{field}.key", "is missing",
                           "give the path of the SSH private key on the entry or under `defaults:`")
    known_hosts = merged.get("known_hosts")
    return SshTarget(
        host=host,
        port=reader.port(merged.get("port", DEFAULT_SSH_PORT), f"{field}.port"),
        user=reader.text(merged.get("user"), f"{field}.user", "give the SSH user name"),
        key_path=reader.readable_file(merged.get("key"), f"{field}.key", "SSH private key"),
        sudo=reader.flag(merged.get("sudo", False), f"{field}.sudo"),
        known_hosts=None if known_hosts is None else reader.readable_file(known_hosts, f"{field}.known_hosts",
                                                                          "known_hosts file"),
    )


def _roles(reader: _Reader, value: object, field: str) -> frozenset[Role]:
    names = [role.value for role in Role]
    if not isinstance(value, list) or not value:
        raise reader.error(field, f"must be a non-empty list of roles, got {value!r}", f"use some of {names}")
    roles: set[Role] = set()
    for item in value:
        try:
            roles.add(Role(item))
        except ValueError:
            raise reader.error(field, f"has unknown role {item!r}", f"use some of {names}") from None
    return frozenset(roles)


def _addresses(reader: _Reader, value: object, host: str, field: str) -> tuple[str, ...]:
    if value is None:
        try:
            return (str(ipaddress.ip_address(host)),)
        except ValueError:
            return ()
    if not isinstance(value, list) or not value:
        raise reader.error(field, f"must be a non-empty list of IP addresses, got {value!r}", "list the node's IPs")
    addresses = []
    for item in value:
        try:
            addresses.append(str(ipaddress.ip_address(str(item))))
        except ValueError:
            raise reader.error(field, f"has {item!r}, which is not an IP address",
                               "give the addresses peers use to reach the node (InternalIP)") from None
    return tuple(addresses)


def _node(reader: _Reader, raw: object, index: int, defaults: Mapping[str, object]) -> InventoryNode:
    where = f"nodes[{index}]"
    obj = reader.mapping(raw, where)
    _known_keys(reader, obj, where, ("name", "roles", "host", "addresses", "power", *_SSH_FIELDS))
    name = reader.text(obj.get("name"), f"{where}.name", "give the Kubernetes node name (`kubectl get nodes`)")
    where = f"nodes[{index}] ({name})"
    host = reader.text(obj.get("host"), f"{where}.host", "give the host name or IP address SSH connects to")
    merged = {**defaults, **{key: obj[key] for key in _SSH_FIELDS if key in obj}}
    power = None
    if obj.get("power") is not None:
        raw_power = obj["power"]
        if isinstance(raw_power, Mapping):
            # YAML 1.1 reads unquoted `off:` and `on:` as the booleans false and true.
            raw_power = {_YAML_BOOL_KEYS.get(key, key) if isinstance(key, bool) else key: value
                         for key, value in raw_power.items()}
        power_obj = reader.mapping(raw_power, f"{where}.power")
        _known_keys(reader, power_obj, f"{where}.power", ("off", "on"))
        if power_obj.get("off") is None or power_obj.get("on") is None:
            raise reader.error(f"{where}.power", "needs both `off` and `on`",
                               "give the commands that cut and restore the machine's power")
        power = PowerControl(
            off=reader.command(power_obj["off"], f"{where}.power.off"),
            on=reader.command(power_obj["on"], f"{where}.power.on"),
        )
    addresses = _addresses(reader, obj.get("addresses"), host, f"{where}.addresses")
    if not addresses:
        raise reader.error(f"{where}.addresses", f"is missing and host {host!r} is not an IP address",
                           "list the node's IP addresses under `addresses:` (needed to isolate it from its peers)")
    return InventoryNode(
        name=name,
        roles=_roles(reader, obj.get("roles"), f"{where}.roles"),
        ssh=_ssh_target(reader, host, merged, where),
        addresses=addresses,
        power=power,
    )


def _components(reader: _Reader, raw: object) -> Components:
    obj = reader.mapping({} if raw is None else raw, "components")
    _known_keys(reader, obj, "components",
                ("mode", "manifest_dir", "held_dir", "crictl", "kubelet_unit", "container_runtime_unit", "units"))
    mode_name = obj.get("mode", ComponentMode.STATIC_PODS.value)
    try:
        mode = ComponentMode(mode_name)
    except ValueError:
        raise reader.error("components.mode", f"is {mode_name!r}",
                           f"use one of {[m.value for m in ComponentMode]}") from None
    manifest_dir = reader.absolute_path(obj.get("manifest_dir"), "components.manifest_dir", DEFAULT_MANIFEST_DIR)
    held_dir = reader.absolute_path(obj.get("held_dir"), "components.held_dir", DEFAULT_HELD_DIR)
    try:
        layout = StaticPodLayout(
            manifest_dir=manifest_dir,
            held_dir=held_dir,
            crictl=reader.text(obj.get("crictl", DEFAULT_CRICTL), "components.crictl", "give crictl's path"),
        )
    except ValueError as error:
        raise reader.error("components.held_dir", str(error), "choose another held_dir") from None
    units: list[tuple[Component, str]] = []
    if obj.get("units") is not None:
        units_obj = reader.mapping(obj["units"], "components.units")
        names = [c.value for c in STATIC_POD_COMPONENTS]
        for key, value in units_obj.items():
            if key not in names:
                raise reader.error("components.units", f"has unknown component {key!r}", f"use some of {names}")
            units.append((Component(key), reader.text(value, f"components.units.{key}", "give the systemd unit name")))
    if mode is ComponentMode.SYSTEMD:
        missing = [c.value for c in STATIC_POD_COMPONENTS if c not in {known for known, _ in units}]
        if missing:
            raise reader.error("components.units", f"has no unit for {missing}",
                               "give the systemd unit of every control-plane component in systemd mode")
    elif units:
        raise reader.error("components.units", "is given but components.mode is static-pods",
                           "set `mode: systemd` or remove `units:`")
    return Components(
        mode=mode,
        layout=layout,
        kubelet_unit=reader.text(obj.get("kubelet_unit", DEFAULT_KUBELET_UNIT), "components.kubelet_unit",
                                 "give the kubelet's systemd unit"),
        container_runtime_unit=reader.text(obj.get("container_runtime_unit", DEFAULT_RUNTIME_UNIT),
                                           "components.container_runtime_unit",
                                           "give the container runtime's systemd unit (containerd, crio, ...)"),
        units=tuple(units),
    )


def _load_balancer(reader: _Reader, raw: object, defaults: Mapping[str, object]) -> LoadBalancerAccess:
    where = "load_balancer"
    obj = reader.mapping(raw, where)
    _known_keys(reader, obj, where, ("kind", "host", "config_path", "reload", "unit", *_SSH_FIELDS))
    host = reader.text(obj.get("host"), f"{where}.host", "give the host name or IP address SSH connects to")
    merged = {**defaults, **{key: obj[key] for key in _SSH_FIELDS if key in obj}}
    if obj.get("reload") is None:
        raise reader.error(f"{where}.reload", "is missing", "give the command that reloads the load balancer, "
                           "e.g. [systemctl, reload, haproxy]")
    return LoadBalancerAccess(
        kind=reader.text(obj.get("kind", "haproxy"), f"{where}.kind", "name the load balancer software"),
        ssh=_ssh_target(reader, host, merged, where),
        config_path=reader.absolute_path(obj.get("config_path"), f"{where}.config_path", "/etc/haproxy/haproxy.cfg"),
        reload=reader.command(obj["reload"], f"{where}.reload"),
        unit=reader.optional_text(obj.get("unit"), f"{where}.unit", "give the load balancer's systemd unit"),
    )


def parse_inventory(document: object, *, path: Path) -> Inventory:
    """Validate a decoded inventory document; `path` names it in errors and anchors relative key paths."""
    reader = _Reader(path)
    if document is None:
        raise reader.error("the document", "is empty", "describe at least `nodes:` (see kubeha.providers.inventory)")
    top = reader.mapping(document, "the document")
    _known_keys(reader, top, "the top level", ("defaults", "components", "nodes", "load_balancer"))
    defaults = reader.mapping(top.get("defaults") or {}, "defaults")
    _known_keys(reader, defaults, "defaults", _SSH_FIELDS)
    raw_nodes = top.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise reader.error("nodes", "must be a non-empty list", "list every node of the cluster under `nodes:`")
    nodes = tuple(_node(reader, raw, index, defaults) for index, raw in enumerate(raw_nodes))
    names = [node.name for node in nodes]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise reader.error("nodes", f"lists {duplicated} more than once", "give each node once")
    load_balancer = None if top.get("load_balancer") is None else _load_balancer(reader, top["load_balancer"], defaults)
    return Inventory(
        path=path,
        nodes=nodes,
        components=_components(reader, top.get("components")),
        load_balancer=load_balancer,
    )
