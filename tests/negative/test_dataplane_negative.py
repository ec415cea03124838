"""Negative checks of the data-plane controls: take away what a control guards, and it must fail naming the cause.

- HA-DNS-01 with cluster DNS scaled to zero replicas: the control must fail saying the DNS Service has no ready
  endpoint and its lookups got no reply. Restored by scaling back to the replicas read before.
- HA-ING-01 with the ingress controller's DaemonSet deleted: the control must fail saying the ingress nodes refuse
  connections. Restored by creating the DaemonSet again from the copy read before deleting it.

The control runs in a suite session of its own against the embedded cluster (`tests.negative.harness`); the break is
undone in ``finally``, the test waits until what was broken serves again, and `restored` then requires the cluster's
steady state.
"""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, AppsV1Api, V1DaemonSet
from kubernetes.client.exceptions import ApiException

from kubeha.cluster.client import REQUEST_TIMEOUT_S
from kubeha.cluster.discovery import daemonset_info, discover, is_ingress_daemonset
from suites.ha._dataplane.facts import KUBE_SYSTEM, cluster_dns, coredns_pods
from suites.ha._dataplane.kube import as_json, field, items, model, wait_until
from tests.negative.harness import NegativeCluster

DNS_TEST = "suites/ha/test_dns.py::test_service_names_resolve"
INGRESS_TEST = "suites/ha/test_ingress.py::test_routes_http"
BREAK_TIMEOUT_S = 120.0
RESTORE_TIMEOUT_S = 300.0
HTTP_CHECK_TIMEOUT_S = 3.0
# Annotations and metadata the API server sets: a recreated object must not carry them.
SERVER_SET_ANNOTATIONS = ("deprecated.daemonset.template.generation",)


def _dns_deployment(client: ApiClient) -> dict[str, Any]:
    """The kube-system Deployment whose pods back the cluster DNS Service (all of them are named <deployment>-...)."""
    names = [pod.name for pod in coredns_pods(client)]
    for deployment in items(AppsV1Api(client).list_namespaced_deployment(KUBE_SYSTEM,
                                                                         _request_timeout=REQUEST_TIMEOUT_S)):
        prefix = f"{field(deployment, 'metadata', 'name')}-"
        if names and all(name.startswith(prefix) for name in names):
            return deployment
    raise AssertionError(f"no kube-system Deployment owns the cluster DNS pods {names}: the check cannot scale it")


def _scale(client: ApiClient, name: str, replicas: int) -> None:
    AppsV1Api(client).patch_namespaced_deployment_scale(name, KUBE_SYSTEM, {"spec": {"replicas": replicas}},
                                                        _request_timeout=REQUEST_TIMEOUT_S)


def test_cluster_dns_at_zero_replicas_fails_ha_dns_01(restored: NegativeCluster, tmp_path: Path) -> None:
    client = restored.client
    deployment = _dns_deployment(client)
    name = str(field(deployment, "metadata", "name"))
    replicas = int(field(deployment, "spec", "replicas") or 0)
    assert replicas > 0, f"kube-system/{name} already runs no replica: this check proves nothing"
    try:
        _scale(client, name, 0)
        wait_until(lambda: f"{len(coredns_pods(client))} DNS pod(s) left" if coredns_pods(client) else None,
                   timeout_s=BREAK_TIMEOUT_S, what=f"kube-system/{name} at zero pods")
        run = restored.run_suite([DNS_TEST], tmp_path)
    finally:
        _scale(client, name, replicas)
        wait_until(lambda: None if len(cluster_dns(client).ready_endpoints) >= replicas
                   else cluster_dns(client).describe(),
                   timeout_s=RESTORE_TIMEOUT_S, what=f"cluster DNS back to {replicas} ready replicas")
    run.assert_failed("HA-DNS-01", "0 ready endpoint", "no reply")


def _answers(address: str) -> str | None:
    """None when something answers HTTP on address:80, else why not."""
    connection = http.client.HTTPConnection(address, 80, timeout=HTTP_CHECK_TIMEOUT_S)
    try:
        connection.request("GET", "/", headers={"Host": "kubeha-negative.invalid"})
        connection.getresponse().read()
        return None
    except (OSError, http.client.HTTPException) as error:
        return f"{address}: {type(error).__name__}: {error}"
    finally:
        connection.close()


def _recreatable(daemonset: dict[str, Any]) -> dict[str, Any]:
    """The DaemonSet as it can be created again: its spec and identity, without status or server-set metadata."""
    metadata = {key: daemonset["metadata"][key] for key in ("name", "namespace", "labels", "annotations")
                if daemonset["metadata"].get(key) is not None}
    if "annotations" in metadata:
        metadata["annotations"] = {k: v for k, v in metadata["annotations"].items() if k not in SERVER_SET_ANNOTATIONS}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": metadata, "spec": daemonset["spec"]}


def _daemonset_ready(client: ApiClient, namespace: str, name: str) -> str | None:
    daemonset = as_json(AppsV1Api(client).read_namespaced_daemon_set(name, namespace,
                                                                     _request_timeout=REQUEST_TIMEOUT_S))
    desired = int(field(daemonset, "status", "desiredNumberScheduled") or 0)
    ready = int(field(daemonset, "status", "numberReady") or 0)
    return None if desired > 0 and ready == desired else f"{ready}/{desired} controller pods ready"


def test_ingress_controller_removed_fails_ha_ing_01(restored: NegativeCluster, tmp_path: Path) -> None:
    client = restored.client
    apps = AppsV1Api(client)
    listed = apps.list_daemon_set_for_all_namespaces(_request_timeout=REQUEST_TIMEOUT_S).items or []
    saved = [_recreatable(as_json(ds)) for ds in listed if is_ingress_daemonset(daemonset_info(ds))]
    assert saved, "the cluster runs no ingress controller DaemonSet: this check proves nothing"
    addresses = [node.address for node in discover(client).topology.ingress_nodes()]
    assert addresses, "the cluster has no ingress node: this check proves nothing"
    try:
        for ds in saved:
            apps.delete_namespaced_daemon_set(ds["metadata"]["name"], ds["metadata"]["namespace"],
                                              propagation_policy="Foreground", _request_timeout=REQUEST_TIMEOUT_S)
        wait_until(lambda: None if all(_answers(a) for a in addresses) else "an ingress node still answers on :80",
                   timeout_s=BREAK_TIMEOUT_S, what="every ingress node refusing port 80")
        run = restored.run_suite([INGRESS_TEST], tmp_path)
    finally:
        for ds in saved:
            namespace, name = ds["metadata"]["namespace"], ds["metadata"]["name"]

            def recreate(body: dict[str, Any] = ds) -> str | None:
                try:
                    apps.create_namespaced_daemon_set(body["metadata"]["namespace"], model(V1DaemonSet, body),
                                                      _request_timeout=REQUEST_TIMEOUT_S)
                except ApiException as error:
                    # 409 while the deleted object's foreground deletion is still running: try again.
                    return f"API {error.status} {error.reason}"
                return None

            wait_until(recreate, timeout_s=RESTORE_TIMEOUT_S, what=f"DaemonSet {namespace}/{name} created again")
            wait_until(lambda: _daemonset_ready(client, namespace, name), timeout_s=RESTORE_TIMEOUT_S,
                       what=f"DaemonSet {namespace}/{name} ready again")
        wait_until(lambda: "; ".join(filter(None, (_answers(a) for a in addresses))) or None,
                   timeout_s=RESTORE_TIMEOUT_S, what="every ingress node answering on port 80 again")
    run.assert_failed("HA-ING-01", "connect-refused", "ingress node")
