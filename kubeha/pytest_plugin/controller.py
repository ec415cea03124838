"""The controller: sets the session's cluster up and tears it down, hands the run context to the xdist workers, and
undoes what a crashed worker left behind.

At session start, only when the session needs a cluster (``--kubeconfig``/``--cluster``, or an implementation of
``pytest_kubeha_cluster_required`` answering True): the embedded kind cluster is built and started or the attached
one checked, its identity read and consent bound to it, undo-journal entries left by crashed runs replayed, the
topology discovered and the steady state awaited. When a worker crashes: its faults are undone, then its
fault-budget claims freed, then the steady state awaited again. At session end: the reports are written
(`kubeha.pytest_plugin.reporting`), then the embedded cluster is deleted if this session created it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from dataclasses import replace
from typing import Protocol

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubeha.cluster.client import KubeconfigError, KubeconfigTarget, new_api_client
from kubeha.cluster.discovery import Discovery, DiscoveryError, discover
from kubeha.cluster.health import SteadyStateGate
from kubeha.cluster.identity import IdentityError, read_identity
from kubeha.consent import ConsentError, consent_for
from kubeha.coordination import Coordinator
from kubeha.faults import pending, replay
from kubeha.providers.base import Provider
from kubeha.providers.inventory import check_inventory_matches
from kubeha.pytest_plugin.cluster import KubehaCluster, cluster_view
from kubeha.pytest_plugin.options import ClusterSource, Settings
from kubeha.pytest_plugin.recovery import faults_left_by, undo_faults_of
from kubeha.pytest_plugin.reporting import SessionReporter
from kubeha.pytest_plugin.runcontext import (
    RUN_KEY,
    WORKERINPUT_KEY,
    ClusterHandle,
    RunContext,
    mark_unhealthy,
    record_event,
    worker_processes,
)

__all__ = ["CONTROLLER_KEY", "Controller", "describe_request_error"]


class _Gateway(Protocol):
    @property
    def id(self) -> str: ...


class _WorkerNode(Protocol):
    """What the plugin uses of xdist's WorkerController."""

    workerinput: dict[str, object]

    @property
    def gateway(self) -> _Gateway: ...


