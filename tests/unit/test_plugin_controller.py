"""The controller/worker wiring under pytest-xdist: run context hand-over, results gathered from every worker,
serial tests alone, and the replay of faults left by a worker that crashed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeha.cluster.discovery import Discovery
from kubeha.cluster.identity import ClusterIdentity
from kubeha.consent import Consent, ConsentSource
from kubeha.core.topology import EtcdMember, EtcdMode, Node, Role, Topology
from kubeha.pytest_plugin.controller import Controller
from kubeha.pytest_plugin.runcontext import ClusterHandle

pytest_plugins = ["pytester"]

UID = "0b7f3c2e-1d2a-4c5b-9e8f-0123456789ab"
API_URL = "https://203.0.113.10:6443"

CONFTEST = '''
import time
from pathlib import Path

import pytest

from kubeha.cluster.health import HealthReport
from kubeha.cluster.identity import ClusterIdentity
from kubeha.consent import Consent, ConsentSource
from kubeha.core.topology import EtcdMember, EtcdMode, Node, Role, Topology
from kubeha.plugin import KubehaCluster
from kubeha.providers.base import NodeState

HERE = Path(__file__).parent
UID = "{uid}"
API_URL = "{api_url}"


def log(name, text):
    with open(HERE / name, "a") as handle:
        handle.write(text + "\\n")


def topology():
    cps = ["cp-1", "cp-2", "cp-3"]
    nodes = [Node(n, frozenset({{Role.CONTROL_PLANE, Role.ETCD}}), f"10.0.0.{{i}}") for i, n in enumerate(cps, 1)]
    nodes += [Node(n, frozenset({{Role.WORKER}}), f"10.0.1.{{i}}") for i, n in enumerate(["w-1", "w-2", "w-3"], 1)]
    members = [EtcdMember(n, f"https://{{n}}:2380", f"https://{{n}}:2379", n) for n in cps]
    return Topology(nodes=tuple(nodes), etcd_members=tuple(members), etcd_mode=EtcdMode.STACKED)


class FakeProvider:
    name = "fake"

    def node_names(self):
        return tuple(node.name for node in topology().nodes)

    def node_state(self, node):
        return NodeState.RUNNING

    def __getattr__(self, operation):
        def call(*args):
            log("provider-calls.log", " ".join([operation, *map(str, args)]))
        return call


class Gate:
    def check(self):
        return HealthReport(problems=())

    def wait(self, timeout_s=1.0):
        return HealthReport(problems=())


@pytest.fixture(scope="session")
def kubeha_cluster():
    identity = ClusterIdentity(api_url=API_URL, kube_system_uid=UID, kubernetes_version="v1.34.3")
    return KubehaCluster(
        identity=identity,
        kubeconfig=HERE / "kubeconfig",
        context=None,
        topology=topology(),
        embedded=True,
        name="fake",
        consent=Consent(UID, API_URL, ConsentSource.EMBEDDED),
    )


@pytest.fixture(scope="session")
def steady_state():
    return Gate()


def pytest_kubeha_make_provider(config, cluster):
    return FakeProvider()


def pytest_kubeha_write_reports(config, report, timeline, directory):
    import json
    path = directory / "fake-report.json"
    path.write_text(json.dumps(report.to_dict()))
    (directory / "fake-timeline.txt").write_text("\\n".join(f"{{e.source}} {{e.kind}}" for e in timeline.events()))
    return [path]


@pytest.fixture
def interval(request):
    start = time.monotonic()
    yield
    log("intervals.log", f"{{request.node.name}} {{start}} {{time.monotonic()}}")
'''.format(uid=UID, api_url=API_URL)


def _topology() -> Topology:
    cps = ["cp-1", "cp-2", "cp-3"]
    nodes = [Node(n, frozenset({Role.CONTROL_PLANE, Role.ETCD}), f"10.0.0.{i}") for i, n in enumerate(cps, 1)]
    nodes += [Node(n, frozenset({Role.WORKER}), f"10.0.1.{i}") for i, n in enumerate(["w-1", "w-2", "w-3"], 1)]
    members = [EtcdMember(n, f"https://{n}:2380", f"https://{n}:2379", n) for n in cps]
    return Topology(nodes=tuple(nodes), etcd_members=tuple(members), etcd_mode=EtcdMode.STACKED)


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def controller_cluster(monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester) -> None:
    """Make the controller set up the fake cluster instead of kind (the workers use the conftest's fixtures)."""

    def set_up(self: Controller) -> ClusterHandle:
        self.discovery = Discovery(topology=_topology(), lb_distinct_from_nodes=True)
        return ClusterHandle(
            kubeconfig=pytester.path / "kubeconfig",
            context=None,
            embedded=True,
            name="fake",
            identity=ClusterIdentity(api_url=API_URL, kube_system_uid=UID, kubernetes_version="v1.34.3"),
            consent=Consent(UID, API_URL, ConsentSource.EMBEDDED),
            created=False,
        )

    monkeypatch.setattr(Controller, "_set_up_cluster", set_up)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST)
    return pytester.runpytest("-p", "kubeha.plugin", "-p", "no:cacheprovider", "--strict-markers", "-rs", *args)


