"""The plugin's per-test machinery against a fake cluster: needs, consent, dry run, fault budget, health gate,
results and the certification profile.

The fake cluster is a conftest in the pytester directory that overrides the ``kubeha_cluster`` and ``steady_state``
fixtures and implements ``pytest_kubeha_make_provider`` with a provider that logs every call to a file. Its shape is
read from ``fake.json`` so each test states the cluster it needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeha.plugin import NOT_RUN_PREFIX

pytest_plugins = ["pytester"]

UID = "0b7f3c2e-1d2a-4c5b-9e8f-0123456789ab"
API_URL = "https://203.0.113.10:6443"

FAKE_CONFTEST = '''
import json
from pathlib import Path

import pytest

from kubeha.cluster.health import HealthReport
from kubeha.cluster.identity import ClusterIdentity
from kubeha.consent import consent_for
from kubeha.core.topology import EtcdMember, EtcdMode, LoadBalancer, Node, Role, Topology
from kubeha.plugin import KubehaCluster
from kubeha.providers.base import LoadBalancerConfig, NodeState

HERE = Path(__file__).parent
FAKE = json.loads((HERE / "fake.json").read_text())
CALLS = HERE / "provider-calls.log"


def log(text):
    with open(CALLS, "a") as handle:
        handle.write(text + "\\n")


def topology():
    cps = [f"cp-{i}" for i in range(1, 4)]
    workers = [f"w-{i}" for i in range(1, FAKE["workers"] + 1)]
    nodes = [Node(name, frozenset({Role.CONTROL_PLANE, Role.ETCD}), f"10.0.0.{i}") for i, name in enumerate(cps, 1)]
    nodes += [Node(name, frozenset({Role.WORKER}), f"10.0.1.{i}") for i, name in enumerate(workers, 1)]
    members = [EtcdMember(name, f"https://10.0.0.{i}:2380", f"https://10.0.0.{i}:2379", name) for i, name in enumerate(cps, 1)]
    return Topology(
        nodes=tuple(nodes),
        etcd_members=tuple(members),
        etcd_mode=EtcdMode.STACKED,
        load_balancer=LoadBalancer("203.0.113.10", 6443, "haproxy"),
    )


class FakeProvider:
    def __init__(self):
        log("created")

    @property
    def name(self):
        return "fake"

    def node_names(self):
        return tuple(node.name for node in topology().nodes)

    def node_state(self, node):
        log(f"node_state {node}")
        return NodeState.RUNNING

    def load_balancer_config(self):
        log("load_balancer_config")
        return LoadBalancerConfig("haproxy", "")

    def __getattr__(self, operation):
        def call(*args):
            log(" ".join([operation, *map(str, args)]))
        return call


class FakeGate:
    def __init__(self):
        self.calls = 0

    def check(self):
        return self.wait()

    def wait(self, timeout_s=1.0):
        self.calls += 1
        log("steady_state")
        healthy = FAKE.get("healthy", True)
        return HealthReport(problems=() if healthy else ("node cp-2 is not Ready (NodeStatusUnknown)",))


@pytest.fixture(scope="session")
def kubeha_cluster():
    identity = ClusterIdentity(api_url=FAKE["api_url"], kube_system_uid=FAKE["uid"], kubernetes_version="v1.34.3")
    consent = consent_for(identity, embedded=FAKE["embedded"], allow_faults=FAKE.get("allow_faults"))
    return KubehaCluster(
        identity=identity,
        kubeconfig=HERE / "kubeconfig",
        context=None,
        topology=topology(),
        embedded=FAKE["embedded"],
        name="fake",
        consent=consent,
    )


@pytest.fixture(scope="session")
def steady_state():
    return FakeGate()


def pytest_kubeha_make_provider(config, cluster):
    return FakeProvider()


def pytest_kubeha_junit_properties(result):
    return [("control_id", result.control_id), ("verdict", result.verdict.value)]


def pytest_kubeha_write_reports(config, report, timeline, directory):
    path = directory / "fake-report.json"
    path.write_text(json.dumps(report.to_dict()))
    return [path]
'''


def fake_cluster(
    pytester: pytest.Pytester,
    *,
    workers: int = 2,
    embedded: bool = True,
    healthy: bool = True,
    allow_faults: str | None = None,
) -> None:
    (pytester.path / "fake.json").write_text(
        json.dumps(
            {
                "workers": workers,
                "embedded": embedded,
                "healthy": healthy,
                "allow_faults": allow_faults,
                "uid": UID,
                "api_url": API_URL,
            }
        )
    )
    pytester.makeconftest(FAKE_CONFTEST)


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo journals go to $XDG_STATE_HOME; keep them out of the real home directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "kubeha.plugin", "-p", "no:cacheprovider", "--strict-markers", "-rs", *args)


def provider_calls(pytester: pytest.Pytester) -> list[str]:
    path = pytester.path / "provider-calls.log"
    return path.read_text().splitlines() if path.exists() else []


def provider_operations(pytester: pytest.Pytester) -> list[str]:
    """Calls on the provider, leaving out its creation (session fixtures are set up before the per-test gate)."""
    return [call for call in provider_calls(pytester) if call != "created"]


DISRUPTIVE_TEST = '''
import pytest
from pathlib import Path
from kubeha.faults import node_stopped

@pytest.fixture
def stopped_worker(provider, journal):
    with node_stopped(provider, "w-1", journal=journal) as record:
        yield record

@pytest.mark.control("HA-WRK-01", "Workloads survive a worker loss", "Workloads MUST keep running while one worker is down")
@pytest.mark.disruptive(workers=1, reason="stops one worker")
def test_worker_down(stopped_worker, provider, kubeha_result):
    Path("body-ran").write_text("yes")
    provider.pause_node("w-2")
    kubeha_result.measure("pods_lost", 0, "pods", budget=0)
'''


# -- needs ------------------------------------------------------------------------------------------------------------


def test_unmet_needs_are_not_run_with_the_reason(pytester: pytest.Pytester) -> None:
    fake_cluster(pytester, workers=1)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.needs(workers=2)
        def test_two_workers():
            pass

        @pytest.mark.needs(control_planes=3, workers=1)
        def test_fits():
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([f"*{NOT_RUN_PREFIX}cluster has 1 worker, test needs 2*"])
    result.stdout.fnmatch_lines(["NOT-RUN *test_two_workers: cluster has 1 worker, test needs 2"])


# -- consent ------------------------------------------------------------------------------------------------------------


def test_attached_cluster_without_consent_refuses_faults(pytester: pytest.Pytester) -> None:
    fake_cluster(pytester, embedded=False)
    pytester.makepyfile(DISRUPTIVE_TEST)
    result = run(pytester)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            f"*{NOT_RUN_PREFIX}refusing to inject faults into the cluster at {API_URL}: it was not created by this "
            f"suite and no consent was given; if every node of this cluster may be disrupted, pass "
            f"--allow-faults {UID}*"
        ]
    )
    assert provider_operations(pytester) == []
    assert not (pytester.path / "body-ran").exists()


def test_attached_cluster_with_consent_for_another_cluster(pytester: pytest.Pytester) -> None:
    other = "11111111-2222-3333-4444-555555555555"
    fake_cluster(pytester, embedded=False, allow_faults=other)
    pytester.makepyfile(DISRUPTIVE_TEST)
    result = run(pytester)
    # consent_for refuses a UID that is not this cluster's: the fake conftest fails to build the cluster.
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*--allow-faults {other} was given, but the cluster at {API_URL} has kube-system UID {UID}*"])
    assert provider_calls(pytester) == []


def test_attached_cluster_with_consent_runs_faults(pytester: pytest.Pytester) -> None:
    fake_cluster(pytester, embedded=False, allow_faults=UID)
    pytester.makepyfile(DISRUPTIVE_TEST)
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert provider_calls(pytester) == ["created", "stop_node w-1", "pause_node w-2", "start_node w-1", "steady_state"]


# -- dry run ------------------------------------------------------------------------------------------------------------


def test_dry_run_touches_nothing_and_prints_the_plan(pytester: pytest.Pytester) -> None:
    fake_cluster(pytester)
    pytester.makepyfile(
        DISRUPTIVE_TEST
        + '''

def test_reads_the_cluster(kubeha_cluster):
    Path("read-ran").write_text("yes")

def test_unit():
    pass
'''
    )
    result = run(pytester, "--dry-run")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*kubeha dry run: planned faults*",
            "*test_worker_down",
            "    claim: *test_worker_down (shared: 1 worker_node) - stops one worker",
            "    takes down: 1 worker_node (limit 1)",
            "    targets: 1 of worker_node: w-1, w-2",
            "*kubeha: tests that proved nothing*",
            "NOT-RUN *test_worker_down: dry run",
            "NOT-RUN *test_reads_the_cluster: dry run",
            f"*{NOT_RUN_PREFIX}dry run*",
        ]
    )
    assert result.stdout.str().count("    claim: ") == 1
    assert provider_calls(pytester) == []
    assert not (pytester.path / "body-ran").exists()
    assert not (pytester.path / "read-ran").exists()
    assert not (pytester.path / "out" / "reports" / "fake-report.json").exists()


def test_dry_run_never_sets_up_module_fixtures_that_use_cluster_setup(pytester: pytest.Pytester) -> None:
    fake_cluster(pytester)
    pytester.makepyfile(
        '''
from pathlib import Path

import pytest

from kubeha.plugin import cluster_setup

@pytest.fixture(scope="module")
def workload(request, kubeha_cluster):
    with cluster_setup(request, "workload set-up"):
        Path("set-up-ran").write_text("yes")
    yield

def test_uses_workload(workload):
    pass
'''
    )
    result = run(pytester, "--dry-run")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["NOT-RUN *test_uses_workload: dry run"])
    assert not (pytester.path / "set-up-ran").exists()


def test_cluster_setup_waits_while_a_serial_test_runs(pytester: pytest.Pytester) -> None:
    """Module set-up in another xdist worker starts only once the serial test has finished."""
    fake_cluster(pytester)
    pytester.makepyfile(
        test_serial='''
import time
from pathlib import Path

import pytest

@pytest.mark.serial
def test_serial(kubeha_cluster):
    Path("serial-started").write_text(str(time.time()))
    time.sleep(3)
    Path("serial-ended").write_text(str(time.time()))
''',
        test_module_env='''
import time
from pathlib import Path

import pytest

from kubeha.plugin import cluster_setup

@pytest.fixture(scope="module")
def env(request, kubeha_cluster):
    deadline = time.monotonic() + 30
    while not Path("serial-started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with cluster_setup(request, "env set-up"):
        Path("set-up-at").write_text(str(time.time()))
    yield

def test_with_env(env):
    pass
''',
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=2)
    ended = float((pytester.path / "serial-ended").read_text())
    set_up = float((pytester.path / "set-up-at").read_text())
    assert set_up >= ended, f"module set-up ran {ended - set_up:.2f} s before the serial test ended"


def test_steady_state_tests_never_overlap_a_disruptive_test_nor_each_other(pytester: pytest.Pytester) -> None:
    """A test neither serial nor disruptive runs while no disruptive test does, and alone among its kind; started
    together in three xdist workers, the three intervals are disjoint."""
    fake_cluster(pytester)
    body = '''
import time
from pathlib import Path

import pytest

def interval(name, seconds):
    start = time.time()
    time.sleep(seconds)
    Path(f"{name}.interval").write_text(f"{start} {time.time()}")

@pytest.mark.disruptive(workers=1, reason="holds a worker down")
def test_fault(kubeha_cluster, provider):
    interval("fault", 2.0)

def test_steady_a(kubeha_cluster):
    interval("steady-a", 1.0)

def test_steady_b(kubeha_cluster):
    interval("steady-b", 1.0)
'''
    pytester.makepyfile(test_mixed=body)
    result = run(pytester, "-n", "3")
    result.assert_outcomes(passed=3)
    spans = {name: tuple(float(x) for x in (pytester.path / f"{name}.interval").read_text().split())
             for name in ("fault", "steady-a", "steady-b")}
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    overlaps = [(a, b) for (a, (_, a_end)), (b, (b_start, _)) in zip(ordered, ordered[1:]) if b_start < a_end]
    assert not overlaps, f"overlapping tests: {overlaps} ({spans})"


# -- fault budget, health gate, results -----------------------------------------------------------------------------------


def test_result_properties_and_report(pytester: pytest.Pytester) -> None:
    fake_cluster(pytester)
    pytester.makepyfile(DISRUPTIVE_TEST)
    result = run(pytester, "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    junit = (pytester.path / "junit.xml").read_text()
    assert '<property name="control_id" value="HA-WRK-01" />' in junit
    assert '<property name="verdict" value="passed" />' in junit
    report = json.loads((pytester.path / "out" / "reports" / "fake-report.json").read_text())
    assert report["cluster"]["cluster_uid"] == UID
    [control] = report["results"]
    assert control["control_id"] == "HA-WRK-01"
    assert control["verdict"] == "passed"
    assert control["measurements"][0]["name"] == "pods_lost"
    assert "disruptive" in control["tags"]
    result.stdout.fnmatch_lines(["report written: */out/reports/fake-report.json"])
    [run_dir] = (pytester.path / "out" / "reports" / "runs").iterdir()
    log = (run_dir / "coordinator" / "log.jsonl").read_text()
    assert '"event": "grant"' in log and "[health gate]" in log


def test_measurement_outside_its_budget_fails_the_test(pytester: pytest.Pytester) -> None:
    fake_cluster(pytester)
    pytester.makepyfile(
        """
        import pytest
        from kubeha.core.model import Comparison

        @pytest.mark.control("HA-API-01", "API availability", "The API MUST answer 99% of requests")
        def test_availability(kubeha_result):
            kubeha_result.measure("availability", 97.5, "%", budget=99.0, comparison=Comparison.AT_LEAST)
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*measurement(s) outside their budget: availability = 97.5 % (budget >= 99)*"])
    report = json.loads((pytester.path / "out" / "reports" / "fake-report.json").read_text())
    assert report["results"][0]["verdict"] == "failed"


