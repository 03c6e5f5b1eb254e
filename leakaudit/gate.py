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

``warn_membership_auc = 0.70`` (requires p < 0.01), ``fail_membership_auc = None``
    The model's own loss-threshold membership test (members vs held-back
    non-members). On the bundled references it reaches 0.53–0.63 where the
    model generalises (20 or more digits per class, the augmented CNN, the
    face model) and 0.80–0.99 where it memorises (1–5 digits per class; a
    10-per-class MLP on real MNIST: 0.82). 0.70 lies between the two groups,
    above the 20-per-class MLP's interval (0.58–0.67); the 10-per-class digits
    MLP (0.68) stays just below it.

Chance
------
Even a model that leaks nothing has about ``1 - holdout_quantile`` of its
training samples above the holdout quantile, by chance: 13 of 1,300 at 0.99.
So, when calibrated, the SSIM and LPIPS conditions count a member only when
its SSIM is above the holdout quantile *and* the number of members above it is
improbable under "members are matched like non-members" (p below
``CHANCE_ALPHA``). The test is exact: the quantile lies at or above the
holdout's r-th largest best match (r from the holdout's size and q), and
under exchangeable members and non-members the number of members ranked above
the r-th largest non-member is negative hypergeometric
(``leakaudit.scoring.exceedance_p_value``). A binomial test at rate 1 − q
would treat the estimated quantile as exact; the members share that one noisy
threshold, which made the binomial test call 8 of 200 members above the q0.99
of 300 non-members significant (p = 0.001) where the exact p is 0.028. A result consistent with chance
passes, with a note: a warning means a threshold was crossed *and* chance
does not explain it. The count runs over every member, not only the listed
findings (``--top`` decides what is listed, never what is counted). Every
finding carries ``status_rule``, the sentence that decided its status.

Without a holdout the absolute thresholds apply, and the condition message
says the result is uncalibrated.

Baseline
--------
With a previous audit's document, a member is ``new`` (its fingerprint was not
among the previous findings), ``worse`` (its SSIM rose by more than
``WORSE_MARGIN`` = 0.02, about the run-to-run noise of a seeded inversion) or
``persisting``. Only new or worse members can fail the gate; a persisting
fail-level member is reported as a warning. The leak score likewise fails
only when it newly crosses its threshold or rises more than ``WORSE_MARGIN``
above the previous *value* (never its interval, which a file can claim).
``fixed`` lists fingerprints flagged (warn or fail) before and not any more.

Ignore entries
--------------
An entry suppresses one fingerprint until and including its ``expires`` date;
afterwards the finding counts again, and the entry is listed with
``expired: true`` and a note saying so.

Incomplete attacks
------------------
When the inversion did not run all its planned steps (``inversion.complete``
is false), the verdict is ``fail`` if what was done already fails a
condition (evidence found is evidence), else ``incomplete`` (exit 2): an
unfinished attack never passes or warns.

Exit code: 1 (``ExitStatus.GATE_FAILED``) only when a condition fails; 2 when
the attack is incomplete and nothing failed; warnings exit 0.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from leakaudit.config import did_you_mean
from leakaudit.errors import ConfigError, UsageError
from leakaudit.exit_codes import ExitStatus

Status = Literal["pass", "warn", "fail", "skipped"]
Verdict = Literal["pass", "warn", "fail", "incomplete"]
FindingStatus = Literal["fail", "warn", "ok", "ignored"]
BaselineStatus = Literal["new", "persisting", "worse"]
Level = Literal["fail", "warn", "ok"]  # a member's level for one metric, before ignores

LEAK_SCORE_ALPHA = 0.01  # the leak score's p-value must be below this to fail
MEMBERSHIP_ALPHA = 0.01  # the membership AUC's p-value must be below this to warn or fail
CHANCE_ALPHA = 0.01  # exceedances of the holdout quantile must be this improbable to count
WORSE_MARGIN = 0.02  # SSIM (or leak score) rise that makes a persisting result "worse"

