"""Real local servers for the probe tests: a throwaway PKI, a small TLS API server, and misbehaving TCP servers.

Imported by the other ``test_probes_*`` modules; the tests here check the servers themselves behave as the probe tests
assume (a test server that silently did not misbehave would make the classification tests prove nothing).
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCALHOST = "127.0.0.1"
CERT_VALIDITY = datetime.timedelta(days=1)
# Upper bound for a test server thread holding a connection it never answers.
HANG_LIMIT_S = 20.0
HANDLER_IDLE_TIMEOUT_S = 10.0
ACCEPT_POLL_S = 0.05
CLIENT_HELLO_READ_BYTES = 4096
# The fake server pages ConfigMap lists at this size whatever `limit` asks, so continuation is always exercised.
FAKE_PAGE_SIZE = 2
TEST_TOKEN = "test-bearer-token-0123456789"


# -- PKI ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path

    def b64(self, path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode("ascii")


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CERT_VALIDITY)
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    name: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CERT_VALIDITY)
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("kubeha-test-ca")
    server_key, server_cert = _leaf(
        ca_key,
        ca_cert,
        _name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCALHOST))],
    )
    client_key, client_cert = _leaf(
        ca_key, ca_cert, _name("kubeha-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    _, other_ca = _ca("kubeha-untrusted-ca")
    return Pki(
        directory=directory,
        ca_cert=_write_cert(directory / "ca.crt", ca_cert),
        server_cert=_write_cert(directory / "server.crt", server_cert),
        server_key=_write_key(directory / "server.key", server_key),
        client_cert=_write_cert(directory / "client.crt", client_cert),
        client_key=_write_key(directory / "client.key", client_key),
        other_ca_cert=_write_cert(directory / "other-ca.crt", other_ca),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def free_port() -> int:
    """A port nothing listens on (bound and released at once): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
    return port


def write_kubeconfig(
    path: Path,
    server: str,
    *,
    cluster: dict[str, Any],
    user: dict[str, Any],
    context: str = "test",
    extra_contexts: tuple[str, ...] = (),
) -> Path:
    contexts = [{"name": name, "context": {"cluster": "c", "user": "u"}} for name in (context, *extra_contexts)]
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": context,
        "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": contexts,
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


