"""The result model: what each control proved, and the run report that gathers them.

A control is one MUST statement of the HA design ("the API stays reachable while one control-plane node is down").
Its `ControlResult` carries the verdict, the measured numbers against their budgets, and the evidence behind them.
Every type serialises to plain JSON values with ``to_dict`` and reads back with ``from_dict``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TypeVar

from kubeha.core.jsonfields import (
    JsonFormatError,
    JsonObject,
    JsonValue,
    as_object,
    get_float,
    get_list,
    get_object,
    get_optional_float,
    get_str,
)
from kubeha.core.outage import OutageWindow

__all__ = [
    "ClusterIdentity",
    "Comparison",
    "ControlResult",
    "Evidence",
    "Measurement",
    "ModelError",
    "ProbeSpan",
    "Profile",
    "RunReport",
    "RunSummary",
    "Verdict",
    "format_number",
]

# format_number prints this many significant digits.
SIGNIFICANT_DIGITS = 6


class ModelError(ValueError):
    """A result or report that contradicts itself."""


class Verdict(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_RUN = "not_run"
    SKIPPED = "skipped"
    ERROR = "error"


class Comparison(enum.Enum):
    AT_MOST = "<="
    AT_LEAST = ">="


class Profile(enum.Enum):
    """DEFAULT reports what ran. CERTIFICATION also fails the run when any control did not run."""

    DEFAULT = "default"
    CERTIFICATION = "certification"


_E = TypeVar("_E", bound=enum.Enum)


def _enum(enum_type: type[_E], obj: JsonObject, key: str, where: str) -> _E:
    raw = get_str(obj, key, where)
    try:
        return enum_type(raw)
    except ValueError:
        allowed = [str(member.value) for member in enum_type]
        raise JsonFormatError(f"{where}.{key} is {raw!r}, expected one of {allowed}") from None


def _objects(obj: JsonObject, key: str, where: str) -> list[tuple[JsonObject, str]]:
    return [
        (as_object(item, f"{where}.{key}[{index}]"), f"{where}.{key}[{index}]")
        for index, item in enumerate(get_list(obj, key, where))
    ]


def _strings(obj: JsonObject, key: str, where: str) -> tuple[str, ...]:
    values = get_list(obj, key, where)
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise JsonFormatError(f"{where}.{key}[{index}] must be a string, found {value!r:.80}")
    return tuple(str(value) for value in values)


def _check_finite(value: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelError(f"{what} must be a finite number, got {value!r}: record the measured value, not a marker")


def _check_text(value: str, what: str, fix: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ModelError(f"{what} must be a non-empty string, got {value!r}: {fix}")


def format_number(value: float) -> str:
    """A short human form of `value`: 7.31, 0.000412, 1234567."""
    if float(value).is_integer() and abs(value) < 10**15:
        return str(int(value))
    return format(value, f".{SIGNIFICANT_DIGITS}g")


@dataclass(frozen=True)
class Measurement:
    """A measured number and, when the control bounds it, its budget: ``value <= budget`` or ``value >= budget``."""

    name: str
    value: float
    unit: str
    budget: float | None = None
    comparison: Comparison = Comparison.AT_MOST

    def __post_init__(self) -> None:
        _check_text(self.name, "Measurement.name", "name what was measured, e.g. api_longest_outage")
        _check_finite(self.value, f"measurement {self.name} value")
        if self.budget is not None:
            _check_finite(self.budget, f"measurement {self.name} budget")
        if not isinstance(self.comparison, Comparison):
            raise ModelError(
                f"measurement {self.name} comparison must be a Comparison, got {self.comparison!r}: "
                "use Comparison.AT_MOST for limits and Comparison.AT_LEAST for floors"
            )

    @property
    def within_budget(self) -> bool | None:
        """Whether the value meets its budget; None when the measurement has no budget."""
        if self.budget is None:
            return None
        if self.comparison is Comparison.AT_MOST:
            return self.value <= self.budget
        return self.value >= self.budget

    def describe(self) -> str:
        """``"<value> <unit> (budget <= x)"``, the form used in reports."""
        text = f"{format_number(self.value)} {self.unit}".rstrip()
        if self.budget is not None:
            text += f" (budget {self.comparison.value} {format_number(self.budget)})"
        return text

    def to_dict(self) -> JsonObject:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "budget": self.budget,
            "comparison": self.comparison.value,
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str = "measurement") -> Measurement:
        return cls(
            name=get_str(obj, "name", where),
            value=get_float(obj, "value", where),
            unit=get_str(obj, "unit", where),
            budget=get_optional_float(obj, "budget", where),
            comparison=_enum(Comparison, obj, "comparison", where),
        )


@dataclass(frozen=True)
class Evidence:
    """A labelled piece of raw evidence (a command's output, a Lease's holder history, ...)."""

    label: str
    text: str

    def __post_init__(self) -> None:
        _check_text(self.label, "Evidence.label", "say what the text is, e.g. 'etcdctl endpoint status'")

    def to_dict(self) -> JsonObject:
        return {"label": self.label, "text": self.text}

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str = "evidence") -> Evidence:
        return cls(label=get_str(obj, "label", where), text=get_str(obj, "text", where))


@dataclass(frozen=True)
class ProbeSpan:
    """When probing ran for a control, on the same monotonic clock as its outage windows."""

    start: float
    end: float

    def __post_init__(self) -> None:
        _check_finite(self.start, "ProbeSpan.start")
        _check_finite(self.end, "ProbeSpan.end")
        if self.end < self.start:
            raise ModelError(f"ProbeSpan ends ({self.end}) before it starts ({self.start}): swap them")

    def to_dict(self) -> JsonObject:
        return {"start": self.start, "end": self.end}

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str = "probe_span") -> ProbeSpan:
        return cls(start=get_float(obj, "start", where), end=get_float(obj, "end", where))


@dataclass(frozen=True, kw_only=True)
class ControlResult:
    control_id: str
    title: str
    statement: str
    verdict: Verdict
    reason: str
    started_wall: float
    duration_s: float
    measurements: tuple[Measurement, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    windows: tuple[OutageWindow, ...] = ()
    tags: tuple[str, ...] = ()
    probe_span: ProbeSpan | None = None

    def __post_init__(self) -> None:
        _check_text(self.control_id, "ControlResult.control_id", "use the control's ID, e.g. HA-API-001")
        if not isinstance(self.verdict, Verdict):
            raise ModelError(f"{self.control_id}: verdict must be a Verdict, got {self.verdict!r}")
        for label, value in (
            ("measurements", self.measurements),
            ("evidence", self.evidence),
            ("windows", self.windows),
            ("tags", self.tags),
        ):
            if not isinstance(value, tuple):
                raise ModelError(f"{self.control_id}: {label} must be a tuple, got {type(value).__name__}")
        if self.verdict is not Verdict.PASSED:
            _check_text(
                self.reason, f"{self.control_id}: reason of a {self.verdict.value} result", "say why it did not pass"
            )
        _check_finite(self.started_wall, f"{self.control_id}: started_wall")
        _check_finite(self.duration_s, f"{self.control_id}: duration_s")
        if self.duration_s < 0:
            raise ModelError(f"{self.control_id}: duration_s is negative ({self.duration_s}): use end minus start")
        if self.verdict is Verdict.PASSED:
            broken = [m for m in self.measurements if m.within_budget is False]
            if broken:
                raise ModelError(
                    f"{self.control_id} cannot pass with measurements outside their budgets: "
                    f"{[f'{m.name} = {m.describe()}' for m in broken]}; set the verdict to FAILED"
                )

    def to_dict(self) -> JsonObject:
        return {
            "control_id": self.control_id,
            "title": self.title,
            "statement": self.statement,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "started_wall": self.started_wall,
            "duration_s": self.duration_s,
            "measurements": [m.to_dict() for m in self.measurements],
            "evidence": [e.to_dict() for e in self.evidence],
            "windows": [w.to_dict() for w in self.windows],
            "tags": list(self.tags),
            "probe_span": None if self.probe_span is None else self.probe_span.to_dict(),
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str = "result") -> ControlResult:
        raw_span = obj.get("probe_span")
        return cls(
            control_id=get_str(obj, "control_id", where),
            title=get_str(obj, "title", where),
            statement=get_str(obj, "statement", where),
            verdict=_enum(Verdict, obj, "verdict", where),
            reason=get_str(obj, "reason", where),
            started_wall=get_float(obj, "started_wall", where),
            duration_s=get_float(obj, "duration_s", where),
            measurements=tuple(Measurement.from_dict(o, w) for o, w in _objects(obj, "measurements", where)),
            evidence=tuple(Evidence.from_dict(o, w) for o, w in _objects(obj, "evidence", where)),
            windows=tuple(OutageWindow.from_dict(o, w) for o, w in _objects(obj, "windows", where)),
            tags=_strings(obj, "tags", where),
            probe_span=None
            if raw_span is None
            else ProbeSpan.from_dict(as_object(raw_span, f"{where}.probe_span"), f"{where}.probe_span"),
        )


@dataclass(frozen=True)
class ClusterIdentity:
    """Which cluster a run tested: its API URL, the kube-system namespace UID, and the server version."""

    api_url: str
    cluster_uid: str
    kubernetes_version: str

    def to_dict(self) -> JsonObject:
        return {"api_url": self.api_url, "cluster_uid": self.cluster_uid, "kubernetes_version": self.kubernetes_version}

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str = "cluster") -> ClusterIdentity:
        return cls(
            api_url=get_str(obj, "api_url", where),
            cluster_uid=get_str(obj, "cluster_uid", where),
            kubernetes_version=get_str(obj, "kubernetes_version", where),
        )


@dataclass(frozen=True)
class RunSummary:
    """Counts per verdict and the run's overall verdict, with one reason per control that did not pass."""

    total: int
    counts: tuple[tuple[Verdict, int], ...]
    verdict: Verdict
    reasons: tuple[str, ...]

    def count(self, verdict: Verdict) -> int:
        return dict(self.counts).get(verdict, 0)


