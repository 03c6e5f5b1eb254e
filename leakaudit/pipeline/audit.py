"""One audit, end to end: load → invert → match → score → gate → write.

This module only sequences the stages; each lives in its own module
(``inputs``, ``attack``, ``matches``, ``evidence``, ``document``, ``gate``,
``report``). It never prints: progress goes to an ``Observer``, and the CLI
turns the outcome into text and an exit code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leakaudit.pipeline.attack import CHECKPOINT_DIR, Attack, run_attack
from leakaudit.config import AuditSettings
from leakaudit.confine.session import ModelSession, confinement_notes, open_session
from leakaudit.runtime.cpus import choose_threads
from leakaudit.runtime.distributed import DistContext
from leakaudit.pipeline.result import AuditResult, audit_record
from leakaudit.pipeline.evidence import gain_note, gather_evidence, members, top_findings
from leakaudit.exit_codes import ExitStatus
from leakaudit.gate.verdict import gate_record
from leakaudit.pipeline.inputs import AuditInputs, AuditSets, audit_sets, check_output_folder, load_inputs
from leakaudit.pipeline.matches import Matches, match_stage, matched_sets
from leakaudit.pipeline.membership_record import reference_membership
from leakaudit.pipeline.membership_run import (MembershipPhase, clear_checkpoints, membership_notes, membership_phase,
                                               membership_share, release_ranks)
from leakaudit.matching.lpips import LpipsScorer
from leakaudit.runtime.outlock import output_lock
from leakaudit.runtime.threads import torch_threads
from leakaudit.pipeline.power import PowerStage, power_stage, report_arrays
from leakaudit.runtime.progress import Observer, SilentObserver, StopCheck
from leakaudit.pipeline.provenance import StageTimer, provenance
from leakaudit.report import write_outputs
from leakaudit.pipeline.run_context import RunContext
from leakaudit.pipeline.verify import check_baseline_provenance, load_baseline, require_evaluable, require_lpips
from leakaudit.record import AuditRecord, BudgetCut, dump
from leakaudit.record.parse import frozen

NO_HOLDOUT_NOTE = ("No holdout (--holdout): without non-member images the similarity of reconstructions to training "
                   "images cannot be told apart from how well any digit of the class would match; the thresholds are "
                   "absolute and uncalibrated.")
EXACT_COPIES_NOTE = ("Exact copies of training images among the reconstructions raise the leak score; near copies that "
                     "are no closer to their member than typical non-members of the class are not detectable by this "
                     "statistic.")


@dataclass
class AuditOutcome:
    """What the CLI needs after an audit: the record and its document, the exit status, what was written."""

    document: dict[str, Any]  # the record's JSON document (empty when stopped, or on a rank other than 0)
    exit_status: ExitStatus
    written: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # what reconstructions.npz holds
    record: AuditRecord | None = None  # the audit's record (None when there is no result)


def _stopped(written: list[Path] | None = None) -> AuditOutcome:
    return AuditOutcome(document={}, exit_status=ExitStatus.INTERRUPTED, written=list(written or []))


def run_audit(settings: AuditSettings, observer: Observer | None = None,
              should_stop: StopCheck | None = None, dist: DistContext | None = None, *,
              write: bool = True, clock: Callable[[], float] | None = None) -> AuditOutcome:
    """Run one audit and write its outputs; raises ``LeakAuditError`` on bad input.

    ``write=False``: the document and arrays come back unwritten (the Python
    API writes them when asked); ``settings.out`` still holds the checkpoints.

    ``dist``: one rank of a distributed run. Every rank inverts and matches its
    share; rank 0 alone computes the statistics and writes, after the last
    collective, so a failed rank leaves no report. The other ranks return an
    empty document. Rank 0 holds the output folder's lock for the whole audit,
    and removes ``OUT/checkpoints/`` afterwards unless a signal stopped it.

    ``clock``: what the phases after loading measure ``--budget`` by (``time.monotonic`` unless given).
    """
    dist = dist or DistContext.single()
    stop = should_stop or (lambda: False)
    threads = choose_threads(settings.threads)
    run = RunContext(settings, observer or SilentObserver(), stop, dist, StageTimer(), threads,
                     clock or time.monotonic)
    # first: the worker's start overlaps the rest
    model = open_session(settings, dist, threads, run.observer.note, stop)
    try:
        lock = output_lock(settings.out) if dist.is_main else contextlib.nullcontext()
        interrupted, record = False, None
        with torch_threads(threads), lock:
            try:
                outcome = _run_audit(run, model, write)
                interrupted, record = outcome.exit_status == ExitStatus.INTERRUPTED, outcome.record
                return outcome
            finally:
                if dist.is_main and not (interrupted or stop()):
                    clear_checkpoints(settings.out / CHECKPOINT_DIR, record)
    finally:
        model.close()


@dataclass(frozen=True)
class Prepared:
    """The checked inputs of an audit, the previous audit it is compared with, and the LPIPS scorer."""

    inputs: AuditInputs
    previous: AuditRecord | None  # the --baseline audit
    scorer: LpipsScorer


def _prepare(run: RunContext, model: ModelSession) -> Prepared:
    """Inputs and every check that can fail before the attack: a failed run leaves nothing behind."""
    settings = run.settings
    previous = load_baseline(settings.baseline) if settings.baseline else None
    torch.manual_seed(settings.seed)
    with run.timer("loading"):
        inputs = load_inputs(settings, run.observer, model, run.stop, run.timer.started)
    require_evaluable(settings.gate, settings, inputs)
    if previous is not None:
        check_baseline_provenance(previous, inputs, settings)
    if run.dist.is_main:
        check_output_folder(settings.out)  # after validation
    scorer = LpipsScorer.load(settings.lpips_net, settings.lpips_weights)
    require_lpips(settings.gate, scorer)
    return Prepared(inputs, previous, scorer)


def _run_audit(run: RunContext, model: ModelSession, write: bool) -> AuditOutcome:
    settings, dist, stop, timer = run.settings, run.dist, run.stop, run.timer
    prepared = _prepare(run, model)
    sets = audit_sets(prepared.inputs, settings)
    with timer("inversion"):
        attack = run_attack(run, prepared.inputs.model, sets)
    if dist.any_true(stop()):
        return _stopped()
    timer.start("matching")
    matches = match_stage(run, attack, sets)
    if dist.any_true(stop()):
        return _stopped()
    sets = matched_sets(sets, matches)  # the members matched before the budget ended matching, if it did
    if not dist.is_main:  # every rank's share is in: rank 0 takes it from here, with each rank's reference models
        membership_share(run, prepared.inputs, sets)
        return AuditOutcome(document={}, exit_status=ExitStatus.PASSED)
    timer.start("power")
    spent = matches.cut is not None  # then the phases after matching do not run, on every rank alike
    power = power_stage(run, prepared.inputs, sets, attack, budget_spent=spent)
    if power is None or stop():
        release_ranks(run, sets)
        return _stopped()
    timer.start("membership")
    membership = membership_phase(run, prepared.inputs, sets, budget_spent=spent)
    if membership is None or stop():
        return _stopped()
    timer.start("statistics")
    result = _score(run, prepared, sets, attack, matches, power, membership)
    if result is None:
        return _stopped()
    record = gate_record(audit_record(result, settings.gate.holdout_quantile), settings.gate,
                         today=dt.datetime.now(dt.timezone.utc).date(), previous=prepared.previous,
                         baseline_path=str(settings.baseline) if settings.baseline else None,
                         members=members(sets.train, result.evidence.train_best))
    timer.start("writing")
    timings = {"stage_seconds": timer.snapshot(), "elapsed_s": timer.elapsed()}
    record = replace(record, provenance=frozen({**record.provenance, **timings}))
    if stop():
        return _stopped()
    arrays = output_arrays(result)
    if not write:
        return AuditOutcome(document=dump(record), exit_status=ExitStatus(record.exit_code), arrays=arrays,
                            record=record)
    return _write(run, record, arrays)


def _score(run: RunContext, prepared: Prepared, sets: AuditSets, attack: Attack, matches: Matches,
           power: PowerStage, membership: MembershipPhase) -> AuditResult | None:
    """Statistics and findings, with the document's notes in their order; None when stopped."""
    inputs, scorer = prepared.inputs, prepared.scorer
    run.observer.phase("statistics")
    # the load notes first: e.g. that --unsafe-pickle let code run
    cuts = budget_cuts(matches, power, membership)
    notes = [*inputs.model.info.load_notes, *confinement_notes(inputs.model), *sets.notes, *attack.notes,
             *(f"Incomplete {cut.phase}: {cut.reason}." for cut in cuts)]
    if matches.note() is not None:
        notes.append(str(matches.note()))
    if run.dist.is_distributed:
        notes.append(f"Ran on {run.dist.world_size} processes ({run.dist.backend}): each trained the generator on its "
                     "share of every batch (gradients averaged), so the reconstructions differ from a single process's "
                     "run as another draw of the same attack would; the matching itself is exact.")
    evidence = gather_evidence(sets, matches, run.settings.seed, membership.logits_train, membership.logits_null)
    if evidence.gain is not None:
        notes.append(gain_note(evidence.gain))
    findings = top_findings(run, attack.candidates, sets.train, matches, evidence, scorer)
    if findings is None:
        return None
    if findings.lpips_note is not None:
        notes.append(findings.lpips_note)
    if sets.null is None:
        notes.append(NO_HOLDOUT_NOTE)
    notes.append(EXACT_COPIES_NOTE)
    notes.append(power.power.statement)
    notes.extend(membership_notes(membership))
    return AuditResult(attack, sets, evidence, findings, tuple(notes), scorer.settings(),
                       provenance(run.settings, inputs, run.timer, run.threads), power, membership.result,
                       matches.train.best_index, cuts)


