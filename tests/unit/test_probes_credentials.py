"""KubeconfigCredentials: endpoints from real kubeconfig files, private credential files, no leaked secrets."""

from __future__ import annotations

import base64
import gc
import stat
from pathlib import Path

import pytest
from kubernetes.client import Configuration, CoreV1Api
from test_probes_servers import (  # noqa: F401 - pki is a fixture
    TEST_TOKEN,
    FakeApiServer,
    Pki,
    pki,
    wait_until,
    write_kubeconfig,
)

from kubeha.cluster.client import KubeconfigError
from kubeha.probes.api import ApiProbe, ErrorClass
from kubeha.probes.credentials import ApiEndpoint, CredentialsError, KubeconfigCredentials

SECRET_TOKEN = "s3cr3t-token-value-never-printed"


def wrapped(text: str, width: int = 64) -> str:
    """Base64 wrapped over several lines, as some tools write it."""
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def inline_kubeconfig(tmp_path: Path, pki: Pki, server: str) -> Path:
    return write_kubeconfig(
        tmp_path / "kubeconfig",
        server,
        cluster={"certificate-authority-data": wrapped(pki.b64(pki.ca_cert))},
        user={
            "client-certificate-data": pki.b64(pki.client_cert),
            "client-key-data": pki.b64(pki.client_key),
        },
    )


def test_inline_data_goes_to_a_private_directory_removed_on_close(tmp_path: Path, pki: Pki) -> None:
    path = inline_kubeconfig(tmp_path, pki, "https://127.0.0.1:6443")
    with KubeconfigCredentials(path) as credentials:
        endpoint = credentials.endpoint
        private = credentials.private_dir
        assert private is not None
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        files = [endpoint.ca_file, endpoint.client_cert_file, endpoint.client_key_file]
        for file in files:
            assert file is not None and file.parent == private
            assert stat.S_IMODE(file.stat().st_mode) == 0o600
        assert endpoint.client_key_file is not None
        assert endpoint.client_key_file.read_bytes() == pki.client_key.read_bytes()
        assert endpoint.ca_file is not None and endpoint.ca_file.read_bytes() == pki.ca_cert.read_bytes()
        assert (endpoint.host, endpoint.port, endpoint.context) == ("127.0.0.1", 6443, "test")
    assert not private.exists()
    with pytest.raises(RuntimeError, match="closed"):
        credentials.endpoint


def test_private_directory_is_removed_when_collected(tmp_path: Path, pki: Pki) -> None:
    credentials = KubeconfigCredentials(inline_kubeconfig(tmp_path, pki, "https://127.0.0.1:6443"))
    private = credentials.private_dir
    assert private is not None and private.exists()
    del credentials
    gc.collect()
    assert not private.exists()


def test_inline_credentials_authenticate_a_probe(tmp_path: Path, pki: Pki) -> None:
    with FakeApiServer(pki, token=None) as server:
        with KubeconfigCredentials(inline_kubeconfig(tmp_path, pki, server.url)) as credentials:
            probe = ApiProbe(credentials.endpoint, interval_s=5.0)
            with probe:
                wait_until(lambda: len(probe.samples()) >= 1, 10, "one attempt")
    assert probe.samples()[0].ok, probe.result().main.error_examples


def test_file_references_are_resolved_relative_to_the_kubeconfig(tmp_path: Path, pki: Pki) -> None:
    path = write_kubeconfig(
        pki.directory / "kubeconfig-files",
        "https://127.0.0.1:6443",
        cluster={"certificate-authority": "ca.crt"},
        user={"client-certificate": "client.crt", "client-key": str(pki.client_key)},
    )
    with KubeconfigCredentials(path) as credentials:
        endpoint = credentials.endpoint
        assert credentials.private_dir is None
    assert endpoint.ca_file == pki.ca_cert
    assert endpoint.client_cert_file == pki.client_cert
    assert endpoint.client_key_file == pki.client_key


def test_token_is_used_and_never_shown(tmp_path: Path, pki: Pki) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SECRET_TOKEN + "\n", encoding="utf-8")
    path = write_kubeconfig(
        tmp_path / "kubeconfig",
        "https://127.0.0.1:6443/prefix/",
        cluster={"certificate-authority": str(pki.ca_cert)},
        user={"tokenFile": "token"},
    )
    with KubeconfigCredentials(path) as credentials:
        endpoint = credentials.endpoint
        assert endpoint.auth_headers() == {"Authorization": f"Bearer {SECRET_TOKEN}"}
        assert endpoint.base_path == "/prefix"
        for text in (repr(endpoint), str(endpoint), repr(credentials)):
            assert SECRET_TOKEN not in text
        configuration = endpoint.client_configuration()
        assert configuration.api_key == {"BearerToken": f"Bearer {SECRET_TOKEN}"}


