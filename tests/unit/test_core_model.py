"""The result model: budgets, consistency rules, run summaries, certification and JSON round trips."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeha.core.jsonfields import JsonFormatError
from kubeha.core.model import (
    ClusterIdentity,
    Comparison,
    ControlResult,
    Evidence,
    Measurement,
    ModelError,
    ProbeSpan,
    Profile,
    RunReport,
    Verdict,
    format_number,
)
from kubeha.core.outage import OutageWindow

CLUSTER = ClusterIdentity("https://10.0.0.100:6443", "3f1c2a9e-uid", "v1.31.2")
finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
times = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
text = st.text(max_size=30)
names = st.text(min_size=1, max_size=20).filter(str.strip)


def result(control_id: str, verdict: Verdict, reason: str = "because", **extra: object) -> ControlResult:
    return ControlResult(
        control_id=control_id,
        title=f"title of {control_id}",
        statement="The API MUST stay reachable.",
        verdict=verdict,
        reason=reason,
        started_wall=1_700_000_000.0,
        duration_s=12.5,
        **extra,  # type: ignore[arg-type]
    )


def report(*results: ControlResult, profile: Profile = Profile.DEFAULT) -> RunReport:
    return RunReport(
        cluster=CLUSTER, started_wall=1_700_000_000.0, finished_wall=1_700_000_100.0, results=results, profile=profile
    )


def test_measurement_budgets() -> None:
    assert Measurement("outage", 4.0, "s", 5.0).within_budget is True
    assert Measurement("outage", 5.0, "s", 5.0).within_budget is True
    assert Measurement("outage", 5.01, "s", 5.0).within_budget is False
    assert Measurement("availability", 0.98, "", 0.99, Comparison.AT_LEAST).within_budget is False
    assert Measurement("availability", 0.999, "", 0.99, Comparison.AT_LEAST).within_budget is True
    assert Measurement("writes", 1200.0, "ops").within_budget is None


def test_measurement_describe() -> None:
    assert Measurement("outage", 7.31, "s", 5.0).describe() == "7.31 s (budget <= 5)"
    assert Measurement("ratio", 0.5, "", 0.9, Comparison.AT_LEAST).describe() == "0.5 (budget >= 0.9)"
    assert Measurement("n", 3.0, "pods").describe() == "3 pods"


@pytest.mark.parametrize(("value", "expected"), [(7.31, "7.31"), (0.000412, "0.000412"), (1234567.0, "1234567")])
def test_format_number(value: float, expected: str) -> None:
    assert format_number(value) == expected


def test_measurement_rejects_non_finite() -> None:
    with pytest.raises(ModelError, match="finite"):
        Measurement("x", math.nan, "s")
    with pytest.raises(ModelError, match="finite"):
        Measurement("x", 1.0, "s", math.inf)
    with pytest.raises(ModelError, match="Comparison.AT_MOST"):
        Measurement("x", 1.0, "s", 2.0, "<=")  # type: ignore[arg-type]


def test_passed_result_cannot_break_a_budget() -> None:
    with pytest.raises(ModelError, match="cannot pass.*outage.*set the verdict to FAILED"):
        result("HA-1", Verdict.PASSED, measurements=(Measurement("outage", 7.0, "s", 5.0),))
    failed = result("HA-1", Verdict.FAILED, measurements=(Measurement("outage", 7.0, "s", 5.0),))
    assert failed.verdict is Verdict.FAILED


@pytest.mark.parametrize("verdict", [Verdict.FAILED, Verdict.NOT_RUN, Verdict.SKIPPED, Verdict.ERROR])
def test_non_passing_results_need_a_reason(verdict: Verdict) -> None:
    with pytest.raises(ModelError, match="say why it did not pass"):
        result("HA-1", verdict, reason=" ")


def test_result_field_checks() -> None:
    with pytest.raises(ModelError, match="control_id"):
        result("", Verdict.PASSED)
    with pytest.raises(ModelError, match="must be a tuple"):
        result("HA-1", Verdict.PASSED, tags=["a"])
    with pytest.raises(ModelError, match="negative"):
        ControlResult(
            control_id="HA-1", title="t", statement="s", verdict=Verdict.PASSED, reason="", started_wall=0.0,
            duration_s=-1.0,
        )
    with pytest.raises(ModelError, match="before it starts"):
        ProbeSpan(2.0, 1.0)
    with pytest.raises(ModelError, match="finished .* before it started"):
        RunReport(cluster=CLUSTER, started_wall=2.0, finished_wall=1.0, results=())


def test_summary_default_profile() -> None:
    summary = report(
        result("A", Verdict.PASSED, ""),
        result("B", Verdict.PASSED, ""),
        result("C", Verdict.SKIPPED, "needs node access: pass --inventory FILE"),
    ).summary()
    assert summary.verdict is Verdict.PASSED
    assert summary.total == 3
    assert summary.count(Verdict.PASSED) == 2
    assert summary.count(Verdict.SKIPPED) == 1
    assert summary.reasons == ("C skipped: needs node access: pass --inventory FILE",)


def test_certification_fails_on_anything_not_run() -> None:
    summary = report(
        result("A", Verdict.PASSED, ""),
        result("B", Verdict.NOT_RUN, "the attach provider cannot stop nodes"),
        result("C", Verdict.SKIPPED, "no ingress nodes"),
        profile=Profile.CERTIFICATION,
    ).summary()
    assert summary.verdict is Verdict.FAILED
    assert summary.reasons == (
        "B not_run: the attach provider cannot stop nodes (certification requires every control to run)",
        "C skipped: no ingress nodes (certification requires every control to run)",
    )


@pytest.mark.parametrize(
    ("verdicts", "profile", "expected"),
    [
        ((), Profile.DEFAULT, Verdict.NOT_RUN),
        ((), Profile.CERTIFICATION, Verdict.FAILED),
        ((Verdict.PASSED,), Profile.CERTIFICATION, Verdict.PASSED),
        ((Verdict.PASSED, Verdict.FAILED, Verdict.ERROR), Profile.DEFAULT, Verdict.FAILED),
        ((Verdict.PASSED, Verdict.ERROR), Profile.DEFAULT, Verdict.ERROR),
        ((Verdict.PASSED, Verdict.ERROR), Profile.CERTIFICATION, Verdict.FAILED),
        ((Verdict.SKIPPED, Verdict.NOT_RUN), Profile.DEFAULT, Verdict.NOT_RUN),
    ],
)
def test_overall_verdict(verdicts: tuple[Verdict, ...], profile: Profile, expected: Verdict) -> None:
    results = tuple(result(f"C{i}", v, "" if v is Verdict.PASSED else "why") for i, v in enumerate(verdicts))
    summary = report(*results, profile=profile).summary()
    assert summary.verdict is expected
    assert sum(count for _, count in summary.counts) == len(verdicts)


@st.composite
def measurements(draw: st.DrawFn, passing: bool) -> Measurement:
    value = draw(finite)
    budget = draw(st.none() | finite)
    comparison = draw(st.sampled_from(Comparison))
    if passing and budget is not None:
        value, budget = (min(value, budget), max(value, budget))
        if comparison is Comparison.AT_LEAST:
            value, budget = budget, value
    return Measurement(draw(names), value, draw(text), budget, comparison)


@st.composite
def windows(draw: st.DrawFn) -> OutageWindow:
    start = draw(times)
    end = start + draw(st.floats(min_value=0.0, max_value=1e3, allow_nan=False))
    return OutageWindow(start, end, draw(st.integers(1, 1000)), draw(st.none() | text), draw(st.booleans()))


@st.composite
def control_results(draw: st.DrawFn) -> ControlResult:
    verdict = draw(st.sampled_from(Verdict))
    passing = verdict is Verdict.PASSED
    span = draw(st.none() | st.tuples(times, times).map(lambda pair: ProbeSpan(min(pair), max(pair))))
    return ControlResult(
        control_id=draw(names),
        title=draw(text),
        statement=draw(text),
        verdict=verdict,
        reason=draw(text if passing else names),
        started_wall=draw(times),
        duration_s=draw(st.floats(min_value=0.0, max_value=1e5, allow_nan=False)),
        measurements=tuple(draw(st.lists(measurements(passing), max_size=3))),
        evidence=tuple(draw(st.lists(st.builds(Evidence, names, text), max_size=2))),
        windows=tuple(draw(st.lists(windows(), max_size=3))),
        tags=tuple(draw(st.lists(text, max_size=3))),
        probe_span=span,
    )


@st.composite
def run_reports(draw: st.DrawFn) -> RunReport:
    started = draw(times)
    return RunReport(
        cluster=ClusterIdentity(draw(text), draw(text), draw(text)),
        started_wall=started,
        finished_wall=started + draw(st.floats(min_value=0.0, max_value=1e6, allow_nan=False)),
        results=tuple(draw(st.lists(control_results(), max_size=4))),
        profile=draw(st.sampled_from(Profile)),
    )


@given(run_reports())
def test_report_json_round_trip(original: RunReport) -> None:
    encoded = json.dumps(original.to_dict(), allow_nan=False)
    decoded = RunReport.from_dict(json.loads(encoded))
    assert decoded == original
    assert decoded.summary() == original.summary()


@given(run_reports())
def test_summary_counts_every_result(run: RunReport) -> None:
    summary = run.summary()
    assert summary.total == len(run.results) == sum(count for _, count in summary.counts)
    non_passing = [r for r in run.results if r.verdict is not Verdict.PASSED]
    if run.results:
        assert len(summary.reasons) == len(non_passing)
    if summary.verdict is Verdict.PASSED:
        assert run.results and all(r.verdict in (Verdict.PASSED, Verdict.SKIPPED, Verdict.NOT_RUN) for r in run.results)
        if run.profile is Profile.CERTIFICATION:
            assert not non_passing


def test_from_dict_names_the_bad_field() -> None:
    document = report(result("A", Verdict.FAILED, measurements=(Measurement("outage", 7.0, "s", 5.0),))).to_dict()
    broken = json.loads(json.dumps(document))
    broken["results"][0]["measurements"][0]["value"] = "seven"
    with pytest.raises(JsonFormatError, match=r"report\.results\[0\]\.measurements\[0\]\.value must be a number"):
        RunReport.from_dict(broken)
    broken = json.loads(json.dumps(document))
    broken["results"][0]["verdict"] = "green"
    with pytest.raises(JsonFormatError, match="expected one of"):
        RunReport.from_dict(broken)
    del broken["cluster"]
    with pytest.raises(JsonFormatError, match="no field 'cluster'"):
        RunReport.from_dict(broken)
