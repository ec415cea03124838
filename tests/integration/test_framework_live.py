"""The kubeha pytest plugin itself, checked against the real embedded cluster: each test runs an inner pytest session in
a subprocess on a file of ``framework_cases/`` and judges it from the outside (exit status, JUnit XML, output, the run
directory, the undo journal, docker and the API).

- the fault budget holds across 4 xdist workers: never more control-plane nodes down than the cluster tolerates,
  by the coordinator log, by the faults the tests recorded and by docker sampled from outside, and the health gate
  after each fault waits until the restarted node's kubelet reported again;
- SIGINT in the middle of a fault: the node is restored (in ``finally``, or by the next session's journal replay)
  and no undo entry is left pending;
- ``--dry-run`` lists the planned faults and their targets and touches nothing;
- consent: attached with ``--kubeconfig`` and no ``--allow-faults``, disruptive tests are not-run with the exact
  flag that would allow them; a wrong ``--allow-faults`` refuses the run;
- ``--profile certification`` fails a session in which a test was not-run, naming it and why.

Inner sessions use the existing embedded cluster (``--cluster kind --keep-cluster``: never created or deleted here)
or attach to it (``--kubeconfig``), write their reports under ``tmp_path``, and keep their undo journal in a state
directory of their own (``XDG_STATE_HOME``, which `kubeha.faults.journal.default_state_dir` reads), which the tests
read and, should an inner session leave anything pending, replay afterwards (the test then errors).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from fixtures.kind import api as kind_api
from kubeha.cluster.discovery import read_nodes
from kubeha.cluster.health import SteadyStateGate, read_lease_renewals
from kubeha.coordination import LogRecord, read_log, usage_from_log
from kubeha.core.budget import Limits, ResourceKind
from kubeha.core.jsonfields import JsonValue, as_object, get_float, get_int, get_str
from kubeha.core.quorum import fault_tolerance
from kubeha.core.timeline import Timeline
from kubeha.faults import EntryState, UndoAction, UndoOp, pending, replay
from kubeha.faults.journal import entries
from kubeha.plugin import KubehaCluster
from kubeha.providers.kind import KindProvider

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CASES = Path(__file__).resolve().parent / "framework_cases"
CASE_BUDGET = CASES / "case_budget.py"
CASE_INTERRUPT = CASES / "case_interrupt.py"
CASE_NEEDS = CASES / "case_needs.py"
BUDGET_TESTS = 4  # case_budget.TESTS
BUDGET_HOLD_S = 10.0  # case_budget.HOLD_S
BUDGET_TEST = "test_control_plane_node_stopped"
TOO_MANY_WORKERS = 99  # case_needs.TOO_MANY_WORKERS

# Named bounds of every wait.
BUDGET_SESSION_TIMEOUT_S = 600.0  # 4 faults one after the other, each with its health gate, plus session start
QUICK_SESSION_TIMEOUT_S = 240.0  # an inner session that injects nothing (start-up and the steady-state gate)
FAULT_IN_PLACE_TIMEOUT_S = 240.0  # inner session start-up, steady-state gate, then the node powered off
INTERRUPTED_EXIT_TIMEOUT_S = 420.0  # after SIGINT: the restore, then the health gate on the way out
KILL_WAIT_TIMEOUT_S = 30.0  # an inner session killed because it overran
DOCKER_TIMEOUT_S = 30.0
KUBECTL_TIMEOUT_S = 30.0
STEADY_AFTER_TIMEOUT_S = 300.0  # the cluster back in its steady state after a test's faults
SAMPLE_INTERVAL_S = 1.0  # docker and node-Lease sampling while the budget session runs
POLL_S = 0.5
MIN_SAMPLES = 30  # the sampler must have looked often enough for its peak to mean something

EMBEDDED_ONLY = (
    "these tests drive the embedded kind cluster through docker and run inner sessions with --cluster kind; "
    "run them without --kubeconfig"
)


# -- inner sessions -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JunitCase:
    name: str
    outcome: str  # passed, failed, error, skipped
    message: str


@dataclass(frozen=True)
class InnerRun:
    command: tuple[str, ...]
    returncode: int
    output: str
    work: Path
    duration_s: float

    @property
    def report_dir(self) -> Path:
        return self.work / "reports"

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def run_dir(self) -> Path:
        runs = sorted((self.report_dir / "runs").glob("*")) if (self.report_dir / "runs").is_dir() else []
        assert len(runs) == 1, (
            f"the inner session should have made exactly 1 run directory under {self.report_dir / 'runs'}, found "
            f"{len(runs)}: {[run.name for run in runs]}\n{self.tail()}"
        )
        return runs[0]

    def junit(self) -> list[JunitCase]:
        path = self.work / "junit.xml"
        if not path.exists():
            return []
        cases: list[JunitCase] = []
        for case in ElementTree.parse(path).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = "failed" if child.tag == "failure" else child.tag
                    message = child.get("message", "") or (child.text or "")
                    break
            cases.append(JunitCase(case.get("name", ""), outcome, message))
        return cases

    def describe(self) -> str:
        return f"`{' '.join(self.command[2:])}` exited {self.returncode} after {self.duration_s:.0f} s"


# Runs pytest with SIGINT raising KeyboardInterrupt, as in a terminal. Python leaves SIGINT ignored when it starts
# with it ignored, and a shell that runs a command in the background without job control (`cmd &` in a script, as CI
# runners may) starts it so: the interrupted session would then never see the interrupt.
INTERRUPTIBLE_PYTEST = (
    "import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.exit(pytest.console_main())"
)


def inner_command(case: Path, work: Path, *options: str, interruptible: bool = False) -> list[str]:
    launcher = ["-c", INTERRUPTIBLE_PYTEST] if interruptible else ["-m", "pytest"]
    return [
        sys.executable, *launcher, str(case.relative_to(REPO)),
        "-o", "python_files=case_*.py", "-p", "no:cacheprovider",
        "--report-dir", str(work / "reports"), "--junitxml", str(work / "junit.xml"),
        *options,
    ]


def inner_env(state_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for an inner session: its own journal state directory, and none of the outer
    session's per-test or xdist variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PYTEST_XDIST_") and key not in ("PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS")
    }
    env["XDG_STATE_HOME"] = str(state_home)
    env.update(extra or {})
    return env


def run_inner(
    case: Path,
    work: Path,
    state_home: Path,
    *options: str,
    timeout_s: float,
    extra_env: Mapping[str, str] | None = None,
) -> InnerRun:
    command = inner_command(case, work, *options)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command, cwd=REPO, env=inner_env(state_home, extra_env), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=timeout_s, check=False,
        )
    except subprocess.TimeoutExpired as error:
        output = error.output if isinstance(error.output, str) else (error.output or b"").decode(errors="replace")
        pytest.fail(
            f"the inner session `{' '.join(command[2:])}` did not finish within {timeout_s:.0f} s and was killed; "
            f"its last output:\n{output[-4000:]}",
            pytrace=False,
        )
    return InnerRun(tuple(command), proc.returncode, proc.stdout, work, time.monotonic() - started)


# -- the cluster from outside -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerState:
    status: str
    started_at: str
    exit_code: int

    @property
    def running(self) -> bool:
        return self.status == "running"


def inspect_containers(names: Sequence[str]) -> dict[str, ContainerState]:
    proc = subprocess.run(
        ["docker", "inspect", "--format", "{{.Name}}\t{{json .State}}", *names],
        capture_output=True, text=True, timeout=DOCKER_TIMEOUT_S, check=False,
    )
    assert proc.returncode == 0, f"docker inspect {' '.join(names)} exited {proc.returncode}: {proc.stderr.strip()}"
    states: dict[str, ContainerState] = {}
    for line in proc.stdout.splitlines():
        name, _, raw = line.partition("\t")
        decoded: JsonValue = json.loads(raw)
        state = as_object(decoded, f"docker inspect {name} .State")
        states[name.lstrip("/")] = ContainerState(
            status=get_str(state, "Status", name),
            started_at=get_str(state, "StartedAt", name),
            exit_code=get_int(state, "ExitCode", name),
        )
    return states


def kubectl(kubeconfig: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(kind_api._kubectl()), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True, text=True, timeout=KUBECTL_TIMEOUT_S, check=False,
    )
    assert proc.returncode == 0, f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}"
    return proc.stdout.strip()


T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(POLL_S)


@dataclass(frozen=True)
class KindTarget:
    """The embedded cluster as these tests see it from outside."""

    cluster: KubehaCluster
    containers: tuple[str, ...]  # every container of the kind cluster, the load balancer included
    control_planes: tuple[str, ...]  # node names, sorted

    @property
    def uid(self) -> str:
        return self.cluster.identity.kube_system_uid

    def start_times(self) -> dict[str, ContainerState]:
        return inspect_containers(self.containers)


@pytest.fixture(scope="module")
def kind_target(kubeha_cluster: KubehaCluster) -> KindTarget:
    if not kubeha_cluster.embedded:
        pytest.skip(EMBEDDED_ONLY)
    containers = tuple(container.name for container in KindProvider(kubeha_cluster.name).containers())
    control_planes = tuple(sorted(node.name for node in kubeha_cluster.topology.control_planes()))
    missing = sorted(set(control_planes) - set(containers))
    assert not missing, f"control-plane nodes {missing} have no container in kind cluster {kubeha_cluster.name}"
    return KindTarget(kubeha_cluster, containers, control_planes)


@pytest.fixture
def state_home(tmp_path: Path, kind_target: KindTarget) -> Iterator[Path]:
    """XDG_STATE_HOME of the inner sessions. Undo entries they leave pending are replayed afterwards, and the test
    errors naming them: a restore that did not happen is a defect even when this fixture repairs the cluster."""
    home = tmp_path / "state-home"
    yield home
    journal_dir = home / "kubeha"
    left = pending(kind_target.uid, state_dir=journal_dir)
    if left:
        result = replay(KindProvider(kind_target.cluster.name), kind_target.uid, state_dir=journal_dir)
        pytest.fail(
            f"inner sessions left {len(left)} undo entr{'y' if len(left) == 1 else 'ies'} pending in {journal_dir}: "
            + "; ".join(entry.undo.describe() for entry in left)
            + f"; replayed now: {result.describe()}",
            pytrace=False,
        )


def journal_dir_of(state_home: Path) -> Path:
    return state_home / "kubeha"


def assert_steady_again(api_client: ApiClient, cluster: KubehaCluster, after: str) -> float:
    """Wait for the steady state (every node's kubelet reported since, every node Ready); returns the wait."""
    report = SteadyStateGate(api_client, cluster.topology).wait(STEADY_AFTER_TIMEOUT_S)
    assert report.ok, f"the cluster did not return to its steady state after {after}: {report.describe()}"
    not_ready = [f"{node.name} ({node.ready_reason})" for node in read_nodes(api_client) if not node.ready]
    assert not not_ready, f"after {after}, {len(not_ready)} node(s) are not Ready: {', '.join(not_ready)}"
    return report.waited_s


# -- 1. the fault budget across 4 xdist workers --------------------------------------------------------------------


@dataclass
class ClusterSamples:
    """What the sampler saw: which control-plane containers were not running, and every node-Lease renewal."""

    stopped: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    renewals: dict[str, set[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def peak_stopped(self) -> tuple[int, float, frozenset[str]]:
        if not self.stopped:
            return 0, 0.0, frozenset()
        wall, names = max(self.stopped, key=lambda sample: len(sample[1]))
        return len(names), wall, names


class ClusterSampler:
    """Samples docker and the node Leases every `SAMPLE_INTERVAL_S` in a thread, independently of the plugin."""

    def __init__(self, control_planes: Sequence[str], api_client: ApiClient) -> None:
        self._control_planes = tuple(control_planes)
        self._client = api_client
        self.samples = ClusterSamples()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-sampler", daemon=True)

    def __enter__(self) -> ClusterSamples:
        self._thread.start()
        return self.samples

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=DOCKER_TIMEOUT_S + KUBECTL_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            wall = time.time()
            try:
                states = inspect_containers(self._control_planes)
                self.samples.stopped.append(
                    (wall, frozenset(name for name, state in states.items() if not state.running))
                )
            except (AssertionError, subprocess.SubprocessError, OSError, ValueError) as error:
                self.samples.errors.append(f"docker at {wall:.1f}: {error}")
            try:
                for node, renewed in read_lease_renewals(self._client).items():
                    self.samples.renewals.setdefault(node, set()).add(renewed)
            except (ApiException, HTTPError, OSError) as error:
                self.samples.errors.append(f"leases at {wall:.1f}: {error}")
            self._stop.wait(SAMPLE_INTERVAL_S)


@dataclass(frozen=True)
class FaultDone:
    """What one inner budget test recorded about its fault (wall-clock seconds)."""

    nodeid: str
    worker: str
    node: str
    granted_wall: float
    waited_s: float
    stop_started_wall: float
    injected_wall: float
    restored_wall: float


def read_faults(directory: Path) -> list[FaultDone]:
    found: list[FaultDone] = []
    for path in sorted(directory.glob("fault-*.json")):
        where = str(path)
        decoded: JsonValue = json.loads(path.read_text(encoding="utf-8"))
        obj = as_object(decoded, where)
        worker = obj.get("worker")
        found.append(
            FaultDone(
                nodeid=get_str(obj, "nodeid", where),
                worker=worker if isinstance(worker, str) else "-",
                node=get_str(obj, "node", where),
                granted_wall=get_float(obj, "granted_wall", where),
                waited_s=get_float(obj, "waited_s", where),
                stop_started_wall=get_float(obj, "stop_started_wall", where),
                injected_wall=get_float(obj, "injected_wall", where),
                restored_wall=get_float(obj, "restored_wall", where),
            )
        )
    return found


def max_overlap(intervals: Sequence[tuple[float, float, str]]) -> tuple[int, list[str]]:
    """The most intervals (start, end, label) open at one moment, and their labels."""
    starts = [(start, 1, label) for start, _, label in intervals]
    ends = [(end, -1, label) for _, end, label in intervals]
    points = sorted(starts + ends, key=lambda point: (point[0], point[1]))
    open_now: list[str] = []
    best: list[str] = []
    for _, step, label in points:
        if step == 1:
            open_now.append(label)
            if len(open_now) > len(best):
                best = list(open_now)
        else:
            open_now.remove(label)
    return len(best), best


def short(holder: str) -> str:
    return holder.split("::", 1)[-1]


def print_timeline(records: Sequence[LogRecord], faults: Sequence[FaultDone], t0: float) -> None:
    lines: list[tuple[float, str]] = []
    for record in records:
        if record.event in ("grant", "release", "reclaim", "reclaim-deferred", "timeout", "refuse", "release-missing"):
            lines.append((record.wall, f"{record.worker or '-':>4}  {record.event:<8} {short(record.holder)}"))
    for fault in faults:
        test = short(fault.nodeid)
        lines.append((fault.injected_wall, f"{fault.worker:>4}  fault    {fault.node} powered off ({test})"))
        lines.append((fault.restored_wall, f"{fault.worker:>4}  restored {fault.node} running again ({test})"))
    print("grant/release timeline (s from the first coordinator record):")
    for wall, text in sorted(lines):
        print(f"  {wall - t0:7.1f}  {text}")


@pytest.mark.disruptive(exclusive=True, reason="its inner session powers control-plane nodes off")
def test_fault_budget_holds_across_four_xdist_workers(
    tmp_path: Path, kind_target: KindTarget, state_home: Path, api_client: ApiClient
) -> None:
    cluster = kind_target.cluster
    control_planes = kind_target.control_planes
    tolerance = fault_tolerance(len(control_planes))
    limits = Limits.from_topology(cluster.topology)
    assert limits.limit(ResourceKind.CONTROL_PLANE_NODE) == tolerance, (
        f"the budget derived from the topology allows {limits.limit(ResourceKind.CONTROL_PLANE_NODE)} control-plane "
        f"node(s) down at once, but {len(control_planes)} control planes tolerate {tolerance}"
    )
    assert tolerance >= 1, f"{len(control_planes)} control plane(s) tolerate no loss: this test needs at least 3"
    out = tmp_path / "faults"
    out.mkdir()
    with ClusterSampler(control_planes, api_client) as samples:
        run = run_inner(
            CASE_BUDGET, tmp_path / "budget", state_home, "--cluster", "kind", "--keep-cluster", "-n", "4",
            timeout_s=BUDGET_SESSION_TIMEOUT_S, extra_env={"KUBEHA_CASE_OUT": str(out)},
        )
        # Sampling goes on until the cluster is steady again, so that the last restarted node's Lease renewal is seen.
        steady_after_s = assert_steady_again(api_client, cluster, "the budget session")
    print(f"\ninner budget session: {run.describe()}")
    cases = run.junit()
    assert run.returncode == 0, f"the inner budget session failed: {run.describe()}\n{run.tail()}"
    outcomes = {case.name: case.outcome for case in cases}
    expected = {f"{BUDGET_TEST}[{index}]": "passed" for index in range(BUDGET_TESTS)}
    assert outcomes == expected, f"inner test outcomes {outcomes}, expected all {BUDGET_TESTS} passed\n{run.tail()}"

    # The coordinator log, replayed by the coordinator's own reader.
    coordinator_dir = run.run_dir() / "coordinator"
    records = read_log(coordinator_dir)
    usage = usage_from_log(coordinator_dir)
    peak = usage.peak_of(ResourceKind.CONTROL_PLANE_NODE)
    t0 = records[0].wall if records else 0.0
    faults = read_faults(out)
    print_timeline(records, faults, t0)
    print(f"max concurrency from the coordinator log: {peak} control-plane node(s) down at once "
          f"(tolerance {tolerance} of {len(control_planes)}); peak of every kind: "
          + ", ".join(f"{kind.value}={count}" for kind, count in usage.peak))
    assert not usage.violations, f"the coordinator log shows the budget broken: {list(usage.violations)}"
    assert peak <= tolerance, (
        f"the log shows {peak} control-plane nodes down at once, {peak - tolerance} over {tolerance}"
    )
    assert peak == 1, f"the log shows a peak of {peak} control-plane nodes: the granted claims did not reach the ledger"
    assert not usage.unreleased, f"claims never released: {list(usage.unreleased)}"
    nodeids = {fault.nodeid for fault in faults}
    grants = {record.holder: record for record in records if record.event == "grant" and record.holder in nodeids}
    releases = {record.holder: record for record in records if record.event == "release" and record.holder in nodeids}
    assert len(faults) == BUDGET_TESTS and len(grants) == BUDGET_TESTS and len(releases) == BUDGET_TESTS, (
        f"{len(faults)} fault record(s), {len(grants)} grant(s) and {len(releases)} release(s) for the tests, "
        f"expected {BUDGET_TESTS} of each"
    )
    waited = sorted(short(record.holder) for record in records if record.event == "wait")
    workers = {record.worker for record in grants.values()}
    assert waited and len(workers) >= 2, (
        f"the claims did not compete (workers holding grants: {sorted(map(str, workers))}, waits: {waited}): "
        "the run proves nothing about concurrency; check that -n 4 gave each worker a test"
    )

    # The faults as the tests recorded them: each inside its grant, never more at once than tolerated.
    for fault in faults:
        grant, release = grants[fault.nodeid], releases[fault.nodeid]
        assert grant.wall <= fault.stop_started_wall and fault.restored_wall <= release.wall, (
            f"{short(fault.nodeid)} broke {fault.node} from {fault.stop_started_wall - t0:.1f} s to "
            f"{fault.restored_wall - t0:.1f} s, outside its grant ({grant.wall - t0:.1f} s to "
            f"{release.wall - t0:.1f} s)"
        )
    overlap, labels = max_overlap(
        [(fault.stop_started_wall, fault.restored_wall, f"{fault.node} by {short(fault.nodeid)}") for fault in faults]
    )
    print(f"max concurrency from the tests' own fault records: {overlap} ({', '.join(labels)})")
    assert overlap <= tolerance, (
        f"{overlap} faults were in place at once ({labels}), {overlap - tolerance} over {tolerance}"
    )
    assert {fault.node for fault in faults} == set(control_planes), (
        f"the tests stopped {sorted({fault.node for fault in faults})}, expected every control plane "
        f"{list(control_planes)}"
    )

    # Docker, sampled from outside.
    seen, seen_at, seen_names = samples.peak_stopped()
    print(f"max concurrency sampled from docker every {SAMPLE_INTERVAL_S:.0f} s: {seen} control-plane container(s) "
          f"stopped at once ({', '.join(sorted(seen_names))} at {seen_at - t0:.1f} s); {len(samples.stopped)} samples, "
          f"{len(samples.errors)} sampling error(s)")
    assert len(samples.stopped) >= MIN_SAMPLES, (
        f"docker was sampled {len(samples.stopped)} times, fewer than {MIN_SAMPLES}: {samples.errors[:5]}"
    )
    assert 1 <= seen <= tolerance, (
        f"docker showed at most {seen} control-plane containers stopped at once, expected 1 to {tolerance}: "
        + ("more than the budget allows" if seen > tolerance else "the faults were never seen from outside")
    )

    # The health gate after each fault: passed only once the restarted node's kubelet had reported again.
    timeline = Timeline()
    for path in sorted((run.run_dir() / "timeline").glob("*.jsonl")):
        timeline.extend(Timeline.from_jsonl(path.read_text(encoding="utf-8")).events())
    late: list[str] = []
    print("health gate after each fault:")
    for fault in sorted(faults, key=lambda fault: fault.restored_wall):
        gates = [event for event in timeline.events()
                 if event.source == "health" and event.kind == "steady-state" and event.test_id == fault.nodeid]
        assert len(gates) == 1, f"{short(fault.nodeid)}: {len(gates)} health-gate events in the timeline, expected 1"
        gate_s = gates[0].t_wall - fault.restored_wall
        renewed = sorted(wall for wall in samples.renewals.get(fault.node, set()) if wall > fault.restored_wall)
        first = f"{renewed[0] - fault.restored_wall:.1f} s" if renewed else "not seen"
        print(f"  {short(fault.nodeid)}: {fault.node} back at {fault.restored_wall - t0:.1f} s; first Lease renewal "
              f"{first} later; gate passed {gate_s:.1f} s later ({gates[0].detail})")
        if not renewed or renewed[0] > gates[0].t_wall:
            late.append(f"{short(fault.nodeid)}: gate passed {gate_s:.1f} s after {fault.node} was powered on, its "
                        f"kubelet's first Lease renewal came {first} after")
    assert not late, (
        f"{len(late)} of {len(faults)} health gates declared the steady state before the restarted node's kubelet had "
        "reported, judging the cluster on what it reported before the fault (and letting the next fault start while "
        "that node's etcd member may still have been down): " + "; ".join(late)
    )

    # The undo journal the inner session used: one entry per fault, all undone.
    written = entries(kind_target.uid, state_dir=journal_dir_of(state_home))
    assert len(written) == BUDGET_TESTS and all(entry.state is EntryState.DONE for entry in written), (
        f"the inner journal holds {len(written)} entries ({[entry.state.value for entry in written]}), expected "
        f"{BUDGET_TESTS}, all done"
    )
    print(f"all {len(cluster.topology.nodes)} nodes Ready again ({steady_after_s:.1f} s after the session ended)")


# -- 2. SIGINT in the middle of a fault ----------------------------------------------------------------------------


@pytest.mark.disruptive(exclusive=True, reason="its inner session powers a control-plane node off")
def test_sigint_in_the_middle_of_a_fault_restores_the_node(
    tmp_path: Path, kind_target: KindTarget, state_home: Path, api_client: ApiClient
) -> None:
    target = kind_target.control_planes[-1]
    marker = tmp_path / "fault-in-place.json"
    work = tmp_path / "interrupted"
    log_path = tmp_path / "interrupted.log"
    command = inner_command(CASE_INTERRUPT, work, "--cluster", "kind", "--keep-cluster", interruptible=True)
    env = inner_env(state_home, {"KUBEHA_CASE_NODE": target, "KUBEHA_CASE_MARKER": str(marker)})
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            def fault_in_place() -> ContainerState | None:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"the inner session exited {proc.returncode} before the fault was in place:\n"
                        + log_path.read_text(encoding="utf-8")[-4000:]
                    )
                state = inspect_containers([target])[target]
                return state if not state.running and marker.exists() else None

            stopped = wait_until(fault_in_place, FAULT_IN_PLACE_TIMEOUT_S, f"{target} powered off by the inner session")
            observed = time.monotonic()
            proc.send_signal(signal.SIGINT)
            try:
                returncode = proc.wait(timeout=INTERRUPTED_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the inner session did not exit within {INTERRUPTED_EXIT_TIMEOUT_S:.0f} s of SIGINT:\n"
                            + log_path.read_text(encoding="utf-8")[-4000:], pytrace=False)
            exited = time.monotonic()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=KILL_WAIT_TIMEOUT_S)
    output = log_path.read_text(encoding="utf-8")
    after = inspect_containers([target])[target]
    print(f"\n{target} observed {stopped.status} (exit code {stopped.exit_code}) {observed - started:.1f} s after the "
          f"inner session started; SIGINT sent; the session exited {returncode} {exited - observed:.1f} s later; "
          f"{target} is now {after.status}")
    assert returncode == pytest.ExitCode.INTERRUPTED, (
        f"the interrupted session exited {returncode}, expected {int(pytest.ExitCode.INTERRUPTED)} (interrupted)\n"
        + output[-4000:]
    )
    assert "KeyboardInterrupt" in output, (
        f"the inner session's output does not mention the interrupt:\n{output[-4000:]}"
    )
    if after.running:
        print(f"what happened: the fault's finally restored {target} before the session exited")
    else:
        follow = run_inner(CASE_NEEDS, tmp_path / "follow-up", state_home, "--cluster", "kind", "--keep-cluster",
                           "-k", "test_cluster_is_reachable", timeout_s=QUICK_SESSION_TIMEOUT_S)
        replayed = [line.strip() for line in follow.output.splitlines() if "undo action" in line or "undone:" in line]
        print(f"what happened: {target} was left {after.status}; the next session ({follow.describe()}) reported: "
              + " | ".join(replayed))
        assert follow.returncode == 0, f"the follow-up session failed: {follow.describe()}\n{follow.tail()}"
        assert inspect_containers([target])[target].running, f"{target} is still not running after the next session"
        assert any(f"start node {target}" in line for line in replayed), (
            f"the next session did not replay the undo entry for {target}:\n{follow.tail()}"
        )
    written = entries(kind_target.uid, state_dir=journal_dir_of(state_home))
    assert [entry.undo for entry in written] == [UndoAction(UndoOp.START_NODE, node=target)], (
        f"the inner journal holds {[entry.undo.describe() for entry in written]}, expected one entry: "
        f"start node {target}"
    )
    left = pending(kind_target.uid, state_dir=journal_dir_of(state_home))
    assert not left, f"{len(left)} undo entr(ies) still pending: {[entry.undo.describe() for entry in left]}"
    waited_s = assert_steady_again(api_client, kind_target.cluster, "the interrupted session")
    print(f"journal: 1 entry, done, none pending; cluster steady again {waited_s:.1f} s after")


# -- 3. --dry-run touches nothing ----------------------------------------------------------------------------------


def dry_run_plans(output: str) -> dict[str, list[str]]:
    """The plans listed under the dry-run section of the terminal summary, by test node ID."""
    plans: dict[str, list[str]] = {}
    lines = output.splitlines()
    starts = [index for index, line in enumerate(lines) if "kubeha dry run: planned faults" in line]
    if not starts:
        return plans
    current: list[str] | None = None
    for line in lines[starts[0] + 1:]:
        if line.startswith("====="):
            break
        if line.startswith("    ") and current is not None:
            current.append(line.strip())
        elif line.strip():
            current = plans.setdefault(line.strip(), [])
    return plans


def test_dry_run_plans_faults_and_touches_nothing(tmp_path: Path, kind_target: KindTarget, state_home: Path) -> None:
    before = kind_target.start_times()
    run = run_inner(CASE_BUDGET, tmp_path / "dry-run", state_home, "--cluster", "kind", "--keep-cluster", "--dry-run",
                    "-n", "4", timeout_s=QUICK_SESSION_TIMEOUT_S)
    after = kind_target.start_times()
    plans = dry_run_plans(run.output)
    print(f"\ndry run: {run.describe()}; planned faults:")
    for nodeid, plan in sorted(plans.items()):
        print(f"  {short(nodeid)}: " + " | ".join(plan))
    assert run.returncode == 0, f"the dry run failed: {run.describe()}\n{run.tail()}"
    assert "DRY RUN" in run.output, f"the dry run's header does not say DRY RUN:\n{run.tail()}"
    cases = run.junit()
    assert len(cases) == BUDGET_TESTS and all(
        case.outcome == "skipped" and "not-run: dry run" in case.message for case in cases
    ), f"expected {BUDGET_TESTS} tests not-run for the dry run, got {[(c.name, c.outcome, c.message) for c in cases]}"
    expected_ids = {f"{CASE_BUDGET.relative_to(REPO)}::{BUDGET_TEST}[{index}]" for index in range(BUDGET_TESTS)}
    assert set(plans) == expected_ids, (
        f"the dry run planned faults for {sorted(plans)}, expected {sorted(expected_ids)}"
    )
    for nodeid, plan in plans.items():
        targets = [line for line in plan if line.startswith("targets: 1 of control_plane_node: ")]
        assert any(line.startswith("claim: ") and "1 control_plane_node" in line for line in plan), (
            f"the plan of {nodeid} names no claim of 1 control-plane node: {plan}"
        )
        names = set(targets[0].split(": ", 2)[2].split(", ")) if len(targets) == 1 else set()
        assert names == set(kind_target.control_planes), (
            f"the plan of {nodeid} lists targets {sorted(names)}, expected the control planes "
            f"{list(kind_target.control_planes)}: {plan}"
        )
    changed = {name: (before[name].started_at, state.started_at, state.status)
               for name, state in after.items() if state != before.get(name)}
    assert not changed, f"the dry run restarted or stopped containers (before, after, status): {changed}"
    assert all(state.running for state in after.values()), f"containers not running after the dry run: {after}"
    written = entries(kind_target.uid, state_dir=journal_dir_of(state_home))
    assert not written, f"the dry run wrote {len(written)} undo journal entries: {[e.undo.describe() for e in written]}"
    assert not (run.run_dir() / "coordinator" / "log.jsonl").exists(), "the dry run claimed from the fault budget"
    print(f"StartedAt of all {len(after)} containers unchanged; no journal entry, no fault-budget claim")


# -- 4. consent on an attached cluster -----------------------------------------------------------------------------


def test_attached_cluster_without_consent_refuses_faults(
    tmp_path: Path, kind_target: KindTarget, state_home: Path
) -> None:
    kubeconfig = kind_target.cluster.kubeconfig
    uid = kubectl(kubeconfig, "get", "namespace", "kube-system", "-o", "jsonpath={.metadata.uid}")
    api_url = kubectl(kubeconfig, "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}")
    assert uid == kind_target.uid, f"kubectl reads kube-system UID {uid}, the plugin read {kind_target.uid}"
    before = kind_target.start_times()

    run = run_inner(CASE_BUDGET, tmp_path / "no-consent", state_home, "--kubeconfig", str(kubeconfig),
                    timeout_s=QUICK_SESSION_TIMEOUT_S)
    cases = run.junit()
    print(f"\nwithout consent: {run.describe()}; reasons: {sorted({case.message for case in cases})}")
    assert run.returncode == 0, (
        f"the session without consent failed instead of not-running: {run.describe()}\n{run.tail()}"
    )
    assert len(cases) == BUDGET_TESTS and all(case.outcome == "skipped" for case in cases), (
        f"expected {BUDGET_TESTS} disruptive tests not-run, got {[(c.name, c.outcome) for c in cases]}\n{run.tail()}"
    )
    for case in cases:
        flags = re.findall(r"--allow-faults (\S+)", case.message)
        assert case.message.startswith("not-run: ") and f"cluster at {api_url}" in case.message and flags == [uid], (
            f"{case.name}: the refusal should be not-run, name the API URL {api_url} and the flag "
            f"--allow-faults {uid}; it reads: {case.message!r}"
        )
    assert f"--allow-faults {uid}" in run.output and f"NOT-RUN {CASE_BUDGET.relative_to(REPO)}::" in run.output, (
        f"the terminal output does not list the not-run tests with the flag that allows them:\n{run.tail()}"
    )

    wrong = str(uuid.uuid4())
    assert wrong != uid
    refused = run_inner(CASE_BUDGET, tmp_path / "wrong-consent", state_home, "--kubeconfig", str(kubeconfig),
                        "--allow-faults", wrong, timeout_s=QUICK_SESSION_TIMEOUT_S)
    message = next((line for line in refused.output.splitlines() if f"--allow-faults {wrong}" in line), "")
    print(f"with --allow-faults {wrong}: {refused.describe()}: {message}")
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR, (
        f"a wrong --allow-faults should refuse the run (exit {int(pytest.ExitCode.USAGE_ERROR)}): {refused.describe()}"
        f"\n{refused.tail()}"
    )
    for part in (api_url, uid, f"--allow-faults {uid}", "another cluster"):
        assert part in message, f"the refusal should name {part!r}; it reads: {message!r}\n{refused.tail()}"
    assert not refused.junit(), f"tests ran despite the refusal: {refused.junit()}"

    after = kind_target.start_times()
    changed = {
        name: (before[name].started_at, state.started_at) for name, state in after.items() if state != before.get(name)
    }
    assert not changed, f"containers were stopped or restarted without consent (before, after): {changed}"
    written = entries(kind_target.uid, state_dir=journal_dir_of(state_home))
    assert not written, f"{len(written)} undo journal entries were written without consent"


# -- 5. the certification profile ----------------------------------------------------------------------------------


def test_certification_profile_fails_a_session_with_a_not_run_test(
    tmp_path: Path, kind_target: KindTarget, state_home: Path
) -> None:
    workers = len(kind_target.cluster.topology.workers())
    run = run_inner(CASE_NEEDS, tmp_path / "certification", state_home, "--cluster", "kind", "--keep-cluster",
                    "--profile", "certification", timeout_s=QUICK_SESSION_TIMEOUT_S)
    verdict = [
        line for line in run.output.splitlines() if "certification FAILED" in line or line.startswith("NOT-RUN ")
    ]
    print(f"\ncertification: {run.describe()}: " + " | ".join(verdict))
    outcomes = {case.name: (case.outcome, case.message) for case in run.junit()}
    reason = f"cluster has {workers} worker{'' if workers == 1 else 's'}, test needs {TOO_MANY_WORKERS}"
    assert outcomes == {
        "test_cluster_is_reachable": ("passed", ""),
        "test_needs_more_workers_than_the_cluster_has": ("skipped", f"not-run: {reason}"),
    }, f"unexpected inner outcomes {outcomes}\n{run.tail()}"
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, (
        f"one test not-run under --profile certification should fail the session (exit "
        f"{int(pytest.ExitCode.TESTS_FAILED)}), got {run.describe()}\n{run.tail()}"
    )
    nodeid = f"{CASE_NEEDS.relative_to(REPO)}::test_needs_more_workers_than_the_cluster_has"
    assert f"NOT-RUN {nodeid}: {reason}" in run.output, (
        f"the summary does not list the not-run test and why:\n{run.tail()}"
    )
    assert "kubeha certification FAILED: 1 test(s) skipped or not run" in run.output, (
        f"the summary does not state the certification verdict:\n{run.tail()}"
    )