def test_results_from_every_worker_reach_the_report(pytester: pytest.Pytester, controller_cluster: None) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        @pytest.mark.control("HA-WRK-01", "Worker loss", "Pods MUST be rescheduled when a worker is down")
        @pytest.mark.disruptive(workers=1)
        def test_worker(n, provider, kubeha_result, fault_budget):
            provider.stop_node(f"w-{n % 3 + 1}")
            kubeha_result.measure("reschedule_time", 1.0 + n, "s", budget=10)
            kubeha_result.evidence("grant", fault_budget.reason)
        """
    )
    result = run(pytester, "-n", "2", "--cluster", "kind")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            f"kubeha: cluster {API_URL} (kube-system UID {UID}, Kubernetes v1.34.3)",
            "kubeha: embedded kind cluster fake (existing)",
        ]
    )
    report = json.loads((pytester.path / "out" / "reports" / "fake-report.json").read_text())
    assert sorted(r["measurements"][0]["value"] for r in report["results"]) == [1.0, 2.0, 3.0, 4.0]
    assert {r["verdict"] for r in report["results"]} == {"passed"}
    assert all(r["evidence"][0]["text"].startswith("granted") for r in report["results"])
    timeline = (pytester.path / "out" / "reports" / "fake-timeline.txt").read_text().splitlines()
    assert timeline.count("coordinator grant") == 4
    assert timeline.count("coordinator release") == 4
    result.stdout.fnmatch_lines(["*embedded cluster fake kept: it existed before this session*"])


def test_serial_test_runs_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_shared(n, kubeha_cluster, interval):
            time.sleep(0.3)

        @pytest.mark.serial
        def test_serial(kubeha_cluster, interval):
            time.sleep(0.5)
        """
    )
    run(pytester, "-n", "2").assert_outcomes(passed=5)
    intervals: dict[str, tuple[float, float]] = {}
    for line in (pytester.path / "intervals.log").read_text().splitlines():
        name, began, ended = line.split()
        intervals[name] = (float(began), float(ended))
    serial_start, serial_end = intervals.pop("test_serial")
    assert len(intervals) == 4
    for name, (start, end) in intervals.items():
        assert end <= serial_start or start >= serial_end, f"{name} overlapped the serial test"


def test_faults_of_a_crashed_worker_are_replayed(pytester: pytest.Pytester, controller_cluster: None) -> None:
    pytester.makepyfile(
        """
        import os
        import pytest
        from kubeha.faults import node_stopped

        @pytest.mark.disruptive(workers=1)
        def test_crash(provider, journal):
            fault = node_stopped(provider, "w-2", journal=journal)
            fault.__enter__()
            os._exit(1)
        """
    )
    result = run(pytester, "-n", "1", "--cluster", "kind", "--max-worker-restart", "0")
    calls = (pytester.path / "provider-calls.log").read_text().splitlines()
    assert calls == ["stop_node w-2", "start_node w-2"]
    result.stdout.fnmatch_lines(["*worker gw0 crashed*undid 1 fault(s) left in place", "undone: start node w-2 (pid *)"])
    assert result.ret != pytest.ExitCode.OK
    # Its claim is freed only after its fault is undone, and the coordinator logs that as a reclaim.
    result.stdout.fnmatch_lines(["released the fault-budget claim(s) of crashed worker gw0: *test_crash*"])
    timeline = (pytester.path / "out" / "reports" / "fake-timeline.txt").read_text().splitlines()
    assert timeline.index("journal replay") < timeline.index("coordinator reclaim")
    [run_dir] = (pytester.path / "out" / "reports" / "runs").iterdir()
    log = [json.loads(line) for line in (run_dir / "coordinator" / "log.jsonl").read_text().splitlines()]
    reclaims = [record for record in log if record["event"] == "reclaim"]
    assert [record["holder"] for record in reclaims] == ["test_faults_of_a_crashed_worker_are_replayed.py::test_crash"]
    assert "worker gw0 crashed" in reclaims[0]["detail"] and reclaims[0]["ledger"] is not None


def test_certification_fails_when_no_control_produced_a_result(
    pytester: pytest.Pytester, controller_cluster: None
) -> None:
    pytester.makepyfile("def test_plain(kubeha_cluster):\n    pass\n")
    result = run(pytester, "--cluster", "kind", "--profile", "certification")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["FAILED: run report verdict failed: no control produced a result*"])


def test_default_profile_accepts_a_run_without_controls(pytester: pytest.Pytester, controller_cluster: None) -> None:
    pytester.makepyfile("def test_plain(kubeha_cluster):\n    pass\n")
    result = run(pytester, "--cluster", "kind")
    assert result.ret == pytest.ExitCode.OK
    report = json.loads((pytester.path / "out" / "reports" / "fake-report.json").read_text())
    assert report["results"] == []
