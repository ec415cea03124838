"""ApiProbe and its transport against real servers on 127.0.0.1: classification, rate, outage windows."""

from __future__ import annotations

import time

import pytest
from test_probes_servers import (  # noqa: F401 - pki is a fixture
    TEST_TOKEN,
    FakeApiServer,
    Override,
    Pki,
    RawTcpServer,
    free_port,
    pki,
    wait_until,
)

from kubeha.core.outage import Sample
from kubeha.core.timeline import Timeline
from kubeha.probes.api import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    ApiProbe,
    Connection,
    ErrorClass,
    Phase,
    ProbeTarget,
    TransportError,
    classify_status,
    one_request,
)
from kubeha.probes.credentials import ApiEndpoint

SHORT_TIMEOUT_S = 0.3
PROBE_INTERVAL_S = 0.1
RATE_WINDOW_S = 2.0
MIN_ATTEMPTS_IN_RATE_WINDOW = 20  # 10 Hz over RATE_WINDOW_S
PHASE_S = 0.8


def cert_endpoint(pki: Pki, server: str) -> ApiEndpoint:
    return ApiEndpoint(
        server=server,
        context="test",
        ca_file=pki.ca_cert,
        client_cert_file=pki.client_cert,
        client_key_file=pki.client_key,
    )


