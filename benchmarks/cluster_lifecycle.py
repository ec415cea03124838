"""Benchmark of the embedded cluster's lifecycle: build, create, delete; wall time per phase and peak memory.

    ./run python benchmarks/cluster_lifecycle.py            # warm: uses the caches that exist
    ./run python benchmarks/cluster_lifecycle.py --cold     # cold: empty Go caches, no kubeha images (tens of minutes)

Prints figures only; targets (fresh machine to Ready within 45 min, warm create within 8 min on 2 cores) are
compared in the output, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_S = 0.5
COLD_TARGET_S = 45 * 60
WARM_CREATE_TARGET_S = 8 * 60


@dataclass
class MemorySampler:
    """Peak of the host's used memory (MemTotal - MemAvailable) while running."""

    peak_bytes: int = 0
    baseline_bytes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @staticmethod
    def used() -> int:
        values = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
        return values["MemTotal"] - values["MemAvailable"]

    def __enter__(self) -> "MemorySampler":
        self.baseline_bytes = self.used()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak_bytes = max(self.peak_bytes, self.used())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def run_phase(name: str, args: list[str], env: dict[str, str]) -> dict[str, object]:
    with MemorySampler() as mem:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "fixtures.kind", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        seconds = time.monotonic() - start
    timings = [line.strip() for line in proc.stderr.splitlines() if line.startswith("  ") and " s  " in line]
    return {
        "phase": name, "seconds": round(seconds, 1), "exit": proc.returncode,
        "peak_used_gib": round(mem.peak_bytes / 1024**3, 2),
        "baseline_used_gib": round(mem.baseline_bytes / 1024**3, 2),
        "sub_phases": timings, "error": proc.stderr[-2000:] if proc.returncode else "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="empty Go caches and kubeha images first")
    parser.add_argument("--name", default="kubeha-bench")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    env = dict(os.environ)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if args.cold:
        tmp = tempfile.TemporaryDirectory(prefix="kubeha-cold-")
        env.update(GOCACHE=f"{tmp.name}/go-build", GOMODCACHE=f"{tmp.name}/gomod", XDG_CACHE_HOME=f"{tmp.name}/cache")
        images = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                                text=True).stdout.split()
        ours = [i for i in images if i.startswith(("kubeha.local/", "registry.k8s.io/", "kindest/"))]
        if ours:
            subprocess.run(["docker", "rmi", "-f", *ours], capture_output=True)
    results = [
        run_phase("build-images", ["build-images"], env),
        run_phase("create", ["create", "--name", args.name], env),
        run_phase("delete", ["delete", "--name", args.name], env),
    ]
    for r in results:
        print(f"{r['phase']:13} {r['seconds']:8.1f} s  exit {r['exit']}  peak host memory used "
              f"{r['peak_used_gib']} GiB (before: {r['baseline_used_gib']} GiB)")
        for line in r["sub_phases"]:  # type: ignore[union-attr]
            print(f"    {line}")
        if r["error"]:
            print(f"    error: {r['error']}")
    build_s = float(results[0]["seconds"])  # type: ignore[arg-type]
    create_s = float(results[1]["seconds"])  # type: ignore[arg-type]
    if args.cold:
        print(f"cold build + create: {build_s + create_s:.0f} s (target {COLD_TARGET_S} s)")
    else:
        print(f"warm create: {create_s:.0f} s (target {WARM_CREATE_TARGET_S} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
