"""The embedded kind HA cluster, checked as a new user would check it, against the real cluster.

The plugin creates the cluster once on the controller (tests/conftest.py says these tests need it); these tests
reuse it through fixtures.kind and never delete it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.kind import api
from fixtures.kind.network import NODE_NETWORK, pinned_address
from fixtures.kind.readiness import ReadinessError, check_health
from kubeha.core.outage import ProbeStats
from kubeha.faults.faults import node_stopped
from kubeha.faults.journal import Journal, pending
from kubeha.probes.api import ApiProbe
from kubeha.probes.credentials import KubeconfigCredentials
from kubeha.providers.kind import KindProvider

pytestmark = pytest.mark.integration

NODE_READY_TIMEOUT_S = 300.0
API_BACK_TIMEOUT_S = 120.0
POLL_S = 2.0
# 20 Hz scheduled, so that the achieved rate stays at 10 Hz or more on a loaded 2-core machine.
PROBE_INTERVAL_S = 0.05
EXPECTED_CONTROL_PLANES = 3
EXPECTED_WORKERS = 2


@pytest.fixture(scope="module")
def kubeconfig() -> Path:
    status = api.cluster_status(api.DEFAULT_CLUSTER_NAME)
    assert status.exists and status.kubeconfig is not None, (
        "the embedded cluster does not exist; tests/conftest.py should have made the plugin create it "
        "(run `./run python -m fixtures.kind create` to create it by hand)")
    return status.kubeconfig


def kubectl(kubeconfig: Path, *args: str, timeout: float = 60.0) -> str:
    proc = subprocess.run([str(api._kubectl()), "--kubeconfig", str(kubeconfig), *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"kubectl {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def etcd_member_health(kubeconfig: Path, via_pod: str) -> list[dict[str, object]]:
    out = kubectl(kubeconfig, "exec", "-n", "kube-system", via_pod, "--", "etcdctl",
                  "--endpoints=https://127.0.0.1:2379", "--cacert=/etc/kubernetes/pki/etcd/ca.crt",
                  "--cert=/etc/kubernetes/pki/etcd/server.crt", "--key=/etc/kubernetes/pki/etcd/server.key",
                  "endpoint", "health", "--cluster", "-w", "json")
    parsed = json.loads(out)
    assert isinstance(parsed, list)
    return parsed


def test_three_control_planes_behind_the_load_balancer_and_two_workers_ready(kubeconfig: Path) -> None:
    """Done-when 1: through the LB, 3 control-plane and 2 worker nodes Ready, kube-system Running, /readyz ok.

    Waited for (bounded): the tests before this one (chaos experiments) restart nodes and components, and a pod
    restarted by their rollback may still be starting."""
    expected = EXPECTED_CONTROL_PLANES + EXPECTED_WORKERS

    def ready() -> bool:
        health = check_health(kubeconfig, expected_nodes=expected, kubectl=api._kubectl())
        assert health.ready, health.describe()
        return True

    waited_s = wait_for(ready, NODE_READY_TIMEOUT_S, f"{expected} nodes Ready, kube-system Running, /readyz ok")
    health = check_health(kubeconfig, expected_nodes=expected, kubectl=api._kubectl())
    assert (health.control_planes, health.workers) == (EXPECTED_CONTROL_PLANES, EXPECTED_WORKERS), health.describe()
    server = kubectl(kubeconfig, "config", "view", "-o", "jsonpath={.clusters[0].cluster.server}")
    lb = subprocess.run(["docker", "port", f"{api.DEFAULT_CLUSTER_NAME}-external-load-balancer", "6443/tcp"],
                        capture_output=True, text=True, check=True).stdout.split()[0]
    assert server == f"https://{lb}", f"the kubeconfig points at {server}, not at the load balancer {lb}"
    config = subprocess.run(["docker", "exec", f"{api.DEFAULT_CLUSTER_NAME}-external-load-balancer", "cat",
                             "/usr/local/etc/haproxy/haproxy.cfg"], capture_output=True, text=True, check=True).stdout
    assert "option httpchk GET /healthz" in config and config.count("check-ssl") == EXPECTED_CONTROL_PLANES
    print(f"\n{health.describe()} (after {waited_s:.0f} s); kubeconfig server {server} is the load balancer")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    yield Journal("embedded-kubeha", provider_name="kind", state_dir=tmp_path / "state")


def wait_for(predicate: object, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout_s:
        try:
            result = predicate()  # type: ignore[operator]
        except (AssertionError, ReadinessError, subprocess.SubprocessError) as exc:
            last = str(exc)
        else:
            if result:
                return time.monotonic() - start
        time.sleep(POLL_S)
    raise AssertionError(f"{what} not reached within {timeout_s:.0f} s: {last}")


@pytest.mark.disruptive(control_plane_nodes=1, reason="stops one control-plane node's container")
def test_stopping_a_control_plane_node_gap_then_recovery(kubeconfig: Path, journal: Journal) -> None:
    """Done-when 2: stop one control-plane node's container; the API answers again through the LB (gap measured
    by a 10 Hz probe on new connections); start it again: the node is Ready and etcd reports 3 healthy members."""
    provider = KindProvider(api.DEFAULT_CLUSTER_NAME)
    victim = f"{api.DEFAULT_CLUSTER_NAME}-control-plane2"
    with KubeconfigCredentials(kubeconfig) as creds:
        probe = ApiProbe(creds.endpoint, interval_s=PROBE_INTERVAL_S)
        with probe:
            time.sleep(2.0)
            with node_stopped(provider, victim, journal=journal):
                stopped_at = time.monotonic()
                time.sleep(20.0)
            restarted_at = time.monotonic()
            time.sleep(2.0)
        result = probe.result().main
    stats: ProbeStats = result.stats
    during = [s for s in result.samples if stopped_at <= s.t_mono <= restarted_at]
    tail = [s for s in during if s.t_mono >= restarted_at - 5.0]
    print(f"\nAPI through the LB while {victim} was stopped: {result.rate_hz:.1f} Hz, {stats.count} probes, "
          f"{stats.failures} failed, longest outage {stats.longest_outage_s:.2f} s, "
          f"total outage {stats.total_outage_s:.2f} s, errors {dict(stats.error_counts)}")
    assert result.rate_hz >= 10.0, f"probe ran at {result.rate_hz:.1f} Hz, below 10 Hz"
    assert tail and all(s.ok for s in tail), (
        "the API did not answer through the load balancer in the last 5 s of the node's outage: "
        f"{sum(not s.ok for s in tail)} of {len(tail)} probes failed")
    ready_s = wait_for(lambda: check_health(kubeconfig, expected_nodes=5, kubectl=api._kubectl()).ready,
                       NODE_READY_TIMEOUT_S, f"{victim} Ready again and kube-system Running")
    members = etcd_member_health(kubeconfig, f"etcd-{api.DEFAULT_CLUSTER_NAME}-control-plane")
    healthy = [m for m in members if m.get("health") is True]
    print(f"{victim} back: cluster ready {ready_s:.0f} s after restart; etcd members healthy: {len(healthy)}"
          f"/{len(members)}")
    assert len(healthy) == EXPECTED_CONTROL_PLANES, f"etcd health after restart: {members}"
    left = pending(journal.cluster_id, state_dir=journal.directory.parent)
    assert not left, f"the fault left undo entries pending: {left}"


def node_address(container: str) -> str:
    out = subprocess.run(["docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                          container], capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert len(out) == 1, f"{container} is on {len(out)} docker networks: {out}"
    return out[0]


def test_two_control_plane_nodes_restarted_together_keep_their_addresses(kubeconfig: Path, journal: Journal) -> None:
    """Two control-plane nodes stopped at once and started in the order that invites a swap (the node with the
    higher address first, so that docker's lowest-free-address allocation would hand it the other's) come back at
    their own addresses, which their certificates and etcd peer URLs name, and etcd is whole again."""
    provider = KindProvider(api.DEFAULT_CLUSTER_NAME)
    names = [f"{api.DEFAULT_CLUSTER_NAME}-control-plane", f"{api.DEFAULT_CLUSTER_NAME}-control-plane2"]
    before = {name: node_address(name) for name in names}
    low, high = sorted(names, key=lambda name: tuple(int(part) for part in before[name].split(".")))
    # Faults are restored innermost first: `high` starts while `low`'s address is still free.
    with node_stopped(provider, low, journal=journal, hard=True):
        with node_stopped(provider, high, journal=journal, hard=True):
            time.sleep(2.0)
    after = {name: node_address(name) for name in names}
    print(f"\naddresses before {before}, after {after} (started {high} first)")
    assert after == before, f"control-plane nodes restarted together changed addresses: before {before}, after {after}"
    ready_s = wait_for(lambda: check_health(kubeconfig, expected_nodes=5, kubectl=api._kubectl()).ready,
                       NODE_READY_TIMEOUT_S, f"{low} and {high} Ready again and kube-system Running")
    via = f"etcd-{api.DEFAULT_CLUSTER_NAME}-control-plane3"

    def etcd_whole() -> bool:
        members = etcd_member_health(kubeconfig, via)
        healthy = [m for m in members if m.get("health") is True]
        assert len(healthy) == EXPECTED_CONTROL_PLANES, f"etcd health: {members}"
        return True

    etcd_s = wait_for(etcd_whole, NODE_READY_TIMEOUT_S, f"{EXPECTED_CONTROL_PLANES} healthy etcd members")
    print(f"cluster ready {ready_s:.0f} s after the restart; etcd whole {etcd_s:.0f} s later")
    left = pending(journal.cluster_id, state_dir=journal.directory.parent)
    assert not left, f"the faults left undo entries pending: {left}"


@pytest.mark.disruptive(exclusive=True, reason="stops every container of the cluster, as a host reboot does")
def test_cluster_stopped_as_by_a_reboot_comes_back_at_its_recorded_addresses(kubeconfig: Path) -> None:
    """After the docker engine or the host restarts, every container of the cluster is stopped (their restart policy
    is off, so the engine does not start them in its own order with fresh addresses); `ensure_cluster` starts them
    pinned to the addresses recorded at creation, and the same cluster is ready again, not a recreated one."""
    name = api.DEFAULT_CLUSTER_NAME
    containers = [c for c, _ in api._containers(name)]
    recorded = api._recorded_addresses(name)
    assert sorted(recorded) == sorted(containers), (
        f"addresses recorded for {sorted(recorded)}, but the cluster has {sorted(containers)}: it was created before "
        "addresses were recorded; delete it (`./run python -m fixtures.kind delete`) and run again")
    policies = {c: subprocess.run(["docker", "inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}", c],
                                  capture_output=True, text=True, check=True, timeout=60).stdout.strip()
                for c in containers}
    assert set(policies.values()) == {"no"}, f"the engine would restart these containers itself: {policies}"
    uid = kubectl(kubeconfig, "get", "namespace", "kube-system", "-o", "jsonpath={.metadata.uid}")
    subprocess.run(["docker", "stop", "--time", "10", *containers], capture_output=True, check=True,
                   timeout=300)
    # As kind created them: no container pinned (an earlier restart may have pinned some). Unpinned, docker hands
    # out addresses in start order (load balancer first, then by name), not in creation order.
    for container in containers:
        for args in (("disconnect", NODE_NETWORK, container), ("connect", NODE_NETWORK, container)):
            subprocess.run(["docker", "network", *args], capture_output=True, check=True, timeout=60)
    assert {c: pinned_address(c) for c in containers} == dict.fromkeys(containers)
    started = time.monotonic()
    cluster = api.ensure_cluster(name)
    ready_s = time.monotonic() - started
    after = {c: node_address(c) for c in containers}
    print(f"\nrecorded {recorded}\nafter the restart {after}\nready {ready_s:.0f} s after `ensure_cluster` began")
    assert not cluster.created, "ensure_cluster recreated the cluster instead of starting the stopped one"
    assert after == recorded, f"containers came back at other addresses: recorded {recorded}, now {after}"
    assert {c: pinned_address(c) for c in containers} == recorded, "ensure_cluster did not pin the addresses"
    assert kubectl(kubeconfig, "get", "namespace", "kube-system", "-o", "jsonpath={.metadata.uid}") == uid
    via = f"etcd-{name}-control-plane"
    etcd_s = wait_for(lambda: len([m for m in etcd_member_health(kubeconfig, via) if m.get("health") is True])
                      == EXPECTED_CONTROL_PLANES, NODE_READY_TIMEOUT_S, f"{EXPECTED_CONTROL_PLANES} healthy etcd members")
    print(f"etcd whole {etcd_s:.0f} s after the cluster was ready")
