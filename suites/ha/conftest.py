"""Fixtures and hooks of the HA conformance suite.

- The suite always needs a cluster (``pytest_kubeha_cluster_required``).
- ``--ha-config FILE`` overrides budgets (see README.md and `suites.ha._support.budgets`).
- Tests parametrised by the cluster's shape (``control_plane_index``, ``tolerated_etcd_stops``,
  ``quorum_losing_etcd_stops``) are generated from the shape discovered once at session start and handed to xdist
  workers (`suites.ha._support.shape`), with the ``needs`` and ``disruptive`` markers each parameter requires.
- ``ha_namespace`` creates a namespace for the test, registers its deletion at once, and dumps its contents (and
  the control plane's state) into the result before deleting it when the test failed.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubeha.cluster.client import KubeconfigTarget, new_api_client
from kubeha.cluster.discovery import ETCD_COMPONENT, DiscoveryError, discover, read_kube_system_pods
from kubeha.core.quorum import quorum_plan
from kubeha.core.topology import EtcdMode
from kubeha.plugin import KubehaCluster, ResultRecorder, not_run, run_context
from kubeha.probes.credentials import ApiEndpoint, KubeconfigCredentials
from kubeha.providers.base import CapabilityError, Provider, ProviderError
from suites.ha._support.budgets import Budget, ConfigError, EtcdTiming, HaConfig, api_outage_budget
from suites.ha._support.etcd import EtcdPod, min_ha_members
from suites.ha._support.haproxy import HaproxyChecks, HaproxyConfigError, parse_haproxy
from suites.ha._support.kube import (
    ApiServer,
    api_servers,
    create_namespace,
    delete_namespace,
    describe_error,
    dump_control_plane,
    dump_namespace,
)
from suites.ha._support.shape import WORKERINPUT_KEY, ClusterShape

HA_CONFIG_OPTION = "--ha-config"
HAPROXY_KIND = "haproxy"
# Deleting the test namespace is asked for, not waited for; a failing request is retried this often.
NAMESPACE_DELETE_ATTEMPTS = 3
NAMESPACE_DELETE_PAUSE_S = 2.0

_SHAPE = pytest.StashKey["ClusterShape | None"]()
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("kubeha").addoption(
        HA_CONFIG_OPTION,
        metavar="FILE",
        default=None,
        help="YAML file overriding the HA suite's budgets (keys: see suites/ha/README.md)",
    )


def pytest_kubeha_cluster_required(config: pytest.Config) -> bool:
    return True


# -- the cluster's shape at collection time ---------------------------------------------------------------------------


def _discover_shape(config: pytest.Config) -> ClusterShape | None:
    handle = run_context(config).cluster
    if handle is None:
        return None
    client = new_api_client(KubeconfigTarget(handle.kubeconfig, handle.context))
    try:
        return ClusterShape.of(discover(client).topology)
    except (DiscoveryError, ApiException, HTTPError, OSError) as error:
        raise pytest.UsageError(f"cannot read the cluster's shape to generate the HA tests: {error}") from None
    finally:
        client.close()  # type: ignore[no-untyped-call]


def collection_shape(config: pytest.Config) -> ClusterShape | None:
    """The shape the tests are generated from: the controller's discovery, also in every xdist worker."""
    if _SHAPE in config.stash:
        return config.stash[_SHAPE]
    workerinput = getattr(config, "workerinput", None)
    raw = workerinput.get(WORKERINPUT_KEY) if isinstance(workerinput, dict) else None
    shape = ClusterShape.from_json(raw) if isinstance(raw, str) else _discover_shape(config)
    config.stash[_SHAPE] = shape
    return shape


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:
    config = getattr(node, "config", None)
    workerinput = getattr(node, "workerinput", None)
    if not isinstance(config, pytest.Config) or not isinstance(workerinput, dict):
        return
    shape = collection_shape(config)
    if shape is not None:
        workerinput[WORKERINPUT_KEY] = shape.to_json()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    wanted = [name for name in ("control_plane_index", "tolerated_etcd_stops", "quorum_losing_etcd_stops") if name in names]
    if not wanted:
        return
    shape = collection_shape(metafunc.config)
    minimum = min_ha_members()
    if "control_plane_index" in names:
        count = shape.control_planes if shape is not None else 0
        metafunc.parametrize(
            "control_plane_index",
            [pytest.param(index, marks=pytest.mark.needs(control_planes=index + 1), id=f"cp{index}") for index in range(count)],
        )
    members = shape.etcd_members if shape is not None else 0
    if "tolerated_etcd_stops" in names:
        params = []
        if shape is not None:
            marks = [pytest.mark.needs(etcd_members=minimum)]
            stops = quorum_plan(members).may_stop if members else 0
            if stops:
                marks.append(
                    pytest.mark.disruptive(etcd_members=stops, reason="stops as many etcd members as quorum tolerates")
                )
            params.append(pytest.param(stops, marks=marks, id=f"stop-{stops}-of-{members}"))
        metafunc.parametrize("tolerated_etcd_stops", params)
    if "quorum_losing_etcd_stops" in names:
        params = []
        if shape is not None:
            stops = quorum_plan(members).must_stop_to_lose if members else 1
            marks = [
                pytest.mark.needs(etcd_members=minimum),
                pytest.mark.disruptive(
                    etcd_members=stops, exclusive=True, reason="stops one etcd member more than quorum tolerates"
                ),
            ]
            params.append(pytest.param(stops, marks=marks, id=f"stop-{stops}-of-{members}"))
        metafunc.parametrize("quorum_losing_etcd_stops", params)


# -- outcome of each phase, for the failure dumps ---------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(report.failed for report in reports.values())


