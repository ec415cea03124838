"""The serial lock: a ``serial`` test runs while no other cluster test runs, in any process of the session.

Every cluster test holds a shared ``flock`` on the run directory's ``serial.lock``; a serial test holds it exclusive.
A serial test announces itself in ``serial-waiting/`` while it waits, and new sharers hold back meanwhile, so that it
is not starved. Waits are bounded by `SERIAL_LOCK_TIMEOUT_S`, after which the test is not-run.

The steady turn (`steady_turn`, taken inside the serial lock): a test that is neither ``serial`` nor ``disruptive``
judges the cluster in its steady state (every endpoint answers, every worker has a replica, every ingress node
routes), which a node held down by another worker's fault breaks. Such steady-state tests take ``steady.lock``
exclusive, one at a time; non-serial disruptive tests share it, so they still overlap one another within the fault
budget. A waiting steady-state test holds back new disruptive ones the same way (``steady-waiting/``).

Fixtures wider than one test (module or session scope) are set up before the per-test gate takes the lock, so those
that create or delete cluster resources wrap that work in `cluster_setup`: it holds the lock shared, like a
non-serial test, so that set-up never runs during a serial test (a quorum-loss test would make it fail, and it would
disturb what a serial test measures).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeha.pytest_plugin.outcomes import DRY_RUN_REASON, not_run
from kubeha.pytest_plugin.runcontext import RunContext, run_context

__all__ = ["SERIAL_LOCK_POLL_S", "SERIAL_LOCK_TIMEOUT_S", "cluster_setup", "serial_lock", "steady_turn"]

SERIAL_LOCK_TIMEOUT_S = 3600.0  # a serial test waiting for the cluster to itself (or others waiting for it)
SERIAL_LOCK_POLL_S = 0.5


@contextlib.contextmanager
def _turn(lock_path: Path, waiting_dir: Path, nodeid: str, exclusive: bool, *, waiting_for: str,
          held_back_by: str) -> Iterator[None]:
    """A ``flock`` on `lock_path`, shared or exclusive; a waiting exclusive holder goes before new sharers."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    waiting_dir.mkdir(parents=True, exist_ok=True)
    waiting = waiting_dir / hashlib.sha256(nodeid.encode()).hexdigest()[:20]
    deadline = time.monotonic() + SERIAL_LOCK_TIMEOUT_S
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if exclusive:
            waiting.touch()
        try:
            while True:
                if exclusive or not any(waiting_dir.iterdir()):
                    try:
                        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                        break
                    except OSError as error:
                        if error.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                if time.monotonic() > deadline:
                    not_run(f"waited {SERIAL_LOCK_TIMEOUT_S:.0f} s for "
                            + (waiting_for if exclusive else held_back_by))
                time.sleep(SERIAL_LOCK_POLL_S)
        finally:
            if exclusive:
                waiting.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def serial_lock(context: RunContext, nodeid: str, exclusive: bool) -> Iterator[None]:
    """Shared for every cluster test, exclusive for a serial one; a waiting serial test goes before new sharers."""
    with _turn(context.serial_lock_path, context.serial_waiting_dir, nodeid, exclusive,
               waiting_for="every other cluster test to finish (the test is serial)",
               held_back_by="serial tests to finish"):
        yield


@contextlib.contextmanager
def steady_turn(context: RunContext, nodeid: str, *, serial: bool, disruptive: bool) -> Iterator[None]:
    """Inside the serial lock: a steady-state test (neither serial nor disruptive) runs while no disruptive test
    does; disruptive tests share the turn with one another. A serial test is alone already and takes no turn."""
    if serial:
        yield
        return
    with _turn(context.steady_lock_path, context.steady_waiting_dir, nodeid, not disruptive,
               waiting_for="running disruptive tests to finish (a steady-state test runs while no fault is in place)",
               held_back_by="steady-state tests to finish"):
        yield


@contextlib.contextmanager
def cluster_setup(request: pytest.FixtureRequest, what: str) -> Iterator[None]:
    """Hold the cluster for `what`, the set-up or tear-down a module- or session-scoped fixture does on it, as a
    non-serial test does: never while a serial test runs. In a dry run the fixture's tests are not-run instead, since
    the set-up would touch the cluster. Do not nest it, nor use it inside a test (the test already holds the lock)."""
    context = run_context(request.config)
    if context.dry_run:
        not_run(DRY_RUN_REASON)
    with serial_lock(context, f"{request.node.nodeid} [{what}]", exclusive=False):
        yield
