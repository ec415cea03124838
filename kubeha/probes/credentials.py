"""The API server endpoint and client credentials of one kubeconfig context, for raw HTTPS probes and API clients.

Probes open their own TLS connections (one per attempt) so they need the server URL, the CA to verify it and the
client's credentials as files an `ssl.SSLContext` can load. `KubeconfigCredentials` reads one context of a kubeconfig
file and writes inline certificate and key data into a private directory (mode 0700, files 0600) that is removed on
`close()`; certificates and keys referenced by path are used in place. Nothing here touches the kubernetes package's
process-wide default configuration or the process environment, and no repr or error message carries a credential.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import ssl
import stat
import tempfile
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import urllib3
import yaml
from kubernetes.client import ApiClient, Configuration

from kubeha.cluster.client import KubeconfigError

__all__ = [
    "ApiEndpoint",
    "CredentialsError",
    "KubeconfigCredentials",
    "NO_PROXY_ALL",
]

HTTPS_SCHEME = "https"
HTTPS_DEFAULT_PORT = 443
PRIVATE_DIR_PREFIX = "kubeha-credentials-"
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
# no_proxy value that makes the kubernetes client ignore proxy environment variables: probes measure the API server
# as a direct client sees it.
NO_PROXY_ALL = "*"
UNSUPPORTED_USER_FIELDS = ("exec", "auth-provider", "username", "password")


class CredentialsError(KubeconfigError):
    """A kubeconfig context cannot be turned into an endpoint for probes; the message says how to fix it."""


@dataclass(frozen=True)
class ApiEndpoint:
    """Where the API server is and how to authenticate to it, as files and a header value.

    `bearer_token` is excluded from repr and comparison output; certificate and key paths point into a
    `KubeconfigCredentials` private directory (valid until it is closed) or at files named by the kubeconfig.
    """

    server: str
    context: str
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    bearer_token: str | None = field(default=None, repr=False)
    tls_server_name: str | None = None
    insecure_skip_tls_verify: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.server)
        if parts.scheme != HTTPS_SCHEME or not parts.hostname:
            raise CredentialsError(
                f"context {self.context}: server {self.server!r} is not an https:// URL with a host; kubeha probes "
                "only talk TLS to the API server: fix cluster.server in the kubeconfig"
            )
        try:
            parts.port
        except ValueError as error:
            raise CredentialsError(
                f"context {self.context}: server {self.server!r} has an invalid port: fix cluster.server"
            ) from error
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise CredentialsError(
                f"context {self.context}: a client certificate needs its key and a key its certificate: set both "
                "client-certificate(-data) and client-key(-data) for the user, or neither"
            )

    @property
    def host(self) -> str:
        """The server's host name or address, without IPv6 brackets."""
        host = urlsplit(self.server).hostname
        assert host is not None  # checked in __post_init__
        return host

    @property
    def port(self) -> int:
        port = urlsplit(self.server).port
        return HTTPS_DEFAULT_PORT if port is None else port

    @property
    def base_path(self) -> str:
        """Path prefix of the server URL (empty for ``https://host:port``), prepended to every request path."""
        return urlsplit(self.server).path.rstrip("/")

    @property
    def server_hostname(self) -> str:
        """The name the server certificate is checked against and sent as SNI."""
        return self.tls_server_name or self.host

    @property
    def authenticates(self) -> bool:
        return self.client_cert_file is not None or self.bearer_token is not None

    def with_server(self, server: str, *, tls_server_name: str | None = None) -> ApiEndpoint:
        """The same credentials against another server URL, for example one control-plane node directly."""
        return replace(self, server=server, tls_server_name=tls_server_name)

    def auth_headers(self) -> dict[str, str]:
        """HTTP headers that authenticate a request (empty when the client certificate does it)."""
        if self.bearer_token is None:
            return {}
        return {"Authorization": f"Bearer {self.bearer_token}"}

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context verifying the server with the endpoint's CA and presenting its client certificate."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.insecure_skip_tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ca_file is not None:
            context.load_verify_locations(cafile=str(self.ca_file))
        if self.client_cert_file is not None and self.client_key_file is not None:
            context.load_cert_chain(certfile=str(self.client_cert_file), keyfile=str(self.client_key_file))
        return context

    def client_configuration(self, *, retries: bool = True) -> Configuration:
        """A kubernetes client `Configuration` for this endpoint, never installed as the package default.

        Proxy environment variables are ignored. `retries=False` makes every request a single attempt, for
        measurements.
        """
        configuration = Configuration(
            host=self.server,
            ssl_ca_cert=None if self.ca_file is None else str(self.ca_file),
            cert_file=None if self.client_cert_file is None else str(self.client_cert_file),
            key_file=None if self.client_key_file is None else str(self.client_key_file),
            verify_ssl=not self.insecure_skip_tls_verify,
            tls_server_name=self.tls_server_name,
            no_proxy=NO_PROXY_ALL,
        )
        if self.bearer_token is not None:
            configuration.api_key = {"BearerToken": f"Bearer {self.bearer_token}"}
        if not retries:
            configuration.retries = urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0, other=0)
        return configuration

    def new_api_client(self, *, retries: bool = True) -> ApiClient:
        """An `ApiClient` of its own for this endpoint; close it when done."""
        return ApiClient(configuration=self.client_configuration(retries=retries))