def one_sample(
    endpoint: ApiEndpoint,
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> Sample:
    """Run a probe until it has recorded one attempt and return it."""
    probe = ApiProbe(
        endpoint, interval_s=5.0, connect_timeout_s=connect_timeout_s, request_timeout_s=request_timeout_s
    )
    with probe:
        wait_until(lambda: len(probe.samples()) >= 1, 10, "the first probe attempt")
    return probe.samples()[0]


def test_healthy_server_gives_ok_samples_with_latency(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        sample = one_sample(cert_endpoint(pki, server.url))
    assert sample.ok, sample
    assert sample.error_class is None
    assert 0 < sample.latency_s < 1.0
    assert ("GET", "/readyz") in server.requests
    assert ("GET", "/api/v1/namespaces/kube-system") in server.requests


def test_closed_port_is_connect_refused(pki: Pki) -> None:
    sample = one_sample(cert_endpoint(pki, f"https://127.0.0.1:{free_port()}"))
    assert (sample.ok, sample.error_class) == (False, ErrorClass.CONNECT_REFUSED.value)


def test_server_that_never_answers_is_read_timeout(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        server.overrides.append(Override("GET", "/readyz", hang=True))
        started = time.monotonic()
        sample = one_sample(cert_endpoint(pki, server.url), request_timeout_s=SHORT_TIMEOUT_S)
        elapsed = time.monotonic() - started
    assert (sample.ok, sample.error_class) == (False, ErrorClass.READ_TIMEOUT.value)
    assert SHORT_TIMEOUT_S <= sample.latency_s < SHORT_TIMEOUT_S + 0.5
    assert elapsed < 5


def test_server_that_never_handshakes_is_tls_timeout(pki: Pki) -> None:
    with RawTcpServer("silent") as raw:
        sample = one_sample(cert_endpoint(pki, raw.url), connect_timeout_s=SHORT_TIMEOUT_S)
        assert raw.accepted >= 1
    assert (sample.ok, sample.error_class) == (False, ErrorClass.TLS_TIMEOUT.value)


def test_reset_during_handshake_is_reset(pki: Pki) -> None:
    with RawTcpServer("reset") as raw:
        sample = one_sample(cert_endpoint(pki, raw.url))
    assert (sample.ok, sample.error_class) == (False, ErrorClass.RESET.value)


def test_close_during_handshake_is_closed(pki: Pki) -> None:
    with RawTcpServer("close") as raw:
        sample = one_sample(cert_endpoint(pki, raw.url))
    assert (sample.ok, sample.error_class) == (False, ErrorClass.CLOSED.value)


def test_untrusted_server_certificate_is_tls_verify(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        endpoint = ApiEndpoint(server=server.url, context="test", ca_file=pki.other_ca_cert)
        sample = one_sample(endpoint)
    assert (sample.ok, sample.error_class) == (False, ErrorClass.TLS_VERIFY.value)


def test_wrong_server_name_is_tls_verify(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        endpoint = cert_endpoint(pki, server.url).with_server(server.url, tls_server_name="not-the-apiserver")
        sample = one_sample(endpoint)
    assert (sample.ok, sample.error_class) == (False, ErrorClass.TLS_VERIFY.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (Override("GET", "/api/v1/namespaces/kube-system", status=503), ErrorClass.HTTP_5XX),
        (Override("GET", "/api/v1/namespaces/kube-system", status=500), ErrorClass.HTTP_5XX),
        (Override("GET", "/api/v1/namespaces/kube-system", status=429), ErrorClass.HTTP_429),
        (Override("GET", "/readyz", status=500, body=b"[-]etcd failed: reason withheld"), ErrorClass.READYZ_NOT_OK),
        (Override("GET", "/readyz", status=503, body=b"shutting down"), ErrorClass.READYZ_NOT_OK),
        (Override("GET", "/readyz", status=200, body=b"not ok"), ErrorClass.READYZ_NOT_OK),
        (Override("GET", "/readyz", status=429), ErrorClass.HTTP_429),
        (Override("GET", "/api/v1/namespaces/kube-system", status=404), ErrorClass.HTTP_4XX),
    ],
)
def test_http_failures_are_classified(pki: Pki, override: Override, expected: ErrorClass) -> None:
    with FakeApiServer(pki) as server:
        server.overrides.append(override)
        sample = one_sample(cert_endpoint(pki, server.url))
    assert (sample.ok, sample.error_class) == (False, expected.value)


def test_unauthenticated_read_is_http_auth_and_token_authenticates(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        anonymous = ApiEndpoint(server=server.url, context="test", ca_file=pki.ca_cert)
        with_token = ApiEndpoint(server=server.url, context="test", ca_file=pki.ca_cert, bearer_token=TEST_TOKEN)
        denied = one_sample(anonymous)
        allowed = one_sample(with_token)
    assert (denied.ok, denied.error_class) == (False, ErrorClass.HTTP_AUTH.value)
    assert allowed.ok, allowed


def test_probe_reads_on_one_connection_and_reconnects_with_tls_when_the_server_closes(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        assert one_sample(cert_endpoint(pki, server.url)).ok
        assert server.connections == 1, "readyz and the read share the attempt's connection"
        server.close_after_response = True
        sample = one_sample(cert_endpoint(pki, server.url))
        assert sample.ok, sample
        assert server.connections == 3, "a closed connection is reopened (with TLS) for the read"
        assert server.handshake_failures == []


def test_each_attempt_uses_a_new_connection(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        endpoint = cert_endpoint(pki, server.url)
        context = endpoint.ssl_context()
        peers: set[tuple[str, int]] = set()
        for _ in range(3):
            with Connection(endpoint, context) as connection:
                assert connection.request("GET", "/readyz").status == 200
                assert connection._tls is not None
                peers.add(connection._tls.getsockname())
    assert len(peers) == 3, "every Connection must open its own TCP connection (distinct local ports)"


def test_transport_error_reports_whether_the_request_was_sent(pki: Pki) -> None:
    endpoint = cert_endpoint(pki, f"https://127.0.0.1:{free_port()}")
    with pytest.raises(TransportError) as refused:
        one_request(endpoint, endpoint.ssl_context(), "GET", "/readyz")
    assert refused.value.phase is Phase.CONNECT and not refused.value.request_sent
    with FakeApiServer(pki) as server:
        server.overrides.append(Override("POST", "/api/v1", hang=True))
        endpoint = cert_endpoint(pki, server.url)
        with pytest.raises(TransportError) as hung:
            one_request(endpoint, endpoint.ssl_context(), "POST", "/api/v1/x", body=b"{}", timeout_s=SHORT_TIMEOUT_S)
    assert hung.value.phase is Phase.RESPONSE and hung.value.request_sent
    assert hung.value.error_class is ErrorClass.READ_TIMEOUT


def test_probe_rate_reaches_ten_hertz(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        probe = ApiProbe(cert_endpoint(pki, server.url), interval_s=PROBE_INTERVAL_S)
        with probe:
            wait_until(
                lambda: bool(probe.samples()) and time.monotonic() - probe.samples()[0].t_mono > RATE_WINDOW_S + 0.2,
                10,
                "the rate window",
            )
    samples = probe.samples()
    first = samples[0].t_mono
    in_window = [sample for sample in samples if sample.t_mono < first + RATE_WINDOW_S]
    assert len(in_window) >= MIN_ATTEMPTS_IN_RATE_WINDOW, [round(s.t_mono - first, 3) for s in samples]
    assert all(sample.ok for sample in samples)
    assert probe.result().main.rate_hz >= 9.5


def test_outage_window_matches_server_stop_and_restart(pki: Pki) -> None:
    server = FakeApiServer(pki).start()
    timeline = Timeline()
    probe = ApiProbe(cert_endpoint(pki, server.url), interval_s=PROBE_INTERVAL_S, timeline=timeline)
    try:
        with probe:
            time.sleep(PHASE_S)
            stopped_at = time.monotonic()
            server.stop()
            stop_done = time.monotonic()
            time.sleep(PHASE_S)
            restart_at = time.monotonic()
            server.start()
            restarted = time.monotonic()
            time.sleep(PHASE_S)
    finally:
        server.stop()
    result = probe.result()
    windows = result.main.windows
    assert len(windows) == 1, windows
    window = windows[0]
    assert not window.open
    # An attempt in flight when the listener closes sees its connection reset or closed; all later ones are refused.
    in_flight = {ErrorClass.RESET.value, ErrorClass.CLOSED.value}
    assert window.first_error_class in in_flight | {ErrorClass.CONNECT_REFUSED.value}
    refused = result.main.stats.error_count(ErrorClass.CONNECT_REFUSED.value)
    assert refused >= window.failures - 1
    assert all(cls in in_flight for cls, _ in result.main.stats.error_counts if cls != ErrorClass.CONNECT_REFUSED.value)
    # The window opens with the first attempt after the port went away, and closes with the first after it came back.
    assert stopped_at - PROBE_INTERVAL_S <= window.start <= stop_done + PROBE_INTERVAL_S + 0.05
    assert restart_at <= window.end <= restarted + PROBE_INTERVAL_S + 0.05
    assert window.duration == pytest.approx(restart_at - stopped_at, abs=2 * PROBE_INTERVAL_S + 0.1)
    assert result.main.stats.failures == window.failures >= 5
    assert dict(result.main.error_examples)[ErrorClass.CONNECT_REFUSED.value].startswith("ConnectionRefusedError")
    kinds = [(event.kind, event.source) for event in timeline.events()]
    assert kinds == [("outage-start", "api-probe/lb"), ("outage-end", "api-probe/lb")]


def test_node_targets_are_probed_separately(pki: Pki) -> None:
    with FakeApiServer(pki) as healthy:
        endpoint = cert_endpoint(pki, healthy.url)
        down = ProbeTarget.node(endpoint, "cp-2", "127.0.0.1", port=free_port())
        up = ProbeTarget.node(endpoint, "cp-1", "127.0.0.1", port=healthy.port)
        probe = ApiProbe(endpoint, nodes=(up, down), interval_s=PROBE_INTERVAL_S)
        with probe:
            wait_until(lambda: all(len(probe.samples(n)) >= 3 for n in probe.target_names), 10, "three attempts each")
    result = probe.result()
    assert [target.target for target in result.targets] == ["lb", "cp-1", "cp-2"]
    assert result.main.stats.failures == 0
    assert result.target("cp-1").stats.failures == 0
    assert result.target("cp-2").stats.error_count(ErrorClass.CONNECT_REFUSED.value) == result.target("cp-2").stats.count
    assert result.target("cp-2").windows[0].open


def test_ipv6_node_address_is_bracketed(pki: Pki) -> None:
    endpoint = cert_endpoint(pki, "https://127.0.0.1:6443")
    target = ProbeTarget.node(endpoint, "cp", "fd00::2")
    assert target.endpoint.server == "https://[fd00::2]:6443"
    assert (target.endpoint.host, target.endpoint.port) == ("fd00::2", 6443)


def test_probe_validates_its_settings(pki: Pki) -> None:
    endpoint = cert_endpoint(pki, "https://127.0.0.1:6443")
    with pytest.raises(ValueError, match="interval_s"):
        ApiProbe(endpoint, interval_s=0)
    with pytest.raises(ValueError, match="unique"):
        ApiProbe(endpoint, nodes=(ProbeTarget("lb", endpoint),))
    with pytest.raises(RuntimeError, match="not been started"):
        ApiProbe(endpoint).samples()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (201, None),
        (301, ErrorClass.HTTP_OTHER),
        (401, ErrorClass.HTTP_AUTH),
        (403, ErrorClass.HTTP_AUTH),
        (404, ErrorClass.HTTP_4XX),
        (429, ErrorClass.HTTP_429),
        (500, ErrorClass.HTTP_5XX),
        (504, ErrorClass.HTTP_5XX),
    ],
)
def test_classify_status(status: int, expected: ErrorClass | None) -> None:
    assert classify_status(status) == expected


def test_stop_is_prompt_even_with_long_interval(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        probe = ApiProbe(cert_endpoint(pki, server.url), interval_s=30.0)
        probe.start()
        wait_until(lambda: len(probe.samples()) == 1, 10, "the first attempt")
        started = time.monotonic()
        probe.stop()
    assert time.monotonic() - started < 1.0
    assert not probe.running
    assert len(probe.samples()) == 1
