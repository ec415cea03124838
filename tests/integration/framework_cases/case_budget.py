"""Inner session of tests/integration/test_framework_live.py (collected only there, with ``-o python_files=case_*.py``).

Four disruptive tests, each claiming one control-plane node from the fault budget and powering a control-plane node
off (``hard``: no shutdown grace, so the next test can strike as soon as the budget and the health gate let it) for
`HOLD_S` seconds: test i stops the i-th control-plane node in name order (wrapping around when there are fewer than
four). Run with ``-n 4``, their claims compete; each test writes what it did (node, grant, fault times) as JSON
into the directory named by ``KUBEHA_CASE_OUT`` for the outer test to compare with the coordinator log.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kubeha.coordination import Grant
from kubeha.faults import Journal, node_stopped
from kubeha.plugin import KubehaCluster
from kubeha.providers.base import NodeState, Provider

OUT_VAR = "KUBEHA_CASE_OUT"
TESTS = 4
HOLD_S = 10.0


@pytest.mark.disruptive(control_plane_nodes=1, reason="stops one control-plane node")
@pytest.mark.parametrize("index", range(TESTS))
def test_control_plane_node_stopped(
    index: int,
    request: pytest.FixtureRequest,
    kubeha_cluster: KubehaCluster,
    provider: Provider,
    journal: Journal,
    fault_budget: Grant,
) -> None:
    out = os.environ.get(OUT_VAR)
    if not out:
        pytest.fail(f"{OUT_VAR} is not set: this file is run by tests/integration/test_framework_live.py, which names "
                    "the directory for what each test did", pytrace=False)
    names = sorted(node.name for node in kubeha_cluster.topology.control_planes())
    node = names[index % len(names)]
    with node_stopped(provider, node, journal=journal, hard=True) as fault:
        state = provider.node_state(node)
        assert state is NodeState.STOPPED, f"node {node} is {state.value} right after the stop, expected stopped"
        time.sleep(HOLD_S)
    restored_wall = time.time()
    record = {
        "nodeid": request.node.nodeid,
        "index": index,
        "worker": os.environ.get("PYTEST_XDIST_WORKER"),
        "pid": os.getpid(),
        "node": node,
        "granted_wall": fault_budget.granted_wall,
        "waited_s": fault_budget.waited_s,
        "stop_started_wall": fault.started_wall,
        "injected_wall": fault.injected_wall,
        "restored_wall": restored_wall,
    }
    Path(out, f"fault-{index}.json").write_text(json.dumps(record), encoding="utf-8")
