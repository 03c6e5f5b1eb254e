"""The CI gate: thresholds → per-condition status → verdict → exit code, in one place.

The rules a user relies on (directions, default thresholds and why, chance,
baseline, ignore entries, incomplete attacks) are in ``docs/gate.md``. The
settings are ``settings.py``, each condition ``conditions.py``, the typed
inputs ``inputs.py`` and the typed outcome ``outcome.py``; this module
combines them into a verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date
from typing import Any

from leakaudit.errors import UsageError
from leakaudit.exit_codes import ExitStatus
from leakaudit.gate.conditions import (
    Member, chance_test, leak_condition, lpips_condition, members_of, membership_condition, membership_tpr_condition,
    ssim_condition,
)
from leakaudit.gate.inputs import GateInput, member_scores
from leakaudit.gate.outcome import BaselineSummary, Condition, FindingOutcome, GateOutcome, IgnoredOutcome, Verdict
from leakaudit.gate.settings import GateSettings, IgnoreEntry
from leakaudit.record import (
    AuditRecord, BaselineStatus, Counted, Exposure, Finding, FindingStatus, MemberScore, Thresholds, as_record, dump,
    load_ungated,
)

Previous = AuditRecord | Mapping[str, Any]  # an earlier audit (``--baseline``): its record, or its document
Members = Sequence[MemberScore] | Sequence[Mapping[str, Any]]


def _holdout_reference(audit: GateInput, quantile: float) -> float | None:
    """The holdout's best-match SSIM at ``quantile`` (the gate's own); None without a holdout."""
    if not audit.calibrated:
        return None
    reference = audit.reference
    if reference is None:
        raise UsageError(
            f"the audit has no holdout SSIM quantile {quantile:g} "
            f"(available: {', '.join(sorted(audit.holdout_quantiles)) or 'none'}); "
            "choose one of them as holdout_quantile"
        )
    return reference


def _active_ignores(settings: GateSettings, today: date) -> tuple[dict[str, IgnoreEntry], tuple[IgnoredOutcome, ...]]:
    active: dict[str, IgnoreEntry] = {}
    listed: list[IgnoredOutcome] = []
    for entry in settings.ignore:
        expired = today > entry.expires
        listed.append(IgnoredOutcome(entry, expired))
        if not expired:
            active[entry.fingerprint] = entry
    return active, tuple(listed)


def _expiry_notes(ignored: Sequence[IgnoredOutcome]) -> tuple[str, ...]:
    return tuple(f"Ignore entry for {i.entry.fingerprint[:12]}… expired on {i.entry.expires.isoformat()}; "
                 "the finding is no longer ignored." for i in ignored if i.expired)


def evaluate_gate(
    audit: GateInput | AuditRecord | Mapping[str, Any],
    settings: GateSettings,
    *,
    today: date,
    previous: Previous | None = None,
    baseline_path: str | None = None,
    members: Members | None = None,
) -> GateOutcome:
    """Decide the gate for an audit (typed, or a findings document whose gate is not filled yet).

    ``members``: every training member's score (the audit passes them);
    without it the listed findings stand for the members, which is exact only
    when every member is listed (``gate.counted`` says which). ``previous`` is
    an earlier audit (``--baseline``); ``today`` decides which ignore entries
    have expired. Statuses already in a document are ignored, so it can be gated again.
    """
    if not isinstance(audit, GateInput):
        audit = GateInput.of(
            audit if isinstance(audit, AuditRecord) else load_ungated(audit), settings.holdout_quantile
        )
    facts = audit
    before = None if previous is None else as_record(previous)
    rows = member_scores(members) if members is not None else tuple(f.score for f in facts.findings)
    n_train = len(rows) if members is not None else facts.n_train
    source = ("every member" if members is not None or n_train == len(rows)
              else f"the {len(rows)} listed findings of {n_train} members (a lower bound)")
    active, ignored = _active_ignores(settings, today)
    previous_findings = None if before is None else {f.fingerprint: f for f in before.findings}
    chance = chance_test(rows, n_train, facts.n_holdout, settings, _holdout_reference(facts, settings.holdout_quantile))
    lpips = {f.fingerprint: f.lpips for f in facts.findings}
    outcome = members_of(rows, lpips, settings, chance, active, previous_findings)
    by_fp = {m.fingerprint: m for m in outcome}
    listed = [by_fp[f.fingerprint] for f in facts.findings]
    conditions: tuple[Condition, ...] = (
        ssim_condition(settings, outcome, chance),
        lpips_condition(settings, facts.lpips_available, facts.lpips_reason, facts.findings, listed, chance),
        leak_condition(settings, facts.leak, facts.calibrated, None if before is None else before.summary.leak_score),
        membership_condition(settings, facts.membership, facts.attacks),
    )
    if facts.attacks is not None and facts.attacks.reference_models > 0 and facts.membership is not None:
        conditions = (*conditions, membership_tpr_condition(settings, facts.attacks))
    finding_outcomes = tuple(FindingOutcome(m.fingerprint, m.status, m.baseline, m.rule) for m in listed)
    baseline = None
    if previous_findings is not None:
        baseline = _baseline_summary(outcome, previous_findings, baseline_path or settings.baseline_path or "")
    verdict, exit_code, incomplete_note = _verdict(facts, conditions)
    verdict, exit_code, power_note = _required_power(facts, settings, verdict, exit_code)
    notes = _expiry_notes(ignored) + tuple(n for n in (incomplete_note, power_note) if n)
    return GateOutcome(verdict, exit_code, conditions, finding_outcomes, baseline, ignored, notes,
                       Exposure.decide(conditions, verdict), Counted(n_train, source))


def _verdict(audit: GateInput, conditions: Sequence[Condition]) -> tuple[Verdict, int, str | None]:
    """The verdict and exit code; an unfinished attack fails on evidence or is incomplete, never passes."""
    statuses = {c.status for c in conditions}
    if "fail" in statuses:
        verdict: Verdict = "fail"
    elif not audit.complete:
        verdict = "incomplete"
    else:
        verdict = "warn" if "warn" in statuses else "pass"
    code = {"fail": ExitStatus.GATE_FAILED, "incomplete": ExitStatus.INCOMPLETE}.get(verdict, ExitStatus.PASSED)
    note = None
    if audit.budget_cuts and audit.steps >= audit.planned_steps:  # the attack finished: a later phase did not
        phases = ", ".join(dict.fromkeys(c.phase for c in audit.budget_cuts))
        note = (f"The budget ended the audit during {phases}, after the attack: "
                + ("the verdict is fail because what was done already fails the gate." if verdict == "fail" else
                   "nothing found so far fails the gate, but an unfinished audit cannot pass (exit 2)."))
    elif not audit.complete and audit.steps >= audit.planned_steps:  # the attack finished: the membership phase did not
        note = ("The membership phase is incomplete (the budget ended the reference models' training): "
                + ("the verdict is fail because what was done already fails the gate." if verdict == "fail" else
                   "nothing found so far fails the gate, but an unfinished audit cannot pass (exit 2)."))
    elif not audit.complete:
        done = f"{audit.steps} of {audit.planned_steps} planned steps"
        note = (f"The attack is incomplete ({done}): the verdict is fail because what was done already fails the gate."
                if verdict == "fail" else
                f"The attack is incomplete ({done}): nothing found so far fails the gate, but an unfinished attack "
                "cannot pass (exit 2).")
    return verdict, int(code), note


def _required_power(audit: GateInput, settings: GateSettings, verdict: Verdict,
                    code: int) -> tuple[Verdict, int, str | None]:
    """``require_power``: a pass (or warning) whose attack showed no power on a planted copy is incomplete."""
    status = audit.power_status
    loss_only = audit.membership is not None and (audit.attacks is None or audit.attacks.reference_models == 0)
    if not settings.require_power or verdict not in ("pass", "warn") or (status == "shown" and not loss_only):
        return verdict, code, None
    reasons = []
    if status != "shown":
        reasons.append(f"power is {status} ({audit.power_reason or 'no control ran'}): the same attack did not "
                       "reconstruct a copy of this architecture that memorises its images")
    if loss_only:
        reasons.append("membership was tested only by the loss threshold, the weakest known test (no reference "
                       "models: raise --reference-models or --effort)")
    return "incomplete", int(ExitStatus.INCOMPLETE), (
        f"require_power: {'; and '.join(reasons)}; so this pass cannot stand (exit 2).")


def _baseline_summary(members: Sequence[Member], previous_findings: Mapping[str, Finding],
                      path: str) -> BaselineSummary:
    flagged = [m for m in members if m.status in ("fail", "warn")]
    now = {m.fingerprint for m in flagged} | {m.fingerprint for m in members if m.ignored}
    fixed = tuple(fp for fp, before in previous_findings.items() if before.flagged and fp not in now)
    counted = [m.baseline for m in flagged]
    return BaselineSummary(path=path, new=counted.count("new"), persisting=counted.count("persisting"),
                           worse=counted.count("worse"), fixed=fixed)


def gate_record(
    record: AuditRecord,
    settings: GateSettings,
    *,
    today: date,
    previous: Previous | None = None,
    baseline_path: str | None = None,
    members: Members | None = None,
) -> AuditRecord:
    """The record with the gate's thresholds, statuses, conditions, verdict, exit code and notes."""
    outcome = evaluate_gate(record, settings, today=today, previous=previous, baseline_path=baseline_path,
                            members=members)
    before = None if previous is None else {f.fingerprint: float(f.ssim) for f in as_record(previous).findings}
    findings = tuple(_decided(f, d.status, d.rule, d.baseline_status, before)
                     for f, d in zip(record.findings, outcome.findings))
    notes = record.summary.notes + tuple(n for n in outcome.notes if n not in record.summary.notes)  # once each
    return replace(record, thresholds=Thresholds.from_dict(settings.thresholds()), findings=findings,
                   gate=outcome.record(), verdict=outcome.verdict, exit_code=outcome.exit_code,
                   summary=replace(record.summary, notes=notes))


def _decided(finding: Finding, status: FindingStatus, rule: str, baseline: BaselineStatus | None,
             before: Mapping[str, float] | None) -> Finding:
    """A finding with the gate's decision; with a baseline, the SSIM it had there (a fall from 0.965 to 0.368 shows)."""
    if before is None:
        return replace(finding, status=status, status_rule=rule, baseline_status=baseline)
    return replace(finding, status=status, status_rule=rule, baseline_status=baseline,
                   previous_ssim=before.get(finding.fingerprint), compared=True)


def apply_gate(
    document: Mapping[str, Any],
    settings: GateSettings,
    *,
    today: date,
    previous: Previous | None = None,
    baseline_path: str | None = None,
    members: Members | None = None,
) -> dict[str, Any]:
    """The findings document gated: ``gate_record`` over the document's record, dumped."""
    return dump(gate_record(load_ungated(document), settings, today=today, previous=previous,
                            baseline_path=baseline_path, members=members))