class Controller:
    """Registered on the xdist controller, or in the only process without xdist."""

    def __init__(self, config: pytest.Config, options: Settings, reporter: SessionReporter) -> None:
        self.config = config
        self.options = options
        self.reporter = reporter
        self.summary = reporter.summary
        self.discovery: Discovery | None = None
        self.client: ApiClient | None = None
        self.handle: ClusterHandle | None = None
        started = time.time()
        run_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(started)) + f"-{os.getpid()}"
        self.context = RunContext(
            run_id=run_id,
            run_dir=options.report_dir / "runs" / run_id,
            started_wall=started,
            dry_run=options.dry_run,
            profile=options.profile,
        )

    # -- session start ---------------------------------------------------------------------------------------------

    def cluster_required(self) -> bool:
        if self.config.option.collectonly:
            return False  # nothing runs: do not build, create or contact a cluster
        if self.options.explicit:
            return True
        answer = self.config.hook.pytest_kubeha_cluster_required(config=self.config)
        return answer is True

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.cluster_required():
            self.context.run_dir.mkdir(parents=True, exist_ok=True)
            self.handle = self._set_up_cluster()
            self.context = replace(self.context, cluster=self.handle)
        self.config.stash[RUN_KEY] = self.context

    def _set_up_cluster(self) -> ClusterHandle:
        options = self.options
        if options.source is ClusterSource.ATTACH:
            assert options.kubeconfig is not None  # parse_settings: ATTACH comes with a kubeconfig
            target = KubeconfigTarget(options.kubeconfig.path, options.kubeconfig.context)
            return self._attach(target, options.kubeconfig.context, created=False)
        from fixtures.kind.api import SETUP_ERRORS, delete_cluster, ensure_cluster
        from fixtures.kind.progress import Progress

        try:
            kind_cluster = ensure_cluster(options.cluster_name, progress=Progress())
        except SETUP_ERRORS as error:
            raise pytest.UsageError(
                f"cannot set up the embedded cluster {options.cluster_name}: {error}\n"
                "(or attach to an existing cluster with --kubeconfig)") from None
        ready = False
        try:
            handle = self._attach(KubeconfigTarget(kind_cluster.kubeconfig, None), kind_cluster.name, kind_cluster.created)
            ready = True
        finally:
            # pytest does not finish a session whose start failed: remove a cluster this session created.
            if not ready and kind_cluster.created and not options.keep_cluster:
                delete_cluster(kind_cluster.name)
        return handle

    def _attach(self, target: KubeconfigTarget, name: str, created: bool) -> ClusterHandle:
        """Read the cluster's identity and topology, bind consent, replay crashed runs' faults, check its health."""
        options = self.options
        try:
            client = new_api_client(target, read_only=options.dry_run)
            identity = read_identity(client)
            discovery = discover(client)
        except (KubeconfigError, IdentityError, DiscoveryError) as error:
            raise pytest.UsageError(f"cluster {target.describe()}: {error}") from None
        except (ApiException, HTTPError, OSError) as error:
            raise pytest.UsageError(
                f"cannot read the cluster through {target.describe()}: {describe_request_error(error)}; check that "
                "the cluster is up and the kubeconfig's credentials are valid"
            ) from None
        self.client = client
        self.discovery = discovery
        embedded = options.source is ClusterSource.EMBEDDED
        try:
            consent = consent_for(identity, embedded=embedded, allow_faults=options.allow_faults)
        except ConsentError as error:
            raise pytest.UsageError(str(error)) from None
        if options.inventory is not None:
            mismatch = check_inventory_matches(options.inventory, (node.name for node in discovery.topology.nodes))
            if not mismatch.matches:
                raise pytest.UsageError(f"--inventory: {mismatch.describe()}")
        handle = ClusterHandle(
            kubeconfig=target.path,
            context=target.context,
            embedded=embedded,
            name=name,
            identity=identity,
            consent=consent,
            created=created,
        )
        cluster = cluster_view(handle, discovery)
        self.context = replace(self.context, cluster=handle)
        if not options.dry_run:
            self._replay_dead(cluster, "at session start")
        self._initial_gate(client, cluster)
        return handle

    def _provider(self, cluster: KubehaCluster) -> Provider:
        made: Provider = self.config.hook.pytest_kubeha_make_provider(config=self.config, cluster=cluster)
        return made

    def _replay_dead(self, cluster: KubehaCluster, when: str) -> None:
        """Undo faults left in place by processes that died; abort the session if any cannot be undone."""
        uid = cluster.identity.kube_system_uid
        left = pending(uid)
        if not left:
            return
        result = replay(self._provider(cluster), uid)
        text = f"{when}: {result.describe()}"
        self.summary.notes.append(text)
        record_event(self.context, "journal", "replay", text)
        if not result.ok:
            raise pytest.UsageError(
                f"undo actions left by a crashed run against {cluster.identity.api_url} could not be replayed; the "
                f"cluster is still degraded:\n{result.describe()}"
            )

    def _initial_gate(self, client: ApiClient, cluster: KubehaCluster) -> None:
        gate = SteadyStateGate(client, cluster.topology)
        report = gate.check() if self.options.dry_run else gate.wait()
        record_event(self.context, "health", "steady-state", report.describe())
        if not report.ok:
            reason = f"the cluster was not in its steady state at session start: {'; '.join(report.problems)}"
            self.summary.notes.append(reason)
            if not self.options.dry_run:
                mark_unhealthy(self.context, reason)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        handle = self.handle
        if handle is None:
            why = "--collect-only runs nothing" if config.option.collectonly else "this session needs none"
            return [f"kubeha: no cluster ({why})"]
        lines = [f"kubeha: cluster {handle.identity.describe()}"]
        if handle.embedded:
            lines.append(
                f"kubeha: embedded kind cluster {handle.name} ({'created by this session' if handle.created else 'existing'})"
            )
        else:
            lines.append(f"kubeha: attached through {handle.kubeconfig} (context {handle.context or 'current'})")
        if handle.consent is not None:
            lines.append(f"kubeha: faults allowed ({handle.consent.source.value} consent)")
        else:
            lines.append(
                "kubeha: faults NOT allowed: disruptive tests will be not-run; pass "
                f"--allow-faults {handle.identity.kube_system_uid} to allow them"
            )
        if self.discovery is not None:
            topology = self.discovery.topology
            lines.append(
                f"kubeha: topology {len(topology.control_planes())} control-plane, {len(topology.workers())} worker, "
                f"{len(topology.etcd_members)} etcd ({topology.etcd_mode.value}), "
                f"{len(topology.ingress_nodes())} ingress node(s); API endpoint "
                + (topology.load_balancer.endpoint if topology.load_balancer is not None else "is a node (no load balancer)")
            )
            lines.extend(f"kubeha: note: {note}" for note in self.discovery.notes)
        lines.append(f"kubeha: run directory {self.context.run_dir}")
        if self.options.dry_run:
            lines.append("kubeha: DRY RUN: nothing is injected, cluster tests are reported not-run")
        return lines

    # -- xdist -----------------------------------------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: _WorkerNode) -> None:
        node.workerinput[WORKERINPUT_KEY] = self.context.to_workerinput()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: _WorkerNode, error: object | None) -> None:
        """A worker died: undo the faults it left in place, then free its fault-budget claims, then check the steady
        state again.

        In that order: a claim stands for faults that may still be in place, so it is released (`Coordinator.reclaim`,
        logged as a reclaim) only once they are undone; if they cannot be undone the claim stays, as the faults do.
        Workers reclaiming a dead holder's claim themselves wait for the same (see `kubeha.coordination`). xdist
        reports a worker down before its process is reaped, and possibly before it has fully exited, so its journal
        entries and claims are picked by the processes it registered in the run directory, not by liveness.
        """
        if error is None or self.handle is None or self.discovery is None or self.options.dry_run:
            return
        worker = node.gateway.id
        cluster = cluster_view(self.handle, self.discovery)
        uid = cluster.identity.kube_system_uid
        processes = set(worker_processes(self.context, worker))
        text = f"worker {worker} crashed ({error})"
        if not faults_left_by(uid, processes):
            self.summary.notes.append(f"{text}; it left no fault in place")
            record_event(self.context, "journal", "worker-crash", text)
            self._reclaim_claims(worker, processes, f"worker {worker} crashed and left no fault in place")
            return
        replayed = undo_faults_of(self._provider(cluster), uid, processes)
        detail = f"{text}; {replayed.describe()}"
        self.summary.notes.append(detail)
        record_event(self.context, "journal", "replay", detail)
        if replayed.failed:
            self.summary.failures.append(detail)
            mark_unhealthy(self.context, f"faults left by crashed worker {worker} could not be undone")
            return
        self._reclaim_claims(worker, processes, f"worker {worker} crashed and the faults it left are undone")
        if self.client is not None:
            report = SteadyStateGate(self.client, cluster.topology).wait()
            record_event(self.context, "health", "steady-state", report.describe())
            if not report.ok:
                mark_unhealthy(self.context, f"after worker {worker} crashed: {report.describe()}")

    def _reclaim_claims(self, worker: str, processes: Collection[tuple[int, str]], reason: str) -> None:
        """Release the fault-budget claims the crashed worker's processes held; call once their faults are undone."""
        coordinator = Coordinator.of_run(self.context.coordinator_dir)
        if coordinator is None:
            return  # no claim was ever made in this run
        released = coordinator.reclaim(processes, reason)
        if released:
            detail = f"released the fault-budget claim(s) of crashed worker {worker}: " + "; ".join(
                held.claim.describe() for held in released
            )
            self.summary.notes.append(detail)
            record_event(self.context, "coordinator", "reclaim", detail)

    # -- session end -----------------------------------------------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the reports while the cluster is still there, tear it down whatever happened, then settle the exit
        status (the certification verdict reads the report)."""
        try:
            self.reporter.write_reports()
        finally:
            if self.client is not None:
                self.client.close()  # type: ignore[no-untyped-call]
            self._tear_down_cluster()
        self.reporter.settle_exit_status(session)

    def _tear_down_cluster(self) -> None:
        handle = self.handle
        if handle is None or not handle.embedded:
            return
        if self.options.keep_cluster:
            self.summary.notes.append(f"embedded cluster {handle.name} kept (--keep-cluster)")
            return
        if not handle.created:
            self.summary.notes.append(f"embedded cluster {handle.name} kept: it existed before this session")
            return
        from fixtures.kind.api import delete_cluster

        delete_cluster(handle.name)
        self.summary.notes.append(f"embedded cluster {handle.name} deleted (pass --keep-cluster to keep it)")


def describe_request_error(error: ApiException | HTTPError | OSError) -> str:
    if isinstance(error, ApiException):
        return f"API error {error.status} {error.reason}".strip()
    return f"{type(error).__name__}: {error}"


CONTROLLER_KEY = pytest.StashKey[Controller]()
