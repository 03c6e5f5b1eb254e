"""The typed result of an audit turned into its record, before the gate decides.

The pieces come from the stages (the attack, the sets, the evidence, the
findings, the control); ``audit_record`` assembles the ``AuditRecord`` the
gate then completes (``gate.verdict.gate_record``) and every format renders.
The JSON document is the record's ``dump``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from leakaudit.matching.ssim import SSIM_SETTINGS
from leakaudit.pipeline.attack import Attack
from leakaudit.pipeline.evidence import Evidence, Findings, per_class
from leakaudit.pipeline.inputs import AuditSets
from leakaudit.pipeline.membership import MembershipResult
from leakaudit.pipeline.membership_record import reference_membership
from leakaudit.pipeline.power import PowerStage
from leakaudit.record import (SCHEMA_VERSION, AuditRecord, BudgetCut, GateRecord, Inversion, Membership, Summary,
                              Thresholds)
from leakaudit.record.parse import frozen
from leakaudit.scoring import distribution_summary, histogram, quantile
from leakaudit.version import __version__

FRACTION_THRESHOLDS = (0.4, 0.5, 0.6)  # the summaries' "fraction above" levels of best-match SSIM


@dataclass(frozen=True)
class AuditResult:
    """Everything an audit found, before it is a record."""

    attack: Attack
    sets: AuditSets
    evidence: Evidence
    findings: Findings
    notes: tuple[str, ...]
    lpips: dict[str, Any]  # the LPIPS scorer's settings, or why it is unavailable
    provenance: dict[str, Any]
    power: PowerStage | None = None  # the positive control; None only for results made without one
    membership: MembershipResult | None = None  # the membership attacks (None without a holdout)
    train_best_index: torch.Tensor | None = None  # (M,) each member's best reconstruction
    budget_cuts: tuple[BudgetCut, ...] = ()  # the phases after the attack the budget ended


def _summary(result: AuditResult, holdout_quantile: float) -> Summary:
    sets, ev = result.sets, result.evidence
    holdout = distribution_summary(ev.null_best, FRACTION_THRESHOLDS) if ev.null_best is not None else None
    if holdout is not None and ev.null_best is not None:  # the gate's own quantile, whatever it is set to
        quantiles = holdout["quantiles"]
        assert isinstance(quantiles, dict)
        quantiles.setdefault(f"{holdout_quantile:g}", quantile(ev.null_best, holdout_quantile))
    return Summary(
        n_train=len(sets.train), n_holdout=len(sets.null) if sets.null is not None else None,
        n_candidates=int(result.attack.candidates.shape[0]), leak_score=ev.leak,
        membership=None if ev.membership is None else Membership((ev.membership,)),
        train=frozen(distribution_summary(ev.train_best, FRACTION_THRESHOLDS)), holdout=frozen(holdout),
        holdout_ssim_p95=ev.p95, holdout_ssim_p99=ev.p99, class_mean_null=frozen(ev.prototype),
        per_class=frozen(per_class(sets.train, ev.train_best, sets.null, ev.null_best, ev.p99)),
        histogram=frozen(histogram(ev.train_best, ev.null_best)),
        weights_gain=None if ev.gain is None else frozen(ev.gain.to_dict()), notes=result.notes,
    )


def _inversion(attack: Attack, num_classes: int) -> Inversion:
    """What was planned, what ran, whether it finished."""
    result, n_candidates = attack.result, int(attack.candidates.shape[0])
    return Inversion(
        mode=result.mode, effort=attack.config.effort, complete=bool(result.complete),
        incomplete_reason=attack.incomplete, resumed=result.resumed_from is not None,
        resumed_from=result.resumed_from, steps=result.steps, planned_steps=result.planned_steps,
        seconds=result.seconds, completed_fraction=result.completed_fraction,
        phase_seconds=frozen(dict(result.phase_seconds)),
        candidates_per_class=int(n_candidates // max(num_classes, 1)), notes=tuple(result.notes),
        gallery=frozen({str(k): v for k, v in result.gallery.items()}) if result.gallery else None,
    )


def audit_record(result: AuditResult, holdout_quantile: float) -> AuditRecord:
    """The audit's record before the gate: its verdict, thresholds and gate are decided by ``gate_record``."""
    attack = result.attack
    power = None if result.power is None else result.power.power.record()
    return AuditRecord(
        schema_version=SCHEMA_VERSION, tool=frozen({"name": "leakaudit", "version": __version__}), verdict="pass",
        exit_code=0, mode=attack.result.mode, threat_model=attack.result.threat_model,
        calibrated=result.evidence.null_best is not None, thresholds=Thresholds(),
        metrics=frozen({"ssim": dict(SSIM_SETTINGS), "lpips": result.lpips}),
        summary=_summary(result, holdout_quantile), findings=result.findings.rows, gate=GateRecord(()),
        inversion=_inversion(attack, len(result.sets.train.classes)), provenance=frozen(result.provenance),
        power=power, membership_attacks=reference_membership(
            result.membership, result.train_best_index, result.evidence.train_best),
        budget_cuts=result.budget_cuts,
    )
