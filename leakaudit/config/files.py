"""The TOML files that feed the settings: ``[tool.leakaudit]`` and ``--config FILE``.

Settings come from ``[tool.leakaudit]`` in ``./pyproject.toml`` or from a
``--config FILE`` (the same table, or the keys at the top level of a
standalone file). The keys are not listed here: they are the options of the
settings schema (``leakaudit.config.schema``), named like their flags, and the
gate's keys come from the gate. The CLI feeds the run values into click's
``default_map`` so that a flag overrides the file through the one code path
click already has; unknown keys are returned as warnings, never silently
dropped. ``unsafe_pickle`` is refused in a file: a repository must not be able
to make its model's code run; only the command line can.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leakaudit.config.kinds import PathKind
from leakaudit.config.schema import RUN_LEVEL_INVERSION_KEYS, options
from leakaudit.errors import ConfigError, did_you_mean
from leakaudit.gate.settings import GATE_KEYS


@dataclass(frozen=True)
class FileKey:
    """How one ``[tool.leakaudit]`` key feeds ``run``: the click parameter it sets, and whether it is a path."""

    param: str
    is_path: bool = False


def file_keys() -> dict[str, FileKey]:
    """The ``[tool.leakaudit]`` keys that set ``run`` options: every option a file may set, but the gate's."""
    return {option.key: FileKey(option.name, isinstance(option.meta.kind, PathKind))
            for option in options() if option.meta.in_file and not option.to_gate}


@dataclass(frozen=True)
class FileConfig:
    """What a configuration file said: run values for click's ``default_map``, the gate and engine tables."""

    source: Path | None
    defaults: dict[str, Any]  # click parameter name → value
    gate: dict[str, Any]
    warnings: tuple[str, ...]
    inversion: dict[str, Any] = field(default_factory=dict)
    read_keys: frozenset[str] = frozenset()  # the file's keys (normalised) that were taken
    recipe: dict[str, Any] | None = None  # [tool.leakaudit.recipe]: the training recipe's table

    def where(self, key: str) -> str:
        """How a message names a gate value that came from this file."""
        return f"{self.source} [tool.leakaudit.gate] {key}" if self.source else key


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _find_table(explicit: Path | None, cwd: Path | None) -> tuple[Path | None, dict[str, Any]]:
    """The ``[tool.leakaudit]`` table (or a standalone file's top level) and the file it came from."""
    if explicit is not None:
        doc = _read_toml(explicit)
        tool = doc.get("tool")
        table = tool["leakaudit"] if isinstance(tool, dict) and "leakaudit" in tool else doc
        source = explicit
    else:
        candidate = (cwd or Path.cwd()) / "pyproject.toml"
        if not candidate.is_file():
            return None, {}
        tool = _read_toml(candidate).get("tool", {})
        if not isinstance(tool, dict):
            raise ConfigError(f"{candidate}: [tool] must be a table")
        table = tool.get("leakaudit", {})
        source = candidate
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [tool.leakaudit] must be a table")
    return source, table


def _gate_table(source: Path, value: dict[str, Any]) -> dict[str, Any]:
    gate: dict[str, Any] = {}
    for raw_key, gate_value in value.items():
        key = raw_key.replace("-", "_")
        if key not in GATE_KEYS:  # a misspelt threshold must never fall back to its default silently
            raise ConfigError(f"{source}: unknown key [tool.leakaudit.gate] {raw_key!r}"
                              f"{did_you_mean(key, GATE_KEYS)}; known: {', '.join(sorted(GATE_KEYS))}")
        gate[key] = gate_value
    return gate


def _inversion_table(source: Path, value: dict[str, Any]) -> dict[str, Any]:
    """The engine's table; values the run level owns are refused here, never silently replaced later."""
    inversion = {k.replace("-", "_"): v for k, v in value.items()}  # the other keys are checked by InversionConfig
    owned = sorted(set(inversion) & set(RUN_LEVEL_INVERSION_KEYS))
    if owned:
        raise ConfigError(f"{source}: " + "; ".join(
            f"[tool.leakaudit.inversion] {key} is set for the whole run: use --{RUN_LEVEL_INVERSION_KEYS[key]} "
            f"or [tool.leakaudit] {RUN_LEVEL_INVERSION_KEYS[key]}" for key in owned))
    return inversion


def read_config(explicit: Path | None, cwd: Path | None = None, *,
                run_keys: Mapping[str, FileKey] | None = None) -> FileConfig:
    """Read ``--config FILE`` if given, else ``./pyproject.toml``'s ``[tool.leakaudit]``.

    ``run_keys``: the keys that set ``run`` options (default: ``file_keys()``);
    any other key that is no gate key is warned about, with the closest key. Keys may
    use dashes or underscores (``fail-ssim`` = ``fail_ssim``). Relative paths
    in the file are taken relative to the file's folder.
    """
    source, table = _find_table(explicit, cwd)
    if source is None:
        return FileConfig(None, {}, {}, ())
    known = dict(file_keys() if run_keys is None else run_keys)
    warnings: list[str] = []
    defaults: dict[str, Any] = {}
    gate: dict[str, Any] = {}
    inversion: dict[str, Any] = {}
    recipe: dict[str, Any] | None = None
    taken: set[str] = set()
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        taken.add(key)
        if key == "gate" and isinstance(value, dict):
            gate.update(_gate_table(source, value))
        elif key == "inversion" and isinstance(value, dict):
            inversion = _inversion_table(source, value)
        elif key == "recipe" and isinstance(value, dict):
            recipe = dict(value)
        elif key in GATE_KEYS:
            gate[key] = value
        elif key == "unsafe_pickle":
            raise ConfigError(
                f"{source}: 'unsafe_pickle' cannot be set in a configuration file: it lets the model file run code, "
                "so only --unsafe-pickle on the command line turns it on"
            )
        elif key in known:
            if known[key].is_path and isinstance(value, str) and not Path(value).is_absolute():
                value = str(source.parent / value)
            defaults[known[key].param] = value
        elif key != "reference":  # audit definitions in audits/ carry a [reference] table for the builder
            taken.discard(key)
            suggestion = did_you_mean(key, set(known) | GATE_KEYS | {"gate", "inversion"})
            warnings.append(f"{source}: unknown key {raw_key!r} ignored{suggestion}")
    return FileConfig(source, defaults, gate, tuple(warnings), inversion, frozenset(taken), recipe)
