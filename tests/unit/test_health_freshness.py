"""The health gate waits until every kubelet has reported since the wait began (`LeaseFreshness`), without a cluster.

Right after a node is powered on again, the API still shows it Ready and its pods ready, as its kubelet reported them
before the fault; the gate must not take that for the steady state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ProtocolError

from kubeha.cluster import health
from kubeha.cluster.health import LeaseFreshness

# The readers below are fakes, so the client is never used.
NO_CLIENT = cast(ApiClient, None)


def reader(*answers: dict[str, float] | BaseException) -> Callable[[ApiClient], dict[str, float]]:
    remaining: Iterator[dict[str, float] | BaseException] = iter(answers)

    def read(client: ApiClient) -> dict[str, float]:
        answer = next(remaining)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return read


def stale_nodes(problems: tuple[str, ...]) -> list[str]:
    return [problem.split(":", 1)[0].removeprefix("node ") for problem in problems]


def test_a_node_counts_only_one_check_after_its_lease_was_seen_renewed() -> None:
    freshness = LeaseFreshness(
        NO_CLIENT,
        reader({"cp1": 100.0, "cp2": 100.0}, {"cp1": 100.0, "cp2": 110.0}, {"cp1": 110.0, "cp2": 110.0},
               {"cp1": 120.0, "cp2": 120.0}),
    )
    assert stale_nodes(freshness.problems()) == ["cp1", "cp2"], "nothing can have been reported at the first check"
    assert stale_nodes(freshness.problems()) == ["cp1", "cp2"], "cp2 renewed just now: its pods' status may lag"
    assert stale_nodes(freshness.problems()) == ["cp1"], "cp2 renewed one check ago and counts; cp1 renewed just now"
    assert freshness.problems() == ()


def test_a_node_whose_lease_is_gone_is_not_waited_for() -> None:
    freshness = LeaseFreshness(
        NO_CLIENT, reader({"cp1": 100.0, "w1": 100.0}, {"cp1": 100.0}, {"cp1": 101.0}, {"cp1": 101.0})
    )
    assert stale_nodes(freshness.problems()) == ["cp1", "w1"]
    assert stale_nodes(freshness.problems()) == ["cp1"]
    assert stale_nodes(freshness.problems()) == ["cp1"]
    assert freshness.problems() == ()


def test_leases_that_may_not_be_read_are_not_waited_for() -> None:
    freshness = LeaseFreshness(NO_CLIENT, reader(ApiException(status=403, reason="Forbidden")))
    assert freshness.problems() == ()
    assert freshness.problems() == (), "a forbidden read is not retried"


def test_a_failed_read_is_a_problem_and_the_baseline_waits_for_a_read_that_works() -> None:
    freshness = LeaseFreshness(
        NO_CLIENT,
        reader(ProtocolError("connection reset"), {"cp1": 100.0}, {"cp1": 110.0}, {"cp1": 110.0}),
    )
    failed = freshness.problems()
    assert len(failed) == 1 and "cannot read the node Leases in kube-node-lease" in failed[0], failed
    assert stale_nodes(freshness.problems()) == ["cp1"]
    assert stale_nodes(freshness.problems()) == ["cp1"]
    assert freshness.problems() == ()


def test_wait_for_steady_state_waits_for_fresh_reports_although_the_api_looks_steady(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "check_once", lambda client, expected_etcd_pods=None: ())
    freshness = LeaseFreshness(NO_CLIENT, reader({"cp1": 100.0}, {"cp1": 100.0}, {"cp1": 110.0}, {"cp1": 110.0}))
    report = health.wait_for_steady_state(
        NO_CLIENT, timeout_s=60.0, poll_s=0.0, sleep=lambda seconds: None, freshness=freshness
    )
    assert report.ok and report.assessments == 4, (
        f"expected steady at the 4th assessment (renewal seen at the 3rd), got {report.assessments}: "
        f"{report.describe()}"
    )
