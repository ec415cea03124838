"""Inner session of tests/integration/test_framework_live.py (collected only there, with ``-o python_files=case_*.py``).

One test that reads the cluster and passes, and one that needs far more workers than any test cluster has, so that
it is not-run.
"""

from __future__ import annotations

import pytest

from kubeha.plugin import KubehaCluster

TOO_MANY_WORKERS = 99


def test_cluster_is_reachable(kubeha_cluster: KubehaCluster) -> None:
    assert kubeha_cluster.topology.control_planes(), (
        f"the cluster at {kubeha_cluster.identity.api_url} lists no control-plane node"
    )


@pytest.mark.needs(workers=TOO_MANY_WORKERS)
def test_needs_more_workers_than_the_cluster_has(kubeha_cluster: KubehaCluster) -> None:
    pytest.fail(f"ran on a cluster with {len(kubeha_cluster.topology.workers())} workers although it needs "
                f"{TOO_MANY_WORKERS}")
