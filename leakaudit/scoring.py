"""Statistics of the verdict that are not about reconstructions: the model's own membership signal.

A model that memorises its training set can leak *membership* (was this image
used for training?) without any reconstruction looking like a member. The
standard first test is the loss threshold (Yeom et al. 2018): members tend to
have lower loss. Its AUC (members vs held-back non-members) comes with a
percentile bootstrap interval, a one-sided p-value and the true-positive rates
at 1 % and 0.1 % false-positive rate, the convention of the membership
inference literature (Carlini et al. 2022), which reads the tail, not the
average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from leakaudit.matching.baseline import auc

MEMBERSHIP_METHOD = (
    "loss-threshold membership test (lower cross-entropy = member): Mann-Whitney AUC of members vs non-members, "
    "percentile bootstrap interval resampling both groups, one-sided p-value from the normal approximation of the "
    "Mann-Whitney U statistic with tie correction"
)
FPR_LEVELS = (0.01, 0.001)
N_BOOT = 500


@dataclass(frozen=True)
class MembershipTest:
    """How well the model's own loss tells members from non-members."""

    auc: float
    ci_low: float
    ci_high: float
    p_value: float
    tpr_at_fpr: dict[str, float]  # "0.01" → TPR, "0.001" → TPR
    n_members: int
    n_nonmembers: int
    ci_level: float = 0.95
    method: str = MEMBERSHIP_METHOD

    def to_dict(self) -> dict[str, Any]:
        return {
            "auc": self.auc, "ci_low": self.ci_low, "ci_high": self.ci_high, "ci_level": self.ci_level,
            "p_value": self.p_value, "tpr_at_fpr": dict(self.tpr_at_fpr), "fpr_resolution": 1.0 / self.n_nonmembers,
            "n_members": self.n_members, "n_nonmembers": self.n_nonmembers, "method": self.method,
        }


def holdout_rank(n_holdout: int, quantile: float) -> int:
    """r such that the holdout's ``quantile`` (linear interpolation) lies at or above its r-th largest value.

    With n values, position q·(n−1) counted from the smallest has
    n − 1 − ⌊q·(n−1)⌋ values above it (fewer when there are ties), so a member
    above the quantile is above the r-th largest, r = n − ⌊q·(n−1)⌋.
    """
    return max(1, n_holdout - math.floor(quantile * (n_holdout - 1) + 1e-9))


def exceedance_p_value(exceed: int, n_members: int, n_holdout: int, rank: int) -> float:
    """P(at least ``exceed`` members rank above the holdout's ``rank``-th largest), members and non-members exchangeable.

    The exact test of "more members above the holdout's upper quantile than
    chance gives": under the null every ordering of the pooled values is
    equally likely, so the number of members ranked above the r-th largest
    non-member is negative hypergeometric. Unlike a binomial test at rate 1 − q
    it accounts for the quantile itself being estimated from a finite
    holdout (the members share one noisy threshold). Since the quantile lies at
    or above the r-th largest holdout value, the p-value is conservative.
    """
    m, n, r = n_members, n_holdout, min(max(1, rank), n_holdout)
    if exceed <= 0:
        return 1.0
    if exceed > m:
        return 0.0
    log_total = math.lgamma(m + n + 1) - math.lgamma(m + 1) - math.lgamma(n + 1)

    def log_pmf(x: int) -> float:  # C(x+r-1, x) · C(m-x + n-r, m-x) / C(m+n, m)
        a = math.lgamma(x + r) - math.lgamma(x + 1) - math.lgamma(r)
        b = math.lgamma(m - x + n - r + 1) - math.lgamma(m - x + 1) - math.lgamma(n - r + 1)
        return a + b - log_total

    below = sum(math.exp(log_pmf(x)) for x in range(0, exceed))
    if below < 0.5:  # sum the short side for precision
        return float(min(1.0, max(0.0, 1.0 - below)))
    return float(min(1.0, sum(math.exp(log_pmf(x)) for x in range(exceed, m + 1))))


def mann_whitney_p(positives: np.ndarray, negatives: np.ndarray) -> float:
    """One-sided P(AUC ≥ observed) under "no difference": normal approximation with tie correction."""
    n1, n2 = positives.size, negatives.size
    pooled = np.concatenate([positives, negatives])
    _, counts = np.unique(pooled, return_counts=True)
    n = n1 + n2
    tie = float((counts.astype(np.float64) ** 3 - counts).sum()) / (n * (n - 1)) if n > 1 else 0.0
    variance = n1 * n2 / 12.0 * ((n + 1) - tie)
    if variance <= 0:
        return 1.0
    u = auc(positives, negatives) * n1 * n2
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)  # continuity correction
    return float(0.5 * math.erfc(z / math.sqrt(2.0)))


def tpr_at_fpr(positives: np.ndarray, negatives: np.ndarray, fpr: float) -> float:
    """Share of positives scored above a threshold that at most ``fpr`` of the negatives exceed.

    With n negatives the smallest resolvable rate is 1/n; below it the
    threshold is the largest negative score (a conservative reading).
    """
    ranked = np.sort(negatives)[::-1]
    allowed = int(math.floor(fpr * ranked.size))
    threshold = ranked[min(allowed, ranked.size - 1)]
    return float((positives > threshold).mean())


def membership_test(logits_members: torch.Tensor, labels_members: torch.Tensor, logits_nonmembers: torch.Tensor,
                    labels_nonmembers: torch.Tensor, *, seed: int = 0, n_boot: int = N_BOOT,
                    ci_level: float = 0.95) -> MembershipTest:
    """The loss-threshold membership test of a classifier, members vs non-members, with its uncertainty."""
    loss_in = F.cross_entropy(logits_members.double(), labels_members, reduction="none").numpy()
    loss_out = F.cross_entropy(logits_nonmembers.double(), labels_nonmembers, reduction="none").numpy()
    pos, neg = -loss_in, -loss_out  # higher score = more member-like
    value = auc(pos, neg)
    rng = np.random.default_rng(seed + 104729)
    boots = np.array([auc(rng.choice(pos, pos.size), rng.choice(neg, neg.size)) for _ in range(n_boot)])
    alpha = (1.0 - ci_level) / 2.0
    low, high = (float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))) if n_boot else (value, value)
    rates = {f"{level:g}": tpr_at_fpr(pos, neg, level) for level in FPR_LEVELS}
    return MembershipTest(value, low, high, mann_whitney_p(pos, neg), rates, int(pos.size), int(neg.size), ci_level)
