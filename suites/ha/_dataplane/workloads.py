"""The workloads the data-plane controls run: an echo backend, Services over it, and the probe pod.

The echo backend is agnhost ``serve-hostname``: every HTTP request on any path is answered with the pod's name, so
a response names the pod (and so the Deployment) that served it. Its replicas are spread over the workers with a
topology spread constraint (maxSkew 1 per node, tainted nodes left out of the count), and may carry short
tolerations of the node.kubernetes.io/unreachable and not-ready taints so that a lost node's replicas are evicted
and replaced within seconds of the node being declared lost instead of the default 300 s.

Images are the project's own, present on the embedded cluster's nodes and never pulled: agnhost (node image) and the
Debian tools image (loaded by the cluster add-ons) with dig and curl.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api, V1Deployment, V1Pod, V1Service
from kubernetes.client.exceptions import ApiException

from fixtures.kind.versions import IMAGES, PINS
from kubeha.cluster.client import REQUEST_TIMEOUT_S

from .kube import as_json, field, items, model, wait_until

# HTTP status of a create whose object already exists.
CONFLICT = 409

__all__ = [
    "AGNHOST_IMAGE",
    "ECHO_PORT",
    "EchoBackend",
    "HOSTNAME_LABEL",
    "PROBE_CONTAINER",
    "TOOLS_IMAGE",
    "create_echo_backend",
    "create_pod",
    "is_ready",
    "create_service",
    "create_service_during_fault",
    "deployment_problem",
    "echo_deployment",
    "pods_by_node",
    "probe_pod",
    "restart_rollout",
    "service_body",
    "wait_pod_running",
]

AGNHOST_IMAGE = f"kubeha.local/agnhost:{PINS.kubernetes}"
TOOLS_IMAGE = IMAGES.tools
# IfNotPresent: the images exist on the nodes; nothing is pulled unless a node lacks one, which then shows as an
# image pull error naming the image.
PULL_POLICY = "IfNotPresent"
ECHO_PORT = 8080
SERVICE_PORT = 80
HOSTNAME_LABEL = "kubernetes.io/hostname"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
APP_LABEL = "app.kubernetes.io/name"
PROBE_CONTAINER = "probe"
# agnhost exits on SIGTERM at once; a short grace keeps namespace deletion quick.
TERMINATION_GRACE_S = 2
READINESS_PERIOD_S = 1
ROLLOUT_TIMEOUT_S = 180.0
POD_RUNNING_TIMEOUT_S = 120.0
RESTARTED_AT_ANNOTATION = "kubeha.io/restarted-at"


def _pod_spec_common() -> dict[str, Any]:
    return {
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }


def _on_nodes(nodes: Sequence[str]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": sorted(nodes)}]}
                ]
            }
        }
    }


def _short_tolerations(seconds: int) -> list[dict[str, Any]]:
    return [
        {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}
        for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
    ]


def echo_deployment(name: str, replicas: int, workers: Sequence[str], *,
                    toleration_s: int | None = None) -> dict[str, Any]:
    """The echo backend: `replicas` pods on `workers`, spread with maxSkew 1 per node."""
    labels = {APP_LABEL: name}
    spec: dict[str, Any] = {
        **_pod_spec_common(),
        "affinity": _on_nodes(workers),
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": HOSTNAME_LABEL,
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": labels},
                # Spread each revision on its own: a restarted rollout places its pods evenly whatever the old
                # ones' placement was.
                "matchLabelKeys": ["pod-template-hash"],
                # A node tainted unreachable is not a place to spread to: replacements go to the nodes left.
                "nodeTaintsPolicy": "Honor",
                "nodeAffinityPolicy": "Honor",
            }
        ],
        "containers": [
            {
                "name": "echo",
                "image": AGNHOST_IMAGE,
                "imagePullPolicy": PULL_POLICY,
                "args": ["serve-hostname", "--http", f"--port={ECHO_PORT}"],
                "ports": [{"containerPort": ECHO_PORT, "name": "http"}],
                "readinessProbe": {
                    "httpGet": {"path": "/", "port": ECHO_PORT},
                    "periodSeconds": READINESS_PERIOD_S,
                    "failureThreshold": 1,
                },
            }
        ],
    }
    if toleration_s is not None:
        spec["tolerations"] = _short_tolerations(toleration_s)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def service_body(name: str, app: str, *, service_type: str = "ClusterIP", headless: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": service_type,
        "selector": {APP_LABEL: app},
        "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": ECHO_PORT, "protocol": "TCP"}],
    }
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def probe_pod(name: str, node: str, *, command: Sequence[str] | None = None,
              env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A pod of the tools image (dig, curl) pinned to `node`; by default it only sleeps (commands are exec'ed)."""
    container: dict[str, Any] = {
        "name": PROBE_CONTAINER,
        "image": TOOLS_IMAGE,
        "imagePullPolicy": PULL_POLICY,
        "command": list(command) if command is not None else ["sleep", "infinity"],
    }
    if env:
        container["env"] = [{"name": key, "value": value} for key, value in env.items()]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {APP_LABEL: "kubeha-probe"}},
        "spec": {
            **_pod_spec_common(),
            "affinity": _on_nodes([node]),
            # The probe measures; it must not be what a node fault evicts.
            "tolerations": [{"operator": "Exists"}],
            "containers": [container],
        },
    }


