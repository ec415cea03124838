"""Kubernetes plumbing of the data-plane suites: namespaces, bounded waits, commands in pods, logs, failure dumps.

Every API call passes `REQUEST_TIMEOUT_S`; every wait has a named bound and, when it expires, raises `WaitTimeout`
saying what was awaited and the last state seen.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kubernetes.client import ApiClient, CoreV1Api, DiscoveryV1Api, NetworkingV1Api
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel
from urllib3.exceptions import HTTPError

from kubeha.cluster.client import REQUEST_TIMEOUT_S
from suites.ha._support.kube import describe_error
from suites.ha._support.kube import dump_namespace as dump_workloads
from suites.ha._support.podexec import ExecError

__all__ = [
    "DUMP_LOG_LINES",
    "WaitTimeout",
    "as_json",
    "dump_dataplane",
    "dump_on_failure",
    "field",
    "items",
    "model",
    "pod_log",
    "ready_endpoints",
    "wait_until",
    "write_dump",
]

POLL_S = 1.0
DUMP_LOG_LINES = 60


_M = TypeVar("_M", bound=BaseModel)


class _Serializable(Protocol):
    def to_dict(self, serialize: bool = ...) -> dict[str, Any]: ...


def model(cls: type[_M], body: Mapping[str, Any]) -> _M:
    """A typed API object from a manifest-shaped dict (camelCase keys, as in YAML)."""
    return cls.model_validate(dict(body))


def as_json(obj: _Serializable) -> dict[str, Any]:
    """An API object as its JSON document (camelCase keys, absent fields None), for reading without None checks at
    every level: use `field`."""
    return obj.to_dict(serialize=True)


def field(document: Mapping[str, Any] | None, *path: str) -> Any:
    """document[path[0]][path[1]]...; None as soon as a level is missing or None."""
    value: Any = document
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def items(listing: Any) -> list[dict[str, Any]]:
    """The items of a list call, each as its JSON document."""
    return [as_json(item) for item in (listing.items or [])]


class WaitTimeout(AssertionError):
    """A bounded wait expired; the message names what was awaited, the bound, and the last state seen."""


def wait_until(check: Callable[[], str | None], *, timeout_s: float, what: str, poll_s: float = POLL_S) -> float:
    """Call `check` until it returns None (done) or `timeout_s` passes; returns the seconds waited.

    `check` returns a description of what is still missing. API errors while waiting, including an exec the API
    could not run (its connection went to an API server that had just died), count as "not yet" (the API may be
    failing over) and are reported as the last state if the wait expires.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    last = "not checked yet"
    while True:
        try:
            state = check()
        except (ApiException, HTTPError, OSError) as error:
            state = f"API request failed: {describe_error(error)}"
        except ExecError as error:
            state = f"exec through the API failed: {error}"
        if state is None:
            return time.monotonic() - start
        last = state
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{what}: not reached within {timeout_s:.0f} s; last state: {last}")
        time.sleep(poll_s)


def ready_endpoints(client: ApiClient, namespace: str, service: str) -> tuple[tuple[str, str], ...]:
    """(pod name, address) of every ready endpoint of `service`, from its EndpointSlices."""
    slices = items(DiscoveryV1Api(client).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}", _request_timeout=REQUEST_TIMEOUT_S))
    found: set[tuple[str, str]] = set()
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.get("endpoints") or []:
            if field(endpoint, "conditions", "ready") is False:
                continue
            target = field(endpoint, "targetRef", "name") or "?"
            for address in endpoint.get("addresses") or []:
                found.add((str(target), str(address)))
    return tuple(sorted(found))


def pod_log(client: ApiClient, namespace: str, pod: str, *, container: str | None = None,
            tail_lines: int | None = None) -> str:
    kwargs: dict[str, Any] = {"_request_timeout": REQUEST_TIMEOUT_S}
    if container is not None:
        kwargs["container"] = container
    if tail_lines is not None:
        kwargs["tail_lines"] = tail_lines
    text = CoreV1Api(client).read_namespaced_pod_log(pod, namespace, **kwargs)
    return str(text)


def _pod_lines(core: CoreV1Api, namespace: str) -> list[str]:
    lines = []
    for pod in items(core.list_namespaced_pod(namespace, _request_timeout=REQUEST_TIMEOUT_S)):
        statuses = field(pod, "status", "containerStatuses") or []
        restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
        ready = bool(statuses) and all(c.get("ready") for c in statuses)
        waiting = [f"{c.get('name')}: {field(c, 'state', 'waiting', 'reason')}" for c in statuses
                   if field(c, "state", "waiting") is not None]
        lines.append(f"pod {field(pod, 'metadata', 'name')} node={field(pod, 'spec', 'nodeName')} "
                     f"phase={field(pod, 'status', 'phase')} ip={field(pod, 'status', 'podIP')} ready={ready} "
                     f"restarts={restarts} deleting={field(pod, 'metadata', 'deletionTimestamp') is not None}"
                     + (f" waiting=[{'; '.join(waiting)}]" if waiting else ""))
    return lines


