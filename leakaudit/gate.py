"""The CI gate: thresholds → per-condition status → verdict → exit code, in one place.

Directions. SSIM: higher means more similar, so a *higher* best-match SSIM is
leakier. LPIPS: lower means more similar, so a *lower* LPIPS is leakier. Leak
score: higher means training members are matched better than non-members
(0.5 = no difference).

Default thresholds and why
--------------------------
``warn_ssim = 0.45``
    The reconstruction literature (Haim et al. 2022, Buzaglo et al. 2023) calls
    a match above about 0.4 recognisable; 0.45 keeps a small margin above that
    so a warning means "a person would recognise this image".
``fail_ssim = 0.70``
    Above the SSIM at which the *class-mean* image matches a training digit
    (≈ 0.62 on upsampled digits), so a reconstruction that is merely the class
    prototype does not fail; below the SSIM of a *real other digit of the same
    class* (≈ 0.82), so a reconstruction as close as a sibling photo does.
``fail_lpips = None``
    Off by default: LPIPS needs backbone weights that are often unavailable
    offline, and its scale has no agreed "recognisable" level. Set it when
    LPIPS is available and you have calibrated it on your data.
``fail_leak_score = 0.70`` (requires p < 0.01)
    A plain loss-threshold membership test reaches only 0.57–0.60 on a
    well-generalising model, and a model that saw one or two images per class
    scores 0.68–0.90. The p-value requirement keeps a high but noisy score from
    a handful of members from failing the build: such a score warns instead.
``holdout_quantile = 0.99``
    With a holdout (non-members from the same distribution) a training sample
    counts against the SSIM/LPIPS thresholds only if its SSIM also exceeds this
    quantile of the holdout's best-match SSIMs. That separates "the model leaked
    this image" from "the model draws good prototypes of this class", which an
    absolute SSIM cannot do (prototypes already reach 0.6–0.8).

Chance exceedances
------------------
Even a model that leaks nothing has about ``1 - holdout_quantile`` of its
training samples above the holdout quantile, by chance: 13 of 1,300 at 0.99. A
large, well-regularised training set would therefore always fail. So, when
calibrated, the SSIM and LPIPS conditions fail only when the number of training
samples above the holdout quantile is improbable under "members are matched
like non-members": a binomial tail probability below ``CHANCE_ALPHA`` with
per-sample rate ``max(1 - q, 1 / (n_holdout + 1))`` (the second term because a
small holdout pins its upper quantile to its maximum). Otherwise the samples
are still shown, as warnings. Only the top-K findings reach the gate; when all
of them exceed, the count is a lower bound, which only makes the test stricter.

Without a holdout the absolute thresholds apply, and the condition message
says the result is uncalibrated.

Baseline
--------
With a previous audit's document, a finding is ``new`` (its fingerprint was not
among the previous findings), ``worse`` (its SSIM rose by more than
``WORSE_MARGIN`` = 0.02, about the run-to-run noise of a seeded inversion) or
``persisting``. Only new or worse findings can fail the gate; a persisting
fail-level finding is reported as a warning. The leak score likewise fails only
when it newly crosses its threshold or rises above the previous interval.
``fixed`` lists fingerprints flagged (warn or fail) before and not any more.

Ignore entries
--------------
An entry suppresses one fingerprint until and including its ``expires`` date;
afterwards the finding counts again, and the entry is listed with
``expired: true`` and a note saying so.

Exit code: 1 (``ExitStatus.GATE_FAILED``) only when a condition fails; warnings
exit 0.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from leakaudit.errors import ConfigError, UsageError
from leakaudit.exit_codes import ExitStatus

Status = Literal["pass", "warn", "fail", "skipped"]
FindingStatus = Literal["fail", "warn", "ok", "ignored"]
BaselineStatus = Literal["new", "persisting", "worse"]
Level = Literal["fail", "warn", "ok"]  # a finding's level for one metric, before ignores

LEAK_SCORE_ALPHA = 0.01  # the leak score's p-value must be below this to fail
CHANCE_ALPHA = 0.01  # exceedances of the holdout quantile must be this improbable to fail
WORSE_MARGIN = 0.02  # SSIM rise that makes a persisting finding "worse"

DIRECTIONS = {
    "ssim": "higher is more similar",
    "lpips": "lower is more similar",
    "leak_score": "higher means members are matched better than non-members",
}

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_KNOWN_KEYS = ("fail_ssim", "warn_ssim", "fail_lpips", "fail_leak_score", "holdout_quantile", "ignore")


@dataclass(frozen=True)
class IgnoreEntry:
    """A finding accepted by a reviewer, until ``expires`` (inclusive)."""

    fingerprint: str
    reason: str
    expires: date


@dataclass(frozen=True)
class GateSettings:
    """Thresholds and exceptions of the gate; ``None`` disables a threshold."""

    fail_ssim: float | None = 0.70
    warn_ssim: float | None = 0.45
    fail_lpips: float | None = None
    fail_leak_score: float | None = 0.70
    holdout_quantile: float = 0.99
    ignore: tuple[IgnoreEntry, ...] = ()
    baseline_path: str | None = None

    def __post_init__(self) -> None:
        problems = threshold_problems(
            self.fail_ssim, self.warn_ssim, self.fail_lpips, self.fail_leak_score, self.holdout_quantile
        )
        if problems:
            raise ConfigError("invalid gate settings: " + "; ".join(problems))

    def thresholds(self) -> dict[str, Any]:
        """The ``thresholds`` object of the findings document."""
        return {
            "fail_ssim": self.fail_ssim,
            "warn_ssim": self.warn_ssim,
            "fail_lpips": self.fail_lpips,
            "fail_leak_score": self.fail_leak_score,
            "holdout_quantile": self.holdout_quantile,
            "directions": dict(DIRECTIONS),
        }


def threshold_problems(
    fail_ssim: float | None,
    warn_ssim: float | None,
    fail_lpips: float | None,
    fail_leak_score: float | None,
    holdout_quantile: float,
) -> list[str]:
    """Every inconsistency among the thresholds (empty when valid)."""
    problems: list[str] = []
    for name, value in (("fail_ssim", fail_ssim), ("warn_ssim", warn_ssim), ("fail_lpips", fail_lpips)):
        if value is not None and not (0.0 < value <= 1.0):
            problems.append(f"{name} must be in (0, 1], got {value}")
    if fail_leak_score is not None and not (0.5 < fail_leak_score <= 1.0):
        problems.append(f"fail_leak_score must be in (0.5, 1], got {fail_leak_score}")
    if not (0.5 <= holdout_quantile < 1.0):
        problems.append(f"holdout_quantile must be in [0.5, 1), got {holdout_quantile}")
    if fail_ssim is not None and warn_ssim is not None and warn_ssim > fail_ssim:
        problems.append(f"warn_ssim ({warn_ssim}) must not exceed fail_ssim ({fail_ssim})")
    return problems


# --------------------------------------------------------------------------- config


def _threshold(mapping: Mapping[str, Any], key: str, default: float | None, problems: list[str]) -> float | None:
    if key not in mapping:
        return default
    value = mapping[key]
    if value is False or value is None:  # TOML has no null: `false` switches a threshold off
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(f"{key} must be a number or false, got {value!r}")
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
        if ok:
            entries.append(IgnoreEntry(fp, reason.strip(), expires))
    return tuple(entries)


def gate_settings_from_mapping(mapping: Mapping[str, Any], baseline_path: str | None = None) -> GateSettings:
    """Build settings from a ``[tool.leakaudit.gate]`` table, reporting every problem at once.

    Unknown keys are errors: in a CI gate a misspelt threshold must not be
    silently replaced by its default.
    """
    defaults = GateSettings()
    problems: list[str] = []
    unknown = sorted(set(mapping) - set(_KNOWN_KEYS))
    if unknown:
        problems.append(f"unknown keys: {', '.join(unknown)} (known: {', '.join(_KNOWN_KEYS)})")
    values: dict[str, Any] = {}
    for key in ("fail_ssim", "warn_ssim", "fail_lpips", "fail_leak_score"):
        values[key] = _threshold(mapping, key, getattr(defaults, key), problems)
    quantile = _threshold(mapping, "holdout_quantile", defaults.holdout_quantile, problems)
    if quantile is None:
        problems.append("holdout_quantile cannot be switched off")
        quantile = defaults.holdout_quantile
    ignore = _ignore_entries(mapping.get("ignore", []), problems)
    problems.extend(threshold_problems(holdout_quantile=quantile, **values))
    if problems:
        raise ConfigError("[tool.leakaudit.gate]: " + "; ".join(problems))
    return GateSettings(**values, holdout_quantile=quantile, ignore=ignore, baseline_path=baseline_path)


# --------------------------------------------------------------------------- outcome


@dataclass(frozen=True)
class Condition:
    """One gate condition: what was compared, and how it came out."""

    name: str
    status: Status
    threshold: float | None
    observed: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "threshold": self.threshold,
            "observed": self.observed,
            "message": self.message,
        }


@dataclass(frozen=True)
class FindingOutcome:
    """The gate's view of one finding, in the findings' order."""

    fingerprint: str
    status: FindingStatus
    baseline_status: BaselineStatus | None


@dataclass(frozen=True)
class BaselineSummary:
    """Flagged findings compared with a previous audit."""

    path: str
    new: int
    persisting: int
    worse: int
    fixed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "new": self.new,
            "persisting": self.persisting,
            "worse": self.worse,
            "fixed": list(self.fixed),
        }


@dataclass(frozen=True)
class IgnoredOutcome:
    """An ignore entry and whether it still applies."""

    entry: IgnoreEntry
    expired: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.entry.fingerprint,
            "reason": self.entry.reason,
            "expires": self.entry.expires.isoformat(),
            "expired": self.expired,
        }


@dataclass(frozen=True)
class GateOutcome:
    """Everything the gate decides; ``apply_gate`` writes it into a document."""

    verdict: Literal["pass", "warn", "fail"]
    exit_code: int
    conditions: tuple[Condition, ...]
    findings: tuple[FindingOutcome, ...]
    baseline: BaselineSummary | None
    ignored: tuple[IgnoredOutcome, ...]
    notes: tuple[str, ...] = field(default=())

    def gate_dict(self) -> dict[str, Any]:
        """The ``gate`` object of the findings document."""
        return {
            "conditions": [c.to_dict() for c in self.conditions],
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "ignored": [i.to_dict() for i in self.ignored],
        }


# --------------------------------------------------------------------------- evaluation


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _holdout_reference(document: Mapping[str, Any], quantile: float) -> float | None:
    """The holdout's best-match SSIM at ``quantile``; None without a holdout."""
    summary = document.get("summary") or {}
    holdout = summary.get("holdout") or {}
    quantiles = holdout.get("quantiles") or {}
    for key in (f"{quantile:g}", str(quantile)):
        if quantiles.get(key) is not None:
            return float(quantiles[key])
    if math.isclose(quantile, 0.99) and summary.get("holdout_ssim_p99") is not None:
        return float(summary["holdout_ssim_p99"])
    if math.isclose(quantile, 0.95) and summary.get("holdout_ssim_p95") is not None:
        return float(summary["holdout_ssim_p95"])
    if document.get("calibrated"):
        raise UsageError(
            f"the audit has no holdout SSIM quantile {quantile:g} "
            f"(available: {', '.join(sorted(quantiles)) or 'none'}); choose one of them as holdout_quantile"
        )
    return None