def deployment_problem(client: ApiClient, namespace: str, name: str) -> str | None:
    """None when the Deployment's current generation is fully rolled out and every replica is ready."""
    deployment = as_json(AppsV1Api(client).read_namespaced_deployment(name, namespace,
                                                                      _request_timeout=REQUEST_TIMEOUT_S))
    wanted = int(field(deployment, "spec", "replicas") or 0)
    generation = int(field(deployment, "metadata", "generation") or 0)
    if int(field(deployment, "status", "observedGeneration") or 0) < generation:
        return f"deployment {name}: generation {generation} not observed yet"
    ready = int(field(deployment, "status", "readyReplicas") or 0)
    updated = int(field(deployment, "status", "updatedReplicas") or 0)
    total = int(field(deployment, "status", "replicas") or 0)
    if ready == wanted and updated == wanted and total == wanted:
        return None
    return f"deployment {name}: {ready}/{wanted} ready, {updated} updated, {total} in total"


def is_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in field(pod, "status", "conditions") or [])


def pods_by_node(client: ApiClient, namespace: str, app: str, *, ready_only: bool = True) -> dict[str, list[str]]:
    """node -> names of the app's pods on it (ready ones only by default; pods being deleted never)."""
    pods = items(CoreV1Api(client).list_namespaced_pod(namespace, label_selector=f"{APP_LABEL}={app}",
                                                       _request_timeout=REQUEST_TIMEOUT_S))
    found: dict[str, list[str]] = {}
    for pod in pods:
        node = field(pod, "spec", "nodeName")
        if field(pod, "metadata", "deletionTimestamp") is not None or not node:
            continue
        if ready_only and not is_ready(pod):
            continue
        found.setdefault(str(node), []).append(str(field(pod, "metadata", "name")))
    return {node: sorted(names) for node, names in sorted(found.items())}


@dataclass(frozen=True)
class EchoBackend:
    """A running echo Deployment and its ClusterIP Service (same name)."""

    namespace: str
    name: str
    replicas: int
    cluster_ip: str
    rollout_s: float

    @property
    def pod_prefix(self) -> str:
        """Every pod of the Deployment is named <deployment>-<replica set hash>-<suffix>: a response's prefix."""
        return f"{self.name}-"


