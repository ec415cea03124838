"""The fixtures tests use to reach the cluster, act on it within the fault budget, and record what they proved.

Each process builds its own API client and provider from the run context; nothing is shared between processes but
the run directory.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes.client import ApiClient

from kubeha.cluster.client import KubeconfigTarget, new_api_client
from kubeha.cluster.health import SteadyStateGate
from kubeha.coordination import Coordinator, Grant
from kubeha.core.budget import Limits
from kubeha.faults import FaultPlan, Journal
from kubeha.providers import AttachProvider
from kubeha.providers.base import Provider
from kubeha.pytest_plugin.cluster import NO_CLUSTER_MESSAGE, KubehaCluster, read_cluster
from kubeha.pytest_plugin.outcomes import not_run
from kubeha.pytest_plugin.providers import ReadOnlyProvider, attach_refusal
from kubeha.pytest_plugin.results import ResultRecorder, item_state
from kubeha.pytest_plugin.runcontext import RunContext, run_context

__all__ = [
    "api_client",
    "fault_budget",
    "fault_coordinator",
    "journal",
    "kubeha_cluster",
    "kubeha_provider",
    "kubeha_result",
    "kubeha_run",
    "provider",
    "steady_state",
]


@pytest.fixture(scope="session")
def kubeha_run(pytestconfig: pytest.Config) -> RunContext:
    """This session's run context; probes and tests keep their samples under ``kubeha_run.run_dir``."""
    return run_context(pytestconfig)


@pytest.fixture(scope="session")
def api_client(pytestconfig: pytest.Config) -> Iterator[ApiClient]:
    """An API client for the session's cluster, built in this process from the kubeconfig path.

    In a dry run it refuses every request that would change the cluster (`ReadOnlyApiClient`).
    """
    handle = run_context(pytestconfig).cluster
    if handle is None:
        raise pytest.UsageError(NO_CLUSTER_MESSAGE)
    client = new_api_client(
        KubeconfigTarget(handle.kubeconfig, handle.context), read_only=run_context(pytestconfig).dry_run
    )
    try:
        yield client
    finally:
        client.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def kubeha_cluster(pytestconfig: pytest.Config, api_client: ApiClient) -> KubehaCluster:
    """The session's cluster: identity, kubeconfig, topology and consent, as this process reads them."""
    handle = run_context(pytestconfig).cluster
    if handle is None:
        raise pytest.UsageError(NO_CLUSTER_MESSAGE)
    return read_cluster(handle, api_client)


@pytest.fixture(scope="session")
def steady_state(kubeha_cluster: KubehaCluster, api_client: ApiClient) -> SteadyStateGate:
    """The health gate: ``steady_state.wait()`` blocks (bounded) until the cluster is in its steady state."""
    return SteadyStateGate(api_client, kubeha_cluster.topology)


@pytest.fixture(scope="session")
def kubeha_provider(pytestconfig: pytest.Config, kubeha_cluster: KubehaCluster) -> Provider:
    """This process's provider: in a dry run a `FaultPlan` that records calls and touches nothing."""
    if run_context(pytestconfig).dry_run:
        return FaultPlan(tuple(node.name for node in kubeha_cluster.topology.nodes))
    made: Provider = pytestconfig.hook.pytest_kubeha_make_provider(config=pytestconfig, cluster=kubeha_cluster)
    return made


@pytest.fixture
def provider(request: pytest.FixtureRequest, kubeha_provider: Provider) -> Provider:
    """The provider for this test: full access for a ``disruptive`` test, read-only for any other.

    With an attached cluster and no ``--inventory`` the test is not-run: nothing can act on the machines.
    """
    if isinstance(kubeha_provider, AttachProvider):
        not_run(attach_refusal())
    if item_state(request).markers.claim is None:
        return ReadOnlyProvider(kubeha_provider, request.node.nodeid)
    return kubeha_provider


@pytest.fixture(scope="session")
def journal(pytestconfig: pytest.Config, kubeha_cluster: KubehaCluster, kubeha_provider: Provider) -> Journal | FaultPlan:
    """Where faults record their undo actions (``journal=journal``); the `FaultPlan` itself in a dry run."""
    if isinstance(kubeha_provider, FaultPlan):
        return kubeha_provider
    return Journal(
        kubeha_cluster.identity.kube_system_uid,
        provider_name=kubeha_provider.name,
        worker_id=run_context(pytestconfig).worker_id,
    )


@pytest.fixture(scope="session")
def fault_coordinator(pytestconfig: pytest.Config, kubeha_cluster: KubehaCluster) -> Coordinator:
    """The cross-process fault budget of this run (its log proves the limits held).

    It reads the cluster's undo journal, so that the claim of a dead process is freed only once the faults it
    injected are undone.
    """
    context = run_context(pytestconfig)
    return Coordinator(
        context.coordinator_dir,
        Limits.from_topology(kubeha_cluster.topology),
        worker_id=context.worker_id,
        journal_cluster_id=kubeha_cluster.identity.kube_system_uid,
    )


@pytest.fixture
def fault_budget(request: pytest.FixtureRequest) -> Grant:
    """The fault-budget grant this ``disruptive`` test holds (acquired before the test, released after it)."""
    state = item_state(request)
    if state.markers.claim is None:
        raise pytest.UsageError(
            f"{request.node.nodeid} uses fault_budget without @pytest.mark.disruptive(...): declare what the test "
            "breaks"
        )
    if state.grant is None:
        raise pytest.UsageError(f"{request.node.nodeid}: the fault budget was not acquired (was the plugin disabled?)")
    return state.grant


@pytest.fixture
def kubeha_result(request: pytest.FixtureRequest) -> ResultRecorder:
    """Record measurements and evidence; they become the control's result and JUnit properties."""
    state = item_state(request)
    if state.markers.control is None:
        raise pytest.UsageError(
            f"{request.node.nodeid} uses kubeha_result without @pytest.mark.control(id, title, statement): name the "
            "control whose result it records"
        )
    return state.recorder
