"""The main job, as users run it: `pytest suites/ha -n 4` on the embedded cluster passes and reports its figures.

The suite runs in its own pytest session (its own controller, coordinator and report), exactly as the README says;
it reuses the cluster this session set up and leaves it in place.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from reports.json_timeline import read_document

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SUITE_TIMEOUT_S = 45 * 60.0
WORKERS = "4"


def test_ha_suite_passes_on_the_embedded_cluster_with_four_workers(tmp_path: Path) -> None:
    """`pytest suites/ha -n 4` (the README's main job) exits 0 on the healthy embedded cluster."""
    report_dir = tmp_path / "reports"
    junit = tmp_path / "junit.xml"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/ha", "-n", WORKERS, "--cluster", "kind", "--keep-cluster",
         "--report-dir", str(report_dir), "--junitxml", str(junit), "-p", "no:cacheprovider", "-rA"],
        cwd=ROOT, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    wall_s = time.monotonic() - start
    tail = proc.stdout[-6000:]
    record = report_dir / "kubeha-run.json"
    figures: list[str] = []
    if record.exists():
        report, _ = read_document(record)
        for result in report.results:
            measured = ", ".join(f"{m.name}={m.value:.2f}{m.unit}" for m in result.measurements)
            figures.append(f"  {result.control_id:12} {result.verdict.value:8} {measured}")
    print(f"\n`pytest suites/ha -n {WORKERS}`: exit {proc.returncode} in {wall_s:.0f} s\n" + "\n".join(figures))
    assert proc.returncode == 0, f"the HA suite failed on the healthy embedded cluster:\n{tail}"
    assert record.exists(), f"the run wrote no report to {report_dir}:\n{tail}"
    assert figures, "the run report holds no control results"
    assert junit.exists() and "control_id" in junit.read_text(), "JUnit XML lacks the per-test evidence properties"
