"""The kubeha pytest plugin: the module pytest loads (``pytest_plugins = ["kubeha.plugin"]`` or ``-p kubeha.plugin``).

It registers the hook specifications and the markers, makes the controller or worker side of the session at
configure time, and re-exports the hooks and fixtures of `kubeha.pytest_plugin`, where each concern has a module:

- `options`: the command-line options and `Settings`, their validated form;
- `markers`: ``disruptive``, ``control``, ``serial`` and ``needs``, parsed into `ItemMarkers`;
- `outcomes`: not-run, the outcome of a test that proved nothing;
- `runcontext`: `RunContext`, what every process knows about the session, and the run directory they share;
- `cluster`: `KubehaCluster`, the session's cluster as tests see it;
- `providers`: the read-only provider of non-disruptive tests and the default ``pytest_kubeha_make_provider``;
- `recovery`: undoing faults left in place by a test or a crashed worker;
- `serial`: the cross-process lock that makes a ``serial`` test run alone;
- `results`: `ResultRecorder`, the verdict of each test and its `ControlResult`;
- `gate`: the per-test gate that enforces the markers around every cluster test;
- `fixtures`: the fixtures tests use (``kubeha_cluster``, ``api_client``, ``provider``, ``journal``, ...);
- `controller`: cluster set-up and tear-down on the xdist controller, worker hand-over, crashed workers;
- `reporting`: the run report, the certification verdict and the terminal summary;
- `selection`: which paths a session selected, for implementations of ``pytest_kubeha_cluster_required``.

Session life cycle
------------------
On the xdist controller (or the single process without xdist), at session start (`controller`):

1. the cluster is set up only if the session needs one: ``--kubeconfig``/``--cluster`` was given, or an
   implementation of ``pytest_kubeha_cluster_required`` (see `kubeha.hooks`) answered True;
2. the embedded kind cluster is built and started (`fixtures.kind.api.ensure_cluster`), or the attached one is
   checked; its identity (`kubeha.cluster.identity`) is read and consent to inject faults is bound to it;
3. undo-journal entries left by crashed runs are replayed (`kubeha.faults.journal.replay`);
4. the topology is discovered and the health gate checks the steady state;
5. the kubeconfig path, context, run directory and consent are handed to each xdist worker in
   ``pytest_configure_node``; every process builds its own API client from them.

Per test, an autouse fixture (`gate`) enforces the markers: ``needs`` (unmet: not-run), ``serial`` (runs alone), and
``disruptive`` (consent, health, then the claim is acquired from the cross-process coordinator around the test; after
it, own leftover undo entries are replayed and the health gate runs; a cluster that does not return to its steady
state makes the test error and later disruptive tests not-run).

Not-run is an outcome of its own: ``pytest.skip`` with a reason starting with ``not-run: `` and `Verdict.NOT_RUN` in
the control's result. With ``--profile certification`` any skip or not-run fails the session.

When xdist reports a worker crashed, the controller undoes the faults it left in place, then frees its fault-budget
claims, then waits for the steady state again.

At session end the controller gathers the per-test results written by every process to the run directory, builds
the `RunReport`, hands it to the ``pytest_kubeha_write_reports`` implementations, and deletes the embedded cluster
unless ``--keep-cluster`` was given or it existed before the session.
"""

from __future__ import annotations

import pytest

from kubeha import hooks
from kubeha.pytest_plugin.cluster import KubehaCluster
from kubeha.pytest_plugin.controller import CONTROLLER_KEY, Controller
from kubeha.pytest_plugin.fixtures import api_client as api_client
from kubeha.pytest_plugin.fixtures import fault_budget as fault_budget
from kubeha.pytest_plugin.fixtures import fault_coordinator as fault_coordinator
from kubeha.pytest_plugin.fixtures import journal as journal
from kubeha.pytest_plugin.fixtures import kubeha_cluster as kubeha_cluster
from kubeha.pytest_plugin.fixtures import kubeha_provider as kubeha_provider
from kubeha.pytest_plugin.fixtures import kubeha_result as kubeha_result
from kubeha.pytest_plugin.fixtures import kubeha_run as kubeha_run
from kubeha.pytest_plugin.fixtures import provider as provider
from kubeha.pytest_plugin.fixtures import steady_state as steady_state
from kubeha.pytest_plugin.gate import CLUSTER_REQUIRED_FIXTURES, DryRunGate
from kubeha.pytest_plugin.gate import kubeha_gate as kubeha_gate
from kubeha.pytest_plugin.markers import MARKERS, ControlSpec, ItemMarkers, Needs, item_markers, unmet_needs
from kubeha.pytest_plugin.options import SETTINGS_KEY, Settings, parse_settings, settings
from kubeha.pytest_plugin.options import pytest_addoption as pytest_addoption
from kubeha.pytest_plugin.outcomes import NOT_RUN_PREFIX, not_run
from kubeha.pytest_plugin.serial import cluster_setup
from kubeha.pytest_plugin.providers import pytest_kubeha_make_provider as pytest_kubeha_make_provider
from kubeha.pytest_plugin.reporting import SessionReporter
from kubeha.pytest_plugin.results import ResultRecorder
from kubeha.pytest_plugin.results import pytest_runtest_call as pytest_runtest_call
from kubeha.pytest_plugin.results import pytest_runtest_makereport as pytest_runtest_makereport
from kubeha.pytest_plugin.results import pytest_runtest_setup as pytest_runtest_setup
from kubeha.pytest_plugin.runcontext import (
    RUN_KEY,
    ClusterHandle,
    RunContext,
    is_worker,
    register_worker_process,
    run_context,
    worker_context,
)

__all__ = [
    "CLUSTER_REQUIRED_FIXTURES",
    "ClusterHandle",
    "ControlSpec",
    "ItemMarkers",
    "KubehaCluster",
    "NOT_RUN_PREFIX",
    "Needs",
    "ResultRecorder",
    "RunContext",
    "Settings",
    "cluster_setup",
    "item_markers",
    "not_run",
    "run_context",
    "settings",
    "unmet_needs",
]


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    options = parse_settings(config)
    config.stash[SETTINGS_KEY] = options
    config.pluginmanager.register(DryRunGate(), "kubeha-dry-run")
    if is_worker(config):
        context = worker_context(config)
        config.stash[RUN_KEY] = context
        register_worker_process(context)
        return
    reporter = SessionReporter(config, options)
    controller = Controller(config, options, reporter)
    config.stash[CONTROLLER_KEY] = controller
    config.pluginmanager.register(reporter, "kubeha-reporter")
    config.pluginmanager.register(controller, "kubeha-controller")