DIRECTIONS = {
    "ssim": "higher is more similar",
    "lpips": "lower is more similar",
    "leak_score": "higher means members are matched better than non-members",
    "membership_auc": "higher means the model's loss tells members from non-members",
}
EXPOSURE_STATEMENTS = {
    (True, True): "reconstructs training images and memorises membership",
    (True, False): "reconstructs training images",
    (False, True): "memorises membership",
    (False, False): "neither",
}

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_KNOWN_KEYS = ("fail_ssim", "warn_ssim", "fail_lpips", "fail_leak_score", "warn_membership_auc",
               "fail_membership_auc", "holdout_quantile", "ignore")


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

    fail_ssim: float | None = 0.70
    warn_ssim: float | None = 0.45
    fail_lpips: float | None = None
    fail_leak_score: float | None = 0.70
    warn_membership_auc: float | None = 0.70
    fail_membership_auc: float | None = None
    holdout_quantile: float = 0.99
    ignore: tuple[IgnoreEntry, ...] = ()
    baseline_path: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problems = threshold_problems(
            self.fail_ssim, self.warn_ssim, self.fail_lpips, self.fail_leak_score, self.holdout_quantile,
            warn_membership_auc=self.warn_membership_auc, fail_membership_auc=self.fail_membership_auc,
            sources=self.sources,
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
            "warn_membership_auc": self.warn_membership_auc,
            "fail_membership_auc": self.fail_membership_auc,
            "holdout_quantile": self.holdout_quantile,
            "directions": dict(DIRECTIONS),
        }


def threshold_problems(
    fail_ssim: float | None,
    warn_ssim: float | None,
    fail_lpips: float | None,
    fail_leak_score: float | None,
    holdout_quantile: float,
    *,
    warn_membership_auc: float | None = None,
    fail_membership_auc: float | None = None,
    sources: Mapping[str, str] | None = None,
) -> list[str]:
    """Every inconsistency among the thresholds (empty when valid), naming where each value came from."""
    where = dict(sources or {})

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
    if not (0.5 <= holdout_quantile < 1.0):
        problems.append(f"{name('holdout_quantile')} must be in [0.5, 1), got {holdout_quantile}")
    if fail_ssim is not None and warn_ssim is not None and warn_ssim > fail_ssim:
        problems.append(f"{name('warn_ssim')} = {warn_ssim} must not exceed {name('fail_ssim')} = {fail_ssim}")
    if warn_membership_auc is not None and fail_membership_auc is not None and warn_membership_auc > fail_membership_auc:
        problems.append(f"{name('warn_membership_auc')} = {warn_membership_auc} must not exceed "
                        f"{name('fail_membership_auc')} = {fail_membership_auc}")
    return problems


# --------------------------------------------------------------------------- config


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
        if ok:
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
    for key in sorted(set(mapping) - set(_KNOWN_KEYS)):
        problems.append(f"unknown key {key!r}{did_you_mean(key, _KNOWN_KEYS)}")
    values: dict[str, Any] = {}
    for key in ("fail_ssim", "warn_ssim", "fail_lpips", "fail_leak_score", "warn_membership_auc", "fail_membership_auc"):
        values[key] = _threshold(mapping, key, getattr(defaults, key), problems, where.get(key, key))
    if "fail_ssim" in mapping and "warn_ssim" not in mapping and values["fail_ssim"] is not None:
        values["warn_ssim"] = min(defaults.warn_ssim or 1.0, values["fail_ssim"])
    if "fail_membership_auc" in mapping and "warn_membership_auc" not in mapping and values["fail_membership_auc"]:
        values["warn_membership_auc"] = min(defaults.warn_membership_auc or 1.0, values["fail_membership_auc"])
    quantile = _threshold(mapping, "holdout_quantile", defaults.holdout_quantile, problems,
                          where.get("holdout_quantile", "holdout_quantile"))
    if quantile is None:
        problems.append(f"{where.get('holdout_quantile', 'holdout_quantile')} cannot be switched off")
        quantile = defaults.holdout_quantile
    ignore = _ignore_entries(mapping.get("ignore", []), problems)
    problems.extend(threshold_problems(holdout_quantile=quantile, sources=where, **values))
    if problems:
        raise ConfigError("gate settings: " + "; ".join(problems))
    return GateSettings(**values, holdout_quantile=quantile, ignore=ignore, baseline_path=baseline_path,
                        sources=where)


# --------------------------------------------------------------------------- outcome


@dataclass(frozen=True)
class Condition:
    """One gate condition: what was compared, and how it came out."""

    name: str
    status: Status
    threshold: float | None
    observed: float | None
    message: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "threshold": self.threshold,
            "observed": self.observed,
            "message": self.message,
            **dict(self.extra),
        }


