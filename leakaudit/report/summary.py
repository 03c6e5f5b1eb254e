"""What an audit found, in plain words: one source for the HTML, Markdown, JUnit and terminal headlines.

A reviewer reads the first line only, so that line names what holds (the
model reconstructs training images, memorises membership, neither, or the
attack is incomplete) and counts leaked members, not listed rows. The facts
(exposure, leaked members, the headline) are the record's own properties;
this module only words them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from leakaudit.record import AuditRecord, Condition, as_record

SYMBOLS = {"pass": "✔", "warn": "⚠", "fail": "✖", "incomplete": "…", "skipped": "–", "ok": "✔", "ignored": "⊘"}
Readable = AuditRecord | Mapping[str, Any]  # a record, or a findings document read as one


@dataclass(frozen=True)
class ConditionLine:
    """One gate condition as one short line."""

    name: str
    status: str
    text: str


@dataclass(frozen=True)
class AuditSummary:
    """The verdict in plain words, with the numbers it rests on."""

    verdict: str
    exposure: str  # both | reconstruction | membership | neither | incomplete
    headline: str
    detail: str
    leaked: int | None
    n_train: int
    conditions: tuple[ConditionLine, ...]
    incomplete: bool
    power: str | None = None  # shown | not shown | not measured; None for a document from before the control
    power_text: str | None = None  # the power sentence, in plain words


def format_p(p: float | None) -> str:
    """``p < 0.001`` below a thousandth, else ``p = 0.012``: permutation p-values have no more digits."""
    if p is None:
        return "p –"
    return "p < 0.001" if float(p) < 0.001 else f"p = {float(p):.3f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def plural(n: int, noun: str) -> str:
    """``1 training image``, ``8 training images``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _ssim_text(condition: Condition, record: AuditRecord) -> str:
    fails, warns = record.count("fail"), record.count("warn")
    t = record.thresholds
    if fails:
        text = f"{plural(fails, 'training image')} reconstructed at SSIM ≥ {_num(t.fail_ssim, 2)}"
    else:
        text = (
            f"{plural(warns, 'training image')} at SSIM ≥ {_num(t.warn_ssim, 2)} (warn level), none at the fail level"
        )
    chance = " — as many as chance gives" if "consistent with chance" in condition.message else ""
    return f"{text} (best {_num(condition.observed)}){chance}"


def condition_text(condition: Condition, record: AuditRecord) -> str:
    """A short line for one condition: the key number first, the threshold after it."""
    if condition.extra.get("summary"):
        return str(condition.extra["summary"])
    name, threshold, observed = condition.name, condition.threshold, condition.observed
    if condition.status == "skipped":
        return f"{name}: not evaluated"
    if name == "ssim":
        return _ssim_text(condition, record)
    if name == "leak_score":
        leak = record.summary.leak_score
        ci = "" if leak is None else f"CI {_num(leak.ci_low)}–{_num(leak.ci_high)}, "
        p = format_p(None if leak is None else leak.p_value)
        return f"leak score {_num(observed)} vs {_num(threshold, 2)} ({ci}{p})"
    if name == "membership_tpr":
        fpr = float(condition.extra.get("fpr") or 0.0)
        attack = record.strongest_membership
        who = attack.name if attack is not None else "the strongest attack"
        return (f"{who} identifies {float(observed or 0.0):.1%} of members at {fpr:.1%} FPR vs "
                f"{_num(threshold, 0)} × the FPR")
    if name == "membership":
        attack = record.strongest_membership
        who = attack.name if attack is not None and attack.attack != "loss" else "the loss threshold"
        return f"membership AUC {_num(observed)} by {who} vs {_num(threshold, 2)}"
    if name == "lpips":
        return (
            f"{plural(record.count('fail'), 'reconstruction')} at LPIPS ≤ {_num(threshold, 2)} (best {_num(observed)})"
        )
    return f"{name.replace('_', ' ')} {_num(observed)} vs threshold {_num(threshold, 2)}"


