"""What each test proved: the `ResultRecorder` tests write to, the verdict folded from the outcome of every phase,
and the `ControlResult` built at teardown, turned into JUnit properties and written to the run directory.

Per test, in the process that runs it: ``pytest_runtest_setup`` reads the markers and makes the `ItemState` before
any fixture runs; ``pytest_runtest_makereport`` folds each phase's outcome into the verdict (a passing test with a
measurement outside its budget fails) and, at teardown, builds the result, asks ``pytest_kubeha_junit_properties``
for the test's user properties and writes the result to ``results/`` of the run directory, where the controller
gathers every process's results at session end (`read_results`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubeha.coordination import Grant
from kubeha.core import model
from kubeha.core.jsonfields import JsonObject, JsonValue, as_object, get_object, get_str
from kubeha.core.model import Comparison, ControlResult, Evidence, Measurement, ProbeSpan, Verdict
from kubeha.core.outage import OutageWindow
from kubeha.providers.base import CapabilityError
from kubeha.pytest_plugin.markers import ControlSpec, ItemMarkers, item_markers
from kubeha.pytest_plugin.outcomes import NOT_RUN_PREFIX, not_run, skip_reason
from kubeha.pytest_plugin.runcontext import RUN_KEY, RunContext, atomic_write, record_event

__all__ = [
    "ITEM_KEY",
    "ItemState",
    "ResultRecorder",
    "StoredResult",
    "item_state",
    "pytest_runtest_call",
    "pytest_runtest_makereport",
    "pytest_runtest_setup",
    "read_results",
]


class ResultRecorder:
    """What a test proved: measurements against budgets, evidence, outage windows, timeline events.

    At the end of the test the plugin turns it into a `ControlResult` (for a test marked ``control``) and JUnit
    properties. A passing test with a measurement outside its budget fails.
    """

    def __init__(self, nodeid: str, control: ControlSpec | None, context: RunContext | None) -> None:
        self.nodeid = nodeid
        self.control = control
        self._context = context
        self._lock = threading.Lock()
        self._measurements: list[Measurement] = []
        self._evidence: list[Evidence] = []
        self._windows: list[OutageWindow] = []
        self._tags: list[str] = []
        self._probe_span: ProbeSpan | None = None

    def measure(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        budget: float | None = None,
        comparison: Comparison = Comparison.AT_MOST,
    ) -> Measurement:
        measurement = Measurement(name=name, value=value, unit=unit, budget=budget, comparison=comparison)
        self.add_measurement(measurement)
        return measurement

    def add_measurement(self, measurement: Measurement) -> None:
        with self._lock:
            self._measurements.append(measurement)

    def evidence(self, label: str, text: str) -> None:
        with self._lock:
            self._evidence.append(Evidence(label=label, text=text))

    def windows(self, windows: Iterable[OutageWindow]) -> None:
        with self._lock:
            self._windows.extend(windows)

    def probe_span(self, start: float, end: float) -> None:
        with self._lock:
            self._probe_span = ProbeSpan(start=start, end=end)

    def tag(self, *tags: str) -> None:
        with self._lock:
            self._tags.extend(tags)

    def event(self, kind: str, detail: str, *, source: str = "test") -> None:
        """Add an event to the run's timeline, attributed to this test."""
        if self._context is not None:
            record_event(self._context, source, kind, detail, self.nodeid)

    def broken_budgets(self) -> tuple[Measurement, ...]:
        with self._lock:
            return tuple(m for m in self._measurements if m.within_budget is False)

    def build(
        self, verdict: Verdict, reason: str, started_wall: float, duration_s: float, tags: Sequence[str]
    ) -> ControlResult | None:
        if self.control is None:
            return None
        with self._lock:
            return ControlResult(
                control_id=self.control.id,
                title=self.control.title,
                statement=self.control.statement,
                verdict=verdict,
                reason=reason,
                started_wall=started_wall,
                duration_s=max(duration_s, 0.0),
                measurements=tuple(self._measurements),
                evidence=tuple(self._evidence),
                windows=tuple(self._windows),
                tags=(*tags, *self._tags),
                probe_span=self._probe_span,
            )


class ItemState:
    """Bookkeeping for one test across its setup, call and teardown."""

    def __init__(self, markers: ItemMarkers, recorder: ResultRecorder) -> None:
        self.markers = markers
        self.recorder = recorder
        self.started_wall: float | None = None
        self.duration_s = 0.0
        self.verdict: Verdict | None = None
        self.reason = ""
        self.grant: Grant | None = None
        self.cluster_identity: model.ClusterIdentity | None = None


ITEM_KEY = pytest.StashKey[ItemState]()


def item_state(request: pytest.FixtureRequest) -> ItemState:
    node: pytest.Item = request.node
    state = node.stash.get(ITEM_KEY, None)
    if state is None:
        raise pytest.UsageError(f"{request.node.nodeid}: kubeha test state is missing (is the plugin loaded twice?)")
    return state


def _failure_reason(call: pytest.CallInfo[None]) -> str:
    if call.excinfo is None:
        return "failed"
    text = call.excinfo.exconly().strip()
    first = text.splitlines()[0] if text else call.excinfo.typename
    return first[:500]


