"""Typed JSON accessors: right types pass through, wrong ones fail naming the field."""

from __future__ import annotations

import pytest

from kubeha.core.jsonfields import (
    JsonFormatError,
    JsonObject,
    as_object,
    get_bool,
    get_float,
    get_int,
    get_list,
    get_object,
    get_optional_float,
    get_optional_str,
    get_str,
)

DOC: JsonObject = {
    "s": "text",
    "i": 3,
    "f": 2.5,
    "b": True,
    "l": [1, 2],
    "o": {"k": "v"},
    "n": None,
}


def test_accessors_return_values() -> None:
    assert get_str(DOC, "s", "doc") == "text"
    assert get_int(DOC, "i", "doc") == 3
    assert get_float(DOC, "f", "doc") == 2.5
    assert get_float(DOC, "i", "doc") == 3.0
    assert get_bool(DOC, "b", "doc") is True
    assert get_list(DOC, "l", "doc") == [1, 2]
    assert get_object(DOC, "o", "doc") == {"k": "v"}
    assert get_optional_str(DOC, "n", "doc") is None
    assert get_optional_str(DOC, "missing", "doc") is None
    assert get_optional_float(DOC, "n", "doc") is None


@pytest.mark.parametrize(
    ("getter", "key", "message"),
    [
        (get_str, "i", r"doc\.i must be a string, found int"),
        (get_int, "b", r"doc\.b must be an integer, found bool"),
        (get_int, "f", r"doc\.f must be an integer"),
        (get_float, "b", r"doc\.b must be a number, found bool"),
        (get_bool, "i", r"doc\.i must be true or false"),
        (get_list, "o", r"doc\.o must be a list"),
        (get_object, "l", r"doc\.l must be an object"),
        (get_optional_str, "i", r"doc\.i must be a string or null"),
        (get_str, "missing", r"doc has no field 'missing'"),
    ],
)
def test_wrong_types_name_the_field(getter: object, key: str, message: str) -> None:
    assert callable(getter)
    with pytest.raises(JsonFormatError, match=message):
        getter(DOC, key, "doc")


def test_non_finite_numbers_are_rejected() -> None:
    with pytest.raises(JsonFormatError, match="finite number"):
        get_float({"x": float("inf")}, "x", "doc")


def test_as_object_rejects_lists() -> None:
    with pytest.raises(JsonFormatError, match="root must be an object, found list"):
        as_object([], "root")
