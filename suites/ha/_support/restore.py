"""A fault whose end waits until the cluster is really back, not just until the provider undid it.

A restarted node or static pod looks Ready in the API until its kubelet reports again, so a test that ends right
after `kubeha.faults` restored its fault leaves the next test (and the health gate) looking at stale state.
``with until_back(*faults, wait=wait) as back:`` injects the faults in order, and on the way out restores them in
reverse order and then calls `wait(since)` with the wall-clock instant the restoration began (once, after every
fault is undone: a member that needs the others back is not waited for alone); `Back.seconds` is what it returned. When the block failed,
the wait still runs, and a wait that fails then is noted in `Back.problem` instead of hiding the block's own failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubeha.faults import FaultRecord
from suites.ha._support.kube import RetryTimeout, describe_error

__all__ = ["Back", "until_back"]


@dataclass
class Back:
    """The faults in place (in the order injected), and after the block how long the cluster took to be back."""

    faults: tuple[FaultRecord, ...]
    seconds: float | None = None
    problem: str = ""
    # Monotonic instants at which each fault's restoration returned, in the order restored (the reverse of the
    # injection order); the provider returns once the node or component runs again.
    restored_mono: list[float] = field(default_factory=list)

    @property
    def first(self) -> FaultRecord:
        return self.faults[0]

    @property
    def last(self) -> FaultRecord:
        return self.faults[-1]


@contextmanager
def until_back(*faults: AbstractContextManager[FaultRecord], wait: Callable[[float], float]) -> Iterator[Back]:
    """Inject `faults` in order; on the way out restore them in reverse order, then `wait(restore_wall)`."""
    if not faults:
        raise ValueError("until_back needs at least one fault")
    back: Back | None = None
    restore_wall = time.time()
    failed = True
    try:
        with ExitStack() as stack:
            restored: list[float] = []
            entered: list[FaultRecord] = []
            for fault in faults:
                # Pushed before the fault, so it runs right after the fault is restored (exit order is LIFO).
                stack.callback(lambda: restored.append(time.monotonic()))
                entered.append(stack.enter_context(fault))
            back = Back(tuple(entered), restored_mono=restored)
            try:
                yield back
            finally:
                restore_wall = time.time()
        failed = False
    finally:
        if failed and back is not None:
            # The block (or the restoration) failed: still wait for the cluster, without hiding that failure.
            try:
                back.seconds = wait(restore_wall)
            except RetryTimeout as error:
                back.problem = str(error)
            except (ApiException, HTTPError, OSError) as error:
                back.problem = describe_error(error)
    if back is not None:
        back.seconds = wait(restore_wall)
