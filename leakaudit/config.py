"""Audit settings: one frozen dataclass, and the TOML files that feed it.

Settings come from ``[tool.leakaudit]`` in ``./pyproject.toml`` or from a
``--config FILE`` (the same table, or the keys at the top level of a
standalone file). The CLI feeds the file's values into click's ``default_map``
so that a flag overrides the file through the one code path click already
has; unknown keys are returned as warnings, never silently dropped.
``unsafe_pickle`` is refused in a file: a repository must not be able to make
its model's code run; only the command line can.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leakaudit.errors import ConfigError

# Keys of [tool.leakaudit] (and of its [gate] sub-table) that map to `run` options.
RUN_KEYS = frozenset(
    {
        "data", "holdout", "arch", "input_size", "mean", "std", "out", "seed", "budget",
        "quiet", "format", "junit", "markdown", "baseline", "redact", "images", "top", "lpips_net",
        "lpips_weights", "prior", "conditioning", "candidates_per_class", "device", "strict_data", "max_image_mb",
        "effort", "allow_foreign_baseline", "init",
    }
)
THRESHOLD_KEYS = ("fail_ssim", "warn_ssim", "fail_lpips", "fail_leak_score", "warn_membership_auc",
                  "fail_membership_auc", "holdout_quantile")
GATE_KEYS = frozenset({*THRESHOLD_KEYS, "ignore"})
EFFORTS = ("quick", "standard", "thorough")  # see leakaudit.inversion.config.EFFORT_LEVELS
DEFAULT_BUDGET_S = 900.0  # a ceiling: the reference audits at the default effort finish far inside it (README)


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known key, or ''."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class AuditSettings:
    """Everything one audit needs to know, after the file and the flags are merged."""

    model: Path
    data: Path
    holdout: Path | None = None
    arch: str | None = None
    unsafe_pickle: bool = False
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    out: Path = Path("leakaudit-out")
    seed: int = 0
    effort: str = "standard"  # "quick" | "standard" | "thorough": fixes the attack's planned work
    budget: float | None = DEFAULT_BUDGET_S  # ceiling: an attack it cuts short is incomplete, never a pass
    threads: int | None = None  # torch CPU threads (None: the CPUs this process may use)
    prior: str = "auto"  # "auto" (holdout when given) | "holdout" | "none"
    conditioning: str = "both"
    candidates_per_class: int | None = None  # None: the inversion's default
    init: Path | None = None  # the classifier's weights before training: the init-aware mode
    top: int = 25
    lpips_net: str = "alex"
    lpips_weights: Path | None = None
    strict_data: bool = False
    max_image_bytes: int = 64 << 20  # image files over this are skipped before being opened
    device: str | None = None
    redact: str = "none"
    images: bool = True
    junit: Path | None = None
    markdown: Path | None = None
    baseline: Path | None = None
    allow_foreign_baseline: bool = False  # a baseline made for another model or other data is meant
    gate: dict[str, Any] = field(default_factory=dict)  # [tool.leakaudit.gate], read by leakaudit.gate
    gate_sources: dict[str, str] = field(default_factory=dict)  # gate key → the flag or file it came from
    inversion: dict[str, Any] = field(default_factory=dict)  # [tool.leakaudit.inversion]: InversionConfig fields
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileConfig:
    """What a configuration file said, flattened for click's ``default_map``."""

    source: Path | None
    defaults: dict[str, Any]
    gate: dict[str, Any]
    warnings: tuple[str, ...]
    inversion: dict[str, Any] = field(default_factory=dict)

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


def read_config(explicit: Path | None, cwd: Path | None = None) -> FileConfig:
    """Read ``--config FILE`` if given, else ``./pyproject.toml``'s ``[tool.leakaudit]``.

    Keys may use dashes or underscores (``fail-ssim`` = ``fail_ssim``).
    Relative paths in the file are taken relative to the file's folder.
    """
    if explicit is not None:
        doc = _read_toml(explicit)
        tool = doc.get("tool")
        nested = isinstance(tool, dict) and "leakaudit" in tool
        table = tool["leakaudit"] if nested else doc  # type: ignore[index]
        source = explicit
    else:
        candidate = (cwd or Path.cwd()) / "pyproject.toml"
        if not candidate.is_file():
            return FileConfig(None, {}, {}, ())
        tool = _read_toml(candidate).get("tool", {})
        if not isinstance(tool, dict):
            raise ConfigError(f"{candidate}: [tool] must be a table")
        table = tool.get("leakaudit", {})
        source = candidate
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [tool.leakaudit] must be a table")
    warnings: list[str] = []
    defaults: dict[str, Any] = {}
    gate: dict[str, Any] = {}
    inversion: dict[str, Any] = {}
    base = source.parent
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if key == "gate" and isinstance(value, dict):
            for raw_gate_key, gate_value in value.items():
                gate_key = raw_gate_key.replace("-", "_")
                if gate_key in GATE_KEYS:
                    gate[gate_key] = gate_value
                else:  # a misspelt threshold must never fall back to its default silently
                    raise ConfigError(f"{source}: unknown key [tool.leakaudit.gate] {raw_gate_key!r}"
                                      f"{did_you_mean(gate_key, GATE_KEYS)}; known: {', '.join(sorted(GATE_KEYS))}")
        elif key == "inversion" and isinstance(value, dict):
            inversion = {k.replace("-", "_"): v for k, v in value.items()}  # checked by InversionConfig
        elif key in GATE_KEYS:
            gate[key] = value
        elif key == "unsafe_pickle":
            raise ConfigError(
                f"{source}: 'unsafe_pickle' cannot be set in a configuration file: it lets the model file run code, "
                "so only --unsafe-pickle on the command line turns it on"
            )
        elif key in RUN_KEYS:
            if key in ("data", "holdout", "out", "junit", "markdown", "baseline", "lpips_weights", "init") and isinstance(value, str):
                value = str((base / value)) if not Path(value).is_absolute() else value
            defaults["output_format" if key == "format" else key] = value
        elif key == "reference":
            continue  # audit definitions in audits/ carry a [reference] table for the builder
        else:
            warnings.append(f"{source}: unknown key {raw_key!r} ignored")
    for key in THRESHOLD_KEYS:
        if key in gate and gate[key] is not False:  # `false` (off) stays here: click would read it as 0.0
            defaults[key] = gate.pop(key)
    return FileConfig(source, defaults, gate, tuple(warnings), inversion)
