"""The machine-readable record of a run: the `RunReport` and its `Timeline` in one versioned JSON document."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kubeha.core.jsonfields import (
    JsonFormatError,
    JsonObject,
    JsonValue,
    as_object,
    get_int,
    get_list,
    get_object,
    get_str,
)
from kubeha.core.model import RunReport
from kubeha.core.timeline import Timeline, TimelineEvent

__all__ = [
    "DOCUMENT_KIND",
    "SCHEMA_VERSION",
    "dumps",
    "from_document",
    "loads",
    "read_document",
    "to_document",
    "write_document",
]

DOCUMENT_KIND = "kubeha-run"
SCHEMA_VERSION = 1
INDENT = 2


def to_document(report: RunReport, timeline: Timeline) -> JsonObject:
    events: list[JsonValue] = [event.to_dict() for event in timeline.events()]
    summary = report.summary()
    return {
        "kind": DOCUMENT_KIND,
        "schema_version": SCHEMA_VERSION,
        "summary": {
            "verdict": summary.verdict.value,
            "total": summary.total,
            "counts": {verdict.value: count for verdict, count in summary.counts},
            "reasons": list(summary.reasons),
        },
        "report": report.to_dict(),
        "timeline": events,
    }


def from_document(document: JsonValue) -> tuple[RunReport, Timeline]:
    """Read a document written by `to_document`; the summary in it is derived data and is recomputed, not read."""
    root = as_object(document, "document")
    kind = get_str(root, "kind", "document")
    if kind != DOCUMENT_KIND:
        raise JsonFormatError(f"document kind is {kind!r}, not {DOCUMENT_KIND!r}: this is not a kubeha run record")
    version = get_int(root, "schema_version", "document")
    if version != SCHEMA_VERSION:
        raise JsonFormatError(
            f"document schema_version is {version}, this kubeha reads version {SCHEMA_VERSION}: "
            "read it with the kubeha release that wrote it"
        )
    report = RunReport.from_dict(get_object(root, "report", "document"), "document.report")
    events = (
        TimelineEvent.from_dict(as_object(item, f"document.timeline[{index}]"), f"document.timeline[{index}]")
        for index, item in enumerate(get_list(root, "timeline", "document"))
    )
    return report, Timeline(events)


def dumps(report: RunReport, timeline: Timeline) -> str:
    return json.dumps(to_document(report, timeline), indent=INDENT, allow_nan=False, ensure_ascii=False) + "\n"


def loads(text: str) -> tuple[RunReport, Timeline]:
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as error:
        raise JsonFormatError(
            f"run record is not valid JSON ({error.msg} at line {error.lineno}): the file is damaged"
        ) from None
    return from_document(decoded)


def write_document(path: Path, report: RunReport, timeline: Timeline) -> None:
    """Write atomically: a reader never sees a half-written document."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(dumps(report, timeline), encoding="utf-8")
    os.replace(partial, path)


def read_document(path: Path) -> tuple[RunReport, Timeline]:
    return loads(path.read_text(encoding="utf-8"))
