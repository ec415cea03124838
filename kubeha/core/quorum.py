"""Majority-quorum arithmetic for Raft clusters such as etcd.

A cluster of ``n`` voting members needs a strict majority, ``floor(n / 2) + 1``, to elect a leader and commit writes,
so it survives ``floor((n - 1) / 2)`` members down. Nothing here assumes three members.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QuorumPlan", "fault_tolerance", "has_quorum", "quorum_plan", "quorum_size"]

MIN_MEMBERS = 1


def _check_members(members: int) -> None:
    if isinstance(members, bool) or not isinstance(members, int):
        raise TypeError(f"member count must be an int, got {type(members).__name__}: pass len(topology.etcd_members)")
    if members < MIN_MEMBERS:
        raise ValueError(
            f"member count must be at least {MIN_MEMBERS}, got {members}: "
            "pass the number of voting members the cluster reports (etcdctl member list), not an empty list"
        )


def quorum_size(members: int) -> int:
    """Smallest number of live voting members that still forms a majority of `members`."""
    _check_members(members)
    return members // 2 + 1


def fault_tolerance(members: int) -> int:
    """How many of `members` voting members may be down while a majority remains: ``floor((members - 1) / 2)``."""
    _check_members(members)
    return (members - 1) // 2


def has_quorum(members: int, down: int) -> bool:
    """Whether `members` voting members with `down` of them unavailable still have a majority."""
    _check_members(members)
    if isinstance(down, bool) or not isinstance(down, int):
        raise TypeError(f"down must be an int, got {type(down).__name__}: pass how many members are unavailable")
    if not 0 <= down <= members:
        raise ValueError(
            f"down must be between 0 and {members} for a {members}-member cluster, got {down}: "
            "count only members of this cluster that are unavailable"
        )
    return members - down >= quorum_size(members)


@dataclass(frozen=True)
class QuorumPlan:
    """How a test may disturb a cluster of `members` voting members.

    `may_stop` members can be stopped at once with quorum kept; stopping `must_stop_to_lose` members loses it.
    """

    members: int
    quorum: int
    may_stop: int
    must_stop_to_lose: int


def quorum_plan(members: int) -> QuorumPlan:
    """The stop counts that keep and that lose quorum for a cluster of `members` voting members."""
    tolerance = fault_tolerance(members)
    return QuorumPlan(
        members=members,
        quorum=quorum_size(members),
        may_stop=tolerance,
        must_stop_to_lose=tolerance + 1,
    )
