"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# A forked child that only writes a few files is a zombie within milliseconds; this bounds the wait for it.
ZOMBIE_TIMEOUT_S = 30.0
ZOMBIE_POLL_S = 0.01

MakeZombie = Callable[[Callable[[], None]], int]


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()[0]


@pytest.fixture
def zombie() -> Iterator[MakeZombie]:
    """``zombie(work)`` forks a child that runs `work` and exits; the parent does not wait for it, so it stays a
    zombie (state Z) until the test ends. Returns the child's pid once it is a zombie; its exit code is checked at
    teardown, after it is reaped."""
    children: list[int] = []

    def make(work: Callable[[], None]) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                work()
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
        deadline = time.monotonic() + ZOMBIE_TIMEOUT_S
        while _state(pid) != "Z":
            if time.monotonic() > deadline:
                pytest.fail(f"child {pid} did not exit within {ZOMBIE_TIMEOUT_S:.0f} s (state {_state(pid)})")
            time.sleep(ZOMBIE_POLL_S)
        return pid

    yield make
    for pid in children:
        if _state(pid) != "Z":  # the test failed while the child still ran: end it, so that waiting is bounded
            os.kill(pid, signal.SIGKILL)
    codes = {pid: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children}
    assert all(code == 0 for code in codes.values()), f"children failed in their work: {codes}"