def budget_cuts(matches: Matches, power: PowerStage, membership: MembershipPhase) -> tuple[BudgetCut, ...]:
    """The phases after the attack that the budget ended, in the order they run."""
    cuts = (("matching", matches.cut), ("positive control", power.cut), ("membership", membership.cut))
    return tuple(BudgetCut(phase, reason) for phase, reason in cuts if reason is not None)


def output_arrays(result: AuditResult) -> dict[str, np.ndarray]:
    """What ``reconstructions.npz`` holds: the candidates and the training images of the findings."""
    attack, train, order = result.attack, result.sets.train, result.findings.order
    return {
        "images": attack.candidates.numpy().astype(np.float32),
        "targets": attack.result.targets.cpu().numpy().astype(np.int64),
        "confidence": attack.result.confidence.cpu().numpy().astype(np.float32),
        "finding_train_images": (train.images[order].numpy() if len(order)
                                 else np.zeros((0, *train.images.shape[1:]), np.uint8)),
        **report_arrays(result.power, result.sets.null.images if result.sets.null is not None else None),
        **exposed_arrays(result),
    }


def exposed_arrays(result: AuditResult) -> dict[str, np.ndarray]:
    """The training images the membership attacks expose most (``membership_train_images``), when there are any."""
    record = reference_membership(result.membership)
    if record is None or not record.exposed:
        return {}
    return {"membership_train_images": result.sets.train.images[[e.index for e in record.exposed]].numpy()}


def _write(run: RunContext, record: AuditRecord, arrays: dict[str, np.ndarray]) -> AuditOutcome:
    """Every output file; what was written, or that a stop cut the writing short."""
    settings = run.settings
    run.observer.phase("writing outputs")
    outputs = write_outputs(record, arrays, settings.out, redact=settings.redact, include_images=settings.images,
                            junit_path=settings.junit, markdown_path=settings.markdown, should_stop=run.stop)
    if outputs.stopped:
        return _stopped(list(outputs.paths))
    return AuditOutcome(document=dump(record), exit_status=ExitStatus(record.exit_code),
                        written=list(outputs.paths), warnings=list(outputs.warnings), arrays=arrays, record=record)
