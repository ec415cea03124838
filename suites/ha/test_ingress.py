"""HA-ING: the ingress controller routes by host and path over HTTP and HTTPS on every ingress node, and keeps
serving through the loss of an ingress node and of a control-plane node.

Requests are made from this machine to each ingress node's address (ports 80 and 443), with the Host header (and
SNI) of the rule under test, on a new connection each time. Two echo backends (agnhost serve-hostname, one replica
per worker) answer with their pod's name, so every response says which backend served it. TLS hosts have their
own Secret each, signed by a CA made for the test: the client trusts only that CA and checks the host name, so a
verified handshake proves the controller presented that host's certificate for that SNI name.

The IngressClass is the cluster's default one (or its only one); the embedded cluster's is HAProxy Ingress
(fixtures/kind/addons).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api, NetworkingV1Api, V1Ingress, V1Secret

from suites.ha._dataplane import budgets
from suites.ha._dataplane.analysis import FaultFigures, fault_figures, record_fault_figures, require
from suites.ha._dataplane.facts import node_loss_timing
from suites.ha._dataplane.kube import field, items, model, wait_until
from suites.ha._dataplane.probes import (
    HOST_PROBER_REQUEST_TIMEOUT_S,
    HostHttpProber,
    HttpError,
    HttpTarget,
    http_request,
)
from suites.ha._dataplane.scaffold import DataplaneNamespace, module_namespace, worker_names
from suites.ha._dataplane.tls import CertificateAuthority
from suites.ha._dataplane.workloads import EchoBackend, create_echo_backend
from kubeha.cluster.client import REQUEST_TIMEOUT_S
from kubeha.core.topology import Node, Role
from kubeha.faults import Journal, node_stopped
from kubeha.plugin import KubehaCluster, ResultRecorder, cluster_setup, not_run
from kubeha.providers.base import Provider

DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
HOST_DOMAIN = "kubeha.test"  # RFC 2606: never a real name
# From an Ingress's creation to every ingress node routing it: the controller's watch, its configuration update
# and (for haproxy) a reload.
PROPAGATION_BUDGET_S = 30.0
PROPAGATION_TIMEOUT_S = 90.0
PROPAGATION_POLL_S = 1.0
# An ingress node that keeps serving sends requests meant for a dead backend elsewhere once its health checks mark
# that backend down. HAProxy Ingress checks every backend server (backend-check-interval, default 2 s) with haproxy's
# defaults: a check times out after `inter`, a server is down after `fall` = 3 failed checks, the checks after the
# first failure come every `fastinter` (= inter). Worst case: the last good check just before the loss, then
# inter + fall x inter + (fall - 1) x inter, plus one client request already waiting (its 3 s timeout).
BACKEND_CHECK_INTERVAL_S = 2.0
BACKEND_CHECK_FALL = 3
FAILOVER_BUDGET_S = (BACKEND_CHECK_INTERVAL_S + BACKEND_CHECK_FALL * BACKEND_CHECK_INTERVAL_S
                     + (BACKEND_CHECK_FALL - 1) * BACKEND_CHECK_INTERVAL_S + HOST_PROBER_REQUEST_TIMEOUT_S)
NOT_FOUND = 404


@dataclass(frozen=True)
class Route:
    host: str
    path: str
    backend: EchoBackend | None  # None: the default backend must answer 404
    tls: bool = False

    def describe(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}{self.path}"


@dataclass(frozen=True)
class Programmed:
    """How long after their creation the Ingress rules of one kind (plain or TLS) were first served right on every
    ingress node, measured while the module set up, or what was still wrong when the wait ended."""

    after_s: float | None
    last_problems: tuple[str, ...]


@dataclass(frozen=True)
class IngressEnv:
    ns: DataplaneNamespace
    ingress_class: str
    nodes: tuple[Node, ...]
    alpha: EchoBackend
    beta: EchoBackend
    routes: tuple[Route, ...]
    ca: CertificateAuthority
    programmed: dict[bool, Programmed]  # by Route.tls

    def target(self, node: Node, route: Route) -> HttpTarget:
        return _target(self.ca, node, route)


def _ingress_class(client: ApiClient) -> str:
    classes = items(NetworkingV1Api(client).list_ingress_class(_request_timeout=REQUEST_TIMEOUT_S))
    default = [c for c in classes if field(c, "metadata", "annotations", DEFAULT_CLASS_ANNOTATION) == "true"]
    chosen = default or (classes if len(classes) == 1 else [])
    if not chosen:
        names = [field(c, "metadata", "name") for c in classes]
        raise AssertionError(f"no default IngressClass (annotation {DEFAULT_CLASS_ANNOTATION}=true) among {names}: "
                             "the cluster has no ingress controller to test, or mark the class to test as default")
    return str(field(chosen[0], "metadata", "name"))


def _secret(name: str, cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": name},
        "data": {"tls.crt": base64.b64encode(cert_pem).decode(), "tls.key": base64.b64encode(key_pem).decode()},
    }


def _path(path: str, backend: EchoBackend) -> dict[str, Any]:
    return {"path": path, "pathType": "Prefix",
            "backend": {"service": {"name": backend.name, "port": {"number": 80}}}}


def _ingress(name: str, ingress_class: str, rules: Sequence[tuple[str, Sequence[dict[str, Any]]]],
             tls: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ingressClassName": ingress_class,
        "rules": [{"host": host, "http": {"paths": list(paths)}} for host, paths in rules],
    }
    if tls:
        spec["tls"] = [{"hosts": [host], "secretName": secret} for host, secret in tls]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def ingress_env(request: pytest.FixtureRequest, api_client: ApiClient,
                kubeha_cluster: KubehaCluster) -> Iterator[IngressEnv]:
    nodes = kubeha_cluster.topology.ingress_nodes()
    if not nodes:
        not_run("the cluster has no ingress node (no node labelled ingress-ready=true and no host-network ingress "
                "controller DaemonSet)")
    workers = worker_names(kubeha_cluster.topology)
    ingress_class = _ingress_class(api_client)
    with module_namespace(request, api_client, "ing") as ns:
        env = _set_up(request, api_client, ns, ingress_class, nodes, workers)
        yield env


def _set_up(request: pytest.FixtureRequest, api_client: ApiClient, ns: DataplaneNamespace, ingress_class: str,
            nodes: tuple[Node, ...], workers: tuple[str, ...]) -> IngressEnv:
    """The backends, TLS Secrets and Ingresses, created while no serial test runs; their propagation measured."""
    with cluster_setup(request, "ingress set-up"):
        alpha = create_echo_backend(api_client, ns.name, "alpha", len(workers), workers)
        beta = create_echo_backend(api_client, ns.name, "beta", len(workers), workers)
        suffix = f"{ns.name}.{HOST_DOMAIN}"
        plain, paths, unknown = f"alpha.{suffix}", f"paths.{suffix}", f"unknown-{secrets.token_hex(3)}.{suffix}"
        secure_alpha, secure_beta = f"secure-alpha.{suffix}", f"secure-beta.{suffix}"
        ca = CertificateAuthority(f"kubeha test CA {ns.name}")
        core, networking = CoreV1Api(api_client), NetworkingV1Api(api_client)
        for host, secret in ((secure_alpha, "secure-alpha-tls"), (secure_beta, "secure-beta-tls")):
            issued = ca.issue(host)
            core.create_namespaced_secret(ns.name, model(V1Secret, _secret(secret, issued.cert_pem, issued.key_pem)),
                                          _request_timeout=REQUEST_TIMEOUT_S)
        created = time.monotonic()
        networking.create_namespaced_ingress(ns.name, model(V1Ingress, _ingress("routes", ingress_class, [
            (plain, [_path("/", alpha)]),
            (paths, [_path("/alpha", alpha), _path("/beta", beta)]),
        ])), _request_timeout=REQUEST_TIMEOUT_S)
        networking.create_namespaced_ingress(ns.name, model(V1Ingress, _ingress("secure", ingress_class, [
            (secure_alpha, [_path("/", alpha)]),
            (secure_beta, [_path("/", beta)]),
        ], tls=[(secure_alpha, "secure-alpha-tls"), (secure_beta, "secure-beta-tls")])),
            _request_timeout=REQUEST_TIMEOUT_S)
        routes = (
            Route(plain, "/", alpha), Route(plain, "/any/path", alpha),
            Route(paths, "/alpha", alpha), Route(paths, "/alpha/deeper", alpha),
            Route(paths, "/beta", beta), Route(paths, "/beta/deeper", beta),
            Route(paths, "/gamma", None), Route(unknown, "/", None),
            Route(secure_alpha, "/", alpha, tls=True), Route(secure_beta, "/", beta, tls=True),
        )
        programmed = _wait_programmed(ca, nodes, routes, created)
    return IngressEnv(ns=ns, ingress_class=ingress_class, nodes=nodes, alpha=alpha, beta=beta, routes=routes,
                      ca=ca, programmed=programmed)


def _verdict(route: Route, status: int, body: str) -> str | None:
    """None when the answer is what the route must give, else what is wrong."""
    if route.backend is None:
        return None if status == NOT_FOUND else f"expected 404 from the default backend, got {status} {body[:60]!r}"
    if status != 200:
        return f"expected 200 from backend {route.backend.name}, got {status} {body[:60]!r}"
    if not body.startswith(route.backend.pod_prefix):
        return f"served by {body[:60]!r}, expected a pod of backend {route.backend.name}"
    return None


def _target(ca: CertificateAuthority, node: Node, route: Route) -> HttpTarget:
    return HttpTarget(name=f"{node.name} {route.describe()}", address=node.address, host=route.host,
                      path=route.path, tls=ca.client_context() if route.tls else None)


def _check_routes(ca: CertificateAuthority, nodes: Sequence[Node], routes: Sequence[Route]) -> list[str]:
    problems = []
    for node in nodes:
        for route in routes:
            target = _target(ca, node, route)
            try:
                answer = http_request(target)
            except HttpError as error:
                problems.append(f"ingress node {target.describe()}: {error.error_class} ({error.detail})")
                continue
            wrong = _verdict(route, answer.status, answer.body)
            if wrong:
                problems.append(f"ingress node {target.describe()}: {wrong}")
    return problems


def _wait_programmed(ca: CertificateAuthority, nodes: Sequence[Node], routes: Sequence[Route],
                     created: float) -> dict[bool, Programmed]:
    """Poll the plain and the TLS routes on every ingress node until each set is served right or
    `PROPAGATION_TIMEOUT_S` passes; never raises, the routing controls judge what it found."""
    found: dict[bool, Programmed] = {}
    deadline = created + PROPAGATION_TIMEOUT_S
    while True:
        for tls in (False, True):
            if tls in found:
                continue
            problems = _check_routes(ca, nodes, [r for r in routes if r.tls is tls])
            if not problems:
                found[tls] = Programmed(time.monotonic() - created, ())
            elif time.monotonic() >= deadline:
                found[tls] = Programmed(None, tuple(problems))
        if len(found) == 2:
            return found
        time.sleep(PROPAGATION_POLL_S)


def wait_routed(env: IngressEnv, routes: Sequence[Route]) -> None:
    """Wait until every ingress node answers every route correctly (before a fault is measured)."""
    wait_until(lambda: "; ".join(_check_routes(env.ca, env.nodes, routes)) or None, timeout_s=PROPAGATION_TIMEOUT_S,
               what=f"{len(env.nodes)} ingress node(s) ({', '.join(f'{n.name} {n.address}' for n in env.nodes)}) "
                    f"routing the test's Ingresses (class {env.ingress_class})", poll_s=PROPAGATION_POLL_S)


def _routing_control(env: IngressEnv, result: ResultRecorder, tls: bool) -> None:
    routes = [r for r in env.routes if r.tls is tls]
    result.evidence("routes", "\n".join(f"{r.describe()} -> {r.backend.name if r.backend else '404'}"
                                        for r in routes))
    result.evidence("ingress nodes", ", ".join(f"{n.name} {n.address}" for n in env.nodes))
    result.measure("requests checked", len(env.nodes) * len(routes), "requests")
    programmed = env.programmed[tls]
    if programmed.after_s is None:
        raise AssertionError(
            f"the Ingress rules (class {env.ingress_class}) were not served right on every ingress node within "
            f"{PROPAGATION_TIMEOUT_S:.0f} s of their creation; {len(programmed.last_problems)} request(s) still "
            "wrong: " + "; ".join(programmed.last_problems))
    problems = _check_routes(env.ca, env.nodes, routes)
    broken = [p for p in (
        require(result, "rules served after", programmed.after_s, "s", PROPAGATION_BUDGET_S,
                broken="the Ingress rules were served on every ingress node {value:.1f} s after creation, budget "
                       "{budget:.0f} s"),
        require(result, "wrong answers", len(problems), "requests", 0,
                broken="{value:.0f} request(s) answered wrongly after the rules were served"),
    ) if p]
    assert not broken and not problems, "; ".join(broken + problems)


@pytest.mark.control(
    "HA-ING-01", "Ingress routes by host and path over HTTP",
    "Every ingress node MUST route HTTP requests on port 80 to the backend an Ingress rule names for their host and "
    "path prefix, and MUST answer a host or path no rule matches from the default backend with 404",
)
def test_routes_http(ingress_env: IngressEnv, kubeha_result: ResultRecorder) -> None:
    _routing_control(ingress_env, kubeha_result, tls=False)


@pytest.mark.control(
    "HA-ING-02", "Ingress terminates TLS per host (SNI)",
    "Every ingress node MUST present on port 443, for each SNI host name, the certificate of that host's TLS Secret "
    "and route the request to the host's backend",
)
def test_routes_https_sni(ingress_env: IngressEnv, kubeha_result: ResultRecorder) -> None:
    _routing_control(ingress_env, kubeha_result, tls=True)


# ---------------------------------------------------------------------------------------------------------------------
# Faults


def _served_routes(env: IngressEnv) -> list[Route]:
    """What the fault controls probe: one plain and one TLS route per backend."""
    return [r for r in env.routes if r.path == "/" and r.backend is not None]


def _accept(env: IngressEnv) -> Callable[[HttpTarget, str], str | None]:
    """A response is right when it comes from a pod of the route's backend."""
    by_name = {env.target(n, r).name: r for n in env.nodes for r in _served_routes(env)}

    def accept(target: HttpTarget, body: str) -> str | None:
        route = by_name[target.name]
        assert route.backend is not None
        return None if body.startswith(route.backend.pod_prefix) else "wrong-backend"

    return accept


