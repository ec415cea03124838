"""Lifecycle error paths of the embedded cluster, for real: an interrupted create leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("data") / "one-node.yaml"
NAME = "kubeha-interrupted"
CONTAINER_APPEAR_TIMEOUT_S = 300.0
EXIT_TIMEOUT_S = 180.0
POLL_S = 0.5


def containers(name: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label=io.x-k8s.kind.cluster={name}", "--format",
                          "{{.Names}}"], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_interrupted_create_leaves_no_containers_behind() -> None:
    """Ctrl-C while kind is creating nodes: the CLI exits 130 and no container of that cluster remains."""
    assert not containers(NAME), f"leftover containers from an earlier run: {containers(NAME)}"
    proc = subprocess.Popen([sys.executable, "-m", "fixtures.kind", "create", "--name", NAME, "--config", str(CONFIG)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + CONTAINER_APPEAR_TIMEOUT_S
        while not containers(NAME):
            assert proc.poll() is None, f"create ended before any container existed:\n{proc.stdout.read() if proc.stdout else ''}"
            assert time.monotonic() < deadline, "no container appeared: the create never reached kind"
            time.sleep(POLL_S)
        seen = containers(NAME)
        # As Ctrl-C in a terminal does: to the whole process group (the CLI and the kind it runs).
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=EXIT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leftovers = containers(NAME)
        if leftovers:
            subprocess.run(["docker", "rm", "-f", "-v", *leftovers], capture_output=True)
    print(f"\ninterrupted while {seen} existed; exit {proc.returncode}; output tail:\n{output[-600:]}")
    assert proc.returncode == 130, f"expected exit 130 after SIGINT, got {proc.returncode}:\n{output[-2000:]}"
    assert not leftovers, f"the interrupted create left containers behind: {leftovers}"
