"""The shipped chaostoolkit experiments: valid for chaoslib, and built the way the suite promises (no cluster)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from chaoslib.experiment import ensure_experiment_is_valid
from chaos.kubeha_chaos.session import CONFIGURATION_KEYS

EXPERIMENTS = Path(__file__).resolve().parents[2] / "chaos" / "experiments"
NAMES = ("kill-one-control-plane.json", "kill-control-planes-in-parallel.json", "lose-etcd-quorum.json",
         "kill-worker.json")
FAULTS = frozenset({"stop_nodes", "kill_nodes", "stop_component", "isolate_node"})
RESTORES = frozenset({"start_nodes", "start_component", "heal_node", "restore_all"})


def load(name: str) -> dict[str, Any]:
    experiment: dict[str, Any] = json.loads((EXPERIMENTS / name).read_text())
    return experiment


def activities(experiment: dict[str, Any], section: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = experiment.get(section, [])
    return found


def test_every_shipped_experiment_is_listed() -> None:
    assert sorted(path.name for path in EXPERIMENTS.glob("*.json")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_chaoslib_accepts_the_experiment(name: str) -> None:
    ensure_experiment_is_valid(load(name))


@pytest.mark.parametrize("name", NAMES)
def test_activities_are_public_kubeha_activities(name: str) -> None:
    experiment = load(name)
    hypothesis = experiment.get("steady-state-hypothesis", {}).get("probes", [])
    for activity in [*hypothesis, *activities(experiment, "method"), *activities(experiment, "rollbacks")]:
        provider = activity["provider"]
        module = importlib.import_module(provider["module"])
        assert provider["func"] in module.__all__, f"{activity['name']}: {provider['func']} is not public"


@pytest.mark.parametrize("name", NAMES)
def test_every_fault_has_a_restoring_rollback(name: str) -> None:
    experiment = load(name)
    faults = [a for a in activities(experiment, "method") if a["provider"]["func"] in FAULTS]
    rollbacks = [a["provider"]["func"] for a in activities(experiment, "rollbacks")]
    assert faults, "an experiment of this suite injects a fault"
    assert RESTORES & set(rollbacks), f"{name}: no rollback restores what the method broke"


@pytest.mark.parametrize("name", NAMES)
def test_configuration_reads_the_environment_with_defaults(name: str) -> None:
    configuration = load(name)["configuration"]
    for key in CONFIGURATION_KEYS.values():
        entry = configuration[key]
        assert entry["type"] == "env" and entry["key"].startswith("KUBEHA_") and "default" in entry
    assert configuration["kubeha_kubeconfig"]["default"] == "~/.cache/kubeha/clusters/kubeha/kubeconfig"
    assert configuration["kubeha_kind_cluster"]["default"] == "kubeha"
    assert configuration["kubeha_provider"]["default"] == "kind"
    assert configuration["kubeha_allowed_cluster_uid"]["default"] == ""  # no consent beyond the kind cluster


def test_parallel_experiment_runs_two_background_control_plane_stops() -> None:
    method = activities(load("kill-control-planes-in-parallel.json"), "method")
    stops = [a for a in method if a["provider"]["func"] == "stop_nodes"]
    assert len(stops) == 2
    assert all(a.get("background") is True for a in stops)
    assert all(a["provider"]["arguments"] == {"role": "control-plane", "count": 1} for a in stops)
    assert not any(a["provider"].get("arguments", {}).get("allow_beyond_tolerance") for a in method)


def test_quorum_experiment_is_deliberately_beyond_tolerance_and_probes_a_write() -> None:
    experiment = load("lose-etcd-quorum.json")
    [fault] = [a for a in activities(experiment, "method") if a["provider"]["func"] == "stop_nodes"]
    assert fault["provider"]["arguments"] == {"role": "control-plane", "count": 2, "allow_beyond_tolerance": True}
    assert "api_write_succeeds" in [a["provider"]["func"] for a in activities(experiment, "method")]
    assert [a["provider"]["func"] for a in activities(experiment, "rollbacks")] == [
        "start_nodes", "restore_all", "wait_for_steady_state"]


def test_kill_one_control_plane_probes_the_api_in_the_background() -> None:
    method = activities(load("kill-one-control-plane.json"), "method")
    assert method[0]["provider"]["func"] == "api_outage_during" and method[0]["background"] is True
    assert [a["provider"]["func"] for a in method[1:]] == ["stop_nodes", "start_nodes"]
