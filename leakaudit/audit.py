"""One audit, end to end: load → invert → match → score → gate → write.

This module only sequences the stages and assembles the findings document
(``OUT/leakaudit.json``); each stage lives in its own module. It never prints:
progress goes to an ``Observer``, and the CLI turns the outcome into text and
an exit code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leakaudit import __version__
from leakaudit.config import AuditSettings
from leakaudit.data import ImageSet, list_classes, load_image_folder, peek_shape
from leakaudit.distributed import DistContext
from leakaudit.matching.sharded import sharded_best_matches
from leakaudit.errors import DataError, OutputError
from leakaudit.exit_codes import ExitStatus
from leakaudit.memory import release_free_memory
from leakaudit.models import TargetModel, load_model
from leakaudit.numerics import flush_denormals
from leakaudit.outlock import output_lock
from leakaudit.progress import Observer, SilentObserver
from leakaudit.report.summary import with_previous_ssim
from leakaudit.safe_files import check_apart
from leakaudit.verify import check_baseline_provenance, load_baseline, require_evaluable, require_lpips

SCHEMA_VERSION = "1.0"
PRIOR_FRACTION = 0.5  # share of the holdout that trains the informed prior; the rest is the null
FRACTION_THRESHOLDS = (0.4, 0.5, 0.6)
MATCH_PAIRS_PER_S = 50_000  # cautious exhaustive-SSIM rate at 32×32 gray on 2 loaded cores
REPORT_RESERVE_S = 10.0  # statistics, LPIPS, rendering and writing
MIN_INVERSION_S = 5.0  # below this the inversion cannot produce anything worth matching
CHECKPOINT_DIR = "checkpoints"
# Informed mode: what the weights must add over the pre-trained generator before we call it evidence.
EVIDENCE_MIN_AUC = 0.55
EVIDENCE_MAX_P = 0.01


@dataclass(frozen=True)
class AuditInputs:
    """The validated model and image sets of one audit."""

    target: TargetModel
    train: ImageSet
    holdout: ImageSet | None


@dataclass
class AuditOutcome:
    """What the CLI needs after an audit: the document, the exit status, what was written."""

    document: dict[str, Any]
    exit_status: ExitStatus
    written: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary_lines: list[str] = field(default_factory=list)


# --- stage 1: inputs ----------------------------------------------------------

def load_inputs(settings: AuditSettings, observer: Observer) -> AuditInputs:
    """Load and cross-check model and data; every mismatch is a clear error."""
    observer.phase("loading model and data")
    check_apart(settings.out, (settings.data, settings.holdout))  # outputs must never become inputs
    list_classes(settings.data)  # a missing or empty folder is reported before the model is touched
    if settings.holdout is not None:
        list_classes(settings.holdout)
    hint = peek_shape(settings.data)
    target = load_model(
        settings.model, arch=settings.arch, unsafe_pickle=settings.unsafe_pickle, input_size=settings.input_size,
        mean=settings.mean, std=settings.std, shape_hint=hint, device=settings.device,
    )
    channels, height, width = target.input_shape
    train = load_image_folder(settings.data, channels=channels, size=(height, width), strict=settings.strict_data,
                              max_file_bytes=settings.max_image_bytes,
                              progress=lambda d, t: observer.advance(d, t, "training images"))
    if len(train.classes) != target.num_classes:
        raise DataError(
            f"{settings.data} has {len(train.classes)} class folders but the model has {target.num_classes} outputs; "
            "the folders must be exactly the classes the model was trained on (sorted names = class indices)"
        )
    for skipped in train.skipped:
        observer.note(f"skipped {skipped.path}: {skipped.reason}")
    holdout = None
    if settings.holdout is not None:
        holdout = load_image_folder(settings.holdout, channels=channels, size=(height, width), classes=train.classes,
                                    strict=settings.strict_data, max_file_bytes=settings.max_image_bytes)
        for skipped in holdout.skipped:
            observer.note(f"skipped holdout {skipped.path}: {skipped.reason}")
        holdout_digests = _pixel_digests(holdout)
        overlap = set(_pixel_digests(train)) & set(holdout_digests)
        if overlap:
            observer.note(f"{len(overlap)} holdout image(s) are pixel-identical to training images; they are left out of the null")
            keep = torch.tensor([d not in overlap for d in holdout_digests])
            holdout = _subset(holdout, keep)
            if len(holdout) == 0:
                raise DataError(f"every image in {settings.holdout} is also in {settings.data}: no non-members left")
    return AuditInputs(target, train, holdout)


def _pixel_digests(images: ImageSet) -> list[str]:
    return [hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in images.images]


def _subset(images: ImageSet, keep: torch.Tensor) -> ImageSet:
    idx = torch.nonzero(keep).flatten()
    return replace(images, images=images.images[idx], labels=images.labels[idx],
                   paths=tuple(images.paths[i] for i in idx.tolist()))


def split_holdout(holdout: ImageSet, seed: int, fraction: float = PRIOR_FRACTION) -> tuple[ImageSet, ImageSet]:
    """Per class, a seeded share of the non-members trains the prior; the rest is the null.

    The two parts never overlap, so the null measures what a generator that
    never saw those images reaches.
    """
    from leakaudit.inversion import split_prior

    prior_idx, _ = split_prior(holdout.labels, fraction, seed=seed + 7919)
    prior_mask = torch.zeros(len(holdout), dtype=torch.bool)
    prior_mask[prior_idx] = True
    return _subset(holdout, prior_mask), _subset(holdout, ~prior_mask)


# --- stage 3: matching and statistics ----------------------------------------

def fingerprint(path: str, image: torch.Tensor) -> str:
    """Stable identity of a training sample: its relative path and its pixels."""
    return hashlib.sha256(path.encode("utf-8") + b"\0" + image.numpy().tobytes()).hexdigest()


@torch.no_grad()
def _losses(target: TargetModel, images: ImageSet, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    logits = []
    with flush_denormals():
        for start in range(0, len(images), batch):
            logits.append(target.logits(images.float01(slice(start, start + batch)).to(target.device)).float().cpu())
            if start // batch % 16 == 15:
                release_free_memory()  # long passes fragment the C heap (leakaudit/memory.py)
    return torch.cat(logits), images.labels


def _quantile(values: torch.Tensor, q: float) -> float | None:
    finite = values[torch.isfinite(values)].double()
    return float(torch.quantile(finite, q)) if len(finite) else None


# --- the whole audit ------------------------------------------------------------

def run_audit(settings: AuditSettings, observer: Observer | None = None,
              should_stop: Callable[[], bool] | None = None, dist: DistContext | None = None) -> AuditOutcome:
    """Run one audit and write its outputs; raises ``LeakAuditError`` on bad input.

    ``dist``: one rank of a distributed run. Every rank inverts and matches its
    share; rank 0 alone computes the statistics and writes, after the last
    collective, so a failed rank leaves no report. The other ranks return an
    empty document. Rank 0 holds the output folder's lock for the whole audit,
    and removes ``OUT/checkpoints/`` afterwards unless a signal stopped it.
    """
    from leakaudit.cpus import choose_threads

    dist = dist or DistContext.single()
    observer = observer or SilentObserver()
    stop = should_stop or (lambda: False)
    threads = choose_threads(settings.threads)
    lock = output_lock(settings.out) if dist.is_main else contextlib.nullcontext()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    interrupted = False
    try:
        with lock:
            try:
                outcome = _run_audit(settings, observer, stop, dist, threads)
                interrupted = outcome.exit_status == ExitStatus.INTERRUPTED
                return outcome
            finally:
                if dist.is_main and not (interrupted or stop()):
                    shutil.rmtree(settings.out / CHECKPOINT_DIR, ignore_errors=True)
    finally:
        torch.set_num_threads(previous_threads)


def _run_audit(settings: AuditSettings, observer: Observer, stop: Callable[[], bool], dist: DistContext,
               threads: int) -> AuditOutcome:
    from leakaudit.gate import apply_gate, gate_settings_from_mapping

    started = time.monotonic()
    stages = StageTimer()
    started_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    gate_settings = gate_settings_from_mapping(settings.gate, str(settings.baseline) if settings.baseline else None,
                                               sources=settings.gate_sources)
    previous = load_baseline(settings.baseline) if settings.baseline else None
    torch.manual_seed(settings.seed)

    with stages("loading"):
        inputs = load_inputs(settings, observer)
    require_evaluable(gate_settings, settings, inputs)
    if previous is not None:
        check_baseline_provenance(previous, inputs, settings)
    if dist.is_main:
        _check_output_folder(settings.out)  # after validation: a failed run leaves nothing behind
    from leakaudit.inversion import invert
    from leakaudit.inversion.candidates import grown
    from leakaudit.inversion.initaware import init_aware_inversion
    from leakaudit.matching.baseline import (
        class_mean_null, distribution_summary, histogram, leak_score, near_duplicates,
    )
    from leakaudit.matching.lpips import LpipsScorer
    from leakaudit.matching.search import auto_prefilter
    from leakaudit.matching.ssim import SSIM_SETTINGS
    from leakaudit.report import write_outputs
    from leakaudit.scoring import membership_test
    scorer = LpipsScorer.load(settings.lpips_net, settings.lpips_weights)
    require_lpips(gate_settings, scorer)
    target, train = inputs.target, inputs.train
    notes: list[str] = list(target.load_notes)  # e.g. that --unsafe-pickle let the file's code run
    informed = inputs.holdout is not None and settings.prior in ("auto", "holdout")
    prior_set: ImageSet | None = None
    null_set = inputs.holdout
    if informed and inputs.holdout is not None:
        prior_set, null_set = split_holdout(inputs.holdout, settings.seed)
        if len(prior_set) == 0 or len(null_set) == 0:
            informed, prior_set, null_set = False, None, inputs.holdout
            notes.append("The holdout is too small to split into a prior and a null part; the inversion ran data-free.")

    # stage 2: inversion
    config = grown(inversion_config(settings), len(train), target.num_classes,
                   settings.candidates_per_class or settings.inversion.get("candidates_per_class"))
    n_images = len(train) + (len(null_set) if null_set is not None else 0)  # everything the candidates are matched to
    if config.budget_s is not None:
        # --budget is a ceiling on the whole audit: the inversion may use what loading left, minus the matching's share.
        left = config.budget_s - (time.monotonic() - started) - matching_reserve_s(
            config.candidates_per_class * target.num_classes, n_images, target.input_shape, informed)
        config = replace(config, budget_s=max(MIN_INVERSION_S, left))
    callbacks = _InversionProgress(observer).callbacks()
    checkpoint_dir = settings.out / CHECKPOINT_DIR
    with stages("inversion"):
        if settings.init is not None:
            result = init_aware_inversion(target, settings.init,
                                          (prior_set.images, prior_set.labels) if prior_set is not None else None,
                                          config, stop, callbacks)
        else:
            result = invert(
                target, config,
                prior=(prior_set.images, prior_set.labels) if informed and prior_set is not None else None,
                callbacks=callbacks, checkpoint_dir=checkpoint_dir if dist.is_main else None, should_stop=stop,
                dist=dist, resume_tag=resume_tag(settings),
            )
    if dist.any_true(stop()):
        return AuditOutcome(document={}, exit_status=ExitStatus.INTERRUPTED)
    candidates = result.images.detach().float().cpu().clamp(0, 1)  # (N, C, H, W)
    notes.extend(result.notes)
    if result.resumed_from is not None:
        notes.append(f"This run resumed an interrupted run of the same command at its {result.resumed_from} phase "
                     "(the saved state of the phases before it).")
    incomplete = None if result.complete else incomplete_reason(result, settings)
    if incomplete:
        notes.append(f"Incomplete attack: {incomplete}")

    # stage 3: matching
    stages.start("matching")
    observer.phase("matching reconstructions against training images", len(train))
    # one policy for every rank: decided from the whole sets, not from a rank's shard
    prefilter = auto_prefilter(int(candidates.shape[0]), n_images)
    train_match = sharded_best_matches(candidates, train.images, dist, k=5, prefilter=prefilter,
                                       progress=lambda d, t: observer.advance(d, t, "training images"))
    null_match = None
    if null_set is not None and not stop():
        observer.phase("matching reconstructions against non-member images", len(null_set))
        null_match = sharded_best_matches(candidates, null_set.images, dist, k=5, prefilter=prefilter,
                                          progress=lambda d, t: observer.advance(d, t, "non-member images"))
    if prefilter is not None:
        notes.append(f"Matching used the correlation prefilter (exact SSIM for each image's {prefilter} most correlated "
                     "reconstructions): at this size exhaustive matching is slow, and on real digits the prefilter "
                     "found the exact best match for 99.6–99.7% of images, losing at most 0.03 SSIM on the others.")
    pre_matches = None
    if informed and result.pretrained_images is not None and null_set is not None and not stop():
        observer.phase("matching the pre-trained generator's candidates (what the weights added)")
        pre = result.pretrained_images.detach().float().cpu().clamp(0, 1)
        pre_matches = (sharded_best_matches(pre, train.images, dist, k=1, prefilter=prefilter).best_ssim.double(),
                       sharded_best_matches(pre, null_set.images, dist, k=1, prefilter=prefilter).best_ssim.double())
    if dist.any_true(stop()):
        return AuditOutcome(document={}, exit_status=ExitStatus.INTERRUPTED)
    if not dist.is_main:  # every rank's share is in: rank 0 takes it from here
        return AuditOutcome(document={}, exit_status=ExitStatus.PASSED)
    if dist.is_distributed:
        notes.append(f"Ran on {dist.world_size} processes ({dist.backend}): each trained the generator on its share of "
                     "every batch (gradients averaged), so the reconstructions differ from a single process's run as "
                     "another draw of the same attack would; the matching itself is exact.")

    stages.start("statistics")
    observer.phase("statistics")
    train_best = train_match.best_ssim.double()
    null_best = null_match.best_ssim.double() if null_match is not None else None
    score = leak_score(train_best, null_best, seed=settings.seed) if null_best is not None else None
    membership = None
    if null_set is not None:
        logits_train, labels_train = _losses(target, train)
        logits_null, labels_null = _losses(target, null_set)
        membership = membership_test(logits_train, labels_train, logits_null, labels_null, seed=settings.seed)
    prototype = class_mean_null(train.images, train.labels,
                                null_set.images if null_set is not None else None,
                                null_set.labels if null_set is not None else None).to_dict()
    p95 = _quantile(null_best, 0.95) if null_best is not None else None
    p99 = _quantile(null_best, 0.99) if null_best is not None else None
    weights_gain = _weights_gain(pre_matches, train_best, null_best, settings.seed, notes)
    members = [{"fingerprint": fingerprint(train.paths[i], train.images[i]), "ssim": float(train_best[i])}
               for i in range(len(train))]

    # findings: the top-K training samples by best-match SSIM (the gate counts every member)
    order = torch.argsort(train_best, descending=True, stable=True)[: settings.top]
    duplicates = near_duplicates(train_match.best_index, train_best, train.images, indices=order)
    if stop():
        return AuditOutcome(document={}, exit_status=ExitStatus.INTERRUPTED)
    observer.phase("LPIPS on the best pairs", len(order))
    lpips_values: list[float | None] = [None] * len(order)
    if scorer.available and len(order):
        pair_idx = train_match.best_index[order]
        distances = scorer.distance_pairs(candidates[pair_idx], train.float01(order),
                                          a_keys=[("candidate", int(i)) for i in pair_idx],
                                          b_keys=[("train", int(i)) for i in order])
        lpips_values = [float(v) for v in distances]
    else:
        notes.append(f"LPIPS unavailable: {scorer.reason}")
    findings = []
    for rank, (i, lp) in enumerate(zip(order.tolist(), lpips_values), start=1):
        s = float(train_best[i])
        findings.append({
            "rank": rank, "fingerprint": members[i]["fingerprint"], "path": train.paths[i],
            "class": train.class_of(i), "class_index": int(train.labels[i]), "train_index": i,
            "reconstruction_index": int(train_match.best_index[i]), "ssim": s, "lpips": lp,
            "excess_over_holdout_p95": (s - p95) if p95 is not None else None,
            "above_holdout_p99": (s > p99) if p99 is not None else None,
            "shares_reconstruction_with": duplicates.shares_with(i),
            "shares_reconstruction_count": duplicates.share_count(i),
            "status": "ok", "status_rule": "", "baseline_status": None,
        })

    if null_set is None:
        notes.append("No holdout (--holdout): without non-member images the similarity of reconstructions to training "
                     "images cannot be told apart from how well any digit of the class would match; the thresholds are "
                     "absolute and uncalibrated.")
    notes.append("Exact copies of training images among the reconstructions raise the leak score; near copies that are "
                 "no closer to their member than typical non-members of the class are not detectable by this statistic.")

    summary: dict[str, Any] = {
        "n_train": len(train), "n_holdout": len(null_set) if null_set is not None else None,
        "n_candidates": int(candidates.shape[0]),
        "leak_score": score.to_dict() if score is not None else None,
        "membership_loss_auc": membership.auc if membership is not None else None,
        "membership": membership.to_dict() if membership is not None else None,
        "train": distribution_summary(train_best, FRACTION_THRESHOLDS),
        "holdout": distribution_summary(null_best, FRACTION_THRESHOLDS) if null_best is not None else None,
        "holdout_ssim_p95": p95, "holdout_ssim_p99": p99,
        "class_mean_null": prototype,
        "per_class": _per_class(train, train_best, null_set, null_best, p99),
        "histogram": histogram(train_best, null_best),
        "weights_gain": weights_gain,
        "notes": notes,
    }
    if null_best is not None:  # the gate's own quantile, whatever it is set to
        q = gate_settings.holdout_quantile
        summary["holdout"]["quantiles"].setdefault(f"{q:g}", _quantile(null_best, q))
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "leakaudit", "version": __version__},
        "verdict": "pass", "exit_code": 0,
        "mode": result.mode, "threat_model": result.threat_model,
        "calibrated": null_set is not None,
        "thresholds": {},
        "metrics": {"ssim": dict(SSIM_SETTINGS), "lpips": scorer.settings()},
        "summary": summary,
        "findings": findings,
        "gate": {},
        "inversion": _inversion_record(result, config, int(candidates.shape[0]), target.num_classes, incomplete),
        "provenance": _provenance(settings, inputs, null_set, started_at, started),
    }
    document["provenance"]["threads"] = threads
    document = apply_gate(document, gate_settings, today=dt.datetime.now(dt.timezone.utc).date(), previous=previous,
                          baseline_path=str(settings.baseline) if settings.baseline else None, members=members)
    stages.start("writing")
    document["provenance"]["stage_seconds"] = stages.snapshot()
    document["provenance"]["elapsed_s"] = round(time.monotonic() - started, 3)
    document = with_previous_ssim(document, previous)  # the report shows the change since --baseline
    if stop():
        return AuditOutcome(document={}, exit_status=ExitStatus.INTERRUPTED)

    observer.phase("writing outputs")
    arrays = {
        "images": candidates.numpy().astype(np.float32),
        "targets": result.targets.cpu().numpy().astype(np.int64),
        "confidence": result.confidence.cpu().numpy().astype(np.float32),
        "finding_train_images": train.images[order].numpy() if len(order) else np.zeros((0, *train.images.shape[1:]), np.uint8),
    }
    outputs = write_outputs(document, arrays, settings.out, redact=settings.redact, include_images=settings.images,
                            junit_path=settings.junit, markdown_path=settings.markdown, should_stop=stop)
    if outputs.stopped:
        return AuditOutcome(document={}, exit_status=ExitStatus.INTERRUPTED, written=list(outputs.paths))
    status = ExitStatus(int(document["exit_code"]))
    return AuditOutcome(document=document, exit_status=status, written=list(outputs.paths),
                        warnings=list(outputs.warnings), summary_lines=summary_lines(document, outputs.paths))


def _weights_gain(pre_matches: tuple[torch.Tensor, torch.Tensor] | None, train_best: torch.Tensor,
                  null_best: torch.Tensor | None, seed: int, notes: list[str]) -> dict[str, Any] | None:
    """Informed mode: the leak score of what optimising against the weights added (a note says what it means)."""
    from leakaudit.matching.baseline import leak_score

    if pre_matches is None or null_best is None:
        return None
    pre_train, pre_null = pre_matches
    gain = leak_score(train_best - pre_train, null_best - pre_null, seed=seed)
    before = leak_score(pre_train, pre_null, seed=seed)
    if gain.value < EVIDENCE_MIN_AUC or gain.p_value >= EVIDENCE_MAX_P:
        notes.append(f"No reconstruction evidence from the weights: optimising against the classifier made members "
                     f"no easier to match than non-members (paired AUC {gain.value:.3f}, p = {gain.p_value:.3g}; "
                     f"a claim needs AUC ≥ {EVIDENCE_MIN_AUC} at p < {EVIDENCE_MAX_P}).")
    else:
        notes.append(f"The weights made members easier to reconstruct than non-members (paired AUC {gain.value:.3f}, "
                     f"p = {gain.p_value:.3g}); confirm with a second --seed before acting on a borderline result.")
    return {
        "paired_auc": gain.value, "ci_low": gain.ci_low, "ci_high": gain.ci_high, "p_value": gain.p_value,
        "leak_score_pretrained": before.value,
        "train_mean_gain": float((train_best - pre_train).mean()),
        "holdout_mean_gain": float((null_best - pre_null).mean()),
    }


def _inversion_record(result: Any, config: Any, n_candidates: int, num_classes: int,
                      incomplete: str | None) -> dict[str, Any]:
    """The ``inversion`` object of the document: what was planned, what ran, whether it finished."""
    return {
        "mode": result.mode, "effort": config.effort, "complete": bool(result.complete),
        "incomplete_reason": incomplete, "resumed": result.resumed_from is not None,
        "resumed_from": result.resumed_from,
        "steps": result.steps, "planned_steps": result.planned_steps,
        "seconds": result.seconds, "completed_fraction": result.completed_fraction,
        "phase_seconds": dict(result.phase_seconds),
        "candidates_per_class": int(n_candidates // max(num_classes, 1)),
        "notes": list(result.notes),
        "gallery": {str(k): v for k, v in result.gallery.items()} if result.gallery else None,
    }


def incomplete_reason(result: Any, settings: AuditSettings) -> str:
    """One line: how much of the attack ran, and what to change so that it finishes."""
    budget = f"--budget {settings.budget:g} s" if settings.budget is not None else "the budget"
    lower = {"thorough": "standard", "standard": "quick"}.get(settings.effort)
    advice = "raise --budget" + (f" or choose --effort {lower}" if lower else "")
    return (f"{budget} ended the inversion after {result.steps} of its {result.planned_steps} "
            f"planned steps ({result.completed_fraction:.0%}, effort {settings.effort}); an unfinished attack cannot "
            f"pass: {advice}.")


def resume_tag(settings: AuditSettings) -> str:
    """What a saved inversion state must match besides its inputs: the command that made it."""
    return "\0".join(settings.command) + f"\0effort={settings.effort}"


class StageTimer:
    """Wall time of each stage of the audit (recorded in the provenance, left out of any comparison)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        self.stop()
        self._current = (name, time.monotonic())

    def stop(self) -> None:
        if self._current is not None:
            name, began = self._current
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - began, 3)
            self._current = None

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop()

    def snapshot(self) -> dict[str, float]:
        if self._current is not None:
            name, began = self._current
            return {**self.seconds, name: round(self.seconds.get(name, 0.0) + time.monotonic() - began, 3)}
        return dict(self.seconds)


