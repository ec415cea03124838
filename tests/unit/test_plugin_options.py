"""Validation of the kubeha command-line options: every mistake is a usage error that says what to pass."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

UID = "0b7f3c2e-1d2a-4c5b-9e8f-0123456789ab"

KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: {current}
clusters:
- name: lab
  cluster:
    server: {server}
contexts:
- name: lab
  context:
    cluster: lab
    user: admin
- name: other
  context:
    cluster: lab
    user: admin
users:
- name: admin
  user:
    token: not-a-real-token
"""


def write_kubeconfig(pytester: pytest.Pytester, *, current: str = "lab", server: str = "https://127.0.0.1:1") -> Path:
    path = pytester.path / "kubeconfig"
    path.write_text(KUBECONFIG.format(current=current, server=server))
    return path


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    return pytester.runpytest("-p", "kubeha.plugin", "-p", "no:cacheprovider", *args)


def usage_error(result: pytest.RunResult) -> str:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    return result.stderr.str()


def test_no_options_run_without_a_cluster(pytester: pytest.Pytester) -> None:
    result = run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["kubeha: no cluster (this session needs none)"])
    assert not (pytester.path / "out").exists()


def test_missing_kubeconfig(pytester: pytest.Pytester) -> None:
    message = usage_error(run(pytester, "--kubeconfig", "/x"))
    assert (
        "--kubeconfig /x: no such file; pass the path of a kubeconfig or omit it to use the embedded kind cluster"
        in message
    )


def test_kubeconfig_and_cluster_exclude_each_other(pytester: pytest.Pytester) -> None:
    path = write_kubeconfig(pytester)
    message = usage_error(run(pytester, "--kubeconfig", str(path), "--cluster", "kind"))
    assert "pass --kubeconfig PATH to attach to an existing cluster, or --cluster kind for the embedded one" in message


def test_context_needs_a_kubeconfig(pytester: pytest.Pytester) -> None:
    message = usage_error(run(pytester, "--context", "lab"))
    assert "--context lab selects a context of --kubeconfig, which was not given" in message


def test_unknown_context_lists_the_known_ones(pytester: pytest.Pytester) -> None:
    path = write_kubeconfig(pytester)
    message = usage_error(run(pytester, "--kubeconfig", str(path), "--context", "prod"))
    assert "--context prod: no such context" in message
    assert "pass one of lab, other" in message


def test_kubeconfig_without_current_context(pytester: pytest.Pytester) -> None:
    path = write_kubeconfig(pytester, current="")
    message = usage_error(run(pytester, "--kubeconfig", str(path)))
    assert "has no current-context; pass --context with one of lab, other" in message


def test_kubeconfig_that_is_not_yaml(pytester: pytest.Pytester) -> None:
    path = pytester.path / "kubeconfig"
    path.write_text("{not: [yaml")
    message = usage_error(run(pytester, "--kubeconfig", str(path)))
    assert "not valid YAML" in message


def test_credentials_never_appear_in_messages(pytester: pytest.Pytester) -> None:
    path = write_kubeconfig(pytester)
    result = run(pytester, "--kubeconfig", str(path), "--context", "prod")
    assert "not-a-real-token" not in result.stdout.str() + result.stderr.str()


def test_allow_faults_needs_an_attached_cluster(pytester: pytest.Pytester) -> None:
    message = usage_error(run(pytester, "--allow-faults", UID))
    assert "the embedded kind cluster needs no consent; omit --allow-faults, or pass --kubeconfig PATH" in message


def test_allow_faults_must_be_a_uid(pytester: pytest.Pytester) -> None:
    path = write_kubeconfig(pytester)
    message = usage_error(run(pytester, "--kubeconfig", str(path), "--allow-faults", "yes"))
    assert "--allow-faults yes: not a UID" in message
    assert "kubectl get namespace kube-system -o jsonpath='{.metadata.uid}'" in message


def test_keep_cluster_is_for_the_embedded_cluster(pytester: pytest.Pytester) -> None:
    path = write_kubeconfig(pytester)
    message = usage_error(run(pytester, "--kubeconfig", str(path), "--keep-cluster"))
    assert "--keep-cluster applies to the embedded kind cluster only" in message


def test_cluster_name_is_for_the_embedded_cluster(pytester: pytest.Pytester) -> None:
    path = write_kubeconfig(pytester)
    message = usage_error(run(pytester, "--kubeconfig", str(path), "--cluster-name", "x"))
    assert "--cluster-name x names the embedded kind cluster" in message


def test_invalid_cluster_name(pytester: pytest.Pytester) -> None:
    message = usage_error(run(pytester, "--cluster-name", "Bad_Name"))
    assert "--cluster-name Bad_Name: not a valid kind cluster name" in message


def test_inventory_is_for_an_attached_cluster(pytester: pytest.Pytester) -> None:
    message = usage_error(run(pytester, "--inventory", "inventory.yaml"))
    assert "omit --inventory, or pass --kubeconfig PATH" in message


def test_missing_inventory(pytester: pytest.Pytester) -> None:
    path = write_kubeconfig(pytester)
    message = usage_error(run(pytester, "--kubeconfig", str(path), "--inventory", "missing.yaml"))
    assert "--inventory missing.yaml:" in message
    assert "does not exist" in message


def test_report_dir_that_is_a_file(pytester: pytest.Pytester) -> None:
    (pytester.path / "reports").write_text("")
    message = usage_error(run(pytester, "--report-dir", "reports"))
    assert "exists and is not a directory" in message


def test_unknown_profile_is_rejected_by_the_parser(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--profile", "strict")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid choice: 'strict'" in result.stderr.str()


def test_unreachable_attached_cluster(pytester: pytest.Pytester) -> None:
    path = write_kubeconfig(pytester, server="https://127.0.0.1:9")
    message = usage_error(run(pytester, "--kubeconfig", str(path)))
    assert f"cannot read the cluster through {path} (context lab)" in message
    assert "check that the cluster is up" in message


def test_cluster_required_hook_without_options_means_the_embedded_cluster(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def fake_ensure_cluster(name: str, **_: object) -> object:
        calls.append(name)
        raise pytest.UsageError(f"ensure_cluster({name}) called")

    monkeypatch.setattr("fixtures.kind.api.ensure_cluster", fake_ensure_cluster)
    pytester.makeconftest(
        "def pytest_kubeha_cluster_required(config):\n    return True\n"
    )
    message = usage_error(run(pytester, "--cluster-name", "ha-test"))
    assert calls == ["ha-test"]
    assert "ensure_cluster(ha-test) called" in message


def test_cluster_required_hook_may_decline(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("def pytest_kubeha_cluster_required(config):\n    return False\n")
    run(pytester).assert_outcomes(passed=1)


def test_collect_only_never_sets_up_a_cluster(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--kubeconfig", str(write_kubeconfig(pytester, server="https://127.0.0.1:9")), "--collect-only")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["kubeha: no cluster (--collect-only runs nothing)", "*test_nothing*"])
