"""The gate's settings: thresholds and ignore entries, their keys, and the one place they are validated.

``[tool.leakaudit.gate]`` keys are the fields of ``GateSettings``; every
problem in a table is reported at once, and a misspelt key is an error, never
a silent default. The rules behind the defaults are in ``docs/gate.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any

from leakaudit.errors import ConfigError, did_you_mean
from leakaudit.record.gate import Thresholds

DIRECTIONS = {
    "ssim": "higher is more similar",
    "lpips": "lower is more similar",
    "leak_score": "higher means members are matched better than non-members",
    "membership_auc": "higher means the model's loss tells members from non-members",
}

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


DEFAULTS = Thresholds()  # the gate's default thresholds


@dataclass(frozen=True)
class IgnoreEntry:
    """A finding accepted by a reviewer, until ``expires`` (inclusive)."""

    fingerprint: str
    reason: str
    expires: date


@dataclass(frozen=True)
class GateSettings:
    """Thresholds and exceptions of the gate; ``None`` disables a threshold.

    ``sources`` names where each value the user set came from (a flag, or a
    file's key), for messages; a key absent there is a default.
    """

    # the defaults are the record's (one place, docs/gate.md says why each)
    fail_ssim: float | None = DEFAULTS.fail_ssim
    warn_ssim: float | None = DEFAULTS.warn_ssim
    fail_lpips: float | None = DEFAULTS.fail_lpips
    fail_leak_score: float | None = DEFAULTS.fail_leak_score
    warn_membership_auc: float | None = DEFAULTS.warn_membership_auc
    fail_membership_auc: float | None = DEFAULTS.fail_membership_auc
    fail_membership_tpr: float | None = DEFAULTS.fail_membership_tpr  # × the FPR: the strongest attack's TPR
    holdout_quantile: float = DEFAULTS.holdout_quantile
    require_power: bool = False  # a pass whose attack showed no power on a planted copy is incomplete
    ignore: tuple[IgnoreEntry, ...] = ()
    baseline_path: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problems = threshold_problems({key: getattr(self, key) for key in THRESHOLD_KEYS}, self.sources)
        if problems:  # the one place thresholds are validated, however the settings were made
            raise ConfigError("gate settings: " + "; ".join(problems))

    def thresholds(self) -> dict[str, Any]:
        """The ``thresholds`` object of the findings document."""
        return {**{key: getattr(self, key) for key in THRESHOLD_KEYS}, "require_power": self.require_power,
                "directions": dict(DIRECTIONS)}


THRESHOLD_KEYS = tuple(f.name for f in fields(GateSettings)
                       if f.name not in ("ignore", "baseline_path", "sources", "require_power"))
GATE_KEYS = frozenset({*THRESHOLD_KEYS, "ignore", "require_power"})  # the keys of [tool.leakaudit.gate]


def threshold_problems(values: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> list[str]:
    """Every inconsistency among the thresholds (empty when valid), naming where each value came from."""
    where = dict(sources or {})
    fail_ssim, warn_ssim, fail_lpips = values["fail_ssim"], values["warn_ssim"], values["fail_lpips"]
    fail_leak_score, holdout_quantile = values["fail_leak_score"], values["holdout_quantile"]
    warn_membership_auc, fail_membership_auc = values["warn_membership_auc"], values["fail_membership_auc"]

    def name(key: str) -> str:
        return where.get(key, f"{key} (default)")

    problems: list[str] = []
    for key, value in (("fail_ssim", fail_ssim), ("warn_ssim", warn_ssim), ("fail_lpips", fail_lpips)):
        if value is not None and not (0.0 < value <= 1.0):
            problems.append(f"{name(key)} must be in (0, 1], got {value}")
    for key, value in (("fail_leak_score", fail_leak_score), ("warn_membership_auc", warn_membership_auc),
                       ("fail_membership_auc", fail_membership_auc)):
        if value is not None and not (0.5 < value <= 1.0):
            problems.append(f"{name(key)} must be in (0.5, 1], got {value}")
    tpr = values.get("fail_membership_tpr")
    if tpr is not None and not tpr > 1.0:
        problems.append(f"{name('fail_membership_tpr')} must be above 1 (a multiple of the FPR), got {tpr}")
    if not (0.5 <= holdout_quantile < 1.0):
        problems.append(f"{name('holdout_quantile')} must be in [0.5, 1), got {holdout_quantile}")
    if fail_ssim is not None and warn_ssim is not None and warn_ssim > fail_ssim:
        problems.append(f"{name('warn_ssim')} = {warn_ssim} must not exceed {name('fail_ssim')} = {fail_ssim}")
    if (
        warn_membership_auc is not None
        and fail_membership_auc is not None
        and warn_membership_auc > fail_membership_auc
    ):
        problems.append(f"{name('warn_membership_auc')} = {warn_membership_auc} must not exceed "
                        f"{name('fail_membership_auc')} = {fail_membership_auc}")
    return problems


def _threshold(mapping: Mapping[str, Any], key: str, default: float | None, problems: list[str],
               where: str) -> float | None:
    if key not in mapping:
        return default
    value = mapping[key]
    if value is False or value is None:  # TOML has no null: `false` switches a threshold off
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(f"{where} must be a number or false, got {value!r}")
        return default
    return float(value)


def _ignore_entries(raw: Any, problems: list[str]) -> tuple[IgnoreEntry, ...]:
    if not isinstance(raw, list):
        problems.append("ignore must be a list of tables {fingerprint=, reason=, expires=}")
        return ()
    entries: list[IgnoreEntry] = []
    for i, item in enumerate(raw):
        where = f"ignore[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where} must be a table with fingerprint, reason and expires")
            continue
        unknown = sorted(set(item) - {"fingerprint", "reason", "expires"})
        if unknown:
            problems.append(f"{where} has unknown keys: {', '.join(unknown)}")
        fp, reason, expires = item.get("fingerprint"), item.get("reason"), item.get("expires")
        ok = True
        if not isinstance(fp, str) or not _FINGERPRINT.match(fp):
            problems.append(f"{where}.fingerprint must be a 64-character lowercase sha256 hex string")
            ok = False
        if not isinstance(reason, str) or not reason.strip():
            problems.append(f"{where}.reason must be a non-empty string (why the finding is accepted)")
            ok = False
        if isinstance(expires, str):
            try:
                expires = date.fromisoformat(expires)
            except ValueError:
                problems.append(f"{where}.expires must be a date YYYY-MM-DD, got {expires!r}")
                ok = False
        elif not isinstance(expires, date):
            problems.append(f"{where}.expires is required: a date YYYY-MM-DD (ignores must expire)")
            ok = False
        if ok and isinstance(fp, str) and isinstance(reason, str) and isinstance(expires, date):
            entries.append(IgnoreEntry(fp, reason.strip(), expires))
    return tuple(entries)


def gate_settings_from_mapping(mapping: Mapping[str, Any], baseline_path: str | None = None,
                               sources: Mapping[str, str] | None = None) -> GateSettings:
    """Build settings from a ``[tool.leakaudit.gate]`` table (and flags), reporting every problem at once.

    Unknown keys are errors: in a CI gate a misspelt threshold must not be
    silently replaced by its default. ``fail_ssim`` set without ``warn_ssim``
    lowers the warning level with it: warn = min(default, fail).
    """
    defaults = GateSettings()
    where = {key: value for key, value in (sources or {}).items() if key in mapping}
    for key in mapping:
        where.setdefault(key, f"[tool.leakaudit.gate] {key}")
    problems: list[str] = []
    for key in sorted(set(mapping) - GATE_KEYS):
        problems.append(f"unknown key {key!r}{did_you_mean(key, GATE_KEYS)}")
    values: dict[str, Any] = {}
    for key in THRESHOLD_KEYS:
        values[key] = _threshold(mapping, key, getattr(defaults, key), problems, where.get(key, key))
    if "fail_ssim" in mapping and "warn_ssim" not in mapping and values["fail_ssim"] is not None:
        values["warn_ssim"] = min(defaults.warn_ssim or 1.0, values["fail_ssim"])
    if "fail_membership_auc" in mapping and "warn_membership_auc" not in mapping and values["fail_membership_auc"]:
        values["warn_membership_auc"] = min(defaults.warn_membership_auc or 1.0, values["fail_membership_auc"])
    if values["holdout_quantile"] is None:
        problems.append(f"{where.get('holdout_quantile', 'holdout_quantile')} cannot be switched off")
        values["holdout_quantile"] = defaults.holdout_quantile
    ignore = _ignore_entries(mapping.get("ignore", []), problems)
    require_power = mapping.get("require_power", defaults.require_power)
    if not isinstance(require_power, bool):
        problems.append(f"{where.get('require_power', 'require_power')} must be true or false, got {require_power!r}")
        require_power = defaults.require_power
    if problems:  # parse problems and range problems together; otherwise GateSettings checks the ranges
        problems.extend(threshold_problems(values, where))
        raise ConfigError("gate settings: " + "; ".join(problems))
    return GateSettings(**values, require_power=require_power, ignore=ignore, baseline_path=baseline_path,
                        sources=where)
