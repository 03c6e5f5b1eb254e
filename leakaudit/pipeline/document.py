"""The typed result of an audit, turned into the findings document (``OUT/leakaudit.json``) at the edge.

The document's shape is a contract: ``leakaudit/schema/leakaudit.schema.json``
describes it and ``SCHEMA_VERSION`` names it. Nothing upstream of this module
builds document dicts; the gate then adds its verdict, thresholds and
conditions to what is made here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leakaudit.version import __version__
from leakaudit.pipeline.attack import Attack
from leakaudit.pipeline.evidence import Evidence, Findings, per_class
from leakaudit.pipeline.inputs import AuditSets
from leakaudit.matching.ssim import SSIM_SETTINGS
from leakaudit.pipeline.power import PowerStage
from leakaudit.scoring import distribution_summary, histogram, quantile

SCHEMA_VERSION = "1.1"
FRACTION_THRESHOLDS = (0.4, 0.5, 0.6)  # the summaries' "fraction above" levels of best-match SSIM


@dataclass(frozen=True)
class AuditResult:
    """Everything an audit found, before it is a document."""

    attack: Attack
    sets: AuditSets
    evidence: Evidence
    findings: Findings
    notes: tuple[str, ...]
    lpips: dict[str, Any]  # the LPIPS scorer's settings, or why it is unavailable
    provenance: dict[str, Any]
    power: PowerStage | None = None  # the positive control; None only for results made without one


def _summary(result: AuditResult, holdout_quantile: float) -> dict[str, Any]:
    sets, ev = result.sets, result.evidence
    summary: dict[str, Any] = {
        "n_train": len(sets.train), "n_holdout": len(sets.null) if sets.null is not None else None,
        "n_candidates": int(result.attack.candidates.shape[0]),
        "leak_score": ev.leak.to_dict() if ev.leak is not None else None,
        "membership_loss_auc": ev.membership.auc if ev.membership is not None else None,
        "membership": ev.membership.to_dict() if ev.membership is not None else None,
        "train": distribution_summary(ev.train_best, FRACTION_THRESHOLDS),
        "holdout": distribution_summary(ev.null_best, FRACTION_THRESHOLDS) if ev.null_best is not None else None,
        "holdout_ssim_p95": ev.p95, "holdout_ssim_p99": ev.p99,
        "class_mean_null": ev.prototype,
        "per_class": per_class(sets.train, ev.train_best, sets.null, ev.null_best, ev.p99),
        "histogram": histogram(ev.train_best, ev.null_best),
        "weights_gain": ev.gain.to_dict() if ev.gain is not None else None,
        "notes": list(result.notes),
    }
    if ev.null_best is not None:  # the gate's own quantile, whatever it is set to
        summary["holdout"]["quantiles"].setdefault(f"{holdout_quantile:g}", quantile(ev.null_best, holdout_quantile))
    return summary


def _inversion_record(attack: Attack, num_classes: int) -> dict[str, Any]:
    """The ``inversion`` object: what was planned, what ran, whether it finished."""
    result, n_candidates = attack.result, int(attack.candidates.shape[0])
    return {
        "mode": result.mode, "effort": attack.config.effort, "complete": bool(result.complete),
        "incomplete_reason": attack.incomplete, "resumed": result.resumed_from is not None,
        "resumed_from": result.resumed_from,
        "steps": result.steps, "planned_steps": result.planned_steps,
        "seconds": result.seconds, "completed_fraction": result.completed_fraction,
        "phase_seconds": dict(result.phase_seconds),
        "candidates_per_class": int(n_candidates // max(num_classes, 1)),
        "notes": list(result.notes),
        "gallery": {str(k): v for k, v in result.gallery.items()} if result.gallery else None,
    }


def to_document(result: AuditResult, holdout_quantile: float) -> dict[str, Any]:
    """The findings document before the gate: verdict, thresholds and gate are filled in by ``apply_gate``."""
    attack = result.attack
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "leakaudit", "version": __version__},
        "verdict": "pass", "exit_code": 0,
        "mode": attack.result.mode, "threat_model": attack.result.threat_model,
        "calibrated": result.sets.null is not None,
        "thresholds": {},
        "metrics": {"ssim": dict(SSIM_SETTINGS), "lpips": result.lpips},
        "summary": _summary(result, holdout_quantile),
        "findings": result.findings.rows,
        "gate": {},
        "inversion": _inversion_record(attack, len(result.sets.train.classes)),
        "provenance": result.provenance,
        "power": result.power.power.to_dict() if result.power is not None else None,
    }
