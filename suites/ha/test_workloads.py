"""HA-WL: a Deployment spread over the workers keeps serving through the loss of a worker, and its lost replicas are
replaced on the workers that are left.

The Deployment is the echo backend (agnhost serve-hostname), two replicas per worker, spread with maxSkew 1 per
node (tainted nodes left out of the count) and tolerating the unreachable and not-ready taints for only
`TOLERATION_S` seconds, so that a lost node's replicas are evicted soon after the node is declared lost. It is
probed through its ClusterIP from a probe pod on a worker that stays up.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kubernetes.client import ApiClient

from suites.ha._dataplane import budgets
from suites.ha._dataplane.analysis import fault_figures, record_fault_figures, require
from suites.ha._dataplane.facts import node_loss_timing
from suites.ha._dataplane.kube import wait_until
from suites.ha._dataplane.probes import InClusterProbe
from suites.ha._dataplane.scaffold import DataplaneNamespace, module_namespace, worker_names
from suites.ha._dataplane.workloads import (
    EchoBackend,
    create_echo_backend,
    deployment_problem,
    pods_by_node,
    restart_rollout,
)
from kubeha.faults import Journal, node_stopped
from kubeha.plugin import KubehaCluster, ResultRecorder, cluster_setup
from kubeha.providers.base import Provider

REPLICAS_PER_WORKER = 2
# How long the replicas stay bound to a node declared unreachable or not ready before they are evicted (the default
# the API server adds is 300 s).
TOLERATION_S = 5
REPLACEMENT_POLL_S = 1.0


@dataclass(frozen=True)
class WorkloadEnv:
    ns: DataplaneNamespace
    workers: tuple[str, ...]
    app: EchoBackend


@pytest.fixture(scope="module")
def workload_env(request: pytest.FixtureRequest, api_client: ApiClient,
                 kubeha_cluster: KubehaCluster) -> Iterator[WorkloadEnv]:
    workers = worker_names(kubeha_cluster.topology)
    with module_namespace(request, api_client, "wl") as ns:
        with cluster_setup(request, "workload set-up"):
            app = create_echo_backend(api_client, ns.name, "spread", REPLICAS_PER_WORKER * len(workers), workers,
                                      toleration_s=TOLERATION_S)
        yield WorkloadEnv(ns=ns, workers=workers, app=app)


def _spread_problem(placement: dict[str, list[str]], workers: tuple[str, ...]) -> tuple[int, int]:
    counts = [len(placement.get(worker, [])) for worker in workers]
    return max(counts) - min(counts), sum(1 for count in counts if count > 0)


@pytest.mark.control(
    "HA-WL-01", "A spread Deployment runs on every worker",
    "A Deployment with a maxSkew-1 topology spread constraint over the nodes MUST place its ready replicas on every "
    "worker, with replica counts per worker differing by at most 1",
)
def test_deployment_spread_over_workers(workload_env: WorkloadEnv, api_client: ApiClient,
                                        kubeha_result: ResultRecorder) -> None:
    env = workload_env
    # Judged on a rollout placed now: replicas moved by an earlier worker fault stay where they went.
    rollout_s = restart_rollout(api_client, env.ns.name, env.app.name)
    placement = pods_by_node(api_client, env.ns.name, env.app.name)
    skew, covered = _spread_problem(placement, env.workers)
    kubeha_result.evidence("placement", "; ".join(f"{node}: {len(pods)}" for node, pods in placement.items()))
    kubeha_result.measure("rollout", round(rollout_s, 1), "s")
    broken = [p for p in (
        require(kubeha_result, "replica skew between workers", skew, "replicas", 1,
                broken="replica counts per worker differ by {value:.0f}, at most {budget:.0f} allowed"),
        require(kubeha_result, "workers with a replica", covered, "workers", len(env.workers), at_least=True,
                broken="replicas run on {value:.0f} of {budget:.0f} workers"),
    ) if p]
    assert not broken, "; ".join(broken) + f" (placement: {placement})"


@pytest.mark.control(
    "HA-WL-02", "A spread Deployment survives the loss of a worker",
    "While one worker is down, a Deployment spread over the workers MUST keep serving through its Service (failing "
    "at most the share of requests its lost replicas receive until the node is detected as lost, none after), and "
    "MUST run all its replicas again on the remaining workers within the detection time plus its toleration plus "
    "40 s",
)
@pytest.mark.needs(workers=2)
@pytest.mark.disruptive(workers=1, reason="stops one worker with its replicas")
def test_deployment_survives_worker_loss(workload_env: WorkloadEnv, api_client: ApiClient, provider: Provider,
                                         journal: Journal, kubeha_result: ResultRecorder) -> None:
    env = workload_env
    # Spread anew before the fault: an earlier worker fault may have moved every replica off the target.
    restart_rollout(api_client, env.ns.name, env.app.name, timeout_s=budgets.RESTART_RECOVERY_TIMEOUT_S)
    target, probe_node = env.workers[-1], env.workers[0]
    before = pods_by_node(api_client, env.ns.name, env.app.name)
    lost = len(before.get(target, []))
    if lost == 0:
        raise AssertionError(f"no replica of {env.app.name} runs on {target} ({before}): the fault would prove "
                             "nothing; see HA-WL-01")
    timing = node_loss_timing(api_client)
    hold_s = budgets.node_loss_hold_s(timing)
    replacement_budget = timing.detection_bound_s + TOLERATION_S + budgets.REPLACEMENT_SLACK_S
    kubeha_result.evidence("fault", f"hard-stop (docker kill) worker {target} running {lost} of "
                                    f"{env.app.replicas} replicas; probe on {probe_node}; held at least {hold_s:.0f} s")
    url = f"http://{env.app.cluster_ip}/"
    probe = InClusterProbe.http(api_client, env.ns.name, f"wl-probe-{secrets.token_hex(2)}", probe_node, url,
                                body_prefix=env.app.pod_prefix)
    with probe:
        with node_stopped(provider, target, journal=journal, hard=True) as fault, \
                env.ns.dumping_on_failure("wl-02", kubeha_result):

            def replaced() -> str | None:
                placement = pods_by_node(api_client, env.ns.name, env.app.name)
                elsewhere = sum(len(pods) for node, pods in placement.items() if node != target)
                if elsewhere >= env.app.replicas:
                    return None
                return f"{elsewhere}/{env.app.replicas} replicas ready off {target}: {placement}"

            wait_until(replaced, timeout_s=replacement_budget + budgets.RESTART_RECOVERY_TIMEOUT_S,
                       what=f"{env.app.replicas} replicas ready on the workers other than {target}",
                       poll_s=REPLACEMENT_POLL_S)
            replacement_s = time.monotonic() - fault.injected_mono
            remaining = hold_s - (time.monotonic() - fault.injected_mono)
            if remaining > 0:
                time.sleep(remaining)
            end = time.monotonic()
            after = pods_by_node(api_client, env.ns.name, env.app.name)
        attempts = probe.attempts()
    wait_until(lambda: deployment_problem(api_client, env.ns.name, env.app.name),
               timeout_s=budgets.RESTART_RECOVERY_TIMEOUT_S, what=f"deployment {env.app.name} settled after restart")
    figures = fault_figures("Service", [a.sample for a in attempts], fault.injected_mono, end,
                            timing.detection_bound_s)
    record_fault_figures(kubeha_result, "Service", figures)
    kubeha_result.evidence("placement after replacement", "; ".join(f"{n}: {len(p)}" for n, p in after.items()))
    share_budget = budgets.expected_failure_share(lost, env.app.replicas) + budgets.FAILURE_SHARE_MARGIN
    broken = [p for p in (
        require(kubeha_result, "replicas replaced after", replacement_s, "s", replacement_budget,
                broken="the lost replicas were running elsewhere {value:.1f} s after the worker stopped, budget "
                       f"{{budget:.1f}} s (detection {timing.detection_bound_s:.0f} s + toleration {TOLERATION_S} s + "
                       f"{budgets.REPLACEMENT_SLACK_S:.0f} s)"),
        require(kubeha_result, "failed share before detection", figures.detection_failure_share, "ratio",
                share_budget, broken="{value:.0%} of requests failed before the worker was detected as lost, budget "
                                     f"{{budget:.0%}} ({lost} of {env.app.replicas} replicas lost); errors: "
                                     f"{figures.error_summary()}"),
        require(kubeha_result, "Service recovery", figures.recovery_s, "s", budgets.recovery_budget_s(timing),
                broken="requests kept failing until {value:.1f} s after the worker stopped, budget {budget:.1f} s; "
                       f"errors: {figures.error_summary()}"),
    ) if p]
    assert not broken, "; ".join(broken)
