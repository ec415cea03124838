"""Inner session of tests/integration/test_framework_live.py (collected only there, with ``-o python_files=case_*.py``).

One disruptive test powers off (``hard``) the control-plane node named by ``KUBEHA_CASE_NODE``, writes the file named by
``KUBEHA_CASE_MARKER`` once the fault is in place, then sleeps until the outer test interrupts the session with
SIGINT. The fault must be restored on the way out.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kubeha.faults import Journal, node_stopped
from kubeha.providers.base import Provider

NODE_VAR = "KUBEHA_CASE_NODE"
MARKER_VAR = "KUBEHA_CASE_MARKER"
# Far longer than the outer test waits before interrupting; a bound so that a lost signal cannot hang forever.
SLEEP_S = 600.0


@pytest.mark.disruptive(control_plane_nodes=1, reason="stops one control-plane node until interrupted")
def test_control_plane_node_stopped_until_interrupted(provider: Provider, journal: Journal) -> None:
    node, marker = os.environ.get(NODE_VAR), os.environ.get(MARKER_VAR)
    if not node or not marker:
        pytest.fail(f"{NODE_VAR} and {MARKER_VAR} must be set: this file is run by "
                    "tests/integration/test_framework_live.py", pytrace=False)
    with node_stopped(provider, node, journal=journal, hard=True) as fault:
        Path(marker).write_text(json.dumps({"node": node, "pid": os.getpid(), "injected_wall": fault.injected_wall}),
                                encoding="utf-8")
        time.sleep(SLEEP_S)
    pytest.fail(f"the session was not interrupted within {SLEEP_S:.0f} s of stopping node {node}", pytrace=False)