def _dump(request: pytest.FixtureRequest, client: ApiClient, namespace: str | None) -> None:
    parts: list[str] = []
    for what, dump in (
        ("namespace", (lambda: dump_namespace(client, namespace)) if namespace is not None else None),
        ("control plane", lambda: dump_control_plane(client)),
    ):
        if dump is None:
            continue
        try:
            parts.append(dump())
        except (ApiException, HTTPError, OSError) as error:
            parts.append(f"{what} dump failed: {describe_error(error)}")
    text = "\n".join(parts)
    request.node.add_report_section("teardown", "kubeha failure dump", text)
    recorder = getattr(request.node, "funcargs", {}).get("kubeha_result")
    if isinstance(recorder, ResultRecorder):
        recorder.evidence("failure dump", text)


@pytest.fixture
def ha_namespace(request: pytest.FixtureRequest, api_client: ApiClient) -> Iterator[str]:
    """A namespace of the test's own; dumped when the test failed, then deleted."""
    name = create_namespace(api_client, request.node.originalname)
    try:
        yield name
    finally:
        if _failed(request):
            _dump(request, api_client, name)
        _delete_namespace(api_client, name)


def _delete_namespace(client: ApiClient, name: str) -> None:
    for attempt in range(1, NAMESPACE_DELETE_ATTEMPTS + 1):
        try:
            delete_namespace(client, name)
            return
        except (ApiException, HTTPError, OSError):
            if attempt == NAMESPACE_DELETE_ATTEMPTS:
                raise
            time.sleep(NAMESPACE_DELETE_PAUSE_S)


@pytest.fixture(autouse=True)
def _control_plane_dump_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """For a failed test without a namespace of its own, the control plane's state goes into the result."""
    yield
    if "ha_namespace" in request.fixturenames or not _failed(request):
        return
    if "api_client" not in request.fixturenames:
        return
    client: ApiClient = request.getfixturevalue("api_client")
    _dump(request, client, None)


# -- the cluster as the suite reads it --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ha_config(pytestconfig: pytest.Config) -> HaConfig:
    raw = pytestconfig.getoption(HA_CONFIG_OPTION)
    if raw is None:
        return HaConfig.empty()
    path = Path(str(raw)).expanduser()
    if not path.is_absolute():
        path = pytestconfig.invocation_params.dir / path
    try:
        return HaConfig.load(path)
    except ConfigError as error:
        raise pytest.UsageError(str(error)) from None


@pytest.fixture(scope="session")
def ha_endpoint(kubeha_cluster: KubehaCluster) -> Iterator[ApiEndpoint]:
    """The kubeconfig's endpoint (the load balancer) and credentials, for the raw HTTPS probes."""
    with KubeconfigCredentials(kubeha_cluster.kubeconfig, kubeha_cluster.context) as credentials:
        yield credentials.endpoint


@pytest.fixture(scope="session")
def ha_api_servers(api_client: ApiClient, kubeha_cluster: KubehaCluster) -> tuple[ApiServer, ...]:
    """Every control-plane node's API server, sorted by node name."""
    addresses = {node.name: node.address for node in kubeha_cluster.topology.nodes}
    servers = api_servers(read_kube_system_pods(api_client), addresses)
    control_planes = {node.name for node in kubeha_cluster.topology.control_planes()}
    missing = sorted(control_planes - {server.node for server in servers})
    if missing:
        raise pytest.UsageError(
            f"no kube-apiserver static pod found on control-plane node(s) {missing}: the suite reads each API "
            "server's address from its static pod"
        )
    return tuple(server for server in servers if server.node in control_planes)


@pytest.fixture(scope="session")
def lb_checks(kubeha_cluster: KubehaCluster, kubeha_provider: Provider) -> tuple[HaproxyChecks | None, str]:
    """The load balancer's health checks when it is haproxy and readable, else None and why not."""
    balancer = kubeha_cluster.topology.load_balancer
    if balancer is None:
        return None, "the API endpoint is a node, not a load balancer"
    if balancer.kind != HAPROXY_KIND:
        return None, f"the load balancer is {balancer.kind}, whose health checks the suite cannot read"
    try:
        config = kubeha_provider.load_balancer_config()
    except (CapabilityError, ProviderError) as error:
        return None, f"the load balancer configuration cannot be read ({error})"
    if config.kind != HAPROXY_KIND:
        return None, f"the load balancer configuration is {config.kind}, not haproxy"
    try:
        return parse_haproxy(config.text), "read from the load balancer"
    except HaproxyConfigError as error:
        return None, f"the haproxy configuration cannot be parsed ({error})"


@pytest.fixture(scope="session")
def api_outage(ha_config: HaConfig, lb_checks: tuple[HaproxyChecks | None, str]) -> Budget:
    checks, note = lb_checks
    return api_outage_budget(ha_config, checks, note)


@pytest.fixture(scope="session")
def etcd_pods(api_client: ApiClient, kubeha_cluster: KubehaCluster) -> tuple[EtcdPod, ...]:
    """The stacked etcd members' static pods, sorted by node; not-run with external etcd."""
    if kubeha_cluster.topology.etcd_mode is not EtcdMode.STACKED:
        not_run(
            "etcd is external: its members run outside the cluster, where the suite cannot run etcdctl or stop "
            "them through the cluster's provider"
        )
    pods = [pod for pod in read_kube_system_pods(api_client) if pod.component() == ETCD_COMPONENT]
    return tuple(sorted((EtcdPod.from_pod(pod) for pod in pods), key=lambda pod: pod.node))


@pytest.fixture(scope="session")
def etcd_timing(etcd_pods: tuple[EtcdPod, ...]) -> EtcdTiming:
    if not etcd_pods:
        return EtcdTiming()
    first = etcd_pods[0]
    return EtcdTiming.from_flags(first.election_timeout, first.heartbeat_interval, f"etcd pod {first.name}")
