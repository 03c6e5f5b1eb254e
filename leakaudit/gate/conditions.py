"""The gate's conditions: each compares one statistic with its threshold and says why it came out as it did.

The SSIM and LPIPS conditions count members, not listed findings, and when
calibrated a member counts only above the holdout's quantile and beyond
chance (an exact test, ``scoring.exceedance_p_value``). ``docs/gate.md``
gives each rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from leakaudit.gate.outcome import BaselineStatus, Condition, FindingStatus, Status
from leakaudit.gate.settings import GateSettings, IgnoreEntry
from leakaudit.record import Finding, LeakScore, MemberScore, MembershipTest
from leakaudit.record.membership import AttackResult, ReferenceMembership
from leakaudit.scoring import binomial_tail, exceedance_p_value, holdout_rank

Level = Literal["fail", "warn", "ok"]  # a member's level for one metric, before ignores

LEAK_SCORE_ALPHA = 0.01  # the leak score's p-value must be below this to fail
MEMBERSHIP_ALPHA = 0.01  # the membership AUC's p-value must be below this to warn or fail
CHANCE_ALPHA = 0.01  # exceedances of the holdout quantile must be this improbable to count
WORSE_MARGIN = 0.02  # SSIM (or leak score) rise that makes a persisting result "worse"


def baseline_status(member: MemberScore, previous: Mapping[str, Finding]) -> BaselineStatus:
    before = previous.get(member.fingerprint)
    if before is None:
        return "new"
    if member.ssim > float(before.ssim) + WORSE_MARGIN:
        return "worse"
    return "persisting"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


@dataclass(frozen=True)
class Chance:
    """The test that decides whether members above the holdout quantile are more than chance gives."""

    calibrated: bool
    reference: float | None
    significant: bool
    message: str
    exceed: int = 0
    p_value: float | None = None


def chance_test(rows: Sequence[MemberScore], n_train: int, n_holdout: int | None, settings: GateSettings,
                reference: float | None) -> Chance:
    """Are more members above the holdout quantile than non-members would give?

    Ignored members still count here: an ignore accepts one image, it does not
    change the evidence that members are matched better than non-members.
    """
    if reference is None:
        return Chance(False, None, True, "Uncalibrated: no holdout, so the absolute thresholds apply; class "
                       "prototypes can exceed them.")

    exceed = sum(1 for r in rows if r.ssim > reference)
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
    return Chance(True, reference, significant, message, exceed, tail)


def _member_level(ssim: float, lpips: float | None, settings: GateSettings, chance: Chance,
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
class Member:
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


def members_of(rows: Sequence[MemberScore], lpips: Mapping[str, float | None], settings: GateSettings,
               chance: Chance, active: Mapping[str, IgnoreEntry],
               previous: Mapping[str, Finding] | None) -> list[Member]:
    out = []
    for row in rows:
        fp = row.fingerprint
        baseline = None if previous is None else baseline_status(row, previous)
        ssim_level, lpips_level, rule = _member_level(row.ssim, lpips.get(fp), settings, chance, baseline)
        entry = active.get(fp)
        if entry is not None:
            rule = f"Ignored until {entry.expires.isoformat()} ({entry.reason}); otherwise: {rule}"
        out.append(Member(fp, row.ssim, ssim_level, lpips_level, rule, entry is not None, baseline))
    return out


def _counts(members: Sequence[Member], attr: str) -> tuple[int, int]:
    levels = [getattr(m, attr) for m in members if not m.ignored]
    return levels.count("fail"), levels.count("warn")


def ssim_condition(settings: GateSettings, members: Sequence[Member], chance: Chance) -> Condition:
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
                     MappingProxyType({"n_members": len(members),
                                       "n_above_reference": chance.exceed if chance.calibrated else None,
                                       "chance_p_value": chance.p_value}))


def lpips_condition(settings: GateSettings, available: bool, reason: str | None, findings: Sequence[Finding],
                    listed: Sequence[Member], chance: Chance) -> Condition:
    if settings.fail_lpips is None:
        return Condition("lpips", "skipped", None, None, "No LPIPS threshold set (fail_lpips is off by default).")
    if not available:
        return Condition("lpips", "skipped", settings.fail_lpips, None,
                         f"LPIPS threshold set but LPIPS is unavailable: {reason or 'no reason given'}.")
    lpips = {f.fingerprint: f.lpips for f in findings}
    values = [float(value) for m in listed
              if not m.ignored and m.lpips_level != "ok" and (value := lpips.get(m.fingerprint)) is not None]
    fails, warns = _counts(listed, "lpips_level")
    status: Status = "fail" if fails else "warn" if warns else "pass"
    message = (f"{fails} listed finding(s) at or below fail_lpips {settings.fail_lpips:.3f} (LPIPS: lower is more "
               f"similar; computed for the {len(listed)} listed findings)"
               + (f", {warns} reported as warnings (baseline)" if warns else "") + ". " + chance.message)
    return Condition("lpips", status, settings.fail_lpips, min(values) if values else None, message)


def leak_condition(settings: GateSettings, leak: LeakScore | None, calibrated: bool,
                   before: LeakScore | None) -> Condition:
    """The leak score against ``fail_leak_score``; ``before`` is the baseline's leak score (``--baseline``)."""
    threshold = settings.fail_leak_score
    if threshold is None:
        return Condition("leak_score", "skipped", None, None, "Leak score threshold is switched off.")
    if not calibrated or leak is None:
        return Condition("leak_score", "skipped", threshold, None,
                         "No holdout: the leak score needs non-member images to compare with.")
    value, p_value = float(leak.value), float(leak.p_value)
    interval = f"{value:.3f} (95% CI {leak.ci_low:.3f}–{leak.ci_high:.3f}, p = {p_value:.3g})"
    if value < threshold:
        return Condition("leak_score", "pass", threshold, value,
                         f"Leak score {interval} is below {threshold:.2f} (0.5 = no difference).")
    if p_value >= LEAK_SCORE_ALPHA:
        return Condition("leak_score", "pass", threshold, value,
                         f"Leak score {interval} reaches {threshold:.2f} but is consistent with chance (one-sided "
                         f"permutation test, p ≥ {LEAK_SCORE_ALPHA:g}): too few members or non-members to tell; pass.")
    if before is not None and float(before.value) >= threshold and value <= float(before.value) + WORSE_MARGIN:
        return Condition(
            "leak_score",
            "warn",
            threshold,
            value,
            f"Leak score {interval} reaches {threshold:.2f}, as in the baseline ({float(before.value):.3f}); "
            f"not more than {WORSE_MARGIN} above the baseline's value, so reported as a warning.",
        )
    return Condition("leak_score", "fail", threshold, value,
                     f"Leak score {interval} reaches {threshold:.2f} with p < {LEAK_SCORE_ALPHA:g}: "
                     "training members are matched better than non-members.")


