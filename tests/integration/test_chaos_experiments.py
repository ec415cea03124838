"""The shipped chaostoolkit experiments, run with chaoslib's API against the real embedded kind cluster.

Each test loads an experiment from ``chaos/experiments``, validates it, and runs it with
`chaoslib.experiment.run_experiment`, its configuration pointed at the session's cluster. The activities use the
default state directory, the one the pytest plugin replays at session start, so a run killed half way is undone by
the next session. Checked afterwards: the steady state held, the fault budget let one of two parallel control-plane
kills through and refused the other, breaking etcd quorum deliberately made writes fail and the rollbacks brought
every member back, and no undo entry is left in the journal. The figures (longest API outage, how long each phase
took) are logged and attached to the test item's user properties.

These tests stop nodes of the cluster; run them only where that is fine (the embedded cluster), one at a time.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaoslib.exceptions import ActivityFailed
from chaoslib.experiment import ensure_experiment_is_valid, run_experiment
from chaoslib.types import Strategy
from chaos.kubeha_chaos import actions, probes
from chaos.kubeha_chaos.budget import BudgetStore
from chaos.kubeha_chaos.session import kind_cluster_of
from kubeha.cluster.client import KubeconfigTarget, new_api_client
from kubeha.cluster.discovery import read_nodes
from kubeha.coordination import usage_from_log
from kubeha.core.budget import ResourceKind
from kubeha.faults import pending
from kubeha.faults.journal import default_state_dir
from kubeha.plugin import KubehaCluster

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

EXPERIMENTS = Path(__file__).resolve().parents[2] / "chaos" / "experiments"
# Rollbacks run whatever happened in the method: a test that fails must not leave the cluster broken.
SETTINGS: dict[str, Any] = {"runtime": {"rollbacks": {"strategy": "always"}}}
# How long the cluster may take to be whole again after an experiment (nodes Ready, kube-system pods ready).
RECOVERY_TIMEOUT_S = 300.0
# The longest API outage through the load balancer that one control-plane node down may cause.
ONE_NODE_OUTAGE_BUDGET_S = 15.0
# The experiments check consent and keep a fault budget of their own (shared by chaos runs), so they need none of the
# plugin's; towards the rest of the session they run alone.
EXPERIMENT = pytest.mark.serial


@pytest.fixture(scope="module")
def chaos_target(kubeha_cluster: KubehaCluster) -> dict[str, str]:
    """Configuration values pointing the experiments at the session's cluster, which must be a kind cluster."""
    client = new_api_client(KubeconfigTarget(kubeha_cluster.kubeconfig, kubeha_cluster.context))
    try:
        names = {kind_cluster_of(node.provider_id) for node in read_nodes(client)}
    finally:
        client.close()  # type: ignore[no-untyped-call]
    if len(names) != 1 or None in names:
        pytest.skip(f"the chaos experiments drive the embedded kind cluster; the session's cluster at "
                    f"{kubeha_cluster.identity.api_url} has no kind nodes (provider IDs name {sorted(map(str, names))})")
    [name] = names
    assert name is not None
    values = {"kubeha_kubeconfig": str(kubeha_cluster.kubeconfig), "kubeha_kind_cluster": name}
    if kubeha_cluster.context:
        values["kubeha_context"] = kubeha_cluster.context
    return values


@pytest.fixture
def restored(chaos_target: dict[str, str], kubeha_cluster: KubehaCluster) -> Iterator[dict[str, str]]:
    """The target, and after the test: whatever this process still holds restored, the cluster steady again."""
    uid = kubeha_cluster.identity.kube_system_uid
    assert not _chaos_entries(uid), "faults of an earlier chaos run are still journaled: replay them first"
    yield chaos_target
    actions.restore_all(configuration=dict(chaos_target))
    actions.wait_for_steady_state(timeout_s=RECOVERY_TIMEOUT_S, configuration=dict(chaos_target))


def _chaos_entries(uid: str) -> list[str]:
    """Pending undo entries written by chaos activities (any process) or by this process."""
    return [f"{entry.undo.describe()} (pid {entry.pid}, {entry.state.value})"
            for entry in pending(uid, state_dir=default_state_dir())
            if entry.worker == "chaostoolkit" or entry.pid == os.getpid()]