def _active_ignores(settings: GateSettings, today: date) -> tuple[dict[str, IgnoreEntry], tuple[IgnoredOutcome, ...]]:
    active: dict[str, IgnoreEntry] = {}
    listed: list[IgnoredOutcome] = []
    for entry in settings.ignore:
        expired = today > entry.expires
        listed.append(IgnoredOutcome(entry, expired))
        if not expired:
            active[entry.fingerprint] = entry
    return active, tuple(listed)


def _baseline_status(finding: Mapping[str, Any], previous: Mapping[str, Mapping[str, Any]]) -> BaselineStatus:
    before = previous.get(finding["fingerprint"])
    if before is None:
        return "new"
    if before.get("ssim") is not None and finding["ssim"] > float(before["ssim"]) + WORSE_MARGIN:
        return "worse"
    return "persisting"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _threshold_levels(
    findings: Sequence[Mapping[str, Any]], eligible: Sequence[bool], settings: GateSettings
) -> tuple[list[Level], list[Level]]:
    """Per-finding SSIM and LPIPS levels from the thresholds alone (ineligible findings are ok)."""
    ssim_levels: list[Level] = []
    lpips_levels: list[Level] = []
    for f, ok in zip(findings, eligible):
        s, lp = float(f["ssim"]), f.get("lpips")
        ssim_level: Level = "ok"
        if ok and settings.fail_ssim is not None and s >= settings.fail_ssim:
            ssim_level = "fail"
        elif ok and settings.warn_ssim is not None and s >= settings.warn_ssim:
            ssim_level = "warn"
        lpips_fail = ok and settings.fail_lpips is not None and lp is not None and float(lp) <= settings.fail_lpips
        ssim_levels.append(ssim_level)
        lpips_levels.append("fail" if lpips_fail else "ok")
    return ssim_levels, lpips_levels


