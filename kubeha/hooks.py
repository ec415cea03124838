"""Hook specifications of the kubeha pytest plugin.

Implement them in a conftest.py or a plugin. Conftests that should take part in the decisions made at session start
must be initial conftests (the rootdir's, those of the paths given on the command line, and their ``test*``
subdirectories), since the decision is taken before collection.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kubeha.core.model import ControlResult, RunReport
    from kubeha.core.timeline import Timeline
    from kubeha.pytest_plugin.cluster import KubehaCluster
    from kubeha.providers.base import Provider

__all__ = [
    "pytest_kubeha_cluster_required",
    "pytest_kubeha_junit_properties",
    "pytest_kubeha_make_provider",
    "pytest_kubeha_write_reports",
]


@pytest.hookspec(firstresult=True)
def pytest_kubeha_cluster_required(config: pytest.Config) -> bool | None:
    """Whether this session needs a Kubernetes cluster.

    Called once, on the xdist controller (or the single process without xdist), at session start. Return True when
    the tests being run talk to a cluster (suites/ha, tests/integration), False to force running without one, or
    None to leave the decision to other implementations. Giving ``--kubeconfig`` or ``--cluster`` on the command
    line always requires a cluster. Without any True answer the session runs without a cluster and tests that ask
    for one fail with the options to pass.

    Only initial conftests are consulted (see above): implement it in the conftest.py of the directory that holds
    the cluster tests or above it. `kubeha.pytest_plugin.selection.needs_cluster` decides from the selected paths.
    """


@pytest.hookspec(firstresult=True)
def pytest_kubeha_make_provider(config: pytest.Config, cluster: KubehaCluster) -> Provider | None:
    """The provider through which faults act on the machines of `cluster`.

    Called once per process, the first time a test needs it (never in a dry run, which uses a `FaultPlan`). The
    plugin's own implementation runs last: kind for the embedded cluster, ssh with ``--inventory``, attach otherwise.
    """


@pytest.hookspec(firstresult=True)
def pytest_kubeha_junit_properties(result: ControlResult) -> list[tuple[str, str]] | None:
    """JUnit ``<property>`` name/value pairs for a control's result; they are added to the test's user_properties.

    Called in the process that ran the test, before its teardown report is made.
    """


@pytest.hookspec
def pytest_kubeha_write_reports(
    config: pytest.Config, report: RunReport, timeline: Timeline, directory: Path
) -> list[Path] | None:
    """Write the run's reports into `directory` and return the paths written (None: nothing written).

    Called once, on the xdist controller (or the only process), at session end, when the session had a cluster or a
    control produced a result (never in a dry run). Every implementation is called.
    """
