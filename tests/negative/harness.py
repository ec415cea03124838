"""What the negative checks use: the embedded cluster as they break and restore it, and the suite runner.

`NegativeCluster` holds the embedded cluster's kubeconfig, identity, API client, kind provider and undo journal,
runs the suite's tests against it in a separate pytest process (`NegativeCluster.run_suite`, attached with
``--kubeconfig`` and ``--allow-faults``, acting on the nodes through `tests.negative.kind_provider`), and runs
commands in a node container for what the provider does not do (editing a static pod manifest, wiping a data
directory). `SuiteRun.assert_failed` checks that a control FAILED with a reason naming the cause.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubernetes.client import ApiClient

from kubeha.cluster.client import KubeconfigTarget, new_api_client
from kubeha.cluster.discovery import discover
from kubeha.cluster.health import HealthReport, wait_for_steady_state
from kubeha.cluster.identity import read_identity
from kubeha.core.model import ControlResult, Verdict
from kubeha.faults import Journal
from kubeha.probes.credentials import ApiEndpoint, KubeconfigCredentials
from kubeha.providers.kind import KindProvider

REPO_ROOT = Path(__file__).resolve().parents[2]
# One suite run: session start (identity, discovery, health gate), the test with its faults, the health gate after.
SUITE_OUTPUT_FILE = "pytest-output.txt"
SUITE_RUN_TIMEOUT_S = 1200.0
DOCKER_TIMEOUT_S = 60.0
# The cluster must be back in its steady state within this long after a broken variant is undone.
RECOVERY_TIMEOUT_S = 600.0
OUTPUT_TAIL_CHARS = 6000


@dataclass(frozen=True)
class SuiteRun:
    """A finished suite run: exit status, output, and the control results it wrote."""

    argv: tuple[str, ...]
    returncode: int
    output: str
    results: tuple[ControlResult, ...]

    def result(self, control_id: str) -> ControlResult:
        found = [result for result in self.results if result.control_id == control_id]
        assert found, (
            f"the suite run wrote no result for {control_id} (exit {self.returncode}); output:\n"
            f"{self.output[-OUTPUT_TAIL_CHARS:]}"
        )
        assert len(found) == 1, f"the suite run wrote {len(found)} results for {control_id}: select one test"
        return found[0]

    def assert_failed(self, control_id: str, *causes: str) -> ControlResult:
        """The control FAILED (not errored, not skipped) and its reason names every one of `causes`."""
        result = self.result(control_id)
        assert result.verdict is Verdict.FAILED, (
            f"{control_id} was {result.verdict.value}, not failed, against the broken cluster: {result.reason}\n"
            f"output:\n{self.output[-OUTPUT_TAIL_CHARS:]}"
        )
        missing = [cause for cause in causes if cause not in result.reason]
        assert not missing, f"{control_id} failed, but its reason does not name {missing}: {result.reason}"
        assert self.returncode != 0, f"the suite run exited {self.returncode} although {control_id} failed"
        return result


def read_results(report_dir: Path) -> tuple[ControlResult, ...]:
    """The control results a suite run wrote into ``<report_dir>/runs/<run>/results/*.json``."""
    results: list[ControlResult] = []
    for path in sorted(report_dir.glob("runs/*/results/*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        results.append(ControlResult.from_dict(document["result"], str(path)))
    return tuple(results)


class NegativeCluster:
    """The embedded cluster as the negative checks break and restore it."""

    def __init__(self, name: str, kubeconfig: Path) -> None:
        self.name = name
        self.kubeconfig = kubeconfig
        self.client: ApiClient = new_api_client(KubeconfigTarget(kubeconfig))
        self.uid = read_identity(self.client).kube_system_uid
        self.provider = KindProvider(name)
        self.journal = Journal(self.uid, provider_name=self.provider.name)
        self._credentials = KubeconfigCredentials(kubeconfig)

    @property
    def endpoint(self) -> ApiEndpoint:
        return self._credentials.endpoint

    def close(self) -> None:
        self._credentials.close()
        self.client.close()  # type: ignore[no-untyped-call]

    def control_planes(self) -> tuple[str, ...]:
        return tuple(node.name for node in discover(self.client).topology.control_planes())

    def wait_steady(self, *, expected_etcd_pods: int | None = None, timeout_s: float = RECOVERY_TIMEOUT_S) -> HealthReport:
        if expected_etcd_pods is None:
            expected_etcd_pods = len(discover(self.client).topology.etcd_members)
        return wait_for_steady_state(self.client, expected_etcd_pods=expected_etcd_pods, timeout_s=timeout_s)

    def docker_exec(self, node: str, argv: Sequence[str], *, stdin: str | None = None) -> str:
        """Run `argv` in node container `node`; its standard output. A non-zero exit fails the check."""
        command = ["docker", "exec", *(["-i"] if stdin is not None else []), node, *argv]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=DOCKER_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise AssertionError(f"`{' '.join(command)}` exited {done.returncode}: {done.stderr.strip()[-500:]}")
        return done.stdout

    def run_suite(self, nodeids: Sequence[str], report_dir: Path) -> SuiteRun:
        """Run the suite's `nodeids` against this cluster in a separate pytest process."""
        argv = (
            sys.executable,
            "-m",
            "pytest",
            *nodeids,
            "--kubeconfig",
            str(self.kubeconfig),
            "--allow-faults",
            self.uid,
            "-p",
            "tests.negative.kind_provider",
            "--negative-kind-cluster",
            self.name,
            "--report-dir",
            str(report_dir),
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
        )
        env = {key: value for key, value in os.environ.items() if key != "PYTEST_ADDOPTS"}
        done = subprocess.run(
            argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=SUITE_RUN_TIMEOUT_S, check=False
        )
        output = done.stdout + done.stderr
        # Kept beside the inner run's reports: pytest keeps a failed test's tmp_path, so the output stays readable
        # even when the outer session is stopped before it prints its failures.
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / SUITE_OUTPUT_FILE).write_text(output)
        return SuiteRun(argv, done.returncode, output, read_results(report_dir))


def set_command_flag(manifest: str, program: str, flag: str, value: str) -> str:
    """`manifest` (a static pod's YAML as kubeadm writes it) with ``--flag=value`` in `program`'s command list.

    An existing ``- --flag=...`` item is rewritten in place; otherwise the item is added right after the ``- program``
    item, with its indentation. Raises ValueError when the program's command item is not found.
    """
    lines = manifest.splitlines()
    prefix = f"--{flag}="
    end = "\n" if manifest.endswith("\n") else ""
    head = next((index for index, line in enumerate(lines) if line.strip() == f"- {program}"), None)
    if head is None:
        raise ValueError(f"no `- {program}` command item in the manifest: not a kubeadm static pod manifest of {program}")
    indent = lines[head][: lines[head].index("- ")]
    index = head + 1
    while index < len(lines) and lines[index].startswith(indent + "- "):
        if lines[index].strip().startswith("- " + prefix):
            lines[index] = f"{indent}- {prefix}{value}"
            return "\n".join(lines) + end
        index += 1
    lines.insert(head + 1, f"{indent}- {prefix}{value}")
    return "\n".join(lines) + end
