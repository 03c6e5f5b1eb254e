"""What the gate reads about an audit, as typed values: the findings, every member's score, the statistics.

``GateInput.of`` takes them from an audit record (gated or not); the
conditions and the verdict then work on these values only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from leakaudit.record import AuditRecord, BudgetCut, Finding, LeakScore, MemberScore, MembershipTest
from leakaudit.record.membership import ReferenceMembership


@dataclass(frozen=True)
class GateInput:
    """The facts of one audit the gate decides on."""

    findings: tuple[Finding, ...]  # the listed rows, in their order
    n_train: int
    n_holdout: int | None
    calibrated: bool
    holdout_quantiles: tuple[str, ...]  # the quantiles of non-members' best match the audit recorded
    reference: float | None  # non-members' best match at the gate's quantile (None: not recorded)
    leak: LeakScore | None
    membership: MembershipTest | None
    attacks: ReferenceMembership | None  # the reference-model attacks (None: R = 0)
    lpips_available: bool
    lpips_reason: str | None
    complete: bool
    steps: int
    planned_steps: int
    power_status: str  # shown | not shown | not measured
    power_reason: str | None
    budget_cuts: tuple[BudgetCut, ...] = ()  # phases after the attack the budget ended

    @classmethod
    def of(cls, record: AuditRecord, holdout_quantile: float) -> GateInput:
        summary, inversion, power = record.summary, record.inversion, record.power
        return cls(
            findings=record.findings, n_train=summary.n_train or len(record.findings), n_holdout=summary.n_holdout,
            calibrated=record.calibrated, holdout_quantiles=summary.holdout_quantile_keys,
            reference=summary.holdout_quantile(holdout_quantile), leak=summary.leak_score,
            membership=summary.membership_test, attacks=record.membership_attacks,
            lpips_available=record.lpips_available,
            lpips_reason=record.lpips_reason,
            complete=(inversion.complete and not record.budget_cuts
                      and (record.membership_attacks is None or record.membership_attacks.complete)),
            steps=inversion.steps,
            planned_steps=inversion.planned_steps,
            power_status="not measured" if power is None else power.status,
            power_reason=None if power is None else power.reason,
            budget_cuts=record.budget_cuts,
        )


def member_scores(rows: Sequence[MemberScore | Mapping[str, Any]]) -> tuple[MemberScore, ...]:
    """Members as typed scores (rows of ``{fingerprint, ssim}`` are read once, here)."""
    return tuple(r if isinstance(r, MemberScore) else MemberScore(str(r["fingerprint"]), float(r["ssim"]))
                 for r in rows)
