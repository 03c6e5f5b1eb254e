"""The audit's membership phase: the target's logits once, then the reference-model attacks on them.

The target's logits on members and non-members serve both the loss threshold
(the statistics stage) and the reference-model attacks, so the model is asked
once. The phase's share of ``--budget`` is what the earlier phases left; a
phase the budget or a stop cuts short leaves the audit incomplete, never a pass.
A budget spent before the target's logits (or the model's worker reaching the
budget's ceiling while it computes them) leaves the phase out, said so in the
document, rather than ending the audit with an error.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from leakaudit.config import AuditSettings
from leakaudit.errors import BudgetCeiling
from leakaudit.inversion import InversionCallbacks
from leakaudit.membership.recipe import DEFAULT_RECIPE, TrainingRecipe
from leakaudit.membership.store import MEMBERSHIP_DIR
from leakaudit.membership.training import function_name
from leakaudit.pipeline.attack import CHECKPOINT_DIR
from leakaudit.pipeline.budget import StopOrBudget, budget_words
from leakaudit.pipeline.inputs import AuditInputs, AuditSets
from leakaudit.pipeline.membership import (
    EFFORT_REFERENCE_MODELS, MembershipResult, MembershipSets, MembershipSettings, membership_stage, plan_of,
    train_share,
)
from leakaudit.pipeline.run_context import RunContext
from leakaudit.record import AuditRecord


@dataclass(frozen=True)
class MembershipPhase:
    """The target's logits on members and non-members, and the attacks' result (None without a holdout)."""

    logits_train: torch.Tensor | None
    logits_null: torch.Tensor | None
    result: MembershipResult | None
    incomplete_reason: str | None = None  # why the phase did not finish (the budget); None when it did
    cut: str | None = None  # why the phase did not run at all (the budget spent before the target's logits)


def reference_count(settings: AuditSettings) -> int:
    """R: ``--reference-models`` when given, else the effort's (never the measured speed)."""
    if settings.reference_models is not None:
        return int(settings.reference_models)
    return EFFORT_REFERENCE_MODELS[settings.effort]


def stage_settings(settings: AuditSettings, models: int, checkpoint_dir: Path | None = None) -> MembershipSettings:
    """The stage's settings from the audit's: R, the recipe (given, the owner's function, or the guessed default),
    the seed, --init, and where finished models are kept (rank 0's checkpoint folder)."""
    recipe = settings.recipe if isinstance(settings.recipe, TrainingRecipe) else DEFAULT_RECIPE  # built or none
    if settings.train_fn is not None:
        recipe = replace(recipe, function=function_name(settings.train_fn))
    given = settings.recipe is not None or settings.train_fn is not None
    return MembershipSettings(reference_models=models, recipe=recipe, recipe_given=given, seed=settings.seed,
                              init=settings.init, train_fn=settings.train_fn, checkpoint_dir=checkpoint_dir)


def _checkpoints(run: RunContext) -> Path | None:
    """Rank 0's folder of the membership checkpoints (the other ranks hand their models to rank 0)."""
    return run.settings.out / CHECKPOINT_DIR / MEMBERSHIP_DIR if run.dist.is_main else None


def ranks_share_membership(run: RunContext, sets: AuditSets) -> bool:
    """Whether the ranks of a distributed run train the reference models together (then each calls
    ``membership_phase`` (rank 0), ``membership_share`` or ``release_ranks`` exactly once)."""
    return run.dist.is_distributed and sets.null is not None and reference_count(run.settings) > 0


def membership_share(run: RunContext, inputs: AuditInputs, sets: AuditSets) -> None:
    """A rank other than 0: train this rank's share of the reference models and hand them to rank 0."""
    if not ranks_share_membership(run, sets):
        return
    assert sets.null is not None
    settings = stage_settings(run.settings, reference_count(run.settings))
    plan = plan_of(sets.train.images, sets.train.labels, sets.null.images, sets.null.labels, settings)
    train_share(inputs.model, plan, settings, None, run.dist, InversionCallbacks(), StopOrBudget(run))


