"""The per-test gate: an autouse fixture that enforces the kubeha markers around every test that uses the cluster.

In this order: ``needs`` (too small a cluster: not-run), dry run (print the plan, not-run), the serial lock (shared,
or exclusive for ``serial``), the steady turn (a test neither serial nor disruptive runs while no disruptive test
does), and for a ``disruptive`` test: the cluster's health, consent, a provider that can act,
then the claim from the cross-process fault budget, held around the test. After a disruptive test its own faults
still in place are undone and the health gate waits, alone in the fault budget, for the steady state; a cluster that
does not return to it makes the test error and every later disruptive test not-run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import NoReturn

import pytest

from kubeha.cluster.client import KubeconfigTarget, new_api_client
from kubeha.cluster.health import HealthReport
from kubeha.coordination import BudgetImpossible, BudgetTimeout, Coordinator
from kubeha.core.budget import Claim, Limits, ResourceKind
from kubeha.faults import FaultPlan, Journal
from kubeha.providers import AttachProvider
from kubeha.providers.base import Provider
from kubeha.pytest_plugin.cluster import HealthGate, KubehaCluster, read_cluster
from kubeha.pytest_plugin.markers import item_markers, unmet_needs
from kubeha.pytest_plugin.outcomes import DRY_RUN_REASON, not_run
from kubeha.pytest_plugin.providers import attach_refusal
from kubeha.pytest_plugin.recovery import undo_own_faults
from kubeha.pytest_plugin.results import item_state
from kubeha.pytest_plugin.runcontext import RUN_KEY, RunContext, mark_unhealthy, record_event, unhealthy_reason
from kubeha.pytest_plugin.serial import serial_lock, steady_turn

__all__ = [
    "CLAIM_TIMEOUT_S",
    "CLUSTER_REQUIRED_FIXTURES",
    "DRY_RUN_SECTION",
    "DryRunGate",
    "GATE_CLAIM_TIMEOUT_S",
    "kubeha_gate",
]

DRY_RUN_SECTION = "kubeha dry run"

# Named bounds of the waits the gate makes.
CLAIM_TIMEOUT_S = 1800.0  # a disruptive test waiting for the fault budget
GATE_CLAIM_TIMEOUT_S = 1800.0  # the health gate waiting to run alone after a disruptive test

# Fixtures that talk to the cluster: a test using any of them is a cluster test (dry run, serial lock).
CLUSTER_REQUIRED_FIXTURES = frozenset(
    {"kubeha_cluster", "api_client", "provider", "kubeha_provider", "journal", "fault_budget", "fault_coordinator",
     "steady_state"}
)


class DryRunGate:
    """In a dry run, ends every cluster test as not-run in ``pytest_runtest_setup``, before any of its fixtures runs
    (module-scoped ones would create resources on the cluster), after adding the plan of a disruptive one to its
    report. Registered by `kubeha.plugin` in every process."""

    def __init__(self) -> None:
        self._cluster: KubehaCluster | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        context = item.config.stash.get(RUN_KEY, None)
        if context is None or not context.dry_run or context.cluster is None:
            return
        markers = item_markers(item)
        fixturenames = set(getattr(item, "fixturenames", ()))
        if not (CLUSTER_REQUIRED_FIXTURES & fixturenames or markers.claim is not None or markers.needs is not None):
            return
        cluster = self._read_cluster(context)
        if markers.needs is not None:
            unmet = unmet_needs(markers.needs, cluster.topology)
            if unmet is not None:
                not_run(unmet)
        _end_dry_run(item, markers.claim, cluster)

    def _read_cluster(self, context: RunContext) -> KubehaCluster:
        if self._cluster is None:
            assert context.cluster is not None
            client = new_api_client(KubeconfigTarget(context.cluster.kubeconfig, context.cluster.context), read_only=True)
            try:
                self._cluster = read_cluster(context.cluster, client)
            finally:
                client.close()  # type: ignore[no-untyped-call]
        return self._cluster


@pytest.fixture(autouse=True, name="_kubeha_gate")
def kubeha_gate(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Iterator[None]:
    """Enforce the markers around every test: dry run, needs, serial, consent, health, fault budget."""
    state = item_state(request)
    markers = state.markers
    context = pytestconfig.stash.get(RUN_KEY, None)
    uses_cluster = (
        bool(CLUSTER_REQUIRED_FIXTURES & set(request.fixturenames))
        or markers.claim is not None
        or markers.needs is not None
    )
    if context is None or not uses_cluster:
        yield
        return
    nodeid = request.node.nodeid
    cluster = request.getfixturevalue("kubeha_cluster")
    assert isinstance(cluster, KubehaCluster), "kubeha_cluster must return a KubehaCluster"
    state.cluster_identity = cluster.report_identity()
    if markers.needs is not None:
        unmet = unmet_needs(markers.needs, cluster.topology)
        if unmet is not None:
            not_run(unmet)
    if context.dry_run:  # `DryRunGate` ends the tests of a session cluster before their fixtures run
        _end_dry_run(request.node, markers.claim, cluster)
    with serial_lock(context, nodeid, exclusive=markers.serial), \
            steady_turn(context, nodeid, serial=markers.serial, disruptive=markers.claim is not None):
        claim = markers.claim
        if claim is None:
            yield
            return
        unhealthy = unhealthy_reason(context)
        if unhealthy is not None:
            not_run(unhealthy)
        refusal = cluster.fault_refusal()
        if refusal is not None:
            not_run(refusal)
        raw_provider: Provider = request.getfixturevalue("kubeha_provider")
        if isinstance(raw_provider, AttachProvider):
            not_run(attach_refusal())
        journal_value: Journal | FaultPlan = request.getfixturevalue("journal")
        gate: HealthGate = request.getfixturevalue("steady_state")
        coordinator: Coordinator = request.getfixturevalue("fault_coordinator")
        with contextlib.ExitStack() as held:
            try:
                state.grant = held.enter_context(coordinator.acquire(claim, CLAIM_TIMEOUT_S))
            except BudgetImpossible as error:
                not_run(str(error))
            except BudgetTimeout as error:
                not_run(str(error))
            record_event(context, "coordinator", "grant", claim.describe(), nodeid)
            yield
            problems = _after_disruptive(context, nodeid, cluster, raw_provider, journal_value)
            held.close()
            record_event(context, "coordinator", "release", claim.describe(), nodeid)
        problems.extend(_health_gate(context, coordinator, gate, nodeid))
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


def _after_disruptive(
    context: RunContext, nodeid: str, cluster: KubehaCluster, provider: Provider, journal: Journal | FaultPlan
) -> list[str]:
    """Replay this process's undo entries the test's faults left pending; return what could not be undone."""
    if not isinstance(journal, Journal):
        return []
    replayed = undo_own_faults(provider, cluster.identity.kube_system_uid)
    if replayed.undone:
        record_event(context, "journal", "replay", "; ".join(replayed.undone), nodeid)
    if replayed.failed:
        mark_unhealthy(context, f"faults injected by {nodeid} could not be undone: {'; '.join(replayed.failed)}")
        return [f"faults this test injected are still in place: {'; '.join(replayed.failed)}"]
    return []


def _health_gate(context: RunContext, coordinator: Coordinator, gate: HealthGate, nodeid: str) -> list[str]:
    """Wait, alone in the fault budget, for the steady state; on failure later disruptive tests are not-run."""
    gate_claim = Claim(f"{nodeid} [health gate]", (), exclusive=True, reason="steady-state check after a disruptive test")
    try:
        with coordinator.acquire(gate_claim, GATE_CLAIM_TIMEOUT_S):
            report: HealthReport = gate.wait()
    except BudgetTimeout as error:
        reason = f"the health gate after {nodeid} could not run alone within {GATE_CLAIM_TIMEOUT_S:.0f} s: {error}"
        mark_unhealthy(context, reason)
        return [reason]
    record_event(context, "health", "steady-state", report.describe(), nodeid)
    if report.ok:
        return []
    mark_unhealthy(context, f"the cluster did not return to its steady state after {nodeid}: {report.describe()}")
    return [f"the cluster did not return to its steady state after this test: {report.describe()}"]


def _end_dry_run(item: pytest.Item, claim: Claim | None, cluster: KubehaCluster) -> NoReturn:
    """Not-run for the dry run, with the plan of a disruptive test in its report."""
    if claim is not None:
        item.add_report_section("setup", DRY_RUN_SECTION, _dry_run_plan(claim, cluster))
    not_run(DRY_RUN_REASON)


def _dry_run_plan(claim: Claim, cluster: KubehaCluster) -> str:
    """What a disruptive test would break, what that takes down with it, and the candidate targets."""
    limits = Limits.from_topology(cluster.topology)
    usage = limits.usage(claim)
    topology = cluster.topology
    candidates: Mapping[ResourceKind, Sequence[str]] = {
        ResourceKind.CONTROL_PLANE_NODE: [node.name for node in topology.control_planes()],
        ResourceKind.API_SERVER: [node.name for node in topology.control_planes()],
        ResourceKind.CONTROLLER_MANAGER: [node.name for node in topology.control_planes()],
        ResourceKind.SCHEDULER: [node.name for node in topology.control_planes()],
        ResourceKind.ETCD_MEMBER: [member.name for member in topology.etcd_members],
        ResourceKind.WORKER_NODE: [node.name for node in topology.workers()],
        ResourceKind.INGRESS_NODE: [node.name for node in topology.ingress_nodes()],
        ResourceKind.LOAD_BALANCER: [topology.load_balancer.endpoint] if topology.load_balancer is not None else [],
    }
    lines = [f"claim: {claim.describe()}" + (f" - {claim.reason}" if claim.reason else "")]
    lines.append(
        "takes down: "
        + (", ".join(f"{count} {kind.value} (limit {limits.limit(kind)})" for kind, count in usage) or "nothing")
    )
    for kind, count in claim.resources:
        names = candidates.get(kind, ())
        lines.append(f"targets: {count} of {kind.value}: {', '.join(names) if names else 'none in this cluster'}")
    refusal = cluster.fault_refusal()
    if refusal is not None:
        lines.append(f"would be not-run: {refusal}")
    return "\n".join(lines)