def _require_baseline(prober: HostHttpProber, names: Sequence[str]) -> None:
    time.sleep(budgets.BASELINE_S)
    for name in names:
        samples = prober.samples(name)
        failed = [s for s in samples if not s.ok]
        if not samples or failed:
            raise AssertionError(f"{name}: {len(failed)} of {len(samples)} requests failed before any fault "
                                 f"(first: {failed[0].error_class if failed else 'no request made'}): not a steady "
                                 "state to measure from")


def _figures(prober: HostHttpProber, name: str, start: float, end: float, detection_s: float) -> FaultFigures:
    return fault_figures(name, prober.samples(name), start, end, detection_s)


@pytest.mark.control(
    "HA-ING-03", "Ingress survives the loss of an ingress node",
    "While one ingress node is down, every other ingress node MUST keep serving its routes over HTTP and HTTPS, with "
    f"no outage longer than its backend failover ({FAILOVER_BUDGET_S:.0f} s), and MUST serve every request once the "
    "lost node's backends are out of the endpoints",
)
@pytest.mark.needs(ingress_nodes=2)
@pytest.mark.disruptive(ingress_nodes=1, reason="stops one ingress node (a worker, with the backends on it)")
def test_ingress_survives_ingress_node_loss(ingress_env: IngressEnv, api_client: ApiClient,
                                            provider: Provider, journal: Journal,
                                            kubeha_result: ResultRecorder) -> None:
    env = ingress_env
    wait_routed(env, env.routes)
    candidates = [n for n in env.nodes if not n.has(Role.CONTROL_PLANE)]
    if not candidates:
        not_run("every ingress node is also a control-plane node: stopping one is a control-plane fault")
    target = sorted(candidates, key=lambda n: n.name)[-1]
    survivors = [n for n in env.nodes if n.name != target.name]
    timing = node_loss_timing(api_client)
    hold_s = budgets.node_loss_hold_s(timing)
    routes = _served_routes(env)
    targets = [env.target(n, r) for n in env.nodes for r in routes]
    kubeha_result.evidence("fault", f"hard-stop (docker kill) ingress node {target.name} ({target.address}); "
                                    f"survivors {', '.join(n.name for n in survivors)}; held {hold_s:.0f} s")
    with HostHttpProber(targets, _accept(env)) as prober:
        _require_baseline(prober, [t.name for t in targets])
        with node_stopped(provider, target.name, journal=journal, hard=True) as fault, \
                env.ns.dumping_on_failure("ing-03", kubeha_result):
            time.sleep(hold_s)
            end = time.monotonic()
        restarted = time.monotonic()
        back_s = max(prober.wait_for_success(t.name, restarted, timeout_s=budgets.RESTART_RECOVERY_TIMEOUT_S)
                     for t in targets if t.address == target.address)
    problems: list[str | None] = []
    kubeha_result.measure(f"{target.name} serving again after restart", round(back_s, 1), "s")
    for t in targets:
        figures = _figures(prober, t.name, fault.injected_mono, end, timing.detection_bound_s)
        if t.address == target.address:
            problems.append(require(kubeha_result, f"{t.name} failed requests (stopped node)", figures.stats.failures,
                                    "requests", 1, at_least=True,
                                    broken="the stopped node answered every request: the fault did not take effect"))
            continue
        record_fault_figures(kubeha_result, t.name, figures, outage_budgeted=True)
        problems.append(require(kubeha_result, f"{t.name} longest outage", figures.stats.longest_outage_s, "s",
                                FAILOVER_BUDGET_S,
                                broken=f"{t.describe()} was out for {{value:.1f}} s, budget {{budget:.0f}} s; errors: "
                                       f"{figures.error_summary()}"))
        problems.append(require(kubeha_result, f"{t.name} recovery", figures.recovery_s, "s",
                                budgets.recovery_budget_s(timing),
                                broken=f"{t.describe()} kept failing until {{value:.1f}} s after the node stopped, "
                                       f"budget {{budget:.1f}} s; errors: {figures.error_summary()}"))
    broken = [p for p in problems if p]
    assert not broken, "; ".join(broken)


