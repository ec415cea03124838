"""WriteRecorder bookkeeping and verification against a fake store, and ConfigMapStore against a local TLS server."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import pytest
from test_probes_servers import (  # noqa: F401 - pki is a fixture
    FAKE_PAGE_SIZE,
    FakeApiServer,
    Override,
    Pki,
    free_port,
    pki,
    wait_until,
)

from kubeha.core.timeline import Timeline
from kubeha.probes.api import ErrorClass
from kubeha.probes.credentials import ApiEndpoint
from kubeha.probes.writes import (
    MANAGED_BY_LABEL,
    RUN_LABEL,
    ConfigMapStore,
    StoreError,
    VerificationIncomplete,
    WriteIndeterminate,
    WriteOutcome,
    WriteRecorder,
    WriteRejected,
    judge_writes,
    write_outcome_of_status,
)

NAMESPACE = "kubeha-writes"
SHORT_TIMEOUT_S = 0.3


class FakeStore:
    """An in-memory `WriteStore` whose behaviour per write sequence number is scripted.

    Scripts: "reject" (definite failure, not applied), "ambiguous-applied" / "ambiguous-dropped" (indeterminate,
    applied or not), "lose" (acknowledged, then dropped), "corrupt" (acknowledged, then altered), "phantom"
    (definite failure reported, yet applied).
    """

    def __init__(self, script: Mapping[int, str] | None = None, *, list_failures: int = 0) -> None:
        self.script = dict(script or {})
        self.objects: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        self.list_failures = list_failures
        self.delete_failures = 0
        self.creates = 0
        self.lock = threading.Lock()

    def create(self, name: str, data: Mapping[str, str], labels: Mapping[str, str], timeout_s: float) -> str | None:
        assert timeout_s > 0
        seq = int(data["seq"])
        action = self.script.get(seq, "ok")
        with self.lock:
            self.creates += 1
            if action in ("ok", "lose", "corrupt", "ambiguous-applied", "phantom"):
                self.objects[name] = (dict(data), dict(labels))
            if action == "lose":
                del self.objects[name]
            if action == "corrupt":
                self.objects[name][0]["value"] = "something else"
        if action == "reject" or action == "phantom":
            raise WriteRejected(ErrorClass.HTTP_5XX.value, "HTTP 503", status=503)
        if action.startswith("ambiguous"):
            raise WriteIndeterminate(ErrorClass.READ_TIMEOUT.value, "timed out")
        return str(seq + 1000)

    def list(self, selector: Mapping[str, str], timeout_s: float) -> dict[str, dict[str, str]]:
        with self.lock:
            if self.list_failures:
                self.list_failures -= 1
                raise StoreError(ErrorClass.CONNECT_REFUSED.value, "refused")
            return {
                name: dict(data)
                for name, (data, labels) in self.objects.items()
                if all(labels.get(k) == v for k, v in selector.items())
            }

    def delete_all(self, selector: Mapping[str, str], timeout_s: float) -> None:
        with self.lock:
            if self.delete_failures:
                self.delete_failures -= 1
                raise StoreError(ErrorClass.HTTP_5XX.value, "HTTP 500")
            for name in [n for n, (_, labels) in self.objects.items() if all(labels.get(k) == v for k, v in selector.items())]:
                del self.objects[name]


def write_n(recorder: WriteRecorder, count: int) -> None:
    for _ in range(count):
        recorder.write_next()


def test_outcomes_are_recorded_and_counted() -> None:
    store = FakeStore({1: "reject", 2: "ambiguous-applied", 3: "ambiguous-dropped"})
    recorder = WriteRecorder(store, run_id="run1")
    write_n(recorder, 5)
    records = recorder.records()
    assert [r.outcome for r in records] == [
        WriteOutcome.OK,
        WriteOutcome.FAILED,
        WriteOutcome.UNKNOWN,
        WriteOutcome.UNKNOWN,
        WriteOutcome.OK,
    ]
    assert [r.name for r in records] == [f"kubeha-write-run1-{seq}" for seq in range(5)]
    assert records[0].resource_version == "1000"
    assert (records[1].status, records[1].error_class) == (503, "http-5xx")
    assert records[2].error_class == "read-timeout" and records[2].status is None
    report = recorder.report()
    assert (report.attempted, report.ok, report.failed, report.unknown) == (5, 2, 1, 2)
    assert len(report.windows) == 1
    assert report.windows[0].failures == 3
    assert report.windows[0].start == records[1].t_mono and report.windows[0].end == records[4].t_mono
    assert "5 writes: 2 acknowledged, 1 failed, 2 unknown" in report.summary()


def test_verify_passes_when_every_acknowledged_write_is_present() -> None:
    store = FakeStore({1: "reject", 2: "ambiguous-applied", 3: "ambiguous-dropped"})
    recorder = WriteRecorder(store, run_id="run2")
    write_n(recorder, 5)
    verification = recorder.verify(deadline_s=5)
    assert verification.passed
    assert verification.confirmed == 2
    assert verification.unknown_present == ("kubeha-write-run2-2",)
    assert verification.unknown_absent == ("kubeha-write-run2-3",)
    assert verification.violations == ()


def test_verify_names_lost_altered_and_phantom_writes() -> None:
    store = FakeStore({1: "lose", 2: "corrupt", 3: "phantom", 4: "ambiguous-dropped"})
    recorder = WriteRecorder(store, run_id="run3")
    write_n(recorder, 6)
    verification = recorder.verify(deadline_s=5)
    assert not verification.passed
    assert verification.lost == ("kubeha-write-run3-1",)
    assert verification.mismatched == ("kubeha-write-run3-2",)
    assert verification.phantom == ("kubeha-write-run3-3",)
    assert verification.confirmed == 2
    assert set(verification.violations) == {"kubeha-write-run3-1", "kubeha-write-run3-2", "kubeha-write-run3-3"}
    assert "LOST acknowledged writes: kubeha-write-run3-1" in verification.summary()


def test_verify_ignores_other_runs_and_reports_strays_of_its_own() -> None:
    store = FakeStore()
    other = WriteRecorder(store, run_id="other")
    write_n(other, 2)
    recorder = WriteRecorder(store, run_id="mine")
    write_n(recorder, 2)
    store.objects["kubeha-write-mine-99"] = ({"seq": "99", "value": "x"}, recorder.selector)
    verification = recorder.verify(deadline_s=5)
    assert verification.confirmed == 2
    assert verification.unexpected == ("kubeha-write-mine-99",)
    assert verification.passed


def test_verify_retries_listing_then_gives_up_loudly() -> None:
    store = FakeStore(list_failures=2)
    recorder = WriteRecorder(store, run_id="retry")
    write_n(recorder, 1)
    assert recorder.verify(deadline_s=5).confirmed == 1
    store.list_failures = 1_000_000
    started = time.monotonic()
    with pytest.raises(VerificationIncomplete, match="connect-refused"):
        recorder.verify(deadline_s=1.0)
    assert time.monotonic() - started < 2.0


def test_cleanup_deletes_only_its_run_and_retries() -> None:
    store = FakeStore({1: "ambiguous-applied"})
    other = WriteRecorder(store, run_id="keep")
    write_n(other, 2)
    recorder = WriteRecorder(store, run_id="gone")
    write_n(recorder, 3)
    store.delete_failures = 1
    report = recorder.cleanup(deadline_s=5)
    assert report.complete and report.remaining == ()
    assert sorted(store.objects) == ["kubeha-write-keep-0", "kubeha-write-keep-1"]


def test_cleanup_is_bounded_when_the_store_keeps_failing() -> None:
    store = FakeStore()
    recorder = WriteRecorder(store, run_id="stuck")
    write_n(recorder, 2)
    store.delete_failures = 1_000_000
    started = time.monotonic()
    report = recorder.cleanup(deadline_s=1.0)
    assert time.monotonic() - started < 2.0
    assert not report.complete
    assert report.last_error is not None and "http-5xx" in report.last_error


def test_background_writes_follow_the_rate_and_report_transitions() -> None:
    store = FakeStore({seq: "reject" for seq in range(3, 6)})
    timeline = Timeline()
    recorder = WriteRecorder(store, rate_hz=20.0, run_id="rate", timeline=timeline)
    with recorder:
        wait_until(lambda: len(recorder.records()) >= 10, 5, "ten writes")
    records = recorder.records()
    span = records[-1].t_mono - records[0].t_mono
    assert (len(records) - 1) / span == pytest.approx(20.0, rel=0.2)
    assert [event.kind for event in timeline.events()] == ["write-outage-start", "write-outage-end"]
    with pytest.raises(RuntimeError, match="already started"):
        recorder.start()


def test_verify_refuses_while_writing() -> None:
    recorder = WriteRecorder(FakeStore(), rate_hz=50.0, run_id="busy")
    with recorder:
        wait_until(lambda: len(recorder.records()) >= 1, 5, "a write")
        with pytest.raises(RuntimeError, match="stop the write recorder"):
            recorder.verify()


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, WriteOutcome.OK),
        (201, WriteOutcome.OK),
        (400, WriteOutcome.FAILED),
        (403, WriteOutcome.FAILED),
        (409, WriteOutcome.FAILED),
        (429, WriteOutcome.FAILED),
        (501, WriteOutcome.FAILED),
        (503, WriteOutcome.FAILED),
        (408, WriteOutcome.UNKNOWN),
        (500, WriteOutcome.UNKNOWN),
        (502, WriteOutcome.UNKNOWN),
        (504, WriteOutcome.UNKNOWN),
        (507, WriteOutcome.UNKNOWN),
    ],
)
def test_write_outcome_of_status(status: int, outcome: WriteOutcome) -> None:
    assert write_outcome_of_status(status) is outcome


def test_names_and_run_ids_are_validated() -> None:
    with pytest.raises(ValueError, match="prefix"):
        WriteRecorder(FakeStore(), prefix="Bad_Prefix")
    with pytest.raises(ValueError, match="rate_hz"):
        WriteRecorder(FakeStore(), rate_hz=0)
    assert judge_writes((), {}).passed


# -- ConfigMapStore against a local TLS API server --------------------------------------------------------------------


def store_for(pki: Pki, server: str) -> ConfigMapStore:
    endpoint = ApiEndpoint(
        server=server,
        context="test",
        ca_file=pki.ca_cert,
        client_cert_file=pki.client_cert,
        client_key_file=pki.client_key,
    )
    return ConfigMapStore(endpoint, NAMESPACE, connect_timeout_s=1.0)


LABELS = {MANAGED_BY_LABEL: "kubeha", RUN_LABEL: "r1"}


def test_configmap_store_creates_lists_with_continuation_and_deletes(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        store = store_for(pki, server.url)
        versions = [store.create(f"cm-{i}", {"seq": str(i), "value": f"v{i}"}, LABELS, 2.0) for i in range(5)]
        store.create("unrelated", {"value": "x"}, {RUN_LABEL: "r2"}, 2.0)
        assert all(version is not None and version.isdigit() for version in versions)
        listed = store.list(LABELS, 5.0)
        assert 5 > FAKE_PAGE_SIZE, "the list must need several pages"
        assert listed == {f"cm-{i}": {"seq": str(i), "value": f"v{i}"} for i in range(5)}
        assert sum(1 for method, path in server.requests if method == "GET" and "continue=" in path) >= 2
        store.delete_all(LABELS, 5.0)
        assert store.list(LABELS, 5.0) == {}
        assert sorted(server.configmaps) == ["unrelated"]


def test_configmap_store_classifies_failures(pki: Pki) -> None:
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    with FakeApiServer(pki) as server:
        store = store_for(pki, server.url)
        server.overrides[:] = [Override("POST", path, status=503)]
        with pytest.raises(WriteRejected) as rejected:
            store.create("a", {"value": "a"}, LABELS, 2.0)
        assert (rejected.value.status, rejected.value.error_class) == (503, "http-5xx")
        assert "a" not in server.configmaps

        server.overrides[:] = [Override("POST", path, status=504, apply=True)]
        with pytest.raises(WriteIndeterminate) as gateway:
            store.create("b", {"value": "b"}, LABELS, 2.0)
        assert gateway.value.status == 504 and "b" in server.configmaps

        server.overrides[:] = [Override("POST", path, hang=True)]
        with pytest.raises(WriteIndeterminate) as hung:
            store.create("c", {"value": "c"}, LABELS, SHORT_TIMEOUT_S)
        assert hung.value.error_class == "read-timeout"

        server.overrides[:] = [Override("POST", path, status=409)]
        with pytest.raises(WriteRejected, match="http-4xx"):
            store.create("d", {"value": "d"}, LABELS, 2.0)
    refused = store_for(pki, f"https://127.0.0.1:{free_port()}")
    with pytest.raises(WriteRejected) as connect:
        refused.create("e", {"value": "e"}, LABELS, 2.0)
    assert connect.value.error_class == "connect-refused"
    with pytest.raises(StoreError, match="connect-refused"):
        refused.list(LABELS, 1.0)


def test_configmap_store_namespace_helpers(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        store = store_for(pki, server.url)
        server.overrides[:] = [Override("GET", f"/api/v1/namespaces/{NAMESPACE}", status=404)]
        server.overrides.append(Override("POST", "/api/v1/namespaces", status=201, body=b"{}"))
        assert store.ensure_namespace(2.0) is True
        server.overrides[:] = [Override("POST", "/api/v1/namespaces", status=409)]
        server.overrides.insert(0, Override("GET", f"/api/v1/namespaces/{NAMESPACE}", status=404))
        assert store.ensure_namespace(2.0) is False
        server.overrides.clear()
        assert store.ensure_namespace(2.0) is False
        server.overrides[:] = [Override("DELETE", "/api/v1/namespaces", status=404)]
        store.delete_namespace(2.0)
        server.overrides[:] = [Override("DELETE", "/api/v1/namespaces", status=403)]
        with pytest.raises(StoreError, match="http-401/403"):
            store.delete_namespace(2.0)


def test_recorder_through_a_server_outage_finds_a_lost_write(pki: Pki) -> None:
    server = FakeApiServer(pki).start()
    store = store_for(pki, server.url)
    recorder = WriteRecorder(store, rate_hz=10.0, write_timeout_s=1.0, run_id="e2e")
    try:
        with recorder:
            wait_until(lambda: len(recorder.records()) >= 3, 5, "writes before the outage")
            server.stop()
            wait_until(lambda: recorder.records()[-1].outcome is WriteOutcome.FAILED, 5, "a failed write")
            time.sleep(0.3)
            server.start()
            wait_until(lambda: recorder.records()[-1].outcome is WriteOutcome.OK, 5, "writes after the outage")
            time.sleep(0.2)
        report = recorder.report()
        assert report.failed >= 2 and report.unknown == 0
        assert len(report.windows) == 1 and not report.windows[0].open
        assert report.windows[0].first_error_class == "connect-refused"
        assert recorder.verify(deadline_s=5).passed
        acknowledged = [record.name for record in recorder.records() if record.outcome is WriteOutcome.OK]
        server.drop_configmap(acknowledged[1])
        verification = recorder.verify(deadline_s=5)
        assert verification.lost == (acknowledged[1],)
        assert recorder.cleanup(deadline_s=5).complete
        assert server.configmaps == {}
    finally:
        server.stop()
