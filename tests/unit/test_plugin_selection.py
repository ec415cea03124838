"""Whether a session needs a cluster, decided from the paths it selected: the decision function, the selected paths,
and tests/conftest.py's implementation of ``pytest_kubeha_cluster_required``, seen before the session starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeha.cluster.identity import ClusterIdentity
from kubeha.pytest_plugin.controller import Controller
from kubeha.pytest_plugin.runcontext import ClusterHandle
from kubeha.pytest_plugin.selection import needs_cluster, selected_paths

pytest_plugins = ["pytester"]

REPO = Path("/repo")
TESTS = REPO / "tests"
CLUSTER_DIRS = (TESTS / "integration", TESTS / "negative")
TESTS_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


@pytest.mark.parametrize(
    ("selected", "expected"),
    [
        (["tests/integration"], True),
        (["tests/negative/test_refusals.py"], True),
        (["tests"], True),  # contains integration/ and negative/
        (["."], True),  # the whole repository contains them too
        (["tests/unit", "tests/integration/test_ssh_provider.py"], True),
        (["tests/unit"], False),
        (["tests/unit/test_core_quorum.py", "tests/unit/test_core_outage.py"], False),
        (["tests/integration_helpers"], False),  # a sibling whose name only starts the same
        (["tests/unit", "suites/ha"], None),  # suites/ha/conftest.py answers for its own
        (["suites/ha"], None),
    ],
)
def test_needs_cluster(selected: list[str], expected: bool | None) -> None:
    paths = [REPO / path for path in selected]
    assert needs_cluster(paths, cluster_dirs=CLUSTER_DIRS, within=TESTS) is expected


def test_selected_paths_drop_test_names_and_resolve(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfig("tests/unit/test_a.py::test_one[x-y]", "tests/integration", "../elsewhere")
    assert selected_paths(config) == (
        (pytester.path / "tests" / "unit" / "test_a.py").resolve(),
        (pytester.path / "tests" / "integration").resolve(),
        (pytester.path.parent / "elsewhere").resolve(),
    )


def test_selected_paths_are_unknown_with_pyargs(pytester: pytest.Pytester) -> None:
    assert selected_paths(pytester.parseconfig("--pyargs", "kubeha")) is None


# -- tests/conftest.py, in a copy of the repository's layout -----------------------------------------------------------


@pytest.fixture
def layout(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """tests/{unit,integration,negative} with the repository's tests/conftest.py; setting the cluster up is faked."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    for directory in ("unit", "integration", "negative"):
        (pytester.path / "tests" / directory).mkdir(parents=True)
        (pytester.path / "tests" / directory / f"test_{directory}.py").write_text(f"def test_{directory}():\n    pass\n")
    (pytester.path / "tests" / "conftest.py").write_text(TESTS_CONFTEST.read_text(encoding="utf-8"))
    uid = "0b7f3c2e-1d2a-4c5b-9e8f-0123456789ab"

    def set_up(self: Controller) -> ClusterHandle:
        return ClusterHandle(
            kubeconfig=pytester.path / "kubeconfig",
            context=None,
            embedded=True,
            name="fake",
            identity=ClusterIdentity(api_url="https://203.0.113.10:6443", kube_system_uid=uid, kubernetes_version="v1"),
            consent=None,
        )

    monkeypatch.setattr(Controller, "_set_up_cluster", set_up)


@pytest.mark.parametrize(
    ("args", "cluster"),
    [
        ((), True),  # testpaths: tests
        (("tests",), True),
        (("tests/integration",), True),
        (("tests/negative/test_negative.py::test_negative",), True),
        (("tests/unit",), False),
        (("tests/unit/test_unit.py",), False),
    ],
)
def test_tests_conftest_decides_before_the_session_starts(
    pytester: pytest.Pytester, layout: None, args: tuple[str, ...], cluster: bool
) -> None:
    result = pytester.runpytest("-p", "kubeha.plugin", "-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.OK
    if cluster:
        result.stdout.fnmatch_lines(["kubeha: cluster https://203.0.113.10:6443 *", "kubeha: embedded kind cluster fake*"])
    else:
        result.stdout.fnmatch_lines(["kubeha: no cluster (this session needs none)"])