def membership_condition(settings: GateSettings, test: MembershipTest | None,
                         attacks: ReferenceMembership | None = None) -> Condition:
    """The strongest membership attack's AUC (the loss threshold without reference models): warn or fail when
    high and significant."""
    fail, warn = settings.fail_membership_auc, settings.warn_membership_auc
    threshold = fail if fail is not None else warn
    if threshold is None:
        return Condition("membership", "skipped", None, None, "Membership thresholds are switched off.")
    if test is None:
        return Condition("membership", "skipped", threshold, None,
                         "No holdout: the membership test needs non-member images to compare with.")
    if attacks is not None and attacks.strongest.attack != "loss":
        return _reference_auc_condition(settings, attacks.strongest)
    value, p = float(test.auc), float(test.p_value)
    tpr = ", ".join(f"TPR {float(v):.1%} at {float(k):.1%} FPR" for k, v in test.tpr_at_fpr.items())
    text = (f"Loss-threshold membership AUC {value:.3f} (95% CI {test.ci_low:.3f}–{test.ci_high:.3f}, "
            f"one-sided Mann-Whitney p = {p:.3g}; {tpr}; 0.5 = the loss does not tell members from non-members)")
    extra = MappingProxyType({"ci_low": test.ci_low, "ci_high": test.ci_high, "p_value": test.p_value,
                              "tpr_at_fpr": dict(test.tpr_at_fpr)})
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


