"""The matching stage: every candidate against every member and every non-member of the null.

One prefilter policy for every rank, decided from the whole sets rather than
a rank's shard, so that a distributed run matches exactly as one process
does. In informed mode the pre-trained generator's candidates are matched
too: the difference is what optimising against the weights added.

Every pass polls the stop request and the audit's budget between chunks. A
pass the budget cuts keeps what it matched where that still means something:
the members matched so far (a prefix of them) stay, a cut-short null or
pre-trained pass is left out (a part of the null is not a null), and the
passes after it do not run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from leakaudit.pipeline.attack import Attack
from leakaudit.pipeline.budget import StopOrBudget, budget_words
from leakaudit.pipeline.inputs import AuditSets, take_first
from leakaudit.matching.search import auto_prefilter
from leakaudit.matching.topk import BestMatches
from leakaudit.matching.sharded import sharded_best_matches
from leakaudit.pipeline.run_context import RunContext


@dataclass(frozen=True)
class Matches:
    """Best matches of members and non-members, and the pre-trained generator's (informed mode)."""

    train: BestMatches
    null: BestMatches | None
    pretrained: tuple[torch.Tensor, torch.Tensor] | None  # (M,), (E,) float64 best SSIM before the weights
    prefilter: int | None  # candidates scored exactly per image, None: exhaustive
    cut: str | None = None  # how far matching got when the budget ended it; None when it finished

    def note(self) -> str | None:
        """What the document says when the prefilter was used: the figures are lower bounds."""
        if self.prefilter is None:
            return None
        return (f"Matching used the correlation prefilter (exact SSIM for each image's {self.prefilter} "
                "most correlated reconstructions, not all of them): at this size exhaustive matching is slow. "
                "An image's best match can be missed, so its SSIM is a lower bound.")


def match_stage(run: RunContext, attack: Attack, sets: AuditSets) -> Matches:
    """Match the attack's candidates against the members, the null and (informed) the pre-trained candidates."""
    candidates, train, null = attack.candidates, sets.train, sets.null
    dist, observer = run.dist, run.observer
    check = StopOrBudget(run)
    observer.phase("matching reconstructions against training images", len(train))
    n_images = len(train) + (len(null) if null is not None else 0)
    prefilter = auto_prefilter(int(candidates.shape[0]), n_images)
    train_match = sharded_best_matches(candidates, train.images, dist, k=5, prefilter=prefilter, should_stop=check,
                                       progress=lambda d, t: observer.advance(d, t, "training images"))
    if train_match.cut:
        return Matches(train_match, None, None, prefilter, _cut_members(run, train_match, len(train)))
    null_match = None
    if null is not None and not dist.any_true(check()):  # every rank alike: each either matches the pass or not
        observer.phase("matching reconstructions against non-member images", len(null))
        null_match = sharded_best_matches(candidates, null.images, dist, k=5, prefilter=prefilter, should_stop=check,
                                          progress=lambda d, t: observer.advance(d, t, "non-member images"))
        if null_match.cut:
            return Matches(train_match, None, None, prefilter, _cut_pass(run, "matching against the non-members"))
    elif null is not None:
        return Matches(train_match, None, None, prefilter, _cut_pass(run, "matching against the non-members"))
    pretrained = None
    pre_images = attack.result.pretrained_images
    if sets.informed and pre_images is not None and null is not None:
        what = "matching the pre-trained generator's candidates"
        if dist.any_true(check()):
            return Matches(train_match, null_match, None, prefilter, _cut_pass(run, what))
        observer.phase("matching the pre-trained generator's candidates (what the weights added)")
        pre = pre_images.detach().float().cpu().clamp(0, 1)
        pre_train = sharded_best_matches(pre, train.images, dist, k=1, prefilter=prefilter, should_stop=check)
        pre_null = None if pre_train.cut else sharded_best_matches(pre, null.images, dist, k=1, prefilter=prefilter,
                                                                   should_stop=check)
        if pre_null is None or pre_null.cut:
            return Matches(train_match, null_match, None, prefilter, _cut_pass(run, what))
        pretrained = (pre_train.best_ssim.double(), pre_null.best_ssim.double())
    return Matches(train_match, null_match, pretrained, prefilter)


def _cut_members(run: RunContext, match: BestMatches, members: int) -> str:
    matched = len(match.best_index)
    partly = "" if match.exact else " (each over the candidates scored so far: lower bounds)"
    return (f"{budget_words(run.settings)} ended matching the reconstructions against the members after "
            f"{matched} of {members}{partly}; the findings and the gate cover those {matched}, the non-members were "
            "not matched (the thresholds are absolute)")


def _cut_pass(run: RunContext, what: str) -> str:
    return (f"{budget_words(run.settings)} ended matching before {what} finished: left out "
            + ("(the members' figures stand uncalibrated: the thresholds are absolute)"
               if "non-members" in what else "(the weights' gain is not measured)"))


def matched_sets(sets: AuditSets, matches: Matches) -> AuditSets:
    """The sets the statistics cover: every member, or the members matched before the budget ended matching."""
    matched = len(matches.train.best_index)
    if matched == len(sets.train):
        return sets
    return replace(sets, train=take_first(sets.train, matched))
