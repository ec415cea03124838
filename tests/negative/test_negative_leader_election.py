"""HA-LE-01 must fail when leader election is off on every kube-controller-manager.

Every control-plane node's kube-controller-manager static pod manifest gets ``--leader-elect=false`` (a copy of the
original is kept on the node, outside the manifest directory); the originals are written back in ``finally`` and
the check waits until every instance runs with leader election again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kubeha.cluster.discovery import CONTROLLER_MANAGER_COMPONENT, leader_election_from_command, read_kube_system_pods
from suites.ha._support.kube import wait_for
from tests.negative.harness import NegativeCluster, set_command_flag

TEST = "suites/ha/test_leader_election.py::test_one_leader_holds_the_lease[kube-controller-manager]"
MANIFEST = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
# Outside the manifest directory: kubelet runs every file in that directory.
WORK_DIR = "/etc/kubernetes/kubeha-negative"
STAGED = f"{WORK_DIR}/kube-controller-manager.yaml"
BACKUP = f"{WORK_DIR}/kube-controller-manager.yaml.orig"
# kubelet notices a changed manifest within its sync period and restarts the static pod.
RESTART_TIMEOUT_S = 300.0


def _write_manifest(cluster: NegativeCluster, node: str, text: str) -> None:
    """Stage `text` next to the manifest directory and move it in with one rename, so kubelet never reads half."""
    cluster.docker_exec(node, ["mkdir", "-p", WORK_DIR])
    cluster.docker_exec(node, ["sh", "-c", f"cat > {STAGED} && mv {STAGED} {MANIFEST}"], stdin=text)


def _every_instance(cluster: NegativeCluster, nodes: tuple[str, ...], enabled: bool) -> Callable[[], bool | None]:
    def check() -> bool | None:
        pods = [pod for pod in read_kube_system_pods(cluster.client) if pod.component() == CONTROLLER_MANAGER_COMPONENT]
        settled = {
            pod.node
            for pod in pods
            if pod.ready and leader_election_from_command(CONTROLLER_MANAGER_COMPONENT, pod.main_command())[0].enabled is enabled
        }
        return True if settled >= set(nodes) else None

    return check


def test_leader_election_off_fails_ha_le_01(restored: NegativeCluster, tmp_path: Path) -> None:
    nodes = restored.control_planes()
    originals: dict[str, str] = {}
    try:
        for node in nodes:
            text = restored.docker_exec(node, ["cat", MANIFEST])
            restored.docker_exec(node, ["mkdir", "-p", WORK_DIR])
            restored.docker_exec(node, ["cp", MANIFEST, BACKUP])
            originals[node] = text
            _write_manifest(restored, node, set_command_flag(text, CONTROLLER_MANAGER_COMPONENT, "leader-elect", "false"))
        wait_for(
            _every_instance(restored, nodes, enabled=False),
            timeout_s=RESTART_TIMEOUT_S,
            what=f"every kube-controller-manager on {', '.join(nodes)} to run with --leader-elect=false",
        )
        run = restored.run_suite([TEST], tmp_path)
    finally:
        for node, text in originals.items():
            _write_manifest(restored, node, text)
        if originals:
            wait_for(
                _every_instance(restored, tuple(originals), enabled=True),
                timeout_s=RESTART_TIMEOUT_S,
                what="every kube-controller-manager to run with leader election again",
            )
        for node in originals:
            restored.docker_exec(node, ["rm", "-rf", WORK_DIR])
    run.assert_failed("HA-LE-01", "--leader-elect=false", "kube-controller-manager")