@pytest.mark.control(
    "HA-ING-04", "Ingress keeps serving while a control-plane node is down",
    "While one control-plane node is down, every ingress node MUST answer every request of its routes over HTTP and "
    "HTTPS",
)
@pytest.mark.disruptive(control_plane_nodes=1, ingress_nodes=1,
                        reason="stops one control-plane node; the ingress-node budget keeps every ingress node up "
                               "while their serving is measured")
def test_ingress_survives_control_plane_loss(ingress_env: IngressEnv, api_client: ApiClient,
                                             kubeha_cluster: KubehaCluster, provider: Provider, journal: Journal,
                                             kubeha_result: ResultRecorder) -> None:
    env = ingress_env
    wait_routed(env, env.routes)
    control_planes = sorted(n.name for n in kubeha_cluster.topology.control_planes()
                            if n.name not in {i.name for i in env.nodes})
    if not control_planes:
        not_run("every control-plane node is an ingress node: its loss is measured by HA-ING-03")
    target = control_planes[-1]
    timing = node_loss_timing(api_client)
    hold_s = budgets.node_loss_hold_s(timing)
    targets = [env.target(n, r) for n in env.nodes for r in _served_routes(env)]
    kubeha_result.evidence("fault", f"hard-stop (docker kill) control-plane node {target}; held {hold_s:.0f} s")
    with HostHttpProber(targets, _accept(env)) as prober:
        _require_baseline(prober, [t.name for t in targets])
        with node_stopped(provider, target, journal=journal, hard=True) as fault, \
                env.ns.dumping_on_failure("ing-04", kubeha_result):
            time.sleep(hold_s)
            end = time.monotonic()
    problems = []
    for t in targets:
        figures = _figures(prober, t.name, fault.injected_mono, end, timing.detection_bound_s)
        record_fault_figures(kubeha_result, t.name, figures)
        problems.append(require(kubeha_result, f"{t.name} failed requests", figures.stats.failures, "requests", 0,
                                broken=f"{t.describe()}: {{value:.0f}} of {figures.stats.count} requests failed; "
                                       f"errors: {figures.error_summary()}"))
    broken = [p for p in problems if p]
    assert not broken, "; ".join(broken)
