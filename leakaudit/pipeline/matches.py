"""The matching stage: every candidate against every member and every non-member of the null.

One prefilter policy for every rank, decided from the whole sets rather than
a rank's shard, so that a distributed run matches exactly as one process
does. In informed mode the pre-trained generator's candidates are matched
too: the difference is what optimising against the weights added.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leakaudit.pipeline.attack import Attack
from leakaudit.pipeline.inputs import AuditSets
from leakaudit.matching.search import BestMatches, auto_prefilter
from leakaudit.matching.sharded import sharded_best_matches
from leakaudit.pipeline.run_context import RunContext


@dataclass(frozen=True)
class Matches:
    """Best matches of members and non-members, and the pre-trained generator's (informed mode)."""

    train: BestMatches
    null: BestMatches | None
    pretrained: tuple[torch.Tensor, torch.Tensor] | None  # (M,), (E,) float64 best SSIM before the weights
    prefilter: int | None  # candidates scored exactly per image, None: exhaustive

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
    dist, observer, stop = run.dist, run.observer, run.stop
    observer.phase("matching reconstructions against training images", len(train))
    n_images = len(train) + (len(null) if null is not None else 0)
    prefilter = auto_prefilter(int(candidates.shape[0]), n_images)
    train_match = sharded_best_matches(candidates, train.images, dist, k=5, prefilter=prefilter,
                                       progress=lambda d, t: observer.advance(d, t, "training images"))
    null_match = None
    if null is not None and not stop():
        observer.phase("matching reconstructions against non-member images", len(null))
        null_match = sharded_best_matches(candidates, null.images, dist, k=5, prefilter=prefilter,
                                          progress=lambda d, t: observer.advance(d, t, "non-member images"))
    pretrained = None
    pre_images = attack.result.pretrained_images
    if sets.informed and pre_images is not None and null is not None and not stop():
        observer.phase("matching the pre-trained generator's candidates (what the weights added)")
        pre = pre_images.detach().float().cpu().clamp(0, 1)
        pretrained = (sharded_best_matches(pre, train.images, dist, k=1, prefilter=prefilter).best_ssim.double(),
                      sharded_best_matches(pre, null.images, dist, k=1, prefilter=prefilter).best_ssim.double())
    return Matches(train_match, null_match, pretrained, prefilter)