def _chance_test(
    findings: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], settings: GateSettings, reference: float
) -> tuple[bool, str]:
    """Are more members above the holdout quantile than non-members would give? (significant, message)

    Ignored findings still count here: an ignore accepts one image, it does not
    change the evidence that members are matched better than non-members.
    """
    n_train = int(summary.get("n_train") or len(findings))
    n_holdout = summary.get("n_holdout")
    rate = 1.0 - settings.holdout_quantile
    if n_holdout:
        rate = max(rate, 1.0 / (int(n_holdout) + 1))
    exceed = sum(1 for f in findings if float(f["ssim"]) > reference)
    at_least = "at least " if findings and exceed == len(findings) else ""
    tail = binomial_tail(exceed, n_train, rate)
    significant = tail < CHANCE_ALPHA
    message = (
        f"Calibrated: only training samples above the holdout's q{settings.holdout_quantile:g} "
        f"best-match SSIM ({reference:.3f}) count; {at_least}{exceed} of {n_train} exceed it "
        f"(chance expects {n_train * rate:.1f}; binomial p = {tail:.3g}, "
        f"{'significant' if significant else 'consistent with chance'} at {CHANCE_ALPHA:g})."
    )
    return significant, message


def _adjust(level: Level, significant: bool, baseline: BaselineStatus | None) -> tuple[Level, str | None]:
    """A fail-level finding becomes a warning when chance explains it or the baseline accepted it."""
    if level != "fail":
        return level, None
    if not significant:
        return "warn", "chance"
    if baseline == "persisting":
        return "warn", "baseline"
    return "fail", None


