"""Typed reading of JSON documents produced by ``json.loads``.

Every core type that is written to disk (reports, timelines, coordinator state) serialises to plain JSON values and
reads them back through these accessors, so a malformed or hand-edited file fails with a message naming the field,
what it should hold and what it holds instead.
"""

from __future__ import annotations

import math
from typing import TypeAlias

__all__ = [
    "JsonFormatError",
    "JsonObject",
    "JsonValue",
    "as_object",
    "get_bool",
    "get_float",
    "get_int",
    "get_list",
    "get_object",
    "get_optional_float",
    "get_optional_str",
    "get_str",
]

JsonValue: TypeAlias = "None | bool | int | float | str | list[JsonValue] | dict[str, JsonValue]"
JsonObject: TypeAlias = "dict[str, JsonValue]"


class JsonFormatError(ValueError):
    """A JSON document does not have the shape a kubeha reader expects."""


def _type_name(value: JsonValue) -> str:
    return "null" if value is None else type(value).__name__


def _fail(where: str, expected: str, value: JsonValue) -> JsonFormatError:
    return JsonFormatError(
        f"{where} must be {expected}, found {_type_name(value)} {value!r:.80}: "
        "the file was not written by this version of kubeha or was edited by hand; regenerate it"
    )


def as_object(value: JsonValue, where: str) -> JsonObject:
    """`value` as a JSON object, or a `JsonFormatError` naming `where`."""
    if not isinstance(value, dict):
        raise _fail(where, "an object", value)
    return value


def _field(obj: JsonObject, key: str, where: str) -> JsonValue:
    if key not in obj:
        raise JsonFormatError(
            f"{where} has no field {key!r} (fields present: {sorted(obj)}): "
            "the file was not written by this version of kubeha or was truncated; regenerate it"
        )
    return obj[key]


def get_str(obj: JsonObject, key: str, where: str) -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str):
        raise _fail(f"{where}.{key}", "a string", value)
    return value


def get_optional_str(obj: JsonObject, key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(f"{where}.{key}", "a string or null", value)
    return value


def get_bool(obj: JsonObject, key: str, where: str) -> bool:
    value = _field(obj, key, where)
    if not isinstance(value, bool):
        raise _fail(f"{where}.{key}", "true or false", value)
    return value


def get_int(obj: JsonObject, key: str, where: str) -> int:
    value = _field(obj, key, where)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{where}.{key}", "an integer", value)
    return value


def _to_float(value: JsonValue, where: str, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, expected, value)
    result = float(value)
    if not math.isfinite(result):
        raise _fail(where, "a finite number", value)
    return result


def get_float(obj: JsonObject, key: str, where: str) -> float:
    return _to_float(_field(obj, key, where), f"{where}.{key}", "a number")


def get_optional_float(obj: JsonObject, key: str, where: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    return _to_float(value, f"{where}.{key}", "a number or null")


def get_list(obj: JsonObject, key: str, where: str) -> list[JsonValue]:
    value = _field(obj, key, where)
    if not isinstance(value, list):
        raise _fail(f"{where}.{key}", "a list", value)
    return value


def get_object(obj: JsonObject, key: str, where: str) -> JsonObject:
    return as_object(_field(obj, key, where), f"{where}.{key}")