def test_failed_health_gate_stops_later_disruptive_tests(pytester: pytest.Pytester) -> None:
    fake_cluster(pytester, healthy=False)
    pytester.makepyfile(
        """
        import pytest
        from kubeha.providers.base import Component

        @pytest.mark.disruptive(control_plane_nodes=1)
        def test_first(provider):
            provider.stop_component("cp-1", Component.ETCD)

        @pytest.mark.disruptive(workers=1)
        def test_second(provider):
            provider.stop_node("w-1")

        def test_reader(kubeha_cluster):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2, skipped=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_first*",
            "*the cluster did not return to its steady state after this test*node cp-2 is not Ready*",
        ]
    )
    result.stdout.fnmatch_lines(
        [f"*{NOT_RUN_PREFIX}the cluster did not return to its steady state after *test_first*node cp-2 is not Ready*"]
    )
    assert "stop_node w-1" not in provider_calls(pytester)


def test_non_disruptive_test_gets_a_read_only_provider(pytester: pytest.Pytester) -> None:
    fake_cluster(pytester)
    pytester.makepyfile(
        """
        def test_sneaky(provider):
            assert provider.node_state("cp-1").value == "running"
            provider.stop_node("cp-1")
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*tried to stop node cp-1 without declaring it: mark the test @pytest.mark.disruptive*"])
    assert provider_calls(pytester) == ["created", "node_state cp-1"]


def test_claim_larger_than_the_cluster_tolerates_is_not_run(pytester: pytest.Pytester) -> None:
    fake_cluster(pytester)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.disruptive(control_plane_nodes=2)
        def test_quorum_loss(provider):
            provider.stop_node("cp-1")
        """
    )
    result = run(pytester)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"*{NOT_RUN_PREFIX}claim *can never be granted*mark the test exclusive*"])
    assert "stop_node cp-1" not in provider_calls(pytester)


# -- certification ------------------------------------------------------------------------------------------------------


CERTIFICATION_TESTS = """
import pytest
from kubeha.plugin import not_run

def test_passes():
    pass

def test_not_run():
    not_run("the load balancer cannot be stopped on this platform")

@pytest.mark.skip(reason="plain skip")
def test_skipped():
    pass
"""


def test_certification_fails_the_session_on_any_not_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CERTIFICATION_TESTS)
    result = run(pytester, "--profile", "certification")
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*kubeha: tests that proved nothing (certification: each one fails the run)*",
            "NOT-RUN *test_not_run: the load balancer cannot be stopped on this platform",
            "SKIPPED *test_skipped: plain skip",
            "*kubeha certification FAILED: 2 test(s) skipped or not run*",
        ]
    )


def test_default_profile_reports_but_does_not_fail(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CERTIFICATION_TESTS)
    result = run(pytester)
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["NOT-RUN *test_not_run: the load balancer cannot be stopped on this platform"])


def test_certification_passes_when_everything_ran(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_passes():\n    pass\n")
    result = run(pytester, "--profile", "certification")
    assert result.ret == pytest.ExitCode.OK


def test_certification_counts_not_run_controls_in_the_report(pytester: pytest.Pytester) -> None:
    fake_cluster(pytester, workers=1)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.control("HA-WRK-02", "Two workers", "The cluster MUST keep pods on two workers")
        @pytest.mark.needs(workers=2)
        def test_two_workers(kubeha_result):
            pass
        """
    )
    result = run(pytester, "--profile", "certification")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = json.loads((pytester.path / "out" / "reports" / "fake-report.json").read_text())
    [control] = report["results"]
    assert (control["verdict"], control["reason"]) == ("not_run", "cluster has 1 worker, test needs 2")
    assert report["profile"] == "certification"