def _baseline_summary(
    findings: Sequence[Mapping[str, Any]],
    previous_findings: Mapping[str, Mapping[str, Any]],
    statuses: Sequence[BaselineStatus | None],
    flagged: Sequence[bool],
    ignored: Sequence[bool],
    path: str,
) -> BaselineSummary:
    flagged_now = {f["fingerprint"] for f, flag in zip(findings, flagged) if flag}
    ignored_now = {f["fingerprint"] for f, ig in zip(findings, ignored) if ig}
    fixed = tuple(
        fp
        for fp, before in previous_findings.items()
        if before.get("status") in ("fail", "warn") and fp not in flagged_now and fp not in ignored_now
    )
    counted = [b for b, flag in zip(statuses, flagged) if flag]
    return BaselineSummary(
        path=path,
        new=counted.count("new"),
        persisting=counted.count("persisting"),
        worse=counted.count("worse"),
        fixed=fixed,
    )


def evaluate_gate(
    document: Mapping[str, Any],
    settings: GateSettings,
    *,
    today: date,
    previous: Mapping[str, Any] | None = None,
    baseline_path: str | None = None,
) -> GateOutcome:
    """Decide the gate for a findings document whose gate and verdict are not filled yet.

    ``previous`` is an earlier audit's complete document (``--baseline``);
    ``today`` decides which ignore entries have expired. Statuses already in
    ``document`` are ignored, so a document can be gated again.
    """
    findings: Sequence[Mapping[str, Any]] = document.get("findings") or []
    summary = document.get("summary") or {}
    reference = _holdout_reference(document, settings.holdout_quantile) if document.get("calibrated") else None
    active, ignored = _active_ignores(settings, today)
    notes = tuple(
        f"Ignore entry for {i.entry.fingerprint[:12]}… expired on {i.entry.expires.isoformat()}; "
        "the finding is no longer ignored."
        for i in ignored
        if i.expired
    )
    previous_findings = None if previous is None else {f["fingerprint"]: f for f in previous.get("findings") or []}
    baseline_status: list[BaselineStatus | None] = [
        None if previous_findings is None else _baseline_status(f, previous_findings) for f in findings
    ]

    is_ignored = [f["fingerprint"] in active for f in findings]
    eligible = [not ig and (reference is None or float(f["ssim"]) > reference) for f, ig in zip(findings, is_ignored)]
    ssim_levels, lpips_levels = _threshold_levels(findings, eligible, settings)
    significant, chance_note = (True, "") if reference is None else _chance_test(findings, summary, settings, reference)
    ssim_adj = [_adjust(level, significant, b) for level, b in zip(ssim_levels, baseline_status)]
    lpips_adj = [_adjust(level, significant, b) for level, b in zip(lpips_levels, baseline_status)]

    conditions = (
        _ssim_condition(settings, findings, eligible, ssim_adj, reference, chance_note),
        _lpips_condition(settings, document, findings, eligible, lpips_adj, chance_note),
        _leak_condition(settings, document, previous),
    )
    outcomes: list[FindingOutcome] = []
    for i, f in enumerate(findings):
        worst = {ssim_adj[i][0], lpips_adj[i][0]}
        status: FindingStatus = (
            "ignored" if is_ignored[i] else "fail" if "fail" in worst else "warn" if "warn" in worst else "ok"
        )
        outcomes.append(FindingOutcome(f["fingerprint"], status, baseline_status[i]))

    baseline = None
    if previous_findings is not None:
        flagged = [a != "ok" or b != "ok" for a, b in zip(ssim_levels, lpips_levels)]
        path = baseline_path or settings.baseline_path or ""
        baseline = _baseline_summary(findings, previous_findings, baseline_status, flagged, is_ignored, path)

    statuses = {c.status for c in conditions}
    verdict: Literal["pass", "warn", "fail"] = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
    exit_code = int(ExitStatus.GATE_FAILED if verdict == "fail" else ExitStatus.PASSED)
    return GateOutcome(verdict, exit_code, conditions, tuple(outcomes), baseline, ignored, notes)


