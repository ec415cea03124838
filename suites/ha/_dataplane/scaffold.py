"""pytest fixtures and helpers shared by the data-plane test modules (imported into each of them).

Each module gets its own namespace (`dataplane_namespace`), created when the first test of the module needs it and
deleted after the last one; if any test of the session failed meanwhile, the namespace is dumped first into
``<run directory>/dumps/``. Disruptive tests also wrap their fault in `kube.dump_on_failure`, which dumps while the
fault is still in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from kubernetes.client import ApiClient

from kubeha.core.topology import Node, Role, Topology
from kubeha.plugin import ResultRecorder, cluster_setup, not_run, run_context
from kubeha.probes.credentials import ApiEndpoint
from suites.ha._support.kube import create_namespace, delete_namespace
from suites.ha._support.podexec import PodExec

from .kube import dump_dataplane, dump_on_failure, write_dump

__all__ = [
    "DataplaneNamespace",
    "dataplane_dump_dir",
    "dataplane_exec",
    "schedulable_workers",
    "worker_names",
]


def dataplane_dump_dir(config: pytest.Config) -> Path:
    return run_context(config).run_dir / "dumps"


def schedulable_workers(topology: Topology) -> tuple[Node, ...]:
    """Workers that are not also control-plane nodes: where the suite's pods run and what worker faults stop."""
    return tuple(node for node in topology.workers() if not node.has(Role.CONTROL_PLANE))


def worker_names(topology: Topology, *, at_least: int = 1) -> tuple[str, ...]:
    workers = tuple(node.name for node in schedulable_workers(topology))
    if len(workers) < at_least:
        not_run(f"the cluster has {len(workers)} worker node(s) that are not control-plane nodes; the data-plane "
                f"controls need at least {at_least}")
    return workers


class DataplaneNamespace:
    """A module's namespace and how to dump it."""

    def __init__(self, client: ApiClient, name: str, dump_dir: Path,
                 extra_dumps: Sequence[tuple[str, Callable[[], str]]] = ()) -> None:
        self.client = client
        self.name = name
        self.dump_dir = dump_dir
        self.extra_dumps = tuple(extra_dumps)

    def dump(self, label: str) -> Path:
        return write_dump(self.dump_dir, self.name, dump_dataplane(self.client, self.name, extra=self.extra_dumps),
                          label)

    def dumping_on_failure(self, label: str,
                           result: ResultRecorder | None = None) -> contextlib.AbstractContextManager[None]:
        """Dump the namespace if the block raises, before the block's own cleanup (a fault's restore) runs."""

        def report(path: Path) -> None:
            if result is not None:
                result.evidence("failure dump", str(path))

        return dump_on_failure(self.client, self.name, self.dump_dir, label, extra=self.extra_dumps, report=report)


@contextlib.contextmanager
def module_namespace(request: pytest.FixtureRequest, client: ApiClient, purpose: str,
                     extra_dumps: Sequence[tuple[str, Callable[[], str]]] = ()) -> Iterator[DataplaneNamespace]:
    """Create the namespace (kubeha-ha-<random>); on the way out dump it if a test failed since, then delete it.

    Both happen while no serial test runs (`cluster_setup`); so must what the fixture creates in the namespace.
    """
    failed_before = request.session.testsfailed
    with cluster_setup(request, f"namespace {purpose}: create"):
        name = create_namespace(client, purpose)
    namespace = DataplaneNamespace(client, name, dataplane_dump_dir(request.config), extra_dumps)
    try:
        yield namespace
    finally:
        with cluster_setup(request, f"namespace {name}: delete"):
            try:
                if request.session.testsfailed > failed_before:
                    path = namespace.dump("teardown")
                    # Shown with the failing test's report (teardown output of the module's last test).
                    print(f"kubeha: namespace {name} dumped to {path}")
            finally:
                delete_namespace(client, name)


@pytest.fixture(scope="session")
def dataplane_exec(ha_endpoint: ApiEndpoint) -> Iterator[PodExec]:
    """Commands in the probe pods, through the load balancer."""
    with PodExec(ha_endpoint) as runner:
        yield runner