def release_ranks(run: RunContext, sets: AuditSets) -> None:
    """Rank 0 stopped before the membership phase: the other ranks, waiting for their share, get none."""
    if ranks_share_membership(run, sets):
        run.dist.all_gather_object([])  # the share's list of models to train: empty
        run.dist.all_gather_object(None)  # and the gather of what they trained: nothing


def membership_phase(run: RunContext, inputs: AuditInputs, sets: AuditSets,
                     budget_spent: bool = False) -> MembershipPhase | None:
    """The target's logits and every membership attack; None when a stop was asked for.

    ``budget_spent``: an earlier phase used up ``--budget``; the phase then does not run (``cut`` says why).
    """
    if sets.null is None:
        return MembershipPhase(None, None, None)
    run.observer.phase("membership: the target's logits on members and non-members")
    left = run.budget_left_s()
    if budget_spent or (left is not None and left <= 0):
        release_ranks(run, sets)
        return MembershipPhase(None, None, None, cut=f"{budget_words(run.settings)} {NOT_RUN}")
    model = inputs.model
    try:
        logits_train, logits_null = model.logits(sets.train.images), model.logits(sets.null.images)
    except BudgetCeiling as exc:
        release_ranks(run, sets)
        return MembershipPhase(None, None, None, cut=f"{budget_words(run.settings)} ended the phase ({exc})")
    if run.stop():
        return None
    models = reference_count(run.settings)
    if models > 0:
        run.observer.phase(f"membership: {models} reference models")
    left = run.budget_left_s()
    membership_sets = MembershipSets(sets.train.images, sets.train.labels, sets.null.images, sets.null.labels,
                                     logits_train, logits_null)
    settings = stage_settings(run.settings, models, _checkpoints(run))
    try:
        result = membership_stage(model, membership_sets, settings, run.observer, StopOrBudget(run),
                                  budget_s=None if left is None else max(left, 0.0), dist=run.dist)
    except BudgetCeiling as exc:  # the reference models' training, or the mirrored images' logits after it
        cut = (f"{budget_words(run.settings)} ended the reference-model attacks ({exc}); the loss threshold alone "
               "tested membership; the finished reference models are kept: the same audit with a larger --budget "
               "trains only the rest")
        return MembershipPhase(logits_train, logits_null, None, cut=cut)
    if run.stop():
        return None
    reason = None
    if not result.complete:
        reason = (f"the budget ended the membership phase after {result.reference_models} "
                  f"of {result.planned_models} reference models; an unfinished membership test cannot pass: raise "
                  "--budget (the finished models are kept: the same audit trains only the rest) or lower "
                  "--reference-models")
    return MembershipPhase(logits_train, logits_null, result, reason)


NOT_RUN = ("was spent before the membership phase could ask the model for its logits: the membership tests did "
           "not run")


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


def membership_unfinished(record: AuditRecord) -> bool:
    """Whether the budget cut the membership phase short: the attacks' record says incomplete, or the worker's
    ceiling ended the reference models' training (then there is no attacks' record, only the cut)."""
    attacks = record.membership_attacks
    return (attacks is not None and not attacks.complete) or any(c.phase == "membership" for c in record.budget_cuts)


def clear_checkpoints(folder: Path, record: AuditRecord | None) -> None:
    """After an audit that was not stopped: the checkpoint folder removed, but for the finished reference models of a
    membership phase the budget cut short (the same command with a larger ``--budget`` trains only the rest).

    Nothing is followed through a link: a folder that is a link is left alone (the audit refused to write through
    it), and a link inside the folder is removed, not its target.
    """
    if folder.is_symlink() or not folder.is_dir():
        return
    unfinished = record is not None and membership_unfinished(record)
    kept = folder / MEMBERSHIP_DIR
    if not (unfinished and kept.is_dir() and not kept.is_symlink() and any(kept.iterdir())):
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in folder.iterdir():
        if entry == kept:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
