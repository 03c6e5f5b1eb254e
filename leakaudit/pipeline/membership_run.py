"""The audit's membership phase: the target's logits once, then the reference-model attacks on them.

The target's logits on members and non-members serve both the loss threshold
(the statistics stage) and the reference-model attacks, so the model is asked
once. The phase's share of ``--budget`` is what the earlier phases left; a
phase the budget or a stop cuts short leaves the audit incomplete, never a pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from leakaudit.config import AuditSettings
from leakaudit.pipeline.inputs import AuditInputs, AuditSets
from leakaudit.pipeline.membership import (
    EFFORT_REFERENCE_MODELS, MembershipResult, MembershipSets, MembershipSettings, membership_stage,
)
from leakaudit.pipeline.run_context import RunContext
from leakaudit.membership.recipe import DEFAULT_RECIPE


@dataclass(frozen=True)
class MembershipPhase:
    """The target's logits on members and non-members, and the attacks' result (None without a holdout)."""

    logits_train: torch.Tensor | None
    logits_null: torch.Tensor | None
    result: MembershipResult | None
    incomplete_reason: str | None = None  # why the phase did not finish (the budget); None when it did


def reference_count(settings: AuditSettings) -> int:
    """R: ``--reference-models`` when given, else the effort's (never the measured speed)."""
    if settings.reference_models is not None:
        return int(settings.reference_models)
    return EFFORT_REFERENCE_MODELS[settings.effort]


def stage_settings(settings: AuditSettings, models: int) -> MembershipSettings:
    """The stage's settings from the audit's: R, the recipe (given or the guessed default), the seed, --init."""
    recipe = settings.recipe if settings.recipe is not None else DEFAULT_RECIPE
    return MembershipSettings(reference_models=models, recipe=recipe, recipe_given=settings.recipe is not None,
                              seed=settings.seed, init=settings.init)


def _left_s(run: RunContext) -> float | None:
    budget = run.settings.budget
    return None if budget is None else budget - (time.monotonic() - run.timer.started)


def membership_phase(run: RunContext, inputs: AuditInputs, sets: AuditSets) -> MembershipPhase | None:
    """The target's logits and every membership attack; None when a stop was asked for."""
    if sets.null is None:
        return MembershipPhase(None, None, None)
    model = inputs.model
    logits_train, logits_null = model.logits(sets.train.images), model.logits(sets.null.images)
    models = reference_count(run.settings)
    if models > 0:
        run.observer.phase(f"membership: {models} reference models")
    over_budget = [False]

    def should_stop() -> bool:
        left = _left_s(run)
        over_budget[0] = over_budget[0] or (left is not None and left <= 0)
        return run.stop() or over_budget[0]

    left = _left_s(run)
    membership_sets = MembershipSets(sets.train.images, sets.train.labels, sets.null.images, sets.null.labels,
                                     logits_train, logits_null)
    settings = stage_settings(run.settings, models)
    result = membership_stage(model, membership_sets, settings, run.observer, should_stop,
                              budget_s=None if left is None else max(left, 0.0))
    if run.stop():
        return None
    reason = None
    if not result.complete:
        reason = (f"the budget ended the membership phase after {result.reference_models} "
                  f"of {result.planned_models} reference models; an unfinished membership test cannot pass: raise "
                  "--budget or lower --reference-models")
    return MembershipPhase(logits_train, logits_null, result, reason)


def membership_notes(phase: MembershipPhase) -> list[str]:
    """The document's notes of the phase: which test ran, a guessed recipe, a warning of the check, a cut-short run."""
    result = phase.result
    if result is None or result.planned_models == 0:  # R = 0: the document is as before (the outputs say which test)
        return []
    notes = list(result.notes)
    if result.check is not None and result.check.warning is not None:
        notes.append(f"Recipe check: {result.check.warning}.")
    if phase.incomplete_reason is not None:
        notes.append(f"The membership phase is incomplete: {phase.incomplete_reason}.")
    return notes
