"""chaostoolkit actions: node and component faults within the cluster's fault budget, and their restores.

Every fault action

- refuses to touch a cluster without consent: `allowed_cluster_uid` must be the UID of its kube-system namespace,
  or the cluster must be the kind cluster named by `kind_cluster`;
- first replays the undo journal of processes that died with faults in place;
- discovers the topology and refuses (``ActivityFailed`` naming the limit) a fault the cluster does not tolerate,
  counting the faults of every other chaos run on the same cluster and whatever the API already shows down, unless
  `allow_beyond_tolerance` is true, which takes the cluster exclusively;
- journals each fault before injecting it, so a crashed run is undone by the next one (or by `restore_all`).

Restore actions (`start_nodes`, `start_component`, `heal_node`) undo what this process injected (all of it, or the
nodes a selector picks among it) and wait until the nodes or components are back before releasing the budget; nodes
named explicitly are restored even if this process did not break them. Restores work while the API is down (etcd
quorum lost on purpose), using the cluster identity remembered when the fault was injected.

Targets are explicit `names`, or a `role` ("control-plane", "worker", "etcd", "ingress") with a `count` (default
1); a role picks the first available nodes in name order.

How to reach the cluster: `kubeconfig_path` and `context` for the API; `provider` "kind" with `kind_cluster`, or
"ssh" with `inventory`, for the machines; `state_dir` for the journal and the shared budget (default
``$XDG_STATE_HOME/kubeha``, the pytest plugin's, so each replays the other's crashed faults). Each may instead come
from the experiment's configuration (keys in `chaos.kubeha_chaos.session.CONFIGURATION_KEYS`, e.g.
``kubeha_kubeconfig``), which chaostoolkit passes as `configuration`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from chaoslib.exceptions import ActivityFailed
from chaos.kubeha_chaos.engine import READY_TIMEOUT_S, SETTLE_TIMEOUT_S, ChaosEngine, FaultType
from chaos.kubeha_chaos.session import ApiReader, ClusterArguments, resolve_kubeconfig
from chaos.kubeha_chaos.targets import NodeSelector
from kubeha.cluster.client import new_api_client
from kubeha.cluster.health import STEADY_STATE_TIMEOUT_S, wait_for_steady_state as wait_for_health
from kubeha.providers import make_provider
from kubeha.providers.base import CapabilityError, Component, ProviderError

__all__ = [
    "heal_node",
    "isolate_node",
    "kill_nodes",
    "restore_all",
    "start_component",
    "start_nodes",
    "stop_component",
    "stop_nodes",
    "wait_for_steady_state",
]

COMPONENT_NAMES = tuple(component.value for component in Component)


def _flag(value: object, argument: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ActivityFailed(f"{argument} must be true or false, got {value!r}")


def _seconds(value: object, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ActivityFailed(f"{argument} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ActivityFailed(f"{argument} must be a number of seconds, got {value!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ActivityFailed(f"{argument} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def _component(value: object) -> Component:
    try:
        return Component(value)
    except ValueError:
        raise ActivityFailed(f"component {value!r} is not known: use one of {list(COMPONENT_NAMES)}") from None


def _selector(names: object, role: object, count: object) -> NodeSelector:
    try:
        return NodeSelector.parse(names, role, count)
    except ValueError as error:
        raise ActivityFailed(str(error)) from None


@contextmanager
def _engine(
    kubeconfig_path: str | None,
    context: str | None,
    provider: str | None,
    kind_cluster: str | None,
    inventory: str | None,
    allowed_cluster_uid: str | None,
    state_dir: str | None,
    configuration: Mapping[str, object] | None,
) -> Iterator[ChaosEngine]:
    try:
        arguments = ClusterArguments.resolve(
            kubeconfig_path=kubeconfig_path, context=context, provider=provider, kind_cluster=kind_cluster,
            inventory=inventory, allowed_cluster_uid=allowed_cluster_uid, state_dir=state_dir,
            configuration=configuration,
        )
        machines = make_provider(arguments.provider, kind_cluster=arguments.kind_cluster,
                                 inventory=arguments.inventory)
        client = new_api_client(arguments.target)
    except (ValueError, OSError, ProviderError, CapabilityError) as error:
        raise ActivityFailed(str(error)) from None
    try:
        yield ChaosEngine(arguments, machines, ApiReader(client))
    finally:
        client.close()  # type: ignore[no-untyped-call]
        close = getattr(machines, "close", None)
        if callable(close):
            close()


def stop_nodes(
    names: list[str] | None = None,
    role: str | None = None,
    count: int | None = None,
    allow_beyond_tolerance: bool = False,
    budget_timeout_s: float = 0.0,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    provider: str | None = None,
    kind_cluster: str | None = None,
    inventory: str | None = None,
    allowed_cluster_uid: str | None = None,
    state_dir: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> list[str]:
    """Stop nodes gracefully (in parallel when several) and return their names; they stay down until restored.

    Refused with ``ActivityFailed`` when the cluster does not tolerate it, e.g. "stopping 2 of 3 etcd members
    exceeds the tolerance of 1; pass allow_beyond_tolerance=true to break quorum deliberately", or when faults of
    other runs already use the budget (wait up to `budget_timeout_s` for them to end; default: refuse at once).
    """
    with _engine(kubeconfig_path, context, provider, kind_cluster, inventory, allowed_cluster_uid, state_dir,
                 configuration) as engine:
        return list(engine.stop_nodes(_selector(names, role, count), hard=False,
                                      allow_beyond_tolerance=_flag(allow_beyond_tolerance, "allow_beyond_tolerance"),
                                      budget_timeout_s=_seconds(budget_timeout_s, "budget_timeout_s")))


def kill_nodes(
    names: list[str] | None = None,
    role: str | None = None,
    count: int | None = None,
    allow_beyond_tolerance: bool = False,
    budget_timeout_s: float = 0.0,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    provider: str | None = None,
    kind_cluster: str | None = None,
    inventory: str | None = None,
    allowed_cluster_uid: str | None = None,
    state_dir: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> list[str]:
    """Power nodes off hard (no graceful shutdown; in parallel when several) and return their names.

    Same budget rules as `stop_nodes`; restore with `start_nodes`.
    """
    with _engine(kubeconfig_path, context, provider, kind_cluster, inventory, allowed_cluster_uid, state_dir,
                 configuration) as engine:
        return list(engine.stop_nodes(_selector(names, role, count), hard=True,
                                      allow_beyond_tolerance=_flag(allow_beyond_tolerance, "allow_beyond_tolerance"),
                                      budget_timeout_s=_seconds(budget_timeout_s, "budget_timeout_s")))


def start_nodes(
    names: list[str] | None = None,
    role: str | None = None,
    count: int | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    settle_timeout_s: float = SETTLE_TIMEOUT_S,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    provider: str | None = None,
    kind_cluster: str | None = None,
    inventory: str | None = None,
    allowed_cluster_uid: str | None = None,
    state_dir: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> list[str]:
    """Start nodes this process stopped or killed (all of them, or those of `role`, up to `count`), or the nodes
    named explicitly, in parallel; wait up to `ready_timeout_s` until each is Ready with its control-plane pods
    ready, then release their budget. Returns the names.

    Fault injections of this process still running in the background are waited for first (up to
    `settle_timeout_s`), so an experiment can restore what its background actions broke.
    """
    with _engine(kubeconfig_path, context, provider, kind_cluster, inventory, allowed_cluster_uid, state_dir,
                 configuration) as engine:
        return list(engine.restore(_selector(names, role, count), FaultType.NODE,
                                   ready_timeout_s=_seconds(ready_timeout_s, "ready_timeout_s"),
                                   settle_timeout_s=_seconds(settle_timeout_s, "settle_timeout_s")))


def stop_component(
    component: str,
    names: list[str] | None = None,
    role: str | None = None,
    count: int | None = None,
    allow_beyond_tolerance: bool = False,
    budget_timeout_s: float = 0.0,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    provider: str | None = None,
    kind_cluster: str | None = None,
    inventory: str | None = None,
    allowed_cluster_uid: str | None = None,
    state_dir: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> list[str]:
    """Stop `component` ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler" or "kubelet") on the
    selected nodes so that nothing restarts it; returns the node names.

    Control-plane components are picked only on nodes that run them. The budget counts the component itself
    ("stopping 2 of 3 etcd members exceeds the tolerance of 1"); a stopped kubelet counts as its whole node.
    """
    chosen = _component(component)
    with _engine(kubeconfig_path, context, provider, kind_cluster, inventory, allowed_cluster_uid, state_dir,
                 configuration) as engine:
        return list(engine.stop_component(_selector(names, role, count), chosen,
                                          allow_beyond_tolerance=_flag(allow_beyond_tolerance,
                                                                       "allow_beyond_tolerance"),
                                          budget_timeout_s=_seconds(budget_timeout_s, "budget_timeout_s")))


def start_component(
    component: str,
    names: list[str] | None = None,
    role: str | None = None,
    count: int | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    settle_timeout_s: float = SETTLE_TIMEOUT_S,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    provider: str | None = None,
    kind_cluster: str | None = None,
    inventory: str | None = None,
    allowed_cluster_uid: str | None = None,
    state_dir: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> list[str]:
    """Start `component` again where this process stopped it (or on the nodes named), wait up to
    `ready_timeout_s` until its pod is ready, then release its budget; returns the node names."""
    chosen = _component(component)
    with _engine(kubeconfig_path, context, provider, kind_cluster, inventory, allowed_cluster_uid, state_dir,
                 configuration) as engine:
        return list(engine.restore(_selector(names, role, count), FaultType.COMPONENT, component=chosen,
                                   ready_timeout_s=_seconds(ready_timeout_s, "ready_timeout_s"),
                                   settle_timeout_s=_seconds(settle_timeout_s, "settle_timeout_s")))


def isolate_node(
    names: list[str] | None = None,
    role: str | None = None,
    count: int | None = None,
    peers: list[str] | None = None,
    allow_beyond_tolerance: bool = False,
    budget_timeout_s: float = 0.0,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    provider: str | None = None,
    kind_cluster: str | None = None,
    inventory: str | None = None,
    allowed_cluster_uid: str | None = None,
    state_dir: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> list[str]:
    """Drop all traffic between each selected node and `peers` (default: every other node), both directions;
    returns the node names. Budgeted like stopping the node: the rest of the cluster loses it."""
    try:
        peer_names = NodeSelector.parse(peers).names
    except ValueError as error:
        raise ActivityFailed(f"peers: {error}") from None
    with _engine(kubeconfig_path, context, provider, kind_cluster, inventory, allowed_cluster_uid, state_dir,
                 configuration) as engine:
        return list(engine.isolate_nodes(_selector(names, role, count), peer_names,
                                         allow_beyond_tolerance=_flag(allow_beyond_tolerance,
                                                                      "allow_beyond_tolerance"),
                                         budget_timeout_s=_seconds(budget_timeout_s, "budget_timeout_s")))


def heal_node(
    names: list[str] | None = None,
    role: str | None = None,
    count: int | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    settle_timeout_s: float = SETTLE_TIMEOUT_S,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    provider: str | None = None,
    kind_cluster: str | None = None,
    inventory: str | None = None,
    allowed_cluster_uid: str | None = None,
    state_dir: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> list[str]:
    """Remove the isolation this process put on nodes (or on the nodes named, from every other node), wait until
    they are Ready, then release their budget; returns the node names."""
    with _engine(kubeconfig_path, context, provider, kind_cluster, inventory, allowed_cluster_uid, state_dir,
                 configuration) as engine:
        return list(engine.restore(_selector(names, role, count), FaultType.ISOLATION,
                                   ready_timeout_s=_seconds(ready_timeout_s, "ready_timeout_s"),
                                   settle_timeout_s=_seconds(settle_timeout_s, "settle_timeout_s")))


def restore_all(
    ready_timeout_s: float = READY_TIMEOUT_S,
    settle_timeout_s: float = SETTLE_TIMEOUT_S,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    provider: str | None = None,
    kind_cluster: str | None = None,
    inventory: str | None = None,
    allowed_cluster_uid: str | None = None,
    state_dir: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> dict[str, list[str]]:
    """Replay the journal: restore every fault this process still holds on the cluster, retry restores that failed,
    and undo the faults left by processes that died; wait until what was restored is back.

    Returns ``{"restored": [...], "replayed": [...], "skipped": [...], "failed": []}``; entries of processes
    still running (another experiment's faults) are skipped. Raises ``ActivityFailed`` listing what could not be
    restored and how to restore it by hand.
    """
    with _engine(kubeconfig_path, context, provider, kind_cluster, inventory, allowed_cluster_uid, state_dir,
                 configuration) as engine:
        return engine.restore_all(ready_timeout_s=_seconds(ready_timeout_s, "ready_timeout_s"),
                                  settle_timeout_s=_seconds(settle_timeout_s, "settle_timeout_s")).to_dict()


def wait_for_steady_state(
    timeout_s: float = STEADY_STATE_TIMEOUT_S,
    kubeconfig_path: str | None = None,
    context: str | None = None,
    configuration: Mapping[str, object] | None = None,
) -> str:
    """Wait up to `timeout_s` until the cluster is in its steady state (every node Ready, every kube-system pod
    Running and ready, /readyz ok through the load balancer, etcd pods ready); returns how long it took.

    Reads only. Raises ``ActivityFailed`` listing what is still wrong at the deadline.
    """
    seconds = _seconds(timeout_s, "timeout_s")
    try:
        client = new_api_client(resolve_kubeconfig(kubeconfig_path, context, configuration))
    except ValueError as error:
        raise ActivityFailed(str(error)) from None
    try:
        report = wait_for_health(client, timeout_s=seconds)
    finally:
        client.close()  # type: ignore[no-untyped-call]
    if not report.ok:
        raise ActivityFailed(f"{report.describe()}; raise timeout_s if the cluster is only slow to recover")
    return report.describe()