_INCOMPLETE = (Verdict.NOT_RUN, Verdict.SKIPPED)
NO_RESULTS_REASON = "no control produced a result"
CERTIFICATION_NOTE = "certification requires every control to run"


@dataclass(frozen=True, kw_only=True)
class RunReport:
    cluster: ClusterIdentity
    started_wall: float
    finished_wall: float
    results: tuple[ControlResult, ...]
    profile: Profile = Profile.DEFAULT

    def __post_init__(self) -> None:
        _check_finite(self.started_wall, "RunReport.started_wall")
        _check_finite(self.finished_wall, "RunReport.finished_wall")
        if self.finished_wall < self.started_wall:
            raise ModelError(
                f"RunReport finished ({self.finished_wall}) before it started ({self.started_wall}): "
                "record time.time() at session start and end"
            )
        if not isinstance(self.results, tuple):
            raise ModelError(f"RunReport.results must be a tuple, got {type(self.results).__name__}")

    def summary(self) -> RunSummary:
        counts = tuple((verdict, sum(1 for r in self.results if r.verdict is verdict)) for verdict in Verdict)
        by_verdict = dict(counts)
        certification = self.profile is Profile.CERTIFICATION
        reasons = tuple(
            self._reason(result, certification) for result in self.results if result.verdict is not Verdict.PASSED
        )
        if not self.results:
            verdict = Verdict.FAILED if certification else Verdict.NOT_RUN
            reasons = (f"{NO_RESULTS_REASON}; {CERTIFICATION_NOTE}" if certification else NO_RESULTS_REASON,)
        elif by_verdict[Verdict.FAILED]:
            verdict = Verdict.FAILED
        elif by_verdict[Verdict.ERROR]:
            verdict = Verdict.FAILED if certification else Verdict.ERROR
        elif any(by_verdict[v] for v in _INCOMPLETE):
            if certification:
                verdict = Verdict.FAILED
            else:
                verdict = Verdict.PASSED if by_verdict[Verdict.PASSED] else Verdict.NOT_RUN
        else:
            verdict = Verdict.PASSED
        return RunSummary(total=len(self.results), counts=counts, verdict=verdict, reasons=reasons)

    @staticmethod
    def _reason(result: ControlResult, certification: bool) -> str:
        text = f"{result.control_id} {result.verdict.value}: {result.reason}"
        if certification and result.verdict in _INCOMPLETE:
            text += f" ({CERTIFICATION_NOTE})"
        return text

    def to_dict(self) -> JsonObject:
        results: list[JsonValue] = [result.to_dict() for result in self.results]
        return {
            "cluster": self.cluster.to_dict(),
            "started_wall": self.started_wall,
            "finished_wall": self.finished_wall,
            "profile": self.profile.value,
            "results": results,
        }

    @classmethod
    def from_dict(cls, obj: JsonObject, where: str = "report") -> RunReport:
        return cls(
            cluster=ClusterIdentity.from_dict(get_object(obj, "cluster", where), f"{where}.cluster"),
            started_wall=get_float(obj, "started_wall", where),
            finished_wall=get_float(obj, "finished_wall", where),
            profile=_enum(Profile, obj, "profile", where),
            results=tuple(ControlResult.from_dict(o, w) for o, w in _objects(obj, "results", where)),
        )
