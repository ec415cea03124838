"""Providers: the one interface (`base.Provider`) through which the suite acts on cluster machines.

`make_provider` builds the provider the plugin's options ask for:

- ``kind``: the node containers of a kind cluster, through docker (`kind.KindProvider`);
- ``ssh``: machines listed in an inventory file, through SSH (`ssh.SshProvider`);
- ``attach``: no machine access (`attach.AttachProvider`); given an inventory it becomes ``ssh``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from pathlib import Path

from kubeha.providers.attach import AttachProvider
from kubeha.providers.base import (
    CapabilityError,
    Component,
    LoadBalancerConfig,
    NodeState,
    Provider,
    ProviderError,
)
from kubeha.providers.inventory import Inventory, load_inventory
from kubeha.providers.kind import KindProvider
from kubeha.providers.ssh import SshProvider

__all__ = [
    "AttachProvider",
    "CapabilityError",
    "Component",
    "KindProvider",
    "LoadBalancerConfig",
    "NodeState",
    "Provider",
    "ProviderError",
    "ProviderKind",
    "SshProvider",
    "make_provider",
]


class ProviderKind(enum.Enum):
    KIND = "kind"
    SSH = "ssh"
    ATTACH = "attach"


def make_provider(
    kind: ProviderKind | str,
    *,
    kind_cluster: str | None = None,
    inventory: Inventory | Path | str | None = None,
    node_names: Iterable[str] = (),
    docker: str = "docker",
) -> Provider:
    """The provider of `kind`.

    `kind_cluster` is required for kind (the name given to ``kind create cluster --name``); `inventory` (a loaded
    `Inventory` or the path of its YAML file) is required for ssh and turns attach into ssh; `node_names` are the
    API's node names, reported by the attach provider.
    """
    try:
        chosen = kind if isinstance(kind, ProviderKind) else ProviderKind(kind)
    except ValueError:
        raise ValueError(
            f"unknown provider {kind!r}: use one of {[k.value for k in ProviderKind]}"
        ) from None
    if chosen is ProviderKind.KIND:
        if not kind_cluster:
            raise ValueError("the kind provider needs the cluster name: pass kind_cluster (kind get clusters)")
        return KindProvider(kind_cluster, docker=docker)
    if chosen is ProviderKind.ATTACH and inventory is None:
        return AttachProvider(node_names)
    if inventory is None:
        raise ValueError(
            "the ssh provider needs an inventory: pass --inventory FILE describing SSH access to the nodes"
        )
    loaded = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
    return SshProvider(loaded)
