"""What an audit found, in plain words: one source for the HTML, Markdown, JUnit and terminal headlines.

A reviewer reads the first line only, so that line names what holds (the
model reconstructs training images, memorises membership, neither, or the
attack is incomplete) and counts leaked members, not listed rows. The newer
``exposure`` field of the document is read first; older documents are read
from their gate conditions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RECONSTRUCTION_CONDITIONS = ("ssim", "lpips", "leak_score")
SYMBOLS = {"pass": "✔", "warn": "⚠", "fail": "✖", "incomplete": "…", "skipped": "–", "ok": "✔", "ignored": "⊘"}
HEADLINES = {
    "both": "Reconstructs training images and memorises membership",
    "reconstruction": "Reconstructs training images",
    "membership": "Memorises membership",
    "neither": "No leakage found",
    "incomplete": "Incomplete: the attack did not finish",
}


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


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _is_incomplete(document: Mapping[str, Any]) -> bool:
    if document.get("verdict") == "incomplete" or (document.get("inversion") or {}).get("complete") is False:
        return True
    fraction = (document.get("inversion") or {}).get("completed_fraction")
    return fraction is not None and float(fraction) < 1.0


def _flag(value: Any) -> bool:
    if isinstance(value, Mapping):
        return bool(value.get("holds", value.get("found", value.get("status") in ("fail", "warn"))))
    return bool(value)


def _exposure_field(exposure: Any) -> str | None:
    """Read ``document["exposure"]`` whether it is a word or a mapping of what holds."""
    if isinstance(exposure, str):
        word = exposure.lower()
        aliases = {"none": "neither", "reconstructs": "reconstruction", "memorises": "membership"}
        word = aliases.get(word, word)
        return word if word in HEADLINES else None
    if isinstance(exposure, Mapping):
        rec = _flag(exposure.get("reconstruction", exposure.get("reconstructs")))
        mem = _flag(exposure.get("membership", exposure.get("memorises")))
        return "both" if rec and mem else "reconstruction" if rec else "membership" if mem else "neither"
    return None


def _exposure_from_conditions(conditions: Sequence[Mapping[str, Any]]) -> str:
    failed = {str(c.get("name")) for c in conditions if c.get("status") == "fail"}
    rec = bool(failed & set(RECONSTRUCTION_CONDITIONS))
    mem = any(name.startswith("membership") for name in failed)
    return "both" if rec and mem else "reconstruction" if rec else "membership" if mem else "neither"


def leaked_members(document: Mapping[str, Any]) -> int | None:
    """Training images matched better than the holdout's quantile (every member, not just listed rows)."""
    summary = document.get("summary") or {}
    if summary.get("n_leaked") is not None:
        return int(summary["n_leaked"])
    if not document.get("calibrated"):
        return None
    per_class = summary.get("per_class") or []
    counted = sum(int(c.get("n_flagged") or 0) for c in per_class)
    listed = sum(1 for f in document.get("findings") or [] if f.get("above_holdout_p99"))  # a lower bound
    return max(counted, listed)


def plural(n: int, noun: str) -> str:
    """``1 training image``, ``8 training images``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _count(findings: Sequence[Mapping[str, Any]], status: str) -> int:
    return sum(1 for f in findings if f.get("status") == status)


def _ssim_text(condition: Mapping[str, Any], document: Mapping[str, Any]) -> str:
    findings = document.get("findings") or []
    fails, warns = _count(findings, "fail"), _count(findings, "warn")
    t = document.get("thresholds") or {}
    if fails:
        text = f"{plural(fails, 'training image')} reconstructed at SSIM ≥ {_num(t.get('fail_ssim', condition.get('threshold')), 2)}"
    else:
        text = f"{plural(warns, 'training image')} at SSIM ≥ {_num(t.get('warn_ssim'), 2)} (warn level), none at the fail level"
    chance = " — as many as chance gives" if "consistent with chance" in str(condition.get("message")) else ""
    return f"{text} (best {_num(condition.get('observed'))}){chance}"


def condition_text(condition: Mapping[str, Any], document: Mapping[str, Any]) -> str:
    """A short line for one condition: the key number first, the threshold after it."""
    if condition.get("summary"):
        return str(condition["summary"])
    name, status = str(condition.get("name")), condition.get("status")
    threshold, observed = condition.get("threshold"), condition.get("observed")
    findings = document.get("findings") or []
    if status == "skipped":
        return f"{name}: not evaluated"
    if name == "ssim":
        return _ssim_text(condition, document)
    if name == "leak_score":
        leak = (document.get("summary") or {}).get("leak_score") or {}
        ci = f"CI {_num(leak.get('ci_low'))}–{_num(leak.get('ci_high'))}, " if leak else ""
        return f"leak score {_num(observed)} vs {_num(threshold, 2)} ({ci}{format_p(leak.get('p_value'))})"
    if name == "lpips":
        return f"{plural(_count(findings, 'fail'), 'reconstruction')} at LPIPS ≤ {_num(threshold, 2)} (best {_num(observed)})"
    return f"{name.replace('_', ' ')} {_num(observed)} vs threshold {_num(threshold, 2)}"


def _detail(document: Mapping[str, Any], exposure: str, leaked: int | None) -> str:
    summary = document.get("summary") or {}
    n_train = int(summary.get("n_train") or 0)
    quantile = (document.get("thresholds") or {}).get("holdout_quantile", 0.99)
    parts = []
    if leaked is not None:
        parts.append(f"{leaked} of {n_train} training images are matched by a reconstruction better than "
                     f"{float(quantile):.0%} of non-members.")
    auc = summary.get("membership_loss_auc")
    if auc is not None and exposure in ("membership", "both"):
        parts.append(f"A loss-threshold membership test separates members from non-members at AUC {_num(auc)}.")
    if not document.get("calibrated"):
        parts.append("Uncalibrated: no holdout of non-members, so absolute thresholds only.")
    return " ".join(parts)


POWER_HEADLINES = {
    "not shown": "No leakage found, but the attack did not reconstruct a planted copy of this architecture",
    "not measured": "No leakage found; the attack's power was not measured",
}


def power_of(document: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(status, statement) of the positive control; (None, None) for a document without one."""
    power = document.get("power")
    if not isinstance(power, Mapping):
        return None, None
    status = str(power.get("status") or "not measured")
    statement = str(power.get("statement") or "")
    prefix = f"Power {status}: "
    return status, statement[len(prefix):] if statement.startswith(prefix) else statement