def _remove_private_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class KubeconfigCredentials:
    """One kubeconfig context's `ApiEndpoint`, with inline credential data held in a private directory.

    Use as a context manager, or call `close()`; the directory is also removed when the object is collected or the
    interpreter exits.
    """

    def __init__(self, kubeconfig: str | os.PathLike[str], context: str | None = None) -> None:
        self._path = Path(kubeconfig)
        self._lock = threading.Lock()
        self._dir: str | None = None
        self._finalizer: weakref.finalize[[str], KubeconfigCredentials] | None = None
        self._closed = False
        document = _read_document(self._path)
        name, cluster, user = _select(document, self._path, context)
        try:
            self._endpoint = self._build(name, cluster, user)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"KubeconfigCredentials({str(self._path)!r}, context={self._endpoint_context()!r}, {state})"

    def _endpoint_context(self) -> str | None:
        endpoint: ApiEndpoint | None = getattr(self, "_endpoint", None)
        return None if endpoint is None else endpoint.context

    @property
    def path(self) -> Path:
        return self._path

    @property
    def endpoint(self) -> ApiEndpoint:
        if self._closed:
            raise RuntimeError(
                f"the credentials of {self._path} were closed and their files removed: use the endpoint inside the "
                "`with KubeconfigCredentials(...)` block"
            )
        return self._endpoint

    @property
    def private_dir(self) -> Path | None:
        """Where inline credential data was written, or None if the context needed no file."""
        return None if self._dir is None else Path(self._dir)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._finalizer is not None:
                self._finalizer()
                self._finalizer = None
            self._dir = None

    def __enter__(self) -> KubeconfigCredentials:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _private_file(self, name: str, content: bytes) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix=PRIVATE_DIR_PREFIX)
                os.chmod(self._dir, PRIVATE_DIR_MODE)
                self._finalizer = weakref.finalize(self, _remove_private_dir, self._dir)
            path = os.path.join(self._dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        return Path(path)

    def _file_or_data(
        self, section: Mapping[str, object], file_key: str, data_key: str, where: str, private_name: str
    ) -> Path | None:
        data = section.get(data_key)
        if data is not None:
            if not isinstance(data, str) or not data:
                raise CredentialsError(f"{self._path}: {where}.{data_key} must be a non-empty base64 string")
            try:
                # Like kubectl, accept data wrapped over several lines.
                decoded = base64.b64decode("".join(data.split()), validate=True)
            except binascii.Error as error:
                raise CredentialsError(
                    f"{self._path}: {where}.{data_key} is not valid base64: re-export the kubeconfig"
                ) from error
            return self._private_file(private_name, decoded)
        reference = section.get(file_key)
        if reference is None:
            return None
        if not isinstance(reference, str) or not reference:
            raise CredentialsError(f"{self._path}: {where}.{file_key} must be a file path")
        path = Path(reference).expanduser()
        if not path.is_absolute():
            path = self._path.parent / path
        if not path.is_file():
            raise CredentialsError(f"{self._path}: {where}.{file_key} names {path}, which is not a readable file")
        return path

    def _token(self, user: Mapping[str, object], where: str) -> str | None:
        token = user.get("token")
        if token is not None:
            if not isinstance(token, str) or not token:
                raise CredentialsError(f"{self._path}: {where}.token must be a non-empty string")
            return token
        token_file = user.get("tokenFile")
        if token_file is None:
            return None
        if not isinstance(token_file, str) or not token_file:
            raise CredentialsError(f"{self._path}: {where}.tokenFile must be a file path")
        path = Path(token_file).expanduser()
        if not path.is_absolute():
            path = self._path.parent / path
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise CredentialsError(
                f"{self._path}: {where}.tokenFile {path} cannot be read ({error.strerror}): check the path"
            ) from error
        if not text:
            raise CredentialsError(f"{self._path}: {where}.tokenFile {path} is empty")
        return text

    def _build(self, context: str, cluster: Mapping[str, object], user: Mapping[str, object]) -> ApiEndpoint:
        cluster_where = f"context {context} cluster"
        user_where = f"context {context} user"
        unsupported = [key for key in UNSUPPORTED_USER_FIELDS if key in user]
        has_static = any(
            key in user for key in ("client-certificate", "client-certificate-data", "token", "tokenFile")
        )
        if unsupported and not has_static:
            raise CredentialsError(
                f"{self._path}: {user_where} authenticates with {', '.join(unsupported)}, which kubeha probes do not "
                "run: use a kubeconfig with a client certificate or a bearer token (kind and kubeadm's admin.conf "
                "have one)"
            )
        if "proxy-url" in cluster:
            raise CredentialsError(
                f"{self._path}: {cluster_where} sets proxy-url; kubeha probes connect to the API server directly: "
                "run the suite where the server is reachable without the proxy"
            )
        server = cluster.get("server")
        if not isinstance(server, str) or not server:
            raise CredentialsError(f"{self._path}: {cluster_where} has no server URL: fix the kubeconfig")
        insecure = cluster.get("insecure-skip-tls-verify", False)
        if not isinstance(insecure, bool):
            raise CredentialsError(f"{self._path}: {cluster_where}.insecure-skip-tls-verify must be true or false")
        tls_server_name = cluster.get("tls-server-name")
        if tls_server_name is not None and (not isinstance(tls_server_name, str) or not tls_server_name):
            raise CredentialsError(f"{self._path}: {cluster_where}.tls-server-name must be a host name")
        return ApiEndpoint(
            server=server.rstrip("/"),
            context=context,
            ca_file=self._file_or_data(
                cluster, "certificate-authority", "certificate-authority-data", cluster_where, "ca.crt"
            ),
            client_cert_file=self._file_or_data(
                user, "client-certificate", "client-certificate-data", user_where, "client.crt"
            ),
            client_key_file=self._file_or_data(user, "client-key", "client-key-data", user_where, "client.key"),
            bearer_token=self._token(user, user_where),
            tls_server_name=tls_server_name,
            insecure_skip_tls_verify=insecure,
        )


def _read_document(path: Path) -> Mapping[str, object]:
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise CredentialsError(
            f"kubeconfig {path}: cannot stat it ({error.strerror}): pass the path of a kubeconfig file"
        ) from error
    if not stat.S_ISREG(mode):
        raise CredentialsError(f"kubeconfig {path}: not a regular file: pass the path of a kubeconfig file")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CredentialsError(f"kubeconfig {path}: cannot read it ({error.strerror}): check its permissions") from error
    except yaml.YAMLError as error:
        # The YAML error text may quote file content, which can be a credential: name only its kind.
        raise CredentialsError(
            f"kubeconfig {path}: not valid YAML ({type(error).__name__}): pass a kubeconfig written by kubectl or kind"
        ) from None
    if not isinstance(document, dict):
        raise CredentialsError(f"kubeconfig {path}: no top-level mapping: pass a kubeconfig file")
    return {str(key): value for key, value in document.items()}


def _named(document: Mapping[str, object], section: str, path: Path) -> dict[str, Mapping[str, object]]:
    raw = document.get(section) or []
    if not isinstance(raw, list):
        raise CredentialsError(f"kubeconfig {path}: '{section}' must be a list: pass a kubeconfig written by kubectl")
    singular = section[:-1]
    entries: dict[str, Mapping[str, object]] = {}
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise CredentialsError(f"kubeconfig {path}: every entry of '{section}' needs a name")
        body = entry.get(singular)
        entries[entry["name"]] = {str(k): v for k, v in body.items()} if isinstance(body, dict) else {}
    return entries


def _select(
    document: Mapping[str, object], path: Path, context: str | None
) -> tuple[str, Mapping[str, object], Mapping[str, object]]:
    contexts = _named(document, "contexts", path)
    names = ", ".join(sorted(contexts)) or "(none)"
    if context is None:
        current = document.get("current-context")
        if not isinstance(current, str) or not current:
            raise CredentialsError(f"kubeconfig {path} has no current-context: pass a context, one of {names}")
        context = current
    if context not in contexts:
        raise CredentialsError(f"kubeconfig {path} has no context {context!r}: pass one of {names}")
    cluster_name = contexts[context].get("cluster")
    clusters = _named(document, "clusters", path)
    if not isinstance(cluster_name, str) or cluster_name not in clusters:
        raise CredentialsError(
            f"kubeconfig {path}: context {context!r} refers to cluster {cluster_name!r}, which is not defined"
        )
    user_name = contexts[context].get("user")
    user: Mapping[str, object] = {}
    if user_name is not None:
        users = _named(document, "users", path)
        if not isinstance(user_name, str) or user_name not in users:
            raise CredentialsError(
                f"kubeconfig {path}: context {context!r} refers to user {user_name!r}, which is not defined"
            )
        user = users[user_name]
    return context, clusters[cluster_name], user
