"""Lease holder parsing, takeover arithmetic, the watcher's bookkeeping, and HttpLeaseReader on a local server."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from test_probes_servers import (  # noqa: F401 - pki is a fixture
    FakeApiServer,
    Override,
    Pki,
    free_port,
    pki,
    wait_until,
)

from kubeha.core.jsonfields import JsonFormatError
from kubeha.core.timeline import Timeline
from kubeha.probes.credentials import ApiEndpoint
from kubeha.probes.leases import (
    DEFAULT_LEASES,
    HttpLeaseReader,
    LeaseObservation,
    LeaseReadError,
    LeaseRef,
    LeaseState,
    LeaseWatcher,
    find_takeover,
    holder_at,
    holder_node,
    holder_transitions,
    parse_lease,
    takeover_time,
)

KCM = LeaseRef("kube-system", "kube-controller-manager")
SCHED = LeaseRef("kube-system", "kube-scheduler")
UUID_A = "3f0c9a2e-1b2c-4d5e-8f90-0123456789ab"
UUID_B = "7e1d2c3b-4a59-4687-9a0b-fedcba987654"
A = f"kind-control-plane_{UUID_A}"
B = f"kind-control-plane2_{UUID_B}"
# Monotonic and wall clocks of the synthetic observations: wall = mono + OFFSET.
OFFSET = 1_700_000_000.0


def at(t_mono: float, holder: str | None, renewed_mono: float | None, lease: LeaseRef = KCM) -> LeaseObservation:
    renew = None if renewed_mono is None else datetime.fromtimestamp(renewed_mono + OFFSET, timezone.utc)
    return LeaseObservation(
        t_mono=t_mono,
        t_wall=t_mono + OFFSET,
        lease=lease,
        exists=True,
        holder_identity=holder,
        renew_time=renew,
        lease_duration_s=15,
        lease_transitions=0,
    )


@pytest.mark.parametrize(
    ("identity", "node"),
    [
        (A, "kind-control-plane"),
        (B, "kind-control-plane2"),
        (f"node_with_underscores_{UUID_A}", "node_with_underscores"),
        ("plain-hostname", "plain-hostname"),
        ("host_not-a-uuid", "host_not-a-uuid"),
        ("", None),
        (None, None),
    ],
)
def test_holder_node(identity: str | None, node: str | None) -> None:
    assert holder_node(identity) == node


def test_parse_lease() -> None:
    state = parse_lease(
        {
            "metadata": {"name": "kube-scheduler"},
            "spec": {
                "holderIdentity": A,
                "leaseDurationSeconds": 15,
                "acquireTime": "2024-05-01T10:00:00.000000Z",
                "renewTime": "2024-05-01T10:00:02.123456Z",
                "leaseTransitions": 3,
            },
        }
    )
    assert state == LeaseState(
        holder_identity=A,
        renew_time=datetime(2024, 5, 1, 10, 0, 2, 123456, tzinfo=timezone.utc),
        acquire_time=datetime(2024, 5, 1, 10, 0, 0, tzinfo=timezone.utc),
        lease_duration_s=15,
        lease_transitions=3,
    )
    released = parse_lease({"metadata": {}, "spec": {"holderIdentity": "", "leaseDurationSeconds": 1}})
    assert released.holder_identity is None and released.renew_time is None
    with pytest.raises(JsonFormatError, match="renewTime"):
        parse_lease({"metadata": {}, "spec": {"renewTime": "yesterday"}})
    with pytest.raises(JsonFormatError, match="leaseTransitions"):
        parse_lease({"metadata": {}, "spec": {"leaseTransitions": "3"}})


def test_takeover_by_a_new_holder_with_a_fresh_renewal() -> None:
    history = [at(0.0, A, 0.0), at(2.0, A, 2.0), at(17.5, B, 17.4), at(19.5, B, 19.5)]
    assert holder_at(history, KCM, 5.0) == A
    found = find_takeover(history, KCM, since_t=3.0)
    assert found is history[2]
    assert takeover_time(history, KCM, since_t=3.0) == pytest.approx(14.5)
    assert found.holder_node == "kind-control-plane2"
    assert found.acquired_after_s(3.0) is None
    acquired = LeaseObservation(
        t_mono=17.5,
        t_wall=17.5 + OFFSET,
        lease=KCM,
        exists=True,
        holder_identity=B,
        renew_time=datetime.fromtimestamp(17.4 + OFFSET, timezone.utc),
        acquire_time=datetime.fromtimestamp(17.25 + OFFSET, timezone.utc),
    )
    assert acquired.acquired_after_s(3.0) == pytest.approx(14.25)


def test_release_and_same_holder_are_not_takeovers() -> None:
    history = [at(0.0, A, 0.0), at(3.5, None, 3.4), at(6.0, A, 6.0)]
    assert takeover_time(history, KCM, since_t=3.0) is None


def test_stale_renewal_of_a_different_holder_is_not_a_takeover() -> None:
    # The watcher first saw A, then (after the fault) B with a renewTime from before the fault: not caused by it.
    history = [at(0.0, A, 0.0), at(4.0, B, 1.0)]
    assert takeover_time(history, KCM, since_t=3.0) is None
    assert takeover_time(history, KCM, since_t=3.0, skew_tolerance_s=2.5) == pytest.approx(1.0)


def test_takeover_before_the_reference_does_not_count() -> None:
    history = [at(0.0, A, 0.0), at(1.0, B, 1.0), at(5.0, B, 5.0)]
    assert holder_at(history, KCM, 3.0) == B
    assert takeover_time(history, KCM, since_t=3.0) is None


def test_takeover_without_a_known_old_holder() -> None:
    history = [at(4.0, B, 4.0)]
    assert takeover_time(history, KCM, since_t=3.0) == pytest.approx(1.0)


def test_other_leases_are_ignored() -> None:
    history = [at(0.0, A, 0.0), at(4.0, B, 4.0, lease=SCHED)]
    assert takeover_time(history, KCM, since_t=3.0) is None
    assert takeover_time(history, SCHED, since_t=3.0) == pytest.approx(1.0)


def test_holder_transitions() -> None:
    history = [at(0.0, A, 0.0), at(2.0, A, 2.0), at(3.0, None, 3.0), at(5.0, B, 5.0), at(7.0, B, 7.0)]
    assert [obs.holder_identity for obs in holder_transitions(history, KCM)] == [A, None, B]


class ScriptedReader:
    """A `LeaseReader` returning, per Lease, the state set by the test (or raising when `failing`)."""

    def __init__(self) -> None:
        self.states: dict[LeaseRef, LeaseState | None] = {}
        self.failing = False
        self.reads = 0
        self.lock = threading.Lock()

    def read(self, lease: LeaseRef, timeout_s: float) -> LeaseState | None:
        with self.lock:
            self.reads += 1
            if self.failing:
                raise LeaseReadError("connect-refused", "refused")
            return self.states.get(lease)


def state(holder: str | None, renew: datetime, transitions: int = 0) -> LeaseState:
    return LeaseState(
        holder_identity=holder, renew_time=renew, acquire_time=None, lease_duration_s=15, lease_transitions=transitions
    )


def test_watcher_keeps_changes_only_and_reports_holders() -> None:
    reader = ScriptedReader()
    now = datetime.now(timezone.utc)
    reader.states = {KCM: state(A, now), SCHED: None}
    timeline = Timeline()
    watcher = LeaseWatcher(reader, timeline=timeline)
    watcher.poll_once()
    watcher.poll_once()
    assert len(watcher.observations(KCM)) == 1
    assert watcher.observations(SCHED)[0].exists is False
    reader.states[KCM] = state(A, now + timedelta(seconds=2))
    watcher.poll_once()
    assert len(watcher.observations(KCM)) == 2
    assert len(watcher.transitions(KCM)) == 1
    since = time.monotonic()
    reader.states[KCM] = state(B, datetime.now(timezone.utc), transitions=1)
    watcher.poll_once()
    assert watcher.current_holder(KCM) == B
    assert watcher.current_holder(SCHED) is None
    assert watcher.poll_count(KCM) == 4
    elapsed = watcher.takeover_time(KCM, since)
    assert elapsed is not None and 0 <= elapsed < 1.0
    reader.failing = True
    watcher.poll_once()
    assert [detail for _, detail in watcher.errors(KCM)] == ["connect-refused: refused"]
    changes = [(e.source, e.kind, e.detail) for e in timeline.events()]
    assert changes == [
        ("lease/kube-system/kube-controller-manager", "lease-holder", f"(unobserved) -> {A}"),
        ("lease/kube-system/kube-scheduler", "lease-holder", "(unobserved) -> (lease absent)"),
        ("lease/kube-system/kube-controller-manager", "lease-holder-change", f"{A} -> {B}"),
    ]
    with pytest.raises(KeyError, match="not watched"):
        watcher.observations(LeaseRef("default", "other"))


def test_background_watcher_polls_at_the_rate_and_waits_for_takeover() -> None:
    reader = ScriptedReader()
    reader.states = {KCM: state(A, datetime.now(timezone.utc))}
    watcher = LeaseWatcher(reader, (KCM,), interval_s=0.05)
    with watcher:
        wait_until(lambda: watcher.poll_count(KCM) >= 5, 5, "five polls")
        since = time.monotonic()
        assert watcher.wait_for_takeover(KCM, since, 0.2) is None

        def take_over() -> None:
            time.sleep(0.3)
            reader.states[KCM] = state(B, datetime.now(timezone.utc), transitions=1)

        threading.Thread(target=take_over).start()
        found = watcher.wait_for_takeover(KCM, since, 5.0)
    assert found is not None and found.holder_identity == B
    # The poll that sees the new holder starts at most a moment before the change (0.3 s after `since`).
    assert 0.25 <= found.t_mono - since < 1.0
    assert watcher.holder_at(KCM, since) == A


def test_watcher_validates_leases() -> None:
    with pytest.raises(ValueError, match="at least one"):
        LeaseWatcher(ScriptedReader(), ())
    with pytest.raises(ValueError, match="once"):
        LeaseWatcher(ScriptedReader(), (KCM, KCM))
    assert DEFAULT_LEASES == (KCM, SCHED)


def endpoint_for(pki: Pki, server: str) -> ApiEndpoint:
    return ApiEndpoint(
        server=server,
        context="test",
        ca_file=pki.ca_cert,
        client_cert_file=pki.client_cert,
        client_key_file=pki.client_key,
    )


def test_http_reader_reads_leases_over_tls(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        server.set_lease(
            "kube-system",
            "kube-scheduler",
            {"holderIdentity": A, "leaseDurationSeconds": 15, "renewTime": "2024-05-01T10:00:02.000000Z"},
        )
        reader = HttpLeaseReader(endpoint_for(pki, server.url))
        got = reader.read(SCHED, 2.0)
        assert got is not None and got.holder_identity == A and got.lease_duration_s == 15
        assert reader.read(KCM, 2.0) is None
        server.overrides.append(Override("GET", "/apis/coordination.k8s.io", status=500))
        with pytest.raises(LeaseReadError, match="http-5xx"):
            reader.read(SCHED, 2.0)
        server.overrides[:] = [Override("GET", "/apis/coordination.k8s.io", status=200, body=b"<html>")]
        with pytest.raises(LeaseReadError, match="protocol"):
            reader.read(SCHED, 2.0)
    with pytest.raises(LeaseReadError, match="connect-refused"):
        HttpLeaseReader(endpoint_for(pki, f"https://127.0.0.1:{free_port()}")).read(SCHED, 1.0)


def test_watcher_over_http_sees_a_takeover(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        renew = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        server.set_lease("kube-system", "kube-controller-manager", {"holderIdentity": A, "renewTime": renew})
        watcher = LeaseWatcher(HttpLeaseReader(endpoint_for(pki, server.url)), (KCM,), interval_s=0.1)
        with watcher:
            wait_until(lambda: watcher.current_holder(KCM) == A, 5, "the first holder")
            since = time.monotonic()
            renew = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
            server.set_lease("kube-system", "kube-controller-manager", {"holderIdentity": B, "renewTime": renew})
            found = watcher.wait_for_takeover(KCM, since, 5.0)
    assert found is not None and found.holder_node == "kind-control-plane2"
    assert watcher.poll_count(KCM) >= 2