def power_required_note(document: Mapping[str, Any]) -> bool:
    """Whether require_power, not the attack, made this audit incomplete."""
    return document.get("verdict") == "incomplete" and (document.get("inversion") or {}).get("complete", True) \
        and bool((document.get("thresholds") or {}).get("require_power"))


def summarise(document: Mapping[str, Any]) -> AuditSummary:
    """The plain-words verdict of a gated findings document."""
    conditions = (document.get("gate") or {}).get("conditions") or []
    incomplete = _is_incomplete(document)
    exposure = _exposure_field(document.get("exposure")) or _exposure_from_conditions(conditions)
    if exposure == "neither" and incomplete:
        exposure = "incomplete"
    power, power_text = power_of(document)
    headline = HEADLINES[exposure]
    if exposure == "neither" and document.get("verdict") == "warn":
        headline = "No leakage at the fail level, with warnings to look at"
    if exposure == "neither" and power in POWER_HEADLINES:
        headline = POWER_HEADLINES[power]  # a pass the attack could not have failed must not read as clean
    if power_required_note(document):
        headline = f"Incomplete: power {power or 'not measured'}, and require_power is set"
    elif incomplete and exposure != "incomplete":
        headline += " (from an attack that did not finish)"
    leaked = leaked_members(document)
    lines = tuple(
        ConditionLine(str(c.get("name")), str(c.get("status")), condition_text(c, document))
        for c in conditions if c.get("status") in ("fail", "warn")
    )
    return AuditSummary(
        verdict=str(document.get("verdict", "fail")), exposure=exposure, headline=headline,
        detail=_detail(document, exposure, leaked), leaked=leaked,
        n_train=int((document.get("summary") or {}).get("n_train") or 0), conditions=lines, incomplete=incomplete,
        power=power, power_text=power_text,
    )


def headline_line(document: Mapping[str, Any]) -> str:
    """The terminal's first line, e.g. ``✖ FAIL: reconstructs training images (8 of 10 members leaked)``."""
    s = summarise(document)
    quantile = float((document.get("thresholds") or {}).get("holdout_quantile", 0.99))
    count = (f" ({s.leaked} of {s.n_train} members matched better than {quantile:.0%} of non-members)"
             if s.leaked is not None else "")
    return f"{SYMBOLS.get(s.verdict, '')} {s.verdict.upper()}: {s.headline[0].lower() + s.headline[1:]}{count}"


def power_line(document: Mapping[str, Any]) -> str | None:
    """One line on the attack's power: the statement and each rung's leak score; None without a control."""
    power = document.get("power")
    if not isinstance(power, Mapping):
        return None
    rungs = power.get("rungs") or []
    ladder = "; ".join(
        f"K={r.get('k')}: leak {_num((r.get('leak_score') or {}).get('value'))}, "
        f"{r.get('members_above_quantile')}/{r.get('n_members')} above the null, "
        f"{'shown' if r.get('shown') else 'not shown'}" for r in rungs)
    return f"{power.get('statement')}" + (f" [{ladder}]" if ladder else "")


_P_VALUE = re.compile(r"\bp = (\d+(?:\.\d+)?(?:e-?\d+)?)")
_LONG_FLOAT = re.compile(r"(?<![\w.])(\d+\.\d{5,})(?![\d])")


def tidy_numbers(text: str) -> str:
    """Messages for people: ``p = 0.000999`` → ``p < 0.001``, and no float with more than 3 decimals."""
    def p_value(match: re.Match[str]) -> str:
        return format_p(float(match.group(1)))

    return _LONG_FLOAT.sub(lambda m: f"{float(m.group(1)):.3f}", _P_VALUE.sub(p_value, text))


def unconfined_reason(document: Mapping[str, Any]) -> str | None:
    """Why the model ran outside the confined worker, or None when it ran confined (or the document predates it)."""
    record = (document.get("provenance") or {}).get("confinement")
    if not isinstance(record, Mapping) or record.get("worker") or record.get("caller_object"):
        return None  # confined, or the caller's own in-memory module: nothing from a file ran
    return str(record.get("reason") or "confinement unavailable")
