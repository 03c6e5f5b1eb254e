"""The statistics stage of an audit: what this audit's matches say, through ``leakaudit.scoring``.

Members are compared with the null (the leak score), the model's own loss
tells members from non-members (the membership test), plain class means
give the prototype null, and the top members by best match become the
findings, with their LPIPS distance and the members they share a
reconstruction with. The gate later counts every member, not only these.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from leakaudit.data.folders import ImageSet
from leakaudit.pipeline.inputs import AuditSets
from leakaudit.pipeline.matches import Matches
from leakaudit.matching.duplicates import near_duplicates
from leakaudit.matching.lpips import LpipsScorer
from leakaudit.matching.null import class_mean_null
from leakaudit.pipeline.run_context import RunContext
from leakaudit.record import Finding, MemberScore
from leakaudit.record.parse import frozen
from leakaudit.record.scores import LeakScore, MembershipTest
from leakaudit.scoring import (
    EVIDENCE_MAX_P, EVIDENCE_MIN_AUC, WeightsGain, leak_score, membership_test, quantile, weights_gain,
)


@dataclass(frozen=True)
class Evidence:
    """Every statistic of one audit, before it becomes the findings document."""

    train_best: torch.Tensor  # (M,) float64 best-match SSIM of each member
    null_best: torch.Tensor | None  # (E,) float64, the null's
    leak: LeakScore | None
    membership: MembershipTest | None
    prototype: dict[str, float | None]  # the class-mean null
    p95: float | None
    p99: float | None
    gain: WeightsGain | None


def gather_evidence(sets: AuditSets, matches: Matches, seed: int, logits_train: torch.Tensor | None,
                    logits_null: torch.Tensor | None) -> Evidence:
    """The leak score, the membership test, the prototype null, the null's quantiles and the weights' gain.

    The target's logits on members and non-members come from the membership phase (the model is asked once).
    """
    train, null = sets.train, sets.null
    train_best = matches.train.best_ssim.double()
    null_best = matches.null.best_ssim.double() if matches.null is not None else None
    score = leak_score(train_best, null_best, seed=seed) if null_best is not None else None
    membership = None
    if null is not None and logits_train is not None and logits_null is not None:
        membership = membership_test(logits_train, train.labels, logits_null, null.labels, seed=seed)
    prototype = class_mean_null(train.images, train.labels, null.images if null is not None else None,
                                null.labels if null is not None else None).to_dict()
    p95 = quantile(null_best, 0.95) if null_best is not None else None
    p99 = quantile(null_best, 0.99) if null_best is not None else None
    gain = None
    if matches.pretrained is not None and null_best is not None:
        gain = weights_gain(train_best, null_best, *matches.pretrained, seed=seed)
    return Evidence(train_best, null_best, score, membership, prototype, p95, p99, gain)


def gain_note(gain: WeightsGain) -> str:
    """What the weights' gain means, in one sentence for the document's notes."""
    g = gain.gain
    if not gain.is_evidence:
        return (f"No reconstruction evidence from the weights: optimising against the classifier made members "
                f"no easier to match than non-members (paired AUC {g.value:.3f}, p = {g.p_value:.3g}; "
                f"a claim needs AUC ≥ {EVIDENCE_MIN_AUC} at p < {EVIDENCE_MAX_P}).")
    return (f"The weights made members easier to reconstruct than non-members (paired AUC {g.value:.3f}, "
            f"p = {g.p_value:.3g}); confirm with a second --seed before acting on a borderline result.")


def fingerprint(path: str, image: torch.Tensor) -> str:
    """Stable identity of a training sample: its relative path and its pixels."""
    return hashlib.sha256(path.encode("utf-8") + b"\0" + image.numpy().tobytes()).hexdigest()


def members(train: ImageSet, train_best: torch.Tensor) -> list[MemberScore]:
    """Every member's fingerprint and best match: what the gate counts."""
    return [MemberScore(fingerprint(train.paths[i], train.images[i]), float(train_best[i])) for i in range(len(train))]


@dataclass(frozen=True)
class Findings:
    """The top members by best match, with what the document lists about each."""

    order: torch.Tensor  # (K,) training indices, best match first
    rows: tuple[Finding, ...]
    lpips_note: str | None  # why LPIPS is missing, if it is


def top_findings(run: RunContext, candidates: torch.Tensor, train: ImageSet, matches: Matches, evidence: Evidence,
                 scorer: LpipsScorer) -> Findings | None:
    """The ``--top`` members by best-match SSIM, each with LPIPS and the members sharing its reconstruction.

    None when a stop was asked for before the LPIPS pass.
    """
    train_best, best_index = evidence.train_best, matches.train.best_index
    order = torch.argsort(train_best, descending=True, stable=True)[: run.settings.top]
    duplicates = near_duplicates(best_index, train_best, train.images, indices=order)
    if run.stop():
        return None
    run.observer.phase("LPIPS on the best pairs", len(order))
    lpips_values: list[float | None] = [None] * len(order)
    note = None
    if scorer.available and len(order):
        pair_idx = best_index[order]
        distances = scorer.distance_pairs(candidates[pair_idx], train.float01(order),
                                          a_keys=[("candidate", int(i)) for i in pair_idx],
                                          b_keys=[("train", int(i)) for i in order])
        lpips_values = [float(v) for v in distances]
    else:
        note = f"LPIPS unavailable: {scorer.reason}"
    p95, p99 = evidence.p95, evidence.p99
    rows: list[Finding] = []
    for rank, (i, lp) in enumerate(zip(order.tolist(), lpips_values), start=1):
        s = float(train_best[i])
        rows.append(Finding(
            rank=rank, fingerprint=fingerprint(train.paths[i], train.images[i]), path=train.paths[i],
            class_name=train.class_of(i), class_index=int(train.labels[i]), train_index=i,
            reconstruction_index=int(best_index[i]), ssim=s, lpips=lp,
            excess_over_holdout_p95=(s - p95) if p95 is not None else None,
            above_holdout_p99=(s > p99) if p99 is not None else None, status="ok", status_rule="",
            extra=frozen({"shares_reconstruction_with": duplicates.shares_with(i),
                          "shares_reconstruction_count": duplicates.share_count(i)}),
        ))
    return Findings(order, tuple(rows), note)


def per_class(train: ImageSet, train_best: torch.Tensor, null: ImageSet | None, null_best: torch.Tensor | None,
              p99: float | None) -> list[dict[str, Any]]:
    """One row per class: members, non-members, their mean best match, and members above the null's q0.99."""
    rows = []
    for c, name in enumerate(train.classes):
        mask = train.labels == c
        row: dict[str, Any] = {"class": name, "class_index": c, "n_train": int(mask.sum()),
                               "train_mean_best_ssim": float(train_best[mask].mean()) if mask.any() else None,
                               "n_holdout": None, "holdout_mean_best_ssim": None,
                               "n_flagged": int((train_best[mask] > p99).sum()) if p99 is not None else 0}
        if null is not None and null_best is not None:
            nmask = null.labels == c
            row["n_holdout"] = int(nmask.sum())
            row["holdout_mean_best_ssim"] = float(null_best[nmask].mean()) if nmask.any() else None
        rows.append(row)
    return rows
