"""The negative checks: the HA suite run against deliberately broken variants of the embedded cluster.

Each check breaks the cluster in one known way, runs the suite's matching test in a separate pytest process, and
asserts that the matching control FAILED with a reason naming the cause (see `tests.negative.harness`). The break
is undone in ``finally``, and the cluster must return to its steady state before the check ends. The embedded
cluster is used as it is when it exists; it is created only when it does not exist, never recreated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fixtures.kind.api import DEFAULT_CLUSTER_NAME, cluster_status, ensure_cluster, kubeconfig_path
from tests.negative.harness import NegativeCluster


@pytest.fixture(scope="session")
def negative_cluster() -> Iterator[NegativeCluster]:
    """The embedded cluster: used as it is when it exists, created only when it does not."""
    status = cluster_status(DEFAULT_CLUSTER_NAME)
    if status.exists and status.kubeconfig is not None:
        kubeconfig = status.kubeconfig
    elif status.exists:
        pytest.fail(
            f"the embedded cluster {DEFAULT_CLUSTER_NAME} exists but its kubeconfig {kubeconfig_path(DEFAULT_CLUSTER_NAME)} "
            "is missing: delete it with `./run python -m fixtures.kind delete` and run again",
            pytrace=False,
        )
    else:
        kubeconfig = ensure_cluster(DEFAULT_CLUSTER_NAME).kubeconfig
    cluster = NegativeCluster(DEFAULT_CLUSTER_NAME, kubeconfig)
    try:
        report = cluster.wait_steady()
        if not report.ok:
            pytest.fail(f"the embedded cluster is not in its steady state before the negative checks: {report.describe()}",
                        pytrace=False)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def restored(negative_cluster: NegativeCluster) -> Iterator[NegativeCluster]:
    """The cluster for one check; after it, the cluster must be back in its steady state."""
    yield negative_cluster
    started = time.monotonic()
    report = negative_cluster.wait_steady()
    assert report.ok, (
        f"the cluster did not return to its steady state within {time.monotonic() - started:.0f} s after the "
        f"broken variant was undone: {report.describe()}"
    )