def _detail(record: AuditRecord) -> str:
    parts = []
    if record.leaked_members is not None:
        parts.append(f"{record.leaked_members} of {record.summary.n_train} training images are matched by a "
                     f"reconstruction better than {float(record.thresholds.holdout_quantile):.0%} of non-members.")
    test = record.summary.membership_test
    if test is not None and record.exposure_kind in ("membership", "both"):
        parts.append(membership_sentence(record) or
                     f"A loss-threshold membership test separates members from non-members at AUC {_num(test.auc)}.")
    elif test is not None and record.membership_test_name is not None:
        parts.append(f"Membership was tested by {record.membership_test_name}.")
    if not record.calibrated:
        parts.append("Uncalibrated: no holdout of non-members, so absolute thresholds only.")
    return " ".join(parts)


def membership_sentence(record: AuditRecord) -> str | None:
    """"LiRA with 8 reference models identifies 12 % of members at 0.1 % FPR (AUC 0.81)"; None without them."""
    attacks = record.membership_attacks
    if attacks is None or attacks.reference_models == 0:
        return None
    row = attacks.strongest
    rate = row.gate_rate(attacks.gate_fpr)
    if rate is None:
        return f"{row.name[0].upper()}{row.name[1:]} separates members from non-members at AUC {_num(row.auc)}."
    return (f"{row.name[0].upper()}{row.name[1:]} identifies {rate.tpr:.1%} of members at {rate.fpr:.1%} FPR "
            f"(AUC {_num(row.auc)}).")


def summarise(readable: Readable) -> AuditSummary:
    """The plain-words verdict of a gated audit."""
    record = as_record(readable)
    lines = tuple(ConditionLine(c.name, c.status, condition_text(c, record))
                  for c in record.gate.conditions if c.found)
    power = record.power
    return AuditSummary(
        verdict=record.verdict, exposure=record.exposure_kind, headline=record.headline, detail=_detail(record),
        leaked=record.leaked_members, n_train=record.summary.n_train, conditions=lines,
        incomplete=record.incomplete, power=None if power is None else power.status,
        power_text=None if power is None else power.plain_statement,
    )


def headline_line(readable: Readable) -> str:
    """The terminal's first line, e.g. ``✖ FAIL: reconstructs training images (8 of 10 members leaked)``."""
    record = as_record(readable)
    quantile = float(record.thresholds.holdout_quantile)
    leaked, headline = record.leaked_members, record.headline
    count = (f" ({leaked} of {record.summary.n_train} members matched better than {quantile:.0%} of non-members)"
             if leaked is not None else "")
    return f"{SYMBOLS.get(record.verdict, '')} {record.verdict.upper()}: {headline[0].lower() + headline[1:]}{count}"


def membership_line(readable: Readable) -> str | None:
    """One line on the membership test behind the verdict: which attack, and what it found; None without one."""
    record = as_record(readable)
    name = record.membership_test_name
    if name is None:
        return None
    found = membership_sentence(record)
    if found and found.startswith("The "):  # a clause after the semicolon
        found = "t" + found[1:]
    return f"membership tested by {name}" + (f"; {found}" if found else "")


def power_line(readable: Readable) -> str | None:
    """One line on the attack's power: the statement and each rung's leak score; None without a control."""
    power = as_record(readable).power
    if power is None:
        return None
    ladder = "; ".join(
        f"K={r.k}: leak {_num(None if r.leak_score is None else r.leak_score.value)}, "
        f"{r.members_above_quantile}/{r.n_members} above the null, "
        f"{'shown' if r.shown else 'not shown'}" for r in power.rungs)
    return f"{power.statement}" + (f" [{ladder}]" if ladder else "")


_P_VALUE = re.compile(r"\bp = (\d+(?:\.\d+)?(?:e-?\d+)?)")
_LONG_FLOAT = re.compile(r"(?<![\w.])(\d+\.\d{5,})(?![\d])")


def tidy_numbers(text: str) -> str:
    """Messages for people: ``p = 0.000999`` → ``p < 0.001``, and no float with more than 3 decimals."""
    def p_value(match: re.Match[str]) -> str:
        return format_p(float(match.group(1)))

    return _LONG_FLOAT.sub(lambda m: f"{float(m.group(1)):.3f}", _P_VALUE.sub(p_value, text))