def _rates_text(row: AttackResult) -> str:
    return ", ".join(f"TPR {r.tpr:.1%} at {r.fpr:.1%} FPR" + ("" if r.resolvable else " (not resolvable)")
                     for r in row.rates)


def _reference_auc_condition(settings: GateSettings, row: AttackResult) -> Condition:
    """The AUC condition on a reference-model attack: significant when its interval's lower end is above 0.5."""
    fail, warn = settings.fail_membership_auc, settings.warn_membership_auc
    threshold = fail if fail is not None else warn
    value, significant = row.auc, row.ci_low > 0.5
    text = (f"{row.name[0].upper()}{row.name[1:]}: membership AUC {value:.3f} (95% CI {row.ci_low:.3f}–"
            f"{row.ci_high:.3f}; {_rates_text(row)}; 0.5 = members and non-members look alike)")
    extra = MappingProxyType({"attack": row.attack, "reference_models": row.reference_models, "ci_low": row.ci_low,
                              "ci_high": row.ci_high})
    if fail is not None and value >= fail and significant:
        return Condition("membership", "fail", threshold, value,
                         f"{text} reaches fail_membership_auc {fail:.2f}: the model memorises its training set.", extra)
    if warn is not None and value >= warn and significant:
        return Condition("membership", "warn", threshold, value,
                         f"{text} reaches warn_membership_auc {warn:.2f}: the model memorises membership.", extra)
    return Condition("membership", "pass", threshold, value,
                     f"{text} is below {threshold:.2f} or consistent with chance; pass.", extra)


def membership_tpr_condition(settings: GateSettings, attacks: ReferenceMembership) -> Condition:
    """The strongest reference-model attack's TPR at the gate's FPR: fail at ``fail_membership_tpr`` × that FPR.

    Where the non-members cannot resolve the gate's FPR the lowest FPR they resolve is used, and the TPR's
    Clopper–Pearson lower end must exceed the FPR too, so that a handful of lucky members never fails a model.
    """
    times = settings.fail_membership_tpr
    row = attacks.strongest
    if times is None:
        return Condition("membership_tpr", "skipped", None, None, "fail_membership_tpr is switched off.")
    rate = row.gate_rate(attacks.gate_fpr)
    if rate is None:
        return Condition("membership_tpr", "skipped", times, None,
                         f"Too few non-members ({row.n_nonmembers}) to resolve any recorded FPR.")
    level = times * rate.fpr
    text = (f"{row.name[0].upper()}{row.name[1:]} identifies {rate.tpr:.1%} of members at {rate.fpr:.1%} FPR "
            f"(95% CI {rate.ci_low:.1%}–{rate.ci_high:.1%})")
    if rate.fpr != attacks.gate_fpr:
        text += f"; {attacks.gate_fpr:.1%} FPR is below what {row.n_nonmembers} non-members resolve"
    extra = MappingProxyType({"attack": row.attack, "reference_models": row.reference_models, "fpr": rate.fpr,
                              "tpr": rate.tpr, "ci_low": rate.ci_low, "ci_high": rate.ci_high})
    if rate.tpr >= level and rate.ci_low > rate.fpr:
        return Condition("membership_tpr", "fail", times, rate.tpr,
                         f"{text}: at least fail_membership_tpr {times:g} × the FPR ({level:.1%}); the model "
                         "memorises its training set.", extra)
    return Condition("membership_tpr", "pass", times, rate.tpr,
                     f"{text}: below fail_membership_tpr {times:g} × the FPR ({level:.1%}) or within chance.", extra)
