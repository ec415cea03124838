"""HA-API-01 must fail when the load balancer never takes a dead API server out of rotation.

The haproxy configuration is replaced through the provider's load-balancer operations with one that has neither
health checks nor run-time DNS resolution (`suites.ha._support.haproxy.without_failure_detection`); the original is
restored on the way out, whatever happens (`kubeha.faults.load_balancer_config_replaced`).
"""

from __future__ import annotations

from pathlib import Path

from kubeha.faults import load_balancer_config_replaced
from kubeha.providers.base import LoadBalancerConfig
from suites.ha._support.haproxy import parse_haproxy, without_failure_detection
from tests.negative.harness import NegativeCluster

TEST = "suites/ha/test_api_loadbalancer.py::test_api_survives_control_plane_node_loss[cp0]"


def test_load_balancer_without_health_checks_fails_ha_api_01(restored: NegativeCluster, tmp_path: Path) -> None:
    original = restored.provider.load_balancer_config()
    assert parse_haproxy(original.text).detection_bound_s() is not None, (
        "the embedded cluster's load balancer has no health checks to begin with: this check proves nothing"
    )
    broken = LoadBalancerConfig(original.kind, without_failure_detection(original.text))
    with load_balancer_config_replaced(restored.provider, broken, journal=restored.journal):
        active = parse_haproxy(restored.provider.load_balancer_config().text)
        assert active.servers and len(active.unchecked()) == len(active.servers), active.describe()
        run = restored.run_suite([TEST], tmp_path)
    restored_checks = parse_haproxy(restored.provider.load_balancer_config().text)
    assert restored_checks.detection_bound_s() is not None, "the original load balancer configuration was not restored"
    run.assert_failed("HA-API-01", "no health check", "budget")