def figure(request: pytest.FixtureRequest, name: str, value: object) -> None:
    """A measured figure: logged, and kept on the test item for report writers."""
    request.node.user_properties.append((name, value))
    log.info("figure %s %s = %s", request.node.name, name, value)


def durations(request: pytest.FixtureRequest, journal: dict[str, Any]) -> None:
    for section in ("run", "rollbacks"):
        for activity in journal[section]:
            figure(request, f"{section}:{activity['activity']['name']}:duration_s", round(activity["duration"], 1))


def run(name: str, target: dict[str, str], strategy: Strategy = Strategy.DEFAULT) -> dict[str, Any]:
    experiment = json.loads((EXPERIMENTS / name).read_text())
    ensure_experiment_is_valid(experiment)
    journal: dict[str, Any] = run_experiment(copy.deepcopy(experiment), settings=copy.deepcopy(SETTINGS),
                                             experiment_vars=(dict(target), {}), strategy=strategy)
    return journal


def runs_of(journal: dict[str, Any], section: str, func: str) -> list[dict[str, Any]]:
    return [run for run in journal[section] if run["activity"]["provider"]["func"] == func]


def describe(run: dict[str, Any]) -> str:
    return f"{run['activity']['name']}: {run['status']} {run.get('output')!r} {''.join(run.get('exception', []))}"


def assert_steady_state_held(journal: dict[str, Any]) -> None:
    assert journal["status"] == "completed", [describe(run) for run in journal["run"]]
    assert journal["steady_states"]["before"]["steady_state_met"] is True
    assert journal["steady_states"]["after"]["steady_state_met"] is True, journal["steady_states"]["after"]
    assert journal["deviated"] is False


def assert_everything_restored(uid: str, target: dict[str, str]) -> None:
    assert _chaos_entries(uid) == []
    assert probes.nodes_ready(configuration=dict(target)) is True
    assert probes.etcd_members_healthy(configuration=dict(target)) is True


def test_two_of_three_control_planes_refused_without_touching_the_cluster(
    restored: dict[str, str], kubeha_cluster: KubehaCluster
) -> None:
    with pytest.raises(ActivityFailed) as refused:
        actions.stop_nodes(role="control-plane", count=2, configuration=dict(restored))
    assert str(refused.value) == (
        "stopping 2 of 3 etcd members exceeds the tolerance of 1; stopping 2 of 3 control-plane nodes exceeds the "
        "tolerance of 1; pass allow_beyond_tolerance=true to break quorum deliberately"
    )
    assert probes.nodes_ready(configuration=dict(restored)) is True
    assert _chaos_entries(kubeha_cluster.identity.kube_system_uid) == []


@EXPERIMENT
def test_kill_one_control_plane(restored: dict[str, str], kubeha_cluster: KubehaCluster,
                                request: pytest.FixtureRequest) -> None:
    journal = run("kill-one-control-plane.json", restored)
    durations(request, journal)
    assert_steady_state_held(journal)
    [stopped] = runs_of(journal, "run", "stop_nodes")
    [started] = runs_of(journal, "run", "start_nodes")
    [outage] = runs_of(journal, "run", "api_outage_during")
    assert stopped["status"] == "succeeded" and len(stopped["output"]) == 1, describe(stopped)
    assert started["status"] == "succeeded" and started["output"] == stopped["output"], describe(started)
    assert outage["status"] == "succeeded", describe(outage)
    figure(request, "stopped_node", stopped["output"][0])
    figure(request, "longest_api_outage_s", outage["output"])
    figure(request, "stop_duration_s", round(stopped["duration"], 1))
    figure(request, "start_until_ready_s", round(started["duration"], 1))
    assert outage["output"] <= ONE_NODE_OUTAGE_BUDGET_S
    assert [run["output"] for run in journal["rollbacks"]] == [[]]  # the method already restored the node
    assert_everything_restored(kubeha_cluster.identity.kube_system_uid, restored)


