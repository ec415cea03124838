"""The serial lock: a ``serial`` test runs while no other cluster test runs, in any process of the session.

Every cluster test holds a shared ``flock`` on the run directory's ``serial.lock``; a serial test holds it exclusive.
A serial test announces itself in ``serial-waiting/`` while it waits, and new sharers hold back meanwhile, so that it
is not starved. Waits are bounded by `SERIAL_LOCK_TIMEOUT_S`, after which the test is not-run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator

from kubeha.pytest_plugin.outcomes import not_run
from kubeha.pytest_plugin.runcontext import RunContext

__all__ = ["SERIAL_LOCK_POLL_S", "SERIAL_LOCK_TIMEOUT_S", "serial_lock"]

SERIAL_LOCK_TIMEOUT_S = 3600.0  # a serial test waiting for the cluster to itself (or others waiting for it)
SERIAL_LOCK_POLL_S = 0.5


@contextlib.contextmanager
def serial_lock(context: RunContext, nodeid: str, exclusive: bool) -> Iterator[None]:
    """Shared for every cluster test, exclusive for a serial one; a waiting serial test goes before new sharers."""
    context.run_dir.mkdir(parents=True, exist_ok=True)
    context.serial_waiting_dir.mkdir(parents=True, exist_ok=True)
    waiting = context.serial_waiting_dir / hashlib.sha256(nodeid.encode()).hexdigest()[:20]
    deadline = time.monotonic() + SERIAL_LOCK_TIMEOUT_S
    fd = os.open(context.serial_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if exclusive:
            waiting.touch()
        try:
            while True:
                if exclusive or not any(context.serial_waiting_dir.iterdir()):
                    try:
                        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                        break
                    except OSError as error:
                        if error.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                if time.monotonic() > deadline:
                    not_run(
                        f"waited {SERIAL_LOCK_TIMEOUT_S:.0f} s for "
                        + ("every other cluster test to finish (the test is serial)" if exclusive
                           else "serial tests to finish")
                    )
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
