"""One DNS lookup from inside a pod, as its resolver configuration makes it: ``dig`` in the probe pod.

`lookup` asks the pod's nameserver (its /etc/resolv.conf, written by the kubelet from clusterDNS), with the search
list when `search` is set (short names), and returns the response code, the addresses and dig's own query time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from suites.ha._support.podexec import PodExec

from .workloads import PROBE_CONTAINER

__all__ = ["Lookup", "lookup", "pod_a_record"]

QUERY_TIMEOUT_S = 2
QUERY_TRIES = 2
EXEC_TIMEOUT_S = 30.0
DIG_NO_SERVER = 9

_STATUS = re.compile(r"status: ([A-Z]+),")
_QUERY_TIME = re.compile(r";; Query time: (\d+) msec")
_SERVER = re.compile(r";; SERVER: ([^#\s]+)")


@dataclass(frozen=True)
class Lookup:
    name: str
    rc: int
    status: str  # NOERROR, NXDOMAIN, SERVFAIL, ... or "no-reply" when no server answered
    addresses: frozenset[str]
    query_time_s: float | None
    server: str
    raw: str

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "NOERROR" and bool(self.addresses)

    def describe(self) -> str:
        if self.status == "no-reply":
            return f"{self.name}: no reply from the pod's nameserver ({' '.join(self.raw.split())[:160]})"
        found = ", ".join(sorted(self.addresses)) or "no address"
        return f"{self.name}: {self.status}, {found}" + (f" (server {self.server})" if self.server else "")


def lookup(runner: PodExec, namespace: str, pod: str, name: str, *, search: bool = False,
           qtype: str = "A") -> Lookup:
    argv = ["dig", f"+time={QUERY_TIMEOUT_S}", f"+tries={QUERY_TRIES}", "+noall", "+answer", "+comments", "+stats"]
    if search:
        argv.append("+search")
    argv += [name, qtype]
    result = runner.run(namespace, pod, PROBE_CONTAINER, argv, timeout_s=EXEC_TIMEOUT_S)
    text = result.stdout + result.stderr
    if result.exit_code == DIG_NO_SERVER or "no servers could be reached" in text:
        return Lookup(name, result.exit_code, "no-reply", frozenset(), None, "", text)
    statuses = _STATUS.findall(text)
    status = statuses[-1] if statuses else "no-status"
    addresses = set()
    for line in text.splitlines():
        if line.startswith(";") or not line.strip():
            continue
        fields = line.split()
        if len(fields) >= 5 and fields[3] in ("A", "AAAA"):
            addresses.add(fields[4])
    times = _QUERY_TIME.findall(text)
    servers = _SERVER.findall(text)
    return Lookup(name, result.exit_code, status, frozenset(addresses),
                  int(times[-1]) / 1000.0 if times else None, servers[-1] if servers else "", text)


def pod_a_record(ip: str, namespace: str, domain: str) -> str:
    """The pod A record name CoreDNS serves for an address: 10.244.1.5 -> 10-244-1-5.<ns>.pod.<domain>."""
    return f"{ip.replace('.', '-').replace(':', '-')}.{namespace}.pod.{domain}"