@dataclass(frozen=True)
class FindingOutcome:
    """The gate's view of one finding, in the findings' order."""

    fingerprint: str
    status: FindingStatus
    baseline_status: BaselineStatus | None
    rule: str = ""


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

    verdict: Verdict
    exit_code: int
    conditions: tuple[Condition, ...]
    findings: tuple[FindingOutcome, ...]
    baseline: BaselineSummary | None
    ignored: tuple[IgnoredOutcome, ...]
    notes: tuple[str, ...] = field(default=())
    exposure: Mapping[str, Any] = field(default_factory=dict)
    counted: Mapping[str, Any] = field(default_factory=dict)

    def gate_dict(self) -> dict[str, Any]:
        """The ``gate`` object of the findings document."""
        return {
            "conditions": [c.to_dict() for c in self.conditions],
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "ignored": [i.to_dict() for i in self.ignored],
            "counted": dict(self.counted),
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
    """The holdout's best-match SSIM at ``quantile`` (the gate's own); None without a holdout."""
    summary = document.get("summary") or {}
    holdout = summary.get("holdout") or {}
    quantiles = holdout.get("quantiles") or {}
    for key in (f"{quantile:g}", str(quantile)):
        if quantiles.get(key) is not None:
            return float(quantiles[key])
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


def _baseline_status(row: Mapping[str, Any], previous: Mapping[str, Mapping[str, Any]]) -> BaselineStatus:
    before = previous.get(row["fingerprint"])
    if before is None:
        return "new"
    if before.get("ssim") is not None and float(row["ssim"]) > float(before["ssim"]) + WORSE_MARGIN:
        return "worse"
    return "persisting"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


@dataclass(frozen=True)
class _Chance:
    """The test that decides whether members above the holdout quantile are more than chance gives."""

    calibrated: bool
    reference: float | None
    significant: bool
    message: str
    exceed: int = 0
    p_value: float | None = None


def _chance_test(rows: Sequence[Mapping[str, Any]], n_train: int, summary: Mapping[str, Any],
                 settings: GateSettings, reference: float | None) -> _Chance:
    """Are more members above the holdout quantile than non-members would give?

    Ignored members still count here: an ignore accepts one image, it does not
    change the evidence that members are matched better than non-members.
    """
    if reference is None:
        return _Chance(False, None, True, "Uncalibrated: no holdout, so the absolute thresholds apply; class "
                       "prototypes can exceed them.")
    from leakaudit.scoring import exceedance_p_value, holdout_rank

    n_holdout = int(summary.get("n_holdout") or 0)
    exceed = sum(1 for r in rows if float(r["ssim"]) > reference)
    if n_holdout:
        rank = holdout_rank(n_holdout, settings.holdout_quantile)
        tail = exceedance_p_value(exceed, n_train, n_holdout, rank)
        expected = rank * n_train / (n_holdout + 1)
        test = (f"one-sided exact rank test: members above the holdout's {rank}th-largest best match, negative "
                "hypergeometric under exchangeable members and non-members")
    else:  # an old document without the holdout's size: the binomial approximation at rate 1 - q
        rate = 1.0 - settings.holdout_quantile
        tail, expected, test = binomial_tail(exceed, n_train, rate), n_train * rate, "one-sided binomial test"
    significant = tail < CHANCE_ALPHA
    message = (
        f"Calibrated: a member counts only above the holdout's q{settings.holdout_quantile:g} best-match SSIM "
        f"({reference:.3f}); {exceed} of {n_train} members exceed it (chance expects {expected:.1f}; {test}, "
        f"p = {tail:.3g}: {'significant' if significant else 'consistent with chance'} at {CHANCE_ALPHA:g})."
    )
    return _Chance(True, reference, significant, message, exceed, tail)


def _member_level(ssim: float, lpips: float | None, settings: GateSettings, chance: _Chance,
                  baseline: BaselineStatus | None) -> tuple[Level, Level, str]:
    """(SSIM level, LPIPS level, the rule that decided) of one member, before ignores."""
    def crossed() -> tuple[Level, Level, str | None]:
        ssim_level: Level = "ok"
        rule = None
        if settings.fail_ssim is not None and ssim >= settings.fail_ssim:
            ssim_level, rule = "fail", f"SSIM {ssim:.3f} ≥ fail_ssim {settings.fail_ssim:.2f}"
        elif settings.warn_ssim is not None and ssim >= settings.warn_ssim:
            ssim_level, rule = "warn", f"SSIM {ssim:.3f} ≥ warn_ssim {settings.warn_ssim:.2f}"
        lp: Level = "ok"
        if settings.fail_lpips is not None and lpips is not None and lpips <= settings.fail_lpips:
            lp = "fail"
            rule = (rule + " and " if rule else "") + f"LPIPS {lpips:.3f} ≤ fail_lpips {settings.fail_lpips:.2f}"
        return ssim_level, lp, rule

    ssim_level, lpips_level, rule = crossed()
    if rule is None:
        level = settings.warn_ssim if settings.warn_ssim is not None else settings.fail_ssim
        name = "warn_ssim" if settings.warn_ssim is not None else "fail_ssim"
        below = f"below {name} {level:.2f}" if level is not None else "no SSIM threshold set"
        return "ok", "ok", f"SSIM {ssim:.3f}: {below}; ok."
    if not chance.calibrated:
        return ssim_level, lpips_level, f"{rule}, uncalibrated (no holdout): the absolute threshold applies."
    q = f"q{settings.holdout_quantile:g}"
    if chance.reference is not None and ssim <= chance.reference:
        return "ok", "ok", (f"{rule}, but not above the holdout's {q} best match ({chance.reference:.3f}): non-members "
                            "are matched as well; not counted.")
    if not chance.significant:
        return "ok", "ok", (f"{rule} and above the holdout's {q} ({chance.reference:.3f}), but the number of members "
                            f"above it is consistent with chance (p = {chance.p_value:.3g}); not counted.")
    if "fail" in (ssim_level, lpips_level) and baseline == "persisting":
        return ("warn" if ssim_level == "fail" else ssim_level), ("warn" if lpips_level == "fail" else lpips_level), (
            f"{rule} and above the holdout's {q}, persisting from the baseline: reported as a warning.")
    return ssim_level, lpips_level, (f"{rule} and above the holdout's {q} ({chance.reference:.3f}), with more members "
                                     f"above it than chance gives (p = {chance.p_value:.3g}).")


@dataclass(frozen=True)
class _Member:
    """One member's outcome."""

    fingerprint: str
    ssim: float
    ssim_level: Level
    lpips_level: Level
    rule: str
    ignored: bool
    baseline: BaselineStatus | None

    @property
    def status(self) -> FindingStatus:
        if self.ignored:
            return "ignored"
        levels = {self.ssim_level, self.lpips_level}
        return "fail" if "fail" in levels else "warn" if "warn" in levels else "ok"


def _members(rows: Sequence[Mapping[str, Any]], lpips: Mapping[str, float | None], settings: GateSettings,
             chance: _Chance, active: Mapping[str, IgnoreEntry],
             previous: Mapping[str, Mapping[str, Any]] | None) -> list[_Member]:
    out = []
    for row in rows:
        fp = row["fingerprint"]
        baseline = None if previous is None else _baseline_status(row, previous)
        ssim_level, lpips_level, rule = _member_level(float(row["ssim"]), lpips.get(fp), settings, chance, baseline)
        entry = active.get(fp)
        if entry is not None:
            rule = f"Ignored until {entry.expires.isoformat()} ({entry.reason}); otherwise: {rule}"
        out.append(_Member(fp, float(row["ssim"]), ssim_level, lpips_level, rule, entry is not None, baseline))
    return out


def evaluate_gate(
    document: Mapping[str, Any],
    settings: GateSettings,
    *,
    today: date,
    previous: Mapping[str, Any] | None = None,
    baseline_path: str | None = None,
    members: Sequence[Mapping[str, Any]] | None = None,
) -> GateOutcome:
    """Decide the gate for a findings document whose gate and verdict are not filled yet.

    ``members``: every training member's ``{fingerprint, ssim}`` (the audit
    passes them); without it the listed findings stand for the members, which
    is exact only when every member is listed (``gate.counted`` says which).
    ``previous`` is an earlier audit's complete document (``--baseline``);
    ``today`` decides which ignore entries have expired. Statuses already in
    ``document`` are ignored, so a document can be gated again.
    """
    findings: Sequence[Mapping[str, Any]] = document.get("findings") or []
    summary = document.get("summary") or {}
    rows = list(members) if members is not None else list(findings)
    n_train = len(rows) if members is not None else int(summary.get("n_train") or len(rows))
    counted = {"members": n_train, "from": "every member" if members is not None or n_train == len(rows)
               else f"the {len(rows)} listed findings of {n_train} members (a lower bound)"}
    reference = _holdout_reference(document, settings.holdout_quantile) if document.get("calibrated") else None
    active, ignored = _active_ignores(settings, today)
    notes = tuple(
        f"Ignore entry for {i.entry.fingerprint[:12]}… expired on {i.entry.expires.isoformat()}; "
        "the finding is no longer ignored."
        for i in ignored
        if i.expired
    )
    previous_findings = None if previous is None else {f["fingerprint"]: f for f in previous.get("findings") or []}
    chance = _chance_test(rows, n_train, summary, settings, reference)
    lpips = {f["fingerprint"]: (None if f.get("lpips") is None else float(f["lpips"])) for f in findings}
    outcome = _members(rows, lpips, settings, chance, active, previous_findings)
    by_fp = {m.fingerprint: m for m in outcome}
    listed = [by_fp[f["fingerprint"]] for f in findings]
    conditions = (
        _ssim_condition(settings, outcome, chance),
        _lpips_condition(settings, document, listed, chance),
        _leak_condition(settings, document, previous),
        _membership_condition(settings, document),
    )
    finding_outcomes = tuple(FindingOutcome(m.fingerprint, m.status, m.baseline, m.rule) for m in listed)
    baseline = None
    if previous_findings is not None:
        baseline = _baseline_summary(outcome, previous_findings, baseline_path or settings.baseline_path or "")
    verdict, exit_code, incomplete_note = _verdict(document, conditions)
    exposure = _exposure(conditions, verdict)
    if incomplete_note:
        notes = notes + (incomplete_note,)
    return GateOutcome(verdict, exit_code, conditions, finding_outcomes, baseline, ignored, notes, exposure, counted)


def _verdict(document: Mapping[str, Any], conditions: Sequence[Condition]) -> tuple[Verdict, int, str | None]:
    """The verdict and exit code; an unfinished attack fails on evidence or is incomplete, never passes."""
    statuses = {c.status for c in conditions}
    inversion = document.get("inversion") or {}
    if "fail" in statuses:
        verdict: Verdict = "fail"
    elif not inversion.get("complete", True):
        verdict = "incomplete"
    else:
        verdict = "warn" if "warn" in statuses else "pass"
    code = {"fail": ExitStatus.GATE_FAILED, "incomplete": ExitStatus.INCOMPLETE}.get(verdict, ExitStatus.PASSED)
    note = None
    if not inversion.get("complete", True):
        done = f"{inversion.get('steps')} of {inversion.get('planned_steps')} planned steps"
        note = (f"The attack is incomplete ({done}): the verdict is fail because what was done already fails the gate."
                if verdict == "fail" else
                f"The attack is incomplete ({done}): nothing found so far fails the gate, but an unfinished attack "
                "cannot pass (exit 2).")
    return verdict, int(code), note


def _exposure(conditions: Sequence[Condition], verdict: Verdict) -> dict[str, Any]:
    """Which of "reconstructs training images" / "memorises membership" / "neither" the gate found."""
    status = {c.name: c.status for c in conditions}
    found = {"warn", "fail"}
    reconstruction: bool | None = any(status.get(n) in found for n in ("ssim", "lpips", "leak_score"))
    membership: bool | None = None if status.get("membership") == "skipped" else status.get("membership") in found
    if verdict == "incomplete":
        reconstruction = None if not reconstruction else reconstruction
        return {"reconstruction": reconstruction, "membership": membership, "statement": "incomplete"}
    return {"reconstruction": reconstruction, "membership": membership,
            "statement": EXPOSURE_STATEMENTS[(bool(reconstruction), bool(membership))]}


def _counts(members: Sequence[_Member], attr: str) -> tuple[int, int]:
    levels = [getattr(m, attr) for m in members if not m.ignored]
    return levels.count("fail"), levels.count("warn")


def _ssim_condition(settings: GateSettings, members: Sequence[_Member], chance: _Chance) -> Condition:
    if settings.fail_ssim is None and settings.warn_ssim is None:
        return Condition("ssim", "skipped", None, None, "SSIM thresholds are switched off.")
    counted = [m.ssim for m in members if not m.ignored and m.ssim_level != "ok"]
    observed = max(counted) if counted else None
    fails, warns = _counts(members, "ssim_level")
    crossed = sum(1 for m in members if not m.ignored and settings.warn_ssim is not None
                  and m.ssim >= min(settings.warn_ssim, settings.fail_ssim or 1.0))
    status: Status = "fail" if fails else "warn" if warns else "pass"
    parts = [
        f"{fails} member(s) fail, {warns} warn, of {len(members)} (fail at SSIM ≥ {_fmt(settings.fail_ssim)}, "
        f"warn at ≥ {_fmt(settings.warn_ssim)}; higher is more similar).",
        chance.message,
    ]
    if chance.calibrated and not chance.significant and crossed:
        parts.append(f"{crossed} member(s) reach a threshold, but no more are matched better than non-members than "
                     "chance gives: pass.")
    persisting = sum(1 for m in members if m.baseline == "persisting" and m.ssim_level == "warn"
                     and settings.fail_ssim is not None and m.ssim >= settings.fail_ssim)
    if persisting:
        parts.append(f"{persisting} fail-level member(s) persist from the baseline and are reported as warnings.")
    return Condition("ssim", status, settings.fail_ssim, observed, " ".join(parts),
                     {"n_members": len(members), "n_above_reference": chance.exceed if chance.calibrated else None,
                      "chance_p_value": chance.p_value})


def _lpips_condition(settings: GateSettings, document: Mapping[str, Any], listed: Sequence[_Member],
                     chance: _Chance) -> Condition:
    if settings.fail_lpips is None:
        return Condition("lpips", "skipped", None, None, "No LPIPS threshold set (fail_lpips is off by default).")
    lpips_info = ((document.get("metrics") or {}).get("lpips")) or {}
    if not lpips_info.get("available", False):
        reason = lpips_info.get("reason") or "no reason given"
        return Condition("lpips", "skipped", settings.fail_lpips, None,
                         f"LPIPS threshold set but LPIPS is unavailable: {reason}.")
    findings = {f["fingerprint"]: f for f in document.get("findings") or []}
    values = [float(findings[m.fingerprint]["lpips"]) for m in listed
              if not m.ignored and m.lpips_level != "ok" and findings[m.fingerprint].get("lpips") is not None]
    fails, warns = _counts(listed, "lpips_level")
    status: Status = "fail" if fails else "warn" if warns else "pass"
    message = (f"{fails} listed finding(s) at or below fail_lpips {settings.fail_lpips:.3f} (LPIPS: lower is more "
               f"similar; computed for the {len(listed)} listed findings)"
               + (f", {warns} reported as warnings (baseline)" if warns else "") + ". " + chance.message)
    return Condition("lpips", status, settings.fail_lpips, min(values) if values else None, message)


def _leak_condition(settings: GateSettings, document: Mapping[str, Any], previous: Mapping[str, Any] | None) -> Condition:
    threshold = settings.fail_leak_score
    if threshold is None:
        return Condition("leak_score", "skipped", None, None, "Leak score threshold is switched off.")
    leak = (document.get("summary") or {}).get("leak_score")
    if not document.get("calibrated") or not leak:
        return Condition("leak_score", "skipped", threshold, None,
                         "No holdout: the leak score needs non-member images to compare with.")
    value, p_value = float(leak["value"]), float(leak["p_value"])
    interval = f"{value:.3f} (95% CI {leak['ci_low']:.3f}–{leak['ci_high']:.3f}, p = {p_value:.3g})"
    if value < threshold:
        return Condition("leak_score", "pass", threshold, value,
                         f"Leak score {interval} is below {threshold:.2f} (0.5 = no difference).")
    if p_value >= LEAK_SCORE_ALPHA:
        return Condition("leak_score", "pass", threshold, value,
                         f"Leak score {interval} reaches {threshold:.2f} but is consistent with chance (one-sided "
                         f"permutation test, p ≥ {LEAK_SCORE_ALPHA:g}): too few members or non-members to tell; pass.")
    before = ((previous or {}).get("summary") or {}).get("leak_score") if previous is not None else None
    if before and float(before["value"]) >= threshold and value <= float(before["value"]) + WORSE_MARGIN:
        return Condition("leak_score", "warn", threshold, value,
                         f"Leak score {interval} reaches {threshold:.2f}, as in the baseline ({float(before['value']):.3f}); "
                         f"not more than {WORSE_MARGIN} above the baseline's value, so reported as a warning.")
    return Condition("leak_score", "fail", threshold, value,
                     f"Leak score {interval} reaches {threshold:.2f} with p < {LEAK_SCORE_ALPHA:g}: "
                     "training members are matched better than non-members.")


def _membership_condition(settings: GateSettings, document: Mapping[str, Any]) -> Condition:
    """The model's own loss-threshold membership AUC: warn (or fail) when high and significant."""
    fail, warn = settings.fail_membership_auc, settings.warn_membership_auc
    threshold = fail if fail is not None else warn
    if threshold is None:
        return Condition("membership", "skipped", None, None, "Membership thresholds are switched off.")
    test = (document.get("summary") or {}).get("membership")
    if not test:
        return Condition("membership", "skipped", threshold, None,
                         "No holdout: the membership test needs non-member images to compare with.")
    value, p = float(test["auc"]), float(test["p_value"])
    rates = test.get("tpr_at_fpr") or {}
    tpr = ", ".join(f"TPR {float(v):.1%} at {float(k):.1%} FPR" for k, v in rates.items())
    text = (f"Loss-threshold membership AUC {value:.3f} (95% CI {test['ci_low']:.3f}–{test['ci_high']:.3f}, "
            f"one-sided Mann-Whitney p = {p:.3g}; {tpr}; 0.5 = the loss does not tell members from non-members)")
    extra = {k: test.get(k) for k in ("ci_low", "ci_high", "p_value", "tpr_at_fpr")}
    if fail is not None and value >= fail and p < MEMBERSHIP_ALPHA:
        return Condition("membership", "fail", threshold, value,
                         f"{text} reaches fail_membership_auc {fail:.2f}: the model memorises its training set.", extra)
    if warn is not None and value >= warn and p < MEMBERSHIP_ALPHA:
        return Condition("membership", "warn", threshold, value,
                         f"{text} reaches warn_membership_auc {warn:.2f}: the model memorises membership, even where "
                         "no reconstruction resembles a member.", extra)
    if warn is not None and value >= warn:
        return Condition("membership", "pass", threshold, value,
                         f"{text} reaches {warn:.2f} but is consistent with chance (p ≥ {MEMBERSHIP_ALPHA:g}); pass.",
                         extra)
    return Condition("membership", "pass", threshold, value, f"{text} is below {threshold:.2f}.", extra)


def _baseline_summary(members: Sequence[_Member], previous_findings: Mapping[str, Mapping[str, Any]],
                      path: str) -> BaselineSummary:
    flagged = [m for m in members if m.status in ("fail", "warn")]
    now = {m.fingerprint for m in flagged} | {m.fingerprint for m in members if m.ignored}
    fixed = tuple(fp for fp, before in previous_findings.items()
                  if before.get("status") in ("fail", "warn") and fp not in now)
    counted = [m.baseline for m in flagged]
    return BaselineSummary(path=path, new=counted.count("new"), persisting=counted.count("persisting"),
                           worse=counted.count("worse"), fixed=fixed)


def apply_gate(
    document: Mapping[str, Any],
    settings: GateSettings,
    *,
    today: date,
    previous: Mapping[str, Any] | None = None,
    baseline_path: str | None = None,
    members: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A copy of ``document`` with thresholds, statuses, gate, verdict, exposure, exit code and notes filled."""
    outcome = evaluate_gate(document, settings, today=today, previous=previous, baseline_path=baseline_path,
                            members=members)
    result = copy.deepcopy(dict(document))
    result["thresholds"] = settings.thresholds()
    for finding, decided in zip(result.get("findings") or [], outcome.findings):
        finding["status"] = decided.status
        finding["status_rule"] = decided.rule
        finding["baseline_status"] = decided.baseline_status
    result["gate"] = outcome.gate_dict()
    result["verdict"] = outcome.verdict
    result["exposure"] = dict(outcome.exposure)
    result["exit_code"] = outcome.exit_code
    if outcome.notes:
        summary = result.setdefault("summary", {})
        existing = list(summary.get("notes") or [])
        summary["notes"] = existing + [n for n in outcome.notes if n not in existing]  # re-gating adds nothing twice
    return result