def _ssim_condition(
    settings: GateSettings,
    findings: Sequence[Mapping[str, Any]],
    eligible: Sequence[bool],
    adjusted: Sequence[tuple[Level, str | None]],
    reference: float | None,
    chance_note: str,
) -> Condition:
    if settings.fail_ssim is None and settings.warn_ssim is None:
        return Condition("ssim", "skipped", None, None, "SSIM thresholds are switched off.")
    counted = [float(f["ssim"]) for f, ok in zip(findings, eligible) if ok]
    observed = max(counted) if counted else None
    fails = sum(1 for level, _ in adjusted if level == "fail")
    warns = sum(1 for level, _ in adjusted if level == "warn")
    by_chance = sum(1 for _, why in adjusted if why == "chance")
    by_baseline = sum(1 for _, why in adjusted if why == "baseline")
    status: Status = "fail" if fails else "warn" if warns else "pass"
    parts = [
        f"{fails} finding(s) fail, {warns} warn (fail at SSIM ≥ {_fmt(settings.fail_ssim)}, "
        f"warn at ≥ {_fmt(settings.warn_ssim)}; higher is more similar)."
    ]
    if reference is None:
        parts.append("Uncalibrated: no holdout, so the absolute threshold applies; class prototypes can exceed it.")
    else:
        parts.append(chance_note)
    if by_chance:
        parts.append(f"{by_chance} fail-level finding(s) reported as warnings: consistent with chance.")
    if by_baseline:
        parts.append(f"{by_baseline} fail-level finding(s) persist from the baseline and are reported as warnings.")
    return Condition("ssim", status, settings.fail_ssim, observed, " ".join(parts))