@EXPERIMENT
def test_parallel_control_plane_kills_second_refused_by_the_budget(
    restored: dict[str, str], kubeha_cluster: KubehaCluster, request: pytest.FixtureRequest
) -> None:
    uid = kubeha_cluster.identity.kube_system_uid
    journal = run("kill-control-planes-in-parallel.json", restored)
    durations(request, journal)
    assert_steady_state_held(journal)
    stops = runs_of(journal, "run", "stop_nodes")
    assert len(stops) == 2
    succeeded = [run for run in stops if run["status"] == "succeeded"]
    refused = [run for run in stops if run["status"] == "failed"]
    assert len(succeeded) == 1 and len(refused) == 1, [describe(run) for run in stops]
    reason = "".join(refused[0]["exception"])
    assert "stopping 1 etcd member while 1 is already down exceeds the tolerance of 1" in reason
    assert "stopping 1 control-plane node while 1 is already down exceeds the tolerance of 1" in reason
    [started] = runs_of(journal, "run", "start_nodes")
    assert started["output"] == succeeded[0]["output"], describe(started)
    [outage] = runs_of(journal, "run", "api_outage_during")
    figure(request, "stopped_node", succeeded[0]["output"][0])
    figure(request, "refusal", reason.strip().splitlines()[-1])
    figure(request, "longest_api_outage_s", outage["output"])
    store = BudgetStore(default_state_dir() / "chaos" / uid, journal_cluster_id=uid,
                        journal_state_dir=default_state_dir())
    limits = store.stored_limits()
    assert limits is not None
    ledger = usage_from_log(store.run_dir(limits), limits)
    assert ledger.violations == ()
    assert ledger.shared_peak_of(ResourceKind.CONTROL_PLANE_NODE) <= 1
    assert_everything_restored(uid, restored)


@EXPERIMENT
def test_lose_etcd_quorum_deliberately_and_restore(
    restored: dict[str, str], kubeha_cluster: KubehaCluster, request: pytest.FixtureRequest
) -> None:
    journal = run("lose-etcd-quorum.json", restored, strategy=Strategy.BEFORE_METHOD)
    durations(request, journal)
    assert journal["steady_states"]["before"]["steady_state_met"] is True
    [stopped] = runs_of(journal, "run", "stop_nodes")
    assert stopped["status"] == "succeeded" and len(stopped["output"]) == 2, describe(stopped)
    [write] = runs_of(journal, "run", "api_write_succeeds")
    [ready] = runs_of(journal, "run", "api_available")
    assert write["status"] == "succeeded" and write["output"] is False, describe(write)
    assert ready["status"] == "succeeded" and ready["output"] is False, describe(ready)
    assert [run["status"] for run in journal["rollbacks"]] == ["succeeded"] * 3, [
        describe(run) for run in journal["rollbacks"]]
    [started] = runs_of(journal, "rollbacks", "start_nodes")
    assert sorted(started["output"]) == sorted(stopped["output"])
    figure(request, "stopped_nodes", ",".join(stopped["output"]))
    figure(request, "write_probe_s", round(write["duration"], 1))
    figure(request, "restore_until_ready_s", round(started["duration"], 1))
    assert probes.api_write_succeeds(configuration=dict(restored)) is True
    assert_everything_restored(kubeha_cluster.identity.kube_system_uid, restored)


@EXPERIMENT
def test_kill_worker(restored: dict[str, str], kubeha_cluster: KubehaCluster, request: pytest.FixtureRequest) -> None:
    journal = run("kill-worker.json", restored)
    durations(request, journal)
    assert_steady_state_held(journal)
    [killed] = runs_of(journal, "run", "kill_nodes")
    [ready] = runs_of(journal, "run", "api_available")
    [started] = runs_of(journal, "run", "start_nodes")
    assert killed["status"] == "succeeded" and len(killed["output"]) == 1, describe(killed)
    assert ready["output"] is True, describe(ready)
    assert started["output"] == killed["output"], describe(started)
    figure(request, "killed_node", killed["output"][0])
    figure(request, "start_until_ready_s", round(started["duration"], 1))
    assert_everything_restored(kubeha_cluster.identity.kube_system_uid, restored)