# -- the TLS API server ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """Answer requests whose method and path start match with this status (or never, when `hang`)."""

    method: str
    path_prefix: str
    status: int = 200
    body: bytes = b""
    hang: bool = False
    apply: bool = False


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = HANDLER_IDLE_TIMEOUT_S
    server: _TlsHttpServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        return

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        if self.server.owner.close_after_response:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"))

    def _authenticated(self) -> bool:
        assert isinstance(self.connection, ssl.SSLSocket)
        if self.connection.getpeercert():
            return True
        expected = self.server.owner.token
        return expected is not None and self.headers.get("Authorization") == f"Bearer {expected}"

    def _dispatch(self, method: str) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        owner.requests.append((method, self.path))
        override = owner.override_for(method, self.path)
        if override is not None and override.hang:
            owner.release.wait(HANG_LIMIT_S)
            self.close_connection = True
            return
        if override is not None and not override.apply:
            self._send(override.status, override.body or b'{"kind":"Status"}')
            return
        url = urlsplit(self.path)
        if url.path in ("/readyz", "/livez", "/healthz"):
            self._send(200, b"ok", "text/plain")
            return
        if not self._authenticated():
            self._send_json(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
            return
        status, payload = owner.api(method, url.path, parse_qs(url.query), body)
        if override is not None:
            self._send(override.status, override.body or b'{"kind":"Status"}')
            return
        self._send_json(status, payload)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


class _TlsHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, port: int, context: ssl.SSLContext, owner: FakeApiServer) -> None:
        self.context = context
        self.owner = owner
        super().__init__((LOCALHOST, port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Headers and body go out in separate writes: without this, Nagle and delayed ACKs add ~40 ms per response.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.owner.connections += 1
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            self.owner.handshake_failures.append(type(error).__name__)
            return
        try:
            _Handler(tls, client_address, self)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.owner.handler_errors += 1


class FakeApiServer:
    """An HTTPS server on 127.0.0.1 speaking enough of the Kubernetes API for the probes.

    Client certificates signed by the PKI's CA or the bearer token authenticate; /readyz is anonymous. ConfigMaps and
    Leases are kept in memory. `overrides` make chosen requests fail or hang; `stop()` and `start()` take the listening
    port away and back.
    """

    def __init__(self, pki: Pki, *, port: int = 0, token: str | None = TEST_TOKEN) -> None:
        self.pki = pki
        self.port = port
        self.token = token
        self.overrides: list[Override] = []
        self.requests: list[tuple[str, str]] = []
        self.handshake_failures: list[str] = []
        self.handler_errors = 0
        self.close_after_response = False
        self.connections = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self._rv = 0
        self._server: _TlsHttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://{LOCALHOST}:{self.port}"

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.server_cert), str(self.pki.server_key))
        context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def start(self) -> FakeApiServer:
        self.release.clear()
        server = _TlsHttpServer(self.port, self._context(), self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def override_for(self, method: str, path: str) -> Override | None:
        for override in self.overrides:
            if override.method == method and path.startswith(override.path_prefix):
                return override
        return None

    def set_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        with self.lock:
            self._rv += 1
            self.leases[(namespace, name)] = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(self._rv)},
                "spec": spec,
            }

    def drop_configmap(self, name: str) -> None:
        with self.lock:
            self.configmaps.pop(name)

    def api(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        with self.lock:
            if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 4 and method == "GET":
                return 200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": parts[3]}}
            if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 5 and parts[4] == "configmaps":
                return self._configmaps(method, query, body)
            if parts[:2] == ["apis", "coordination.k8s.io"] and len(parts) == 7 and method == "GET":
                lease = self.leases.get((parts[4], parts[6]))
                if lease is None:
                    return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}
                return 200, lease
        return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}

    def _selected(self, query: dict[str, list[str]]) -> list[str]:
        wanted = dict(
            term.split("=", 1) for term in (query.get("labelSelector") or [""])[0].split(",") if "=" in term
        )
        return sorted(
            name
            for name, obj in self.configmaps.items()
            if all(obj["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        )

    def _configmaps(self, method: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any]:
        if method == "POST":
            obj = json.loads(body)
            name = obj["metadata"]["name"]
            if name in self.configmaps:
                return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"}
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self.configmaps[name] = obj
            return 201, obj
        names = self._selected(query)
        if method == "DELETE":
            for name in names:
                del self.configmaps[name]
            return 200, {"kind": "Status", "status": "Success"}
        start = int((query.get("continue") or ["0"])[0])
        page = names[start : start + FAKE_PAGE_SIZE]
        following = start + FAKE_PAGE_SIZE
        metadata = {"continue": str(following)} if following < len(names) else {}
        return 200, {"kind": "ConfigMapList", "metadata": metadata, "items": [self.configmaps[n] for n in page]}


# -- misbehaving TCP servers ----------------------------------------------------------------------------------------


class RawTcpServer:
    """Accepts TCP connections and then: "silent" holds them without a byte, "close" reads the TLS ClientHello and
    closes cleanly (FIN), "reset" reads it and aborts the connection (RST)."""

    BEHAVIOURS = ("silent", "close", "reset")

    def __init__(self, behaviour: str) -> None:
        assert behaviour in self.BEHAVIOURS
        self.behaviour = behaviour
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((LOCALHOST, 0))
        self._listener.listen(16)
        self._listener.settimeout(ACCEPT_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"https://{LOCALHOST}:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            if self.behaviour == "silent":
                self._held.append(conn)
                continue
            conn.settimeout(HANDLER_IDLE_TIMEOUT_S)
            conn.recv(CLIENT_HELLO_READ_BYTES)
            if self.behaviour == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def __enter__(self) -> RawTcpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self._held:
            conn.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# -- the servers' own checks ------------------------------------------------------------------------------------------


def _client_context(pki: Pki, *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    if with_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def _get(server: FakeApiServer, context: ssl.SSLContext, path: str) -> int:
    import http.client

    connection = http.client.HTTPSConnection(LOCALHOST, server.port, context=context, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_fake_server_authenticates_by_certificate_and_token(pki: Pki) -> None:
    with FakeApiServer(pki) as server:
        assert _get(server, _client_context(pki, with_cert=True), "/api/v1/namespaces/kube-system") == 200
        assert _get(server, _client_context(pki, with_cert=False), "/api/v1/namespaces/kube-system") == 401
        assert _get(server, _client_context(pki, with_cert=False), "/readyz") == 200


def test_fake_server_stop_refuses_and_start_serves_on_the_same_port(pki: Pki) -> None:
    server = FakeApiServer(pki).start()
    port = server.port
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOCALHOST, port), timeout=2).close()
    server.start()
    try:
        assert server.port == port
        assert _get(server, _client_context(pki, with_cert=True), "/readyz") == 200
    finally:
        server.stop()


def test_raw_reset_server_sends_a_reset(pki: Pki) -> None:
    with RawTcpServer("reset") as raw:
        sock = socket.create_connection((LOCALHOST, raw.port), timeout=5)
        try:
            sock.sendall(b"hello")
            with pytest.raises(ConnectionResetError):
                sock.recv(10)
        finally:
            sock.close()
