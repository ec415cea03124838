"""What an haproxy load balancer does about a dead API server: its health checks, read from its configuration.

`parse_haproxy` reads the check settings of every backend server (``check``, ``inter``, ``fastinter``, ``fall``,
``rise``, ``timeout check``, ``default-server`` lines in ``defaults`` and ``backend`` sections) and whether the server
is re-resolved at run time (``resolvers``), which also takes a vanished backend out of rotation. From them,
`ServerCheck.detection_bound_s` is the longest time haproxy may keep sending new connections to a server that died.

`without_failure_detection` rewrites a configuration so that haproxy never takes a dead server out of rotation (no
health check, no run-time DNS resolution): the broken variant the project's negative checks run the suite against.

Pure: text in, data or text out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "HAPROXY_DEFAULT_FALL",
    "HAPROXY_DEFAULT_INTER_S",
    "HAPROXY_DEFAULT_RISE",
    "HaproxyChecks",
    "HaproxyConfigError",
    "ServerCheck",
    "parse_haproxy",
    "parse_haproxy_time",
    "without_failure_detection",
]

# haproxy's documented defaults (configuration manual, section 5.2 "Server and default-server options").
HAPROXY_DEFAULT_INTER_S = 2.0
HAPROXY_DEFAULT_FALL = 3
HAPROXY_DEFAULT_RISE = 2

SECTION_KEYWORDS = frozenset(
    {
        "global",
        "defaults",
        "frontend",
        "backend",
        "listen",
        "resolvers",
        "peers",
        "userlist",
        "program",
        "http-errors",
        "ring",
        "mailers",
        "cache",
        "crt-store",
        "traces",
    }
)
PROXY_SECTIONS = frozenset({"backend", "listen"})
# Server keywords that take one value; they are skipped with it when scanning for flags such as `check`.
_VALUED_SERVER_KEYWORDS = frozenset(
    {
        "inter",
        "fastinter",
        "downinter",
        "fall",
        "rise",
        "resolvers",
        "resolve-prefer",
        "resolve-opts",
        "resolve-net",
        "init-addr",
        "verify",
        "weight",
        "maxconn",
        "minconn",
        "maxqueue",
        "port",
        "addr",
        "ca-file",
        "crt",
        "crl-file",
        "sni",
        "alpn",
        "check-alpn",
        "check-sni",
        "ciphers",
        "ciphersuites",
        "cookie",
        "id",
        "slowstart",
        "source",
        "on-error",
        "on-marked-down",
        "on-marked-up",
        "error-limit",
        "observe",
        "agent-port",
        "agent-inter",
        "agent-addr",
        "agent-send",
        "pool-max-conn",
        "pool-purge-delay",
        "pool-low-conn",
        "proto",
        "redir",
        "track",
        "namespace",
        "proxy-v2-options",
        "tcp-ut",
        "ws",
        "max-reuse",
        "log-proto",
        "shard",
        "guid",
        "hash-key",
        "set-proxy-v2-tlv-fmt",
        "ssl-min-ver",
        "ssl-max-ver",
        "curves",
        "sigalgs",
        "client-sigalgs",
        "npn",
        "check-proto",
        "check-via-socks4",
        "socks4",
    }
)
# Keywords removed by `without_failure_detection`, with the number of values each takes.
_DETECTION_KEYWORDS = {
    "check": 0,
    "check-ssl": 0,
    "inter": 1,
    "fastinter": 1,
    "downinter": 1,
    "fall": 1,
    "rise": 1,
    "resolvers": 1,
    "resolve-prefer": 1,
    "resolve-opts": 1,
    "resolve-net": 1,
    "init-addr": 1,
}
_DETECTION_LINE_PREFIXES = (("option", "httpchk"), ("option", "ssl-hello-chk"), ("option", "tcp-check"), ("http-check",), ("tcp-check",))
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s|m|h|d)?$")
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class HaproxyConfigError(ValueError):
    """The configuration cannot be read as haproxy reads it; the message names the line."""


def parse_haproxy_time(text: str) -> float:
    """Seconds in an haproxy time value: ``5s``, ``2000`` (milliseconds, haproxy's default unit), ``1m``."""
    match = _TIME.match(text.strip())
    if match is None:
        raise HaproxyConfigError(f"invalid haproxy time {text!r}: expected a number with an optional unit us/ms/s/m/h/d")
    unit = match.group(2) or "ms"
    return float(match.group(1)) * _TIME_UNITS[unit]


@dataclass(frozen=True)
class ServerCheck:
    """How haproxy watches one backend server.

    `check_timeout_s` is how long one check may take: ``timeout check`` when set, else `inter_s` (haproxy's rule).
    `resolved_at_runtime` means the server's name is re-resolved through a ``resolvers`` section, which takes the
    server out of rotation once its name stops resolving.
    """

    backend: str
    server: str
    address: str
    checked: bool
    inter_s: float
    fastinter_s: float | None
    downinter_s: float | None
    fall: int
    rise: int
    check_timeout_s: float
    resolved_at_runtime: bool

    def detection_bound_s(self) -> float | None:
        """Longest time from the server dying to haproxy marking it down; None without health checks.

        The next check starts up to `inter_s` after the death; each of the `fall` failing checks may take the whole
        check timeout; between failing checks haproxy waits `fastinter_s` (``inter`` when unset).
        """
        if not self.checked:
            return None
        between = self.fastinter_s if self.fastinter_s is not None else self.inter_s
        return self.inter_s + self.fall * self.check_timeout_s + (self.fall - 1) * between

    def readmission_bound_s(self) -> float | None:
        """Longest time from the server being healthy again to haproxy sending it connections; None unchecked."""
        if not self.checked:
            return None
        down = self.downinter_s if self.downinter_s is not None else self.inter_s
        between = self.fastinter_s if self.fastinter_s is not None else self.inter_s
        return down + self.rise * self.check_timeout_s + (self.rise - 1) * between

    def describe(self) -> str:
        if not self.checked:
            return f"{self.backend}/{self.server}: no health check"
        parts = [f"inter {self.inter_s:g} s"]
        if self.fastinter_s is not None:
            parts.append(f"fastinter {self.fastinter_s:g} s")
        parts.extend([f"fall {self.fall}", f"rise {self.rise}", f"check timeout {self.check_timeout_s:g} s"])
        return f"{self.backend}/{self.server}: " + ", ".join(parts)


@dataclass(frozen=True)
class HaproxyChecks:
    """The check settings of every server of every backend, and which backends check over HTTP."""

    servers: tuple[ServerCheck, ...]
    http_checked_backends: frozenset[str] = field(default_factory=frozenset)

    def unchecked(self) -> tuple[ServerCheck, ...]:
        return tuple(server for server in self.servers if not server.checked)

    def detection_bound_s(self) -> float | None:
        """The longest detection bound over all servers; None when any server is unchecked (never detected)."""
        bounds = [server.detection_bound_s() for server in self.servers]
        if not bounds or any(bound is None for bound in bounds):
            return None
        return max(bound for bound in bounds if bound is not None)

    def readmission_bound_s(self) -> float | None:
        bounds = [server.readmission_bound_s() for server in self.servers]
        if not bounds or any(bound is None for bound in bounds):
            return None
        return max(bound for bound in bounds if bound is not None)

    def describe(self) -> str:
        if not self.servers:
            return "no backend server found"
        return "; ".join(server.describe() for server in self.servers)


def _strip_comment(line: str) -> str:
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
            continue
        if char == "\\":
            escaped = True
            continue
        if char == "#":
            return line[:index]
    return line


@dataclass
class _Defaults:
    inter_s: float | None = None
    fastinter_s: float | None = None
    downinter_s: float | None = None
    fall: int | None = None
    rise: int | None = None
    check: bool = False
    resolvers: bool = False
    check_timeout_s: float | None = None

    def copy(self) -> _Defaults:
        return _Defaults(**vars(self))


def _int(value: str, keyword: str, number: int) -> int:
    try:
        parsed = int(value)
    except ValueError:
        raise HaproxyConfigError(f"line {number}: {keyword} {value!r} is not an integer") from None
    if parsed < 1:
        raise HaproxyConfigError(f"line {number}: {keyword} must be at least 1, got {parsed}")
    return parsed


def _apply_server_keywords(tokens: Sequence[str], settings: _Defaults, number: int) -> None:
    index = 0
    while index < len(tokens):
        keyword = tokens[index]
        value = tokens[index + 1] if index + 1 < len(tokens) else None
        if keyword in ("check", "check-ssl"):
            settings.check = True
        elif keyword == "no-check":
            settings.check = False
        if keyword in _VALUED_SERVER_KEYWORDS:
            if value is None:
                raise HaproxyConfigError(f"line {number}: {keyword} needs a value")
            if keyword == "inter":
                settings.inter_s = parse_haproxy_time(value)
            elif keyword == "fastinter":
                settings.fastinter_s = parse_haproxy_time(value)
            elif keyword == "downinter":
                settings.downinter_s = parse_haproxy_time(value)
            elif keyword == "fall":
                settings.fall = _int(value, keyword, number)
            elif keyword == "rise":
                settings.rise = _int(value, keyword, number)
            elif keyword == "resolvers":
                settings.resolvers = True
            index += 2
            continue
        index += 1


def _lines(text: str) -> Iterable[tuple[int, list[str]]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        tokens = _strip_comment(raw).split()
        if tokens:
            yield number, tokens


def parse_haproxy(text: str) -> HaproxyChecks:
    """The health-check settings of every server in the ``backend`` and ``listen`` sections of `text`."""
    defaults = _Defaults()
    section: str | None = None
    section_name = ""
    local = _Defaults()
    servers: list[ServerCheck] = []
    http_checked: set[str] = set()
    for number, tokens in _lines(text):
        keyword = tokens[0]
        if keyword in SECTION_KEYWORDS:
            section = keyword
            section_name = tokens[1] if len(tokens) > 1 else ""
            if section == "defaults":
                defaults = _Defaults()
                local = defaults
            else:
                local = defaults.copy()
            continue
        if section not in PROXY_SECTIONS and section != "defaults":
            continue
        if keyword == "default-server":
            _apply_server_keywords(tokens[1:], local, number)
        elif keyword == "timeout" and len(tokens) >= 3 and tokens[1] == "check":
            local.check_timeout_s = parse_haproxy_time(tokens[2])
        elif keyword == "option" and len(tokens) >= 2 and tokens[1] in ("httpchk", "ssl-hello-chk", "tcp-check"):
            if section in PROXY_SECTIONS and tokens[1] == "httpchk":
                http_checked.add(section_name)
        elif keyword == "server" and section in PROXY_SECTIONS:
            if len(tokens) < 3:
                raise HaproxyConfigError(f"line {number}: a server line needs a name and an address")
            settings = local.copy()
            _apply_server_keywords(tokens[3:], settings, number)
            inter = settings.inter_s if settings.inter_s is not None else HAPROXY_DEFAULT_INTER_S
            servers.append(
                ServerCheck(
                    backend=section_name,
                    server=tokens[1],
                    address=tokens[2],
                    checked=settings.check,
                    inter_s=inter,
                    fastinter_s=settings.fastinter_s,
                    downinter_s=settings.downinter_s,
                    fall=settings.fall if settings.fall is not None else HAPROXY_DEFAULT_FALL,
                    rise=settings.rise if settings.rise is not None else HAPROXY_DEFAULT_RISE,
                    check_timeout_s=settings.check_timeout_s if settings.check_timeout_s is not None else inter,
                    resolved_at_runtime=settings.resolvers,
                )
            )
    return HaproxyChecks(servers=tuple(servers), http_checked_backends=frozenset(http_checked))


def _drop_detection_keywords(tokens: Sequence[str], start: int) -> list[str]:
    kept = list(tokens[:start])
    index = start
    while index < len(tokens):
        keyword = tokens[index]
        if keyword in _DETECTION_KEYWORDS:
            index += 1 + _DETECTION_KEYWORDS[keyword]
            continue
        if keyword in _VALUED_SERVER_KEYWORDS:
            kept.extend(tokens[index : index + 2])
            index += 2
            continue
        kept.append(keyword)
        index += 1
    return kept


def without_failure_detection(text: str) -> str:
    """`text` with every way haproxy takes a dead server out of rotation removed.

    Health checks (``check``, ``option httpchk`` and friends, ``http-check``/``tcp-check`` rules, check timing) and
    run-time DNS resolution (``resolvers``, ``init-addr``) go; server names are then resolved once, when haproxy
    loads the configuration. Comments and indentation of the lines that change are not kept.
    """
    out: list[str] = []
    section: str | None = None
    for raw in text.splitlines():
        tokens = _strip_comment(raw).split()
        if not tokens:
            out.append(raw)
            continue
        keyword = tokens[0]
        if keyword in SECTION_KEYWORDS:
            section = keyword
            out.append(raw)
            continue
        if section in PROXY_SECTIONS or section == "defaults":
            if any(tuple(tokens[: len(prefix)]) == prefix for prefix in _DETECTION_LINE_PREFIXES):
                continue
            if keyword == "timeout" and len(tokens) >= 2 and tokens[1] == "check":
                continue
            if keyword in ("server", "default-server"):
                start = 3 if keyword == "server" else 1
                kept = _drop_detection_keywords(tokens, start)
                if keyword == "default-server" and len(kept) == 1:
                    continue
                indent = raw[: len(raw) - len(raw.lstrip())]
                out.append(indent + " ".join(kept))
                continue
        out.append(raw)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")
