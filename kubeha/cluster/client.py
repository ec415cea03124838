"""API clients built from a kubeconfig path, one per process.

Nothing here touches the kubernetes package's process-wide default configuration: every caller gets its own
`ApiClient` built from the kubeconfig file and context it names, so the xdist controller and each worker talk to the
cluster independently and two clusters can be used side by side. Error messages name files, contexts and server URLs,
never credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.rest import RESTResponse
from kubernetes.config import ConfigException, load_kube_config

__all__ = [
    "DryRunRefusal",
    "KubeconfigError",
    "KubeconfigInfo",
    "KubeconfigTarget",
    "READ_METHODS",
    "REQUEST_TIMEOUT_S",
    "ReadOnlyApiClient",
    "new_api_client",
    "read_kubeconfig",
    "server_host_port",
]

# Upper bound of one API request (connect + read). Every call the suite makes passes it, so no call hangs.
REQUEST_TIMEOUT_S = 15.0

HTTPS_DEFAULT_PORT = 443
HTTP_DEFAULT_PORT = 80


class KubeconfigError(ValueError):
    """A kubeconfig file that cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class KubeconfigTarget:
    """Which cluster to talk to: a kubeconfig file and a context in it (None: the file's current-context)."""

    path: Path
    context: str | None = None

    def describe(self) -> str:
        return f"{self.path} (context {self.context})" if self.context else f"{self.path} (current context)"


@dataclass(frozen=True)
class KubeconfigInfo:
    """What the suite needs to know about a kubeconfig context, read from the file without contacting the cluster."""

    path: Path
    context: str
    cluster: str
    server: str
    contexts: tuple[str, ...]


def _named_entries(document: dict[object, object], section: str, path: Path) -> dict[str, dict[object, object]]:
    raw = document.get(section) or []
    if not isinstance(raw, list):
        raise KubeconfigError(f"{path}: '{section}' must be a list; pass a kubeconfig written by kubectl or kind")
    entries: dict[str, dict[object, object]] = {}
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise KubeconfigError(
                f"{path}: every entry of '{section}' needs a 'name'; pass a kubeconfig written by kubectl or kind"
            )
        body = entry.get(section[:-1])
        entries[str(entry["name"])] = body if isinstance(body, dict) else {}
    return entries


def read_kubeconfig(target: KubeconfigTarget) -> KubeconfigInfo:
    """Check that `target` names a readable kubeconfig and an existing context; return its server URL.

    Raises `KubeconfigError` whose message says what to pass instead.
    """
    path = target.path
    if not path.exists():
        raise KubeconfigError(
            f"--kubeconfig {path}: no such file; pass the path of a kubeconfig or omit it to use the embedded "
            "kind cluster"
        )
    if not path.is_file():
        raise KubeconfigError(f"--kubeconfig {path}: not a regular file; pass the path of a kubeconfig file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise KubeconfigError(
            f"--kubeconfig {path}: cannot read it ({error.strerror}); check its permissions"
        ) from error
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise KubeconfigError(
            f"--kubeconfig {path}: not valid YAML ({type(error).__name__}); pass a kubeconfig written by kubectl "
            "or kind"
        ) from error
    if not isinstance(document, dict):
        raise KubeconfigError(f"--kubeconfig {path}: not a kubeconfig (no top-level mapping); pass a kubeconfig file")
    contexts = _named_entries(document, "contexts", path)
    clusters = _named_entries(document, "clusters", path)
    if not contexts:
        raise KubeconfigError(f"--kubeconfig {path}: the file defines no context; pass a kubeconfig with a context")
    names = tuple(sorted(contexts))
    if target.context is not None:
        context = target.context
        if context not in contexts:
            raise KubeconfigError(
                f"--context {context}: no such context in {path}; pass one of {', '.join(names)} or omit "
                "--context to use the file's current-context"
            )
    else:
        current = document.get("current-context")
        if not isinstance(current, str) or not current:
            raise KubeconfigError(
                f"--kubeconfig {path}: the file has no current-context; pass --context with one of {', '.join(names)}"
            )
        if current not in contexts:
            raise KubeconfigError(
                f"--kubeconfig {path}: its current-context {current!r} is not defined in the file; pass --context "
                f"with one of {', '.join(names)}"
            )
        context = current
    cluster = contexts[context].get("cluster")
    if not isinstance(cluster, str) or cluster not in clusters:
        raise KubeconfigError(
            f"--kubeconfig {path}: context {context!r} refers to cluster {cluster!r}, which the file does not define; "
            "fix the kubeconfig or pass another --context"
        )
    server = clusters[cluster].get("server")
    if not isinstance(server, str) or not server:
        raise KubeconfigError(
            f"--kubeconfig {path}: cluster {cluster!r} has no server URL; fix the kubeconfig or pass another --context"
        )
    return KubeconfigInfo(path=path, context=context, cluster=cluster, server=server, contexts=names)


READ_METHODS = frozenset({"GET", "HEAD"})


class DryRunRefusal(RuntimeError):
    """A request that would change the cluster, made through a read-only client."""


class ReadOnlyApiClient(ApiClient):
    """An `ApiClient` that sends only GET and HEAD requests; any other raises `DryRunRefusal` before it leaves."""

    def call_api(
        self,
        method: str,
        url: str,
        header_params: dict[str, str] | None = None,
        body: object = None,
        post_params: object = None,
        _request_timeout: object = None,
    ) -> RESTResponse:
        if method.upper() not in READ_METHODS:
            path = urlsplit(url).path
            raise DryRunRefusal(
                f"dry run: refusing {method.upper()} {path}: a dry run only reads the cluster; make the fixture or "
                "test that writes check kubeha_run.dry_run, or run without --dry-run"
            )
        response: RESTResponse = super().call_api(
            method, url, header_params=header_params, body=body, post_params=post_params,
            _request_timeout=_request_timeout,
        )
        return response


def new_api_client(target: KubeconfigTarget, *, read_only: bool = False) -> ApiClient:
    """A fresh `ApiClient` for `target`, leaving the kubernetes package's default configuration untouched.

    `persist_config=False`: refreshed credentials are never written back to the user's kubeconfig. With `read_only`
    the client refuses every request but GET and HEAD (`ReadOnlyApiClient`).
    """
    configuration = Configuration()
    try:
        load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(target.path),
            context=target.context,
            client_configuration=configuration,
            persist_config=False,
        )
    except ConfigException as error:
        # The loader's messages name fields and files; they do not echo credential values.
        raise KubeconfigError(
            f"cannot build an API client from {target.describe()}: {error}; fix the kubeconfig or pass another "
            "--context"
        ) from error
    return ReadOnlyApiClient(configuration) if read_only else ApiClient(configuration)


def server_host_port(server: str) -> tuple[str, int]:
    """Host and port of an API server URL such as ``https://127.0.0.1:6443`` (port defaults by scheme)."""
    parts = urlsplit(server)
    host = parts.hostname
    if not host:
        raise KubeconfigError(f"server URL {server!r} has no host; fix the kubeconfig's cluster.server")
    try:
        port = parts.port
    except ValueError as error:
        raise KubeconfigError(f"server URL {server!r} has an invalid port; fix the kubeconfig's cluster.server") from error
    if port is None:
        port = HTTP_DEFAULT_PORT if parts.scheme == "http" else HTTPS_DEFAULT_PORT
    return host, port
