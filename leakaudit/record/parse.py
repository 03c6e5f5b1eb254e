"""Reading one field of a document object, checked: a wrong or missing field is an ``OutputError`` naming it.

Numbers are kept as the document holds them (an integer stays an integer), so
a record dumps back to the same JSON text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from leakaudit.errors import OutputError

JsonObject = Mapping[str, Any]


def _bad(key: str, wanted: str, value: Any) -> OutputError:
    return OutputError(f"findings document: {key!r} should be {wanted}, not {type(value).__name__}")


def field(d: Mapping[str, Any], key: str) -> Any:
    if key not in d:
        raise OutputError(f"findings document: {key!r} is missing")
    return d[key]


def number(d: Mapping[str, Any], key: str) -> float:
    value = field(d, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(key, "a number", value)
    return value


def optional_number(d: Mapping[str, Any], key: str) -> float | None:
    return None if d.get(key) is None else number(d, key)


def integer(d: Mapping[str, Any], key: str) -> int:
    value = field(d, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, "an integer", value)
    return value


def optional_integer(d: Mapping[str, Any], key: str) -> int | None:
    return None if d.get(key) is None else integer(d, key)


def text(d: Mapping[str, Any], key: str) -> str:
    value = field(d, key)
    if not isinstance(value, str):
        raise _bad(key, "a string", value)
    return value


def optional_text(d: Mapping[str, Any], key: str) -> str | None:
    return None if d.get(key) is None else text(d, key)


def flag(d: Mapping[str, Any], key: str) -> bool:
    value = field(d, key)
    if not isinstance(value, bool):
        raise _bad(key, "true or false", value)
    return value


def optional_flag(d: Mapping[str, Any], key: str) -> bool | None:
    return None if d.get(key) is None else flag(d, key)


def obj(d: Mapping[str, Any], key: str) -> JsonObject:
    value = field(d, key)
    if not isinstance(value, Mapping):
        raise _bad(key, "an object", value)
    return value


def optional_obj(d: Mapping[str, Any], key: str) -> JsonObject | None:
    return None if d.get(key) is None else obj(d, key)


def items(d: Mapping[str, Any], key: str) -> Sequence[Any]:
    """A list field; absent or null reads as empty (older documents left some out)."""
    value = d.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad(key, "a list", value)
    return value


def frozen(value: Any) -> Any:
    """A read-only deep copy of a JSON value: objects become mapping proxies, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(frozen(v) for v in value)
    return value


def thawed(value: Any) -> Any:
    """The JSON value back from ``frozen``: plain dicts and lists, in the same order."""
    if isinstance(value, Mapping):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thawed(v) for v in value]
    return value


def rest(d: Mapping[str, Any], known: tuple[str, ...]) -> JsonObject:
    """The keys of ``d`` a record does not model, read-only and in their order: written back as they came."""
    kept: JsonObject = frozen({k: v for k, v in d.items() if k not in known})
    return kept