def matching_reserve_s(n_candidates: int, n_images: int, shape: tuple[int, int, int], informed: bool) -> float:
    """A cautious estimate of the seconds that matching and reporting take after the inversion.

    Exhaustive SSIM runs at roughly 50,000 pairs/s of 32×32 gray on two loaded
    CPU cores and scales with the pixel count; informed audits also match the
    pre-trained candidates. The fixed part covers statistics, LPIPS and writing.
    """
    pixels = shape[0] * max(1, shape[1] - 10) * max(1, shape[2] - 10)
    pairs_per_s = MATCH_PAIRS_PER_S * (22 * 22) / pixels
    from leakaudit.matching.search import matched_pairs

    pairs = matched_pairs(n_candidates, n_images) * (2 if informed else 1)
    return REPORT_RESERVE_S + pairs / pairs_per_s


def inversion_config(settings: AuditSettings) -> Any:
    """The engine's settings: the effort level's, then [tool.leakaudit.inversion], then the flags."""
    from dataclasses import fields

    from leakaudit.config import did_you_mean
    from leakaudit.errors import ConfigError
    from leakaudit.inversion import InversionConfig

    known = {f.name for f in fields(InversionConfig)} - {"effort"}
    unknown = sorted(set(settings.inversion) - known)
    if "effort" in unknown:
        raise ConfigError("[tool.leakaudit.inversion] effort: set the effort level with --effort or "
                          "[tool.leakaudit] effort, not in the engine's table")
    if unknown:
        raise ConfigError("unknown [tool.leakaudit.inversion] keys: "
                          + ", ".join(f"{key}{did_you_mean(key, known)}" for key in unknown))
    values: dict[str, Any] = dict(settings.inversion)
    values.update(seed=settings.seed, budget_s=settings.budget, conditioning=settings.conditioning)
    if settings.candidates_per_class is not None:
        values["candidates_per_class"] = settings.candidates_per_class
    if settings.prior == "none":
        values["prior"] = "none"
    try:
        return InversionConfig.for_effort(settings.effort, **values)
    except TypeError as exc:
        raise ConfigError(f"[tool.leakaudit.inversion]: {exc}") from None


