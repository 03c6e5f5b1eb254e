"""The CI gate: thresholds → per-condition status → verdict → exit code, in one place.

The rules a user relies on (directions, default thresholds and why, chance,
baseline, ignore entries, incomplete attacks) are in ``docs/gate.md``. The
settings are ``settings.py``, each condition ``conditions.py``, the
typed outcome ``outcome.py``; this module combines them into a verdict.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from leakaudit.errors import UsageError
from leakaudit.exit_codes import ExitStatus
from leakaudit.gate.outcome import (
    BaselineSummary, Condition, FindingOutcome, GateOutcome, IgnoredOutcome, Verdict,
)
from leakaudit.gate.conditions import (
    Member, chance_test, leak_condition, lpips_condition, members_of, membership_condition, ssim_condition,
)
from leakaudit.gate.settings import GateSettings, IgnoreEntry

EXPOSURE_STATEMENTS = {
    (True, True): "reconstructs training images and memorises membership",
    (True, False): "reconstructs training images",
    (False, True): "memorises membership",
    (False, False): "neither",
}


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
    chance = chance_test(rows, n_train, summary, settings, reference)
    lpips = {f["fingerprint"]: (None if f.get("lpips") is None else float(f["lpips"])) for f in findings}
    outcome = members_of(rows, lpips, settings, chance, active, previous_findings)
    by_fp = {m.fingerprint: m for m in outcome}
    listed = [by_fp[f["fingerprint"]] for f in findings]
    conditions = (
        ssim_condition(settings, outcome, chance),
        lpips_condition(settings, document, listed, chance),
        leak_condition(settings, document, previous),
        membership_condition(settings, document),
    )
    finding_outcomes = tuple(FindingOutcome(m.fingerprint, m.status, m.baseline, m.rule) for m in listed)
    baseline = None
    if previous_findings is not None:
        baseline = _baseline_summary(outcome, previous_findings, baseline_path or settings.baseline_path or "")
    verdict, exit_code, incomplete_note = _verdict(document, conditions)
    verdict, exit_code, power_note = _required_power(document, settings, verdict, exit_code)
    exposure = _exposure(conditions, verdict)
    for note in (incomplete_note, power_note):
        if note:
            notes = notes + (note,)
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


def _required_power(document: Mapping[str, Any], settings: GateSettings, verdict: Verdict,
                    code: int) -> tuple[Verdict, int, str | None]:
    """``require_power``: a pass (or warning) whose attack showed no power on a planted copy is incomplete."""
    power = document.get("power") or {}
    status = power.get("status", "not measured")
    if not settings.require_power or verdict not in ("pass", "warn") or status == "shown":
        return verdict, code, None
    return "incomplete", int(ExitStatus.INCOMPLETE), (
        f"require_power: power is {status} ({power.get('reason') or 'no control ran'}), so this pass cannot stand "
        "(exit 2): the same attack did not reconstruct a copy of this architecture that memorises its images.")


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


def _baseline_summary(members: Sequence[Member], previous_findings: Mapping[str, Mapping[str, Any]],
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
    before = None if previous is None else {f.get("fingerprint"): f.get("ssim") for f in previous.get("findings") or []}
    for finding, decided in zip(result.get("findings") or [], outcome.findings):
        finding["status"] = decided.status
        finding["status_rule"] = decided.rule
        finding["baseline_status"] = decided.baseline_status
        if before is not None:  # the numbers beside new / persisting / worse: a fall from 0.965 to 0.368 shows
            value = before.get(finding.get("fingerprint"))
            finding["previous_ssim"] = None if value is None else float(value)
    result["gate"] = outcome.gate_dict()
    result["verdict"] = outcome.verdict
    result["exposure"] = dict(outcome.exposure)
    result["exit_code"] = outcome.exit_code
    if outcome.notes:
        summary = result.setdefault("summary", {})
        existing = list(summary.get("notes") or [])
        summary["notes"] = existing + [n for n in outcome.notes if n not in existing]  # re-gating adds nothing twice
    return result
