"""Quorum arithmetic against the definition of a strict majority."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeha.core.quorum import QuorumPlan, fault_tolerance, has_quorum, quorum_plan, quorum_size

members = st.integers(min_value=1, max_value=1001)


@pytest.mark.parametrize(
    ("n", "quorum", "tolerance"),
    [(1, 1, 0), (2, 2, 0), (3, 2, 1), (4, 3, 1), (5, 3, 2), (6, 4, 2), (7, 4, 3)],
)
def test_known_sizes(n: int, quorum: int, tolerance: int) -> None:
    assert quorum_size(n) == quorum
    assert fault_tolerance(n) == tolerance


@given(members)
def test_quorum_is_smallest_strict_majority(n: int) -> None:
    q = quorum_size(n)
    assert 2 * q > n
    assert 2 * (q - 1) <= n


@given(members)
def test_tolerance_is_largest_down_count_with_quorum(n: int) -> None:
    f = fault_tolerance(n)
    assert has_quorum(n, f)
    assert not has_quorum(n, f + 1)
    assert f + quorum_size(n) == n


@given(members, st.data())
def test_has_quorum_matches_majority_of_survivors(n: int, data: st.DataObject) -> None:
    down = data.draw(st.integers(min_value=0, max_value=n))
    assert has_quorum(n, down) == (2 * (n - down) > n)


@given(members)
def test_plan_is_consistent(n: int) -> None:
    plan = quorum_plan(n)
    assert plan == QuorumPlan(n, quorum_size(n), fault_tolerance(n), fault_tolerance(n) + 1)
    assert has_quorum(n, plan.may_stop)
    assert plan.must_stop_to_lose > n or not has_quorum(n, plan.must_stop_to_lose)


def test_single_member_cannot_lose_anything() -> None:
    plan = quorum_plan(1)
    assert plan.may_stop == 0
    assert plan.must_stop_to_lose == 1
    assert not has_quorum(1, 1)


@pytest.mark.parametrize("n", [0, -1, -7])
def test_member_count_below_one_is_rejected_with_fix(n: int) -> None:
    for function in (quorum_size, fault_tolerance, quorum_plan):
        with pytest.raises(ValueError, match=r"at least 1, got .*etcdctl member list"):
            function(n)


@pytest.mark.parametrize("down", [-1, 4, 100])
def test_down_out_of_range_is_rejected(down: int) -> None:
    with pytest.raises(ValueError, match=r"between 0 and 3 .*count only members"):
        has_quorum(3, down)


def test_non_int_counts_are_rejected() -> None:
    with pytest.raises(TypeError, match="must be an int"):
        quorum_size(True)
    with pytest.raises(TypeError, match="down must be an int"):
        has_quorum(3, 1.0)  # type: ignore[arg-type]
