"""Error paths of the embedded cluster's host preparation, exercised for real (no fakes of the host)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.kind import host

ROOT = Path(__file__).resolve().parents[2]


def test_docker_missing_and_not_installable_names_the_fix(tmp_path: Path) -> None:
    """A host with neither docker nor apt on PATH: the error says what to install."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    code = (
        "from fixtures.kind import host\n"
        "from fixtures.kind.progress import Progress\n"
        "try:\n"
        "    host.ensure_docker(Progress())\n"
        "except host.HostError as exc:\n"
        "    print('HostError:', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": str(empty), "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "HostError: docker is not installed" in proc.stdout
    assert "apt-get install docker.io" in proc.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_too_little_disk_fails_early_with_the_numbers(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        with pytest.raises(host.HostError) as err:
            host.check_resources([mnt / "cache" / "kubeha"])
        message = str(err.value)
        assert "GiB free on the filesystem of" in message
        assert f"needs {host.MIN_FREE_DISK_GIB:.0f} GiB" in message
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_too_little_memory_is_refused_with_the_alternative() -> None:
    facts = host.host_facts()
    with pytest.raises(host.HostError, match="attach to an existing cluster with --kubeconfig"):
        host.check_resources([], min_memory_gib=facts.memory_gib + 1)


def test_runc_wrapper_strips_only_cap_sys_resource(tmp_path: Path) -> None:
    """Run the real wrapper script with a stand-in runc that prints the spec it receives."""
    fake_runc = tmp_path / "runc"
    fake_runc.write_text("#!/bin/sh\necho \"args: $*\"\n")
    fake_runc.chmod(0o755)
    wrapper = tmp_path / "wrapper"
    host.install_wrapper(wrapper, str(fake_runc))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    caps = ["CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"]
    import json
    spec = {"process": {"capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
                        "args": ["CAP_SYS_RESOURCE"]}}
    (bundle / "config.json").write_text(json.dumps(spec))
    out = subprocess.run([str(wrapper), "--root", "/x", "create", "--bundle", str(bundle), "ctr1"],
                         capture_output=True, text=True, check=True).stdout
    assert "args: --root /x create --bundle" in out
    after = json.loads((bundle / "config.json").read_text())
    for key in ("bounding", "effective", "permitted"):
        assert after["process"]["capabilities"][key] == ["CAP_CHOWN", "CAP_SYS_ADMIN"]
    assert after["process"]["args"] == ["CAP_SYS_RESOURCE"], "only capability lists may change"
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"capabilities": {"bounding": list(caps)}}))
    subprocess.run([str(wrapper), "exec", "--process", str(process), "ctr1"], check=True, capture_output=True)
    assert json.loads(process.read_text())["capabilities"]["bounding"] == ["CAP_CHOWN", "CAP_SYS_ADMIN"]