def create_service(client: ApiClient, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """Create the Service; returns it as its JSON document (spec.clusterIP, spec.ports[].nodePort filled in)."""
    created = CoreV1Api(client).create_namespaced_service(namespace, model(V1Service, body),
                                                          _request_timeout=REQUEST_TIMEOUT_S)
    return as_json(created)


def create_service_during_fault(client: ApiClient, namespace: str, body: Mapping[str, Any], *,
                                timeout_s: float) -> dict[str, Any]:
    """Create the Service while the API may be failing over: a request that fails in transit (the load balancer
    handed it to an API server that had just died) is retried until `timeout_s`; when a retry finds the Service
    already there (409) because a lost answer had in fact created it, that Service is returned."""
    name = str(field(body, "metadata", "name"))
    created: dict[str, Any] = {}

    def create() -> str | None:
        try:
            created.update(create_service(client, namespace, body))
        except ApiException as error:
            if error.status != CONFLICT:
                raise
            created.update(as_json(CoreV1Api(client).read_namespaced_service(
                name, namespace, _request_timeout=REQUEST_TIMEOUT_S)))
        return None

    wait_until(create, timeout_s=timeout_s, what=f"Service {namespace}/{name} created")
    return created


def create_echo_backend(client: ApiClient, namespace: str, name: str, replicas: int, workers: Sequence[str], *,
                        toleration_s: int | None = None, timeout_s: float = ROLLOUT_TIMEOUT_S) -> EchoBackend:
    """Create the Deployment and its Service and wait until every replica is ready."""
    AppsV1Api(client).create_namespaced_deployment(
        namespace, model(V1Deployment, echo_deployment(name, replicas, workers, toleration_s=toleration_s)),
        _request_timeout=REQUEST_TIMEOUT_S)
    service = create_service(client, namespace, service_body(name, name))
    waited = wait_until(lambda: deployment_problem(client, namespace, name), timeout_s=timeout_s,
                        what=f"echo deployment {namespace}/{name} with {replicas} ready replicas")
    return EchoBackend(namespace=namespace, name=name, replicas=replicas,
                       cluster_ip=str(field(service, "spec", "clusterIP")), rollout_s=waited)


def restart_rollout(client: ApiClient, namespace: str, name: str, *, timeout_s: float = ROLLOUT_TIMEOUT_S) -> float:
    """Replace every replica of the Deployment (as ``kubectl rollout restart`` does) and wait until the new ones are
    all ready and the old ones gone; returns the seconds waited. The new replicas are placed by the scheduler now, on
    the nodes as they are now: faults before (a stopped worker whose replicas moved away) leave no trace."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    AppsV1Api(client).patch_namespaced_deployment(
        name, namespace, {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}},
        _request_timeout=REQUEST_TIMEOUT_S)
    return wait_until(lambda: deployment_problem(client, namespace, name), timeout_s=timeout_s,
                      what=f"deployment {namespace}/{name} restarted with every new replica ready")


def create_pod(client: ApiClient, namespace: str, body: Mapping[str, Any]) -> None:
    CoreV1Api(client).create_namespaced_pod(namespace, model(V1Pod, body), _request_timeout=REQUEST_TIMEOUT_S)


def wait_pod_running(client: ApiClient, namespace: str, name: str, *,
                     timeout_s: float = POD_RUNNING_TIMEOUT_S) -> dict[str, Any]:
    """Wait until the pod runs with every container ready; returns the pod's JSON document."""
    core = CoreV1Api(client)
    found: list[dict[str, Any]] = []

    def check() -> str | None:
        pod = as_json(core.read_namespaced_pod(name, namespace, _request_timeout=REQUEST_TIMEOUT_S))
        statuses = field(pod, "status", "containerStatuses") or []
        phase = field(pod, "status", "phase")
        if phase == "Running" and statuses and all(c.get("ready") for c in statuses):
            found.append(pod)
            return None
        waiting = [f"{c.get('name')}: {field(c, 'state', 'waiting', 'reason')}" for c in statuses
                   if field(c, "state", "waiting") is not None]
        return f"pod {name} on {field(pod, 'spec', 'nodeName') or 'no node'} is {phase}" + (
            f" ({'; '.join(waiting)})" if waiting else "")

    wait_until(check, timeout_s=timeout_s, what=f"pod {namespace}/{name} running")
    return found[-1]
