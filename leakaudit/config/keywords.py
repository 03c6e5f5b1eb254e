"""The keyword settings of ``leakaudit.audit()``, checked against the schema: every problem reported at once.

A keyword is a ``[tool.leakaudit]`` key; its value goes through the kind the
schema gives it (the same conversion and range checks as the CLI's flag), a
gate key goes to the gate's table, and a misspelt name is an error with the
closest name. No click: the library's checks are its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leakaudit.config.kinds import BadValue, Function
from leakaudit.config.schema import RUN_LEVEL_INVERSION_KEYS, option_by_key
from leakaudit.errors import ConfigError, UsageError, did_you_mean
from leakaudit.gate.settings import GATE_KEYS

INPUT_FILES = ("baseline", "init", "lpips_weights")  # read by the audit: a missing one is refused before it starts


@dataclass(frozen=True)
class Keywords:
    """Keyword settings sorted out: values by field name, the gate's table and the engine's."""

    values: dict[str, Any]
    gate: dict[str, Any]
    inversion: dict[str, Any]


def keyword_names() -> frozenset[str]:
    """Every keyword ``audit`` takes as a setting: the ``[tool.leakaudit]`` keys a library call can use."""
    keys = {key for key, option in option_by_key().items() if option.meta.not_a_keyword is None}
    return frozenset(keys | GATE_KEYS | {"inversion"})


def _inversion(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError("inversion= must be a dict of InversionConfig fields")
    table = {str(k).replace("-", "_"): v for k, v in value.items()}
    owned = sorted(set(table) & set(RUN_LEVEL_INVERSION_KEYS))
    if owned:
        raise ConfigError("; ".join(f"inversion= {key!r} is set for the whole run: pass "
                                    f"{RUN_LEVEL_INVERSION_KEYS[key]}= instead" for key in owned))
    return table


def _value(key: str, value: Any, problems: list[str]) -> tuple[str, Any]:
    """A keyword's field name and its value through the setting's kind (a problem noted, not raised)."""
    option = option_by_key()[key]
    if value is None:
        return option.name, None
    try:
        converted = option.meta.kind.convert(value)
    except BadValue as exc:
        problems.append(f"{key}={value!r}: {exc}")
        return option.name, None
    if key in INPUT_FILES and isinstance(converted, Path) and not converted.is_file():
        problems.append(f"{key}={str(converted)!r}: file not found")
    return option.name, converted


def check_keywords(settings: Mapping[str, Any], gate: Mapping[str, Any] | None = None,
                   parameters: Iterable[str] = ()) -> Keywords:
    """Sort and convert keyword settings; ``parameters``: the caller's own names, offered in suggestions.

    Raises one ``UsageError`` naming every unknown or bad keyword, or a
    ``ConfigError`` for the ``gate=`` / ``inversion=`` tables' shapes.
    """
    if gate is not None and not isinstance(gate, Mapping):
        raise ConfigError("gate= must be a dict of thresholds (the [tool.leakaudit.gate] keys)")
    known = keyword_names()
    problems: list[str] = []
    values: dict[str, Any] = {}
    gate_table = dict(gate or {})
    inversion: dict[str, Any] = {}
    for key, value in settings.items():
        option = option_by_key().get(key)
        if key == "inversion":
            inversion = _inversion(value)
        elif key in GATE_KEYS:
            if key in (gate or {}):
                problems.append(f"{key} is given both as a keyword and in gate=; give it once")
            gate_table[key] = value
        elif option is not None and option.meta.not_a_keyword is not None:
            problems.append(f"{key!r} is not a setting of audit(): {option.meta.not_a_keyword}")
        elif key == "recipe" and isinstance(value, Mapping):  # the recipe's table itself (a file is a path)
            values["recipe"] = dict(value)
        elif option is not None and isinstance(option.meta.kind, Function):  # checked once, by build_settings
            values[option.name] = value
        elif key in known:
            name, converted = _value(key, value, problems)
            values[name] = converted
        else:
            problems.append(f"unknown setting {key!r}{did_you_mean(key, known | set(parameters))}; settings are "
                            "the [tool.leakaudit] keys (see `leakaudit run --help`)")
    if problems:
        raise UsageError("; ".join(problems))
    return Keywords(values, gate_table, inversion)