class _InversionProgress:
    """Adapts the inversion's callbacks to the observer."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.planned = 0

    def on_phase(self, name: str) -> None:
        self.observer.phase(f"inversion: {name}", self.planned or None)

    def on_start(self, planned_steps: int) -> None:
        self.planned = planned_steps
        self.observer.phase("inverting the classifier", planned_steps)

    def on_step(self, step: int, planned: int, losses: dict[str, float]) -> None:
        loss = losses.get("total")
        self.observer.advance(step, planned, f"loss {loss:.3f}" if loss is not None else "")

    def callbacks(self) -> Any:
        from leakaudit.inversion import InversionCallbacks

        return InversionCallbacks(on_start=self.on_start, on_step=self.on_step, on_phase=self.on_phase)


def _check_output_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".leakaudit-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from None


def _per_class(train: ImageSet, train_best: torch.Tensor, null_set: ImageSet | None, null_best: torch.Tensor | None,
               p99: float | None) -> list[dict[str, Any]]:
    rows = []
    for c, name in enumerate(train.classes):
        mask = train.labels == c
        row: dict[str, Any] = {"class": name, "class_index": c, "n_train": int(mask.sum()),
                               "train_mean_best_ssim": float(train_best[mask].mean()) if mask.any() else None,
                               "n_holdout": None, "holdout_mean_best_ssim": None,
                               "n_flagged": int((train_best[mask] > p99).sum()) if p99 is not None else 0}
        if null_set is not None and null_best is not None:
            nmask = null_set.labels == c
            row["n_holdout"] = int(nmask.sum())
            row["holdout_mean_best_ssim"] = float(null_best[nmask].mean()) if nmask.any() else None
        rows.append(row)
    return rows


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"leakaudit": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "lpips", "scikit-image", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _provenance(settings: AuditSettings, inputs: AuditInputs, null_set: ImageSet | None, started_at: str,
                started: float) -> dict[str, Any]:
    def image_set(images: ImageSet | None, path: Path | None) -> dict[str, Any] | None:
        if images is None or path is None:
            return None
        return {"path": str(path), "manifest_sha256": images.manifest_sha256, "n_images": len(images),
                "skipped": [{"path": s.path, "reason": s.reason} for s in images.skipped]}

    target = inputs.target
    return {
        "model": {"path": str(settings.model), "sha256": target.sha256, "format": target.format,
                  "input_shape": list(target.input_shape), "num_classes": target.num_classes,
                  "features": "penultimate features reached" if target.has_features else target.feature_note},
        "data": image_set(inputs.train, settings.data),
        "holdout": image_set(inputs.holdout, settings.holdout),
        "seed": settings.seed, "budget_s": settings.budget, "elapsed_s": round(time.monotonic() - started, 3),
        "started_at": started_at, "versions": _versions(), "device": _device_name(target.device),
        "command": list(settings.command),
        "nondeterminism": ("CUDA kernels (cuDNN convolution algorithms, atomic adds in backward passes) are not bitwise "
                           "deterministic; CPU runs with the same seed are."
                           if target.device.type == "cuda" else None),
    }


def summary_lines(document: dict[str, Any], written: Any) -> list[str]:
    """The human summary the CLI prints on stderr."""
    from leakaudit.report.summary import format_p, headline_line, tidy_numbers  # leaked members, not rows

    inversion = document.get("inversion") or {}
    lines = [f"{headline_line(document)}, mode {document['mode']}, effort {inversion.get('effort', 'standard')}"]
    if not inversion.get("complete", True):
        lines.append(f"  incomplete attack: {inversion.get('incomplete_reason') or 'cut short by the budget'}")
    if inversion.get("resumed"):
        lines.append(f"  resumed an interrupted run at its {inversion.get('resumed_from')} phase")
    score = document["summary"].get("leak_score")
    if score:
        lines.append(f"  leak score {score['value']:.3f} [{score['ci_low']:.3f}, {score['ci_high']:.3f}] "
                     f"({format_p(score['p_value'])}; 0.5 = members matched no better than non-members)")
    else:
        lines.append("  no holdout: the result is not calibrated against non-members")
    for condition in document["gate"].get("conditions", []):
        lines.append(f"  {condition['status']:>7}  {condition['name']}: {tidy_numbers(condition['message'])}")
    for path in written:
        lines.append(f"  wrote {path}")
    return lines