def _verdict_of(state: ItemState, when: str, outcome: str, reason: str) -> None:
    """Fold the outcome of one phase into the test's verdict (the first non-pass wins, as in pytest)."""
    if state.verdict is not None and state.verdict is not Verdict.PASSED:
        return
    if outcome == "passed":
        if when == "call":
            state.verdict = Verdict.PASSED
        return
    if outcome == "skipped":
        if reason.startswith(NOT_RUN_PREFIX):
            state.verdict, state.reason = Verdict.NOT_RUN, reason.removeprefix(NOT_RUN_PREFIX)
        else:
            state.verdict, state.reason = Verdict.SKIPPED, reason
        return
    state.verdict = Verdict.FAILED if when == "call" else Verdict.ERROR
    state.reason = reason if when == "call" else f"{when} error: {reason}"


def _result_path(context: RunContext, nodeid: str) -> Path:
    digest = hashlib.sha256(nodeid.encode()).hexdigest()[:20]
    return context.results_dir / f"{digest}.json"


def _write_result(context: RunContext, nodeid: str, result: ControlResult, cluster: model.ClusterIdentity | None) -> None:
    document: JsonObject = {
        "nodeid": nodeid,
        "worker": context.worker_id,
        "cluster": None if cluster is None else cluster.to_dict(),
        "result": result.to_dict(),
    }
    atomic_write(_result_path(context, nodeid), json.dumps(document, allow_nan=False))


@dataclass(frozen=True)
class StoredResult:
    nodeid: str
    result: ControlResult
    cluster: model.ClusterIdentity | None


def read_results(context: RunContext) -> tuple[StoredResult, ...]:
    if not context.results_dir.is_dir():
        return ()
    stored: list[StoredResult] = []
    for path in sorted(context.results_dir.glob("*.json")):
        where = str(path)
        decoded: JsonValue = json.loads(path.read_text(encoding="utf-8"))
        obj = as_object(decoded, where)
        raw_cluster = obj.get("cluster")
        stored.append(
            StoredResult(
                nodeid=get_str(obj, "nodeid", where),
                result=ControlResult.from_dict(get_object(obj, "result", where), f"{where}.result"),
                cluster=None
                if raw_cluster is None
                else model.ClusterIdentity.from_dict(as_object(raw_cluster, f"{where}.cluster"), f"{where}.cluster"),
            )
        )
    return tuple(sorted(stored, key=lambda item: (item.result.started_wall, item.nodeid)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Read the test's markers (misuse is a setup error with the fix) before any fixture runs."""
    context = item.config.stash.get(RUN_KEY, None)
    markers = item_markers(item)
    item.stash[ITEM_KEY] = ItemState(markers, ResultRecorder(item.nodeid, markers.control, context))
    try:
        return (yield)
    except CapabilityError as error:
        not_run(str(error))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A provider that cannot do what the test asks makes the test not-run, with the provider's reason."""
    try:
        return (yield)
    except CapabilityError as error:
        not_run(str(error))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    state = item.stash.get(ITEM_KEY, None)
    if state is None:
        return (yield)
    if state.started_wall is None:
        state.started_wall = call.start
    state.duration_s += call.duration
    if call.when == "teardown":
        if call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception):
            _verdict_of(state, "teardown", "failed", _failure_reason(call))
        result = _build_result(item, state)
        if result is not None:
            properties = item.config.hook.pytest_kubeha_junit_properties(result=result)
            if properties:
                item.user_properties.extend(properties)
        report = yield
        context = item.config.stash.get(RUN_KEY, None)
        if result is not None and context is not None:
            _write_result(context, item.nodeid, result, state.cluster_identity)
        return report
    report = yield
    if call.when == "call" and report.passed:
        broken = state.recorder.broken_budgets()
        if broken:
            report.outcome = "failed"
            report.longrepr = "measurement(s) outside their budget: " + "; ".join(
                f"{m.name} = {m.describe()}" for m in broken
            )
            _verdict_of(state, "call", "failed", str(report.longrepr))
            return report
    if report.skipped:
        wasxfail = getattr(report, "wasxfail", None)
        reason = f"expected failure: {wasxfail}" if isinstance(wasxfail, str) else skip_reason(report)
        _verdict_of(state, call.when, "skipped", reason)
    elif report.failed:
        _verdict_of(state, call.when, "failed", _failure_reason(call) if call.excinfo else str(report.longrepr))
    else:
        _verdict_of(state, call.when, "passed", "")
    return report


def _build_result(item: pytest.Item, state: ItemState) -> ControlResult | None:
    verdict = state.verdict
    reason = state.reason
    if verdict is None:
        verdict, reason = Verdict.ERROR, "the test did not run its body (interrupted?)"
    broken = state.recorder.broken_budgets()
    if verdict is Verdict.PASSED and broken:
        # Recorded after the call phase (in a fixture's teardown): the control still failed.
        verdict = Verdict.FAILED
        reason = "measurement(s) outside their budget: " + "; ".join(f"{m.name} = {m.describe()}" for m in broken)
    if verdict is not Verdict.PASSED and not reason.strip():
        reason = verdict.value
    return state.recorder.build(
        verdict,
        reason if verdict is not Verdict.PASSED else "",
        state.started_wall if state.started_wall is not None else time.time(),
        state.duration_s,
        (*state.markers.tags(), f"test={item.nodeid}"),
    )