def test_bearer_token_authenticates_a_probe(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        endpoint = ApiEndpoint(server=server.url, context="t", ca_file=pki.ca_cert, bearer_token=TEST_TOKEN)
        wrong = ApiEndpoint(server=server.url, context="t", ca_file=pki.ca_cert, bearer_token="wrong")
        probes = [ApiProbe(endpoint, interval_s=5.0), ApiProbe(wrong, interval_s=5.0)]
        for probe in probes:
            with probe:
                wait_until(lambda: len(probe.samples()) >= 1, 10, "one attempt")
    assert probes[0].samples()[0].ok
    assert probes[1].samples()[0].error_class == ErrorClass.HTTP_AUTH.value


def test_api_client_uses_the_endpoint_and_leaves_the_default_configuration_alone(tmp_path: Path, pki: Pki) -> None:
    default_host = Configuration.get_default_copy().host
    with FakeApiServer(pki, token=None) as server:
        with KubeconfigCredentials(inline_kubeconfig(tmp_path, pki, server.url)) as credentials:
            with credentials.endpoint.new_api_client(retries=False) as client:
                assert client.configuration.retries.total == 0
                namespace = CoreV1Api(client).read_namespace("kube-system", _request_timeout=5)
    assert namespace.metadata is not None and namespace.metadata.name == "kube-system"
    assert ("GET", "/api/v1/namespaces/kube-system") in server.requests
    assert Configuration.get_default_copy().host == default_host


def test_context_selection_and_errors(tmp_path: Path, pki: Pki) -> None:
    path = write_kubeconfig(
        tmp_path / "kubeconfig",
        "https://127.0.0.1:6443",
        cluster={"certificate-authority": str(pki.ca_cert)},
        user={"token": SECRET_TOKEN},
        extra_contexts=("other",),
    )
    with KubeconfigCredentials(path, context="other") as credentials:
        assert credentials.endpoint.context == "other"
    with pytest.raises(CredentialsError, match="pass one of other, test"):
        KubeconfigCredentials(path, context="missing")
    with pytest.raises(KubeconfigError, match="no context"):
        KubeconfigCredentials(path, context="missing")


@pytest.mark.parametrize(
    ("server", "cluster", "user", "match"),
    [
        ("http://127.0.0.1:8080", {}, {"token": SECRET_TOKEN}, "not an https:// URL"),
        ("https://127.0.0.1:6443", {}, {"exec": {"command": "get-token"}}, "exec"),
        ("https://127.0.0.1:6443", {"proxy-url": "http://proxy:3128"}, {"token": SECRET_TOKEN}, "proxy-url"),
        ("https://127.0.0.1:6443", {"certificate-authority-data": "%%%not base64%%%"}, {}, "not valid base64"),
        ("https://127.0.0.1:6443", {}, {"client-certificate-data": base64.b64encode(b"x").decode()}, "key"),
        ("https://127.0.0.1:6443", {"certificate-authority": "missing.crt"}, {}, "not a readable file"),
    ],
)
def test_unusable_kubeconfigs_are_rejected_without_echoing_secrets(
    tmp_path: Path, server: str, cluster: dict[str, object], user: dict[str, object], match: str
) -> None:
    path = write_kubeconfig(tmp_path / "kubeconfig", server, cluster=cluster, user=user)
    with pytest.raises(CredentialsError, match=match) as raised:
        KubeconfigCredentials(path)
    assert SECRET_TOKEN not in str(raised.value)
    assert not list(tmp_path.glob("kubeha-credentials-*"))


def test_failed_load_leaves_no_private_files(tmp_path: Path, pki: Pki) -> None:
    """Inline data written before a later field fails is removed at once."""
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("kubeha-credentials-*"))
    path = write_kubeconfig(
        tmp_path / "kubeconfig",
        "https://127.0.0.1:6443",
        cluster={"certificate-authority-data": pki.b64(pki.ca_cert)},
        user={"client-certificate-data": pki.b64(pki.client_cert), "client-key-data": "%%%"},
    )
    with pytest.raises(CredentialsError, match="client-key-data is not valid base64"):
        KubeconfigCredentials(path)
    assert set(Path(tempfile.gettempdir()).glob("kubeha-credentials-*")) == before


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="cannot stat"):
        KubeconfigCredentials(tmp_path / "absent")
    bad = tmp_path / "bad"
    bad.write_text(f"users: [{{token: {SECRET_TOKEN}", encoding="utf-8")
    with pytest.raises(CredentialsError, match="not valid YAML") as raised:
        KubeconfigCredentials(bad)
    assert SECRET_TOKEN not in str(raised.value)