def _service_lines(core: CoreV1Api, namespace: str) -> list[str]:
    lines = []
    for service in items(core.list_namespaced_service(namespace, _request_timeout=REQUEST_TIMEOUT_S)):
        ports = ",".join(f"{p.get('port')}->{p.get('targetPort')}"
                         + (f"(node {p.get('nodePort')})" if p.get("nodePort") else "")
                         for p in field(service, "spec", "ports") or [])
        lines.append(f"service {field(service, 'metadata', 'name')} type={field(service, 'spec', 'type')} "
                     f"clusterIP={field(service, 'spec', 'clusterIP')} ports={ports}")
    return lines


def _slice_lines(client: ApiClient, namespace: str) -> list[str]:
    lines = []
    for endpoint_slice in items(DiscoveryV1Api(client).list_namespaced_endpoint_slice(
            namespace, _request_timeout=REQUEST_TIMEOUT_S)):
        endpoints = ", ".join(f"{field(e, 'targetRef', 'name')}={','.join(e.get('addresses') or [])}"
                              f"(ready={field(e, 'conditions', 'ready')},node={e.get('nodeName')})"
                              for e in endpoint_slice.get("endpoints") or [])
        lines.append(f"slice {field(endpoint_slice, 'metadata', 'name')}: {endpoints}")
    return lines


def _ingress_lines(client: ApiClient, namespace: str) -> list[str]:
    lines = []
    for ingress in items(NetworkingV1Api(client).list_namespaced_ingress(namespace,
                                                                          _request_timeout=REQUEST_TIMEOUT_S)):
        rules = "; ".join(f"{r.get('host')}:" + ",".join(f"{p.get('path')}->{field(p, 'backend', 'service', 'name')}"
                                                         for p in field(r, "http", "paths") or [])
                          for r in field(ingress, "spec", "rules") or [])
        tls = [t.get("hosts") for t in field(ingress, "spec", "tls") or []]
        lines.append(f"ingress {field(ingress, 'metadata', 'name')} class={field(ingress, 'spec', 'ingressClassName')}"
                     f" rules={rules} tls={tls}")
    return lines


def dump_dataplane(client: ApiClient, namespace: str, *, extra: Sequence[tuple[str, Callable[[], str]]] = ()) -> str:
    """A text snapshot of the namespace for a failure: the suite's workload dump (Deployments, pods, events), then
    pods with addresses and restarts, Services, EndpointSlices, Ingresses and the last log lines of every pod.
    `extra` adds (title, producer) sections (e.g. an ingress controller's logs). Every section is read on its own:
    one that cannot be read says why and the others are still written."""
    core = CoreV1Api(client)
    sections: list[tuple[str, Callable[[], str]]] = [
        ("workloads", lambda: dump_workloads(client, namespace)),
        ("pods", lambda: "\n".join(_pod_lines(core, namespace))),
        ("services", lambda: "\n".join(_service_lines(core, namespace))),
        ("endpoint slices", lambda: "\n".join(_slice_lines(client, namespace))),
        ("ingresses", lambda: "\n".join(_ingress_lines(client, namespace))),
        ("pod logs", lambda: _all_logs(core, namespace)),
        *extra,
    ]
    parts = [f"# namespace {namespace} at {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    for title, producer in sections:
        try:
            body = producer()
        except (ApiException, HTTPError, OSError) as error:
            body = f"(cannot read: {describe_error(error)})"
        parts.append(f"## {title}\n{body or '(none)'}")
    return "\n\n".join(parts) + "\n"


def _all_logs(core: CoreV1Api, namespace: str) -> str:
    chunks = []
    for pod in items(core.list_namespaced_pod(namespace, _request_timeout=REQUEST_TIMEOUT_S)):
        name = str(field(pod, "metadata", "name"))
        for container in field(pod, "spec", "containers") or []:
            try:
                text = core.read_namespaced_pod_log(name, namespace, container=str(container.get("name")),
                                                    tail_lines=DUMP_LOG_LINES, _request_timeout=REQUEST_TIMEOUT_S)
            except (ApiException, HTTPError, OSError) as error:
                text = f"(cannot read: {describe_error(error)})"
            chunks.append(f"--- {name}/{container.get('name')} (last {DUMP_LOG_LINES} lines)\n{text}")
    return "\n".join(chunks)


def write_dump(directory: Path, namespace: str, text: str, label: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{namespace}-{label}-{time.strftime('%H%M%S')}.txt"
    path.write_text(text, encoding="utf-8")
    return path


@contextlib.contextmanager
def dump_on_failure(client: ApiClient, namespace: str, directory: Path, label: str,
                    *, extra: Sequence[tuple[str, Callable[[], str]]] = (),
                    report: Callable[[Path], None] | None = None) -> Iterator[None]:
    """Write a dump of the namespace if the block raises (before anything inside is undone), then re-raise."""
    try:
        yield
    except BaseException:
        path = write_dump(directory, namespace, dump_dataplane(client, namespace, extra=extra), label)
        if report is not None:
            report(path)
        raise