def _lpips_condition(
    settings: GateSettings,
    document: Mapping[str, Any],
    findings: Sequence[Mapping[str, Any]],
    eligible: Sequence[bool],
    adjusted: Sequence[tuple[Level, str | None]],
    chance_note: str,
) -> Condition:
    if settings.fail_lpips is None:
        return Condition("lpips", "skipped", None, None, "No LPIPS threshold set (fail_lpips is off by default).")
    lpips_info = ((document.get("metrics") or {}).get("lpips")) or {}
    if not lpips_info.get("available", False):
        reason = lpips_info.get("reason") or "no reason given"
        return Condition(
            "lpips", "skipped", settings.fail_lpips, None, f"LPIPS threshold set but LPIPS is unavailable: {reason}."
        )
    counted = [float(f["lpips"]) for f, ok in zip(findings, eligible) if ok and f.get("lpips") is not None]
    observed = min(counted) if counted else None
    fails = sum(1 for level, _ in adjusted if level == "fail")
    warns = sum(1 for level, _ in adjusted if level == "warn")
    status: Status = "fail" if fails else "warn" if warns else "pass"
    message = (
        f"{fails} finding(s) at or below fail_lpips {settings.fail_lpips:.3f} (LPIPS: lower is more similar)"
        + (f", {warns} downgraded to warnings (chance or baseline)" if warns else "")
        + "."
    )
    if chance_note:
        message += " " + chance_note
    else:
        message += " Uncalibrated: no holdout, so the absolute threshold applies."
    return Condition("lpips", status, settings.fail_lpips, observed, message)


def _leak_condition(
    settings: GateSettings, document: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> Condition:
    threshold = settings.fail_leak_score
    if threshold is None:
        return Condition("leak_score", "skipped", None, None, "Leak score threshold is switched off.")
    leak = (document.get("summary") or {}).get("leak_score")
    if not document.get("calibrated") or not leak:
        return Condition(
            "leak_score", "skipped", threshold, None, "No holdout: the leak score needs non-member images to compare with."
        )
    value, p_value = float(leak["value"]), float(leak["p_value"])
    interval = f"{value:.3f} (95% CI {leak['ci_low']:.3f}–{leak['ci_high']:.3f}, p = {p_value:.3g})"
    if value < threshold:
        return Condition(
            "leak_score", "pass", threshold, value, f"Leak score {interval} is below {threshold:.2f} (0.5 = no difference)."
        )
    if p_value >= LEAK_SCORE_ALPHA:
        return Condition(
            "leak_score",
            "warn",
            threshold,
            value,
            f"Leak score {interval} reaches {threshold:.2f} but is not significant (p ≥ {LEAK_SCORE_ALPHA:g}): "
            "too few members or non-members to tell.",
        )
    before = ((previous or {}).get("summary") or {}).get("leak_score") if previous is not None else None
    if before and float(before["value"]) >= threshold:
        ceiling = float(before.get("ci_high") if before.get("ci_high") is not None else before["value"] + WORSE_MARGIN)
        if value <= ceiling:
            return Condition(
                "leak_score",
                "warn",
                threshold,
                value,
                f"Leak score {interval} reaches {threshold:.2f}, as in the baseline ({float(before['value']):.3f}); "
                "not worse than the baseline's interval, so reported as a warning.",
            )
    return Condition(
        "leak_score",
        "fail",
        threshold,
        value,
        f"Leak score {interval} reaches {threshold:.2f} with p < {LEAK_SCORE_ALPHA:g}: "
        "training members are matched better than non-members.",
    )


def apply_gate(
    document: Mapping[str, Any],
    settings: GateSettings,
    *,
    today: date,
    previous: Mapping[str, Any] | None = None,
    baseline_path: str | None = None,
) -> dict[str, Any]:
    """A copy of ``document`` with thresholds, statuses, gate, verdict, exit code and notes filled."""
    outcome = evaluate_gate(document, settings, today=today, previous=previous, baseline_path=baseline_path)
    result = copy.deepcopy(dict(document))
    result["thresholds"] = settings.thresholds()
    for finding, decided in zip(result.get("findings") or [], outcome.findings):
        finding["status"] = decided.status
        finding["baseline_status"] = decided.baseline_status
    result["gate"] = outcome.gate_dict()
    result["verdict"] = outcome.verdict
    result["exit_code"] = outcome.exit_code
    if outcome.notes:
        summary = result.setdefault("summary", {})
        existing = list(summary.get("notes") or [])
        summary["notes"] = existing + [n for n in outcome.notes if n not in existing]  # re-gating adds nothing twice
    return result
