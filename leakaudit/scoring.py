"""Every statistic of the verdict, one implementation for the audit and the benchmarks.

Reconstructions resemble class prototypes, so a high SSIM alone is no
evidence of leakage. The evidence is the gap between how well members
(training images) and non-members (holdout images of the same distribution)
are matched: the leak score is the Mann–Whitney AUC of member vs non-member
best-match SSIM (0.5 = no difference), with a bootstrap interval and a
one-sided permutation p-value. Beside it: the distribution summaries and
histograms of the report, and the model's own membership signal.

A model that memorises its training set can leak *membership* (was this image
used for training?) without any reconstruction looking like a member. The
standard first test is the loss threshold (Yeom et al. 2018): members tend to
have lower loss. Its AUC comes with a percentile bootstrap interval, a
one-sided p-value and the true-positive rates at 1 % and 0.1 % false-positive
rate, the convention of the membership inference literature (Carlini et al.
2022), which reads the tail, not the average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from leakaudit.errors import DataError
from leakaudit.record.scores import LeakScore, MembershipTest  # the one class of each, shared with the record

MEMBERSHIP_METHOD = (
    "loss-threshold membership test (lower cross-entropy = member): Mann-Whitney AUC of members vs non-members, "
    "percentile bootstrap interval resampling both groups, one-sided p-value from the normal approximation of the "
    "Mann-Whitney U statistic with tie correction"
)
FPR_LEVELS = (0.01, 0.001)
N_BOOT = 500


LEAK_SCORE_METHOD = (
    "Mann-Whitney AUC of best-match SSIM, members vs non-members (ties count half); "
    "percentile bootstrap interval resampling both groups; one-sided permutation test "
    "of the member/non-member labels"
)


QUANTILES = (0.5, 0.9, 0.95, 0.99)


def finite_values(values: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    """Values as a float64 numpy vector without NaN (images that had no candidate)."""
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    arr = arr.astype(np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(positive > negative) + ½ P(tie): the Mann–Whitney AUC, 0.5 = indistinguishable."""
    if positives.size == 0 or negatives.size == 0:
        raise DataError("an AUC needs at least one value in each group")
    neg = np.sort(negatives)
    below = np.searchsorted(neg, positives, side="left")
    not_above = np.searchsorted(neg, positives, side="right")
    return float((below + not_above).sum() / (2.0 * positives.size * neg.size))


def leak_score(
    train_best: torch.Tensor | np.ndarray,
    holdout_best: torch.Tensor | np.ndarray,
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
) -> LeakScore:
    """AUC of train (member) vs holdout (non-member) best-match SSIM, with bootstrap CI and p-value.

    The p-value is one-sided (members matched better), (1 + #perm ≥ observed) / (1 + n_perm),
    so it is never 0. NaN entries (no candidate of that class) are left out.
    """
    pos, neg = finite_values(train_best), finite_values(holdout_best)
    if pos.size == 0 or neg.size == 0:
        raise DataError("the leak score needs best-match SSIM for at least one member and one non-member")
    value = auc(pos, neg)
    rng = np.random.default_rng(seed)
    boots = bootstrap_aucs(pos, neg, n_boot, rng)
    alpha = (1.0 - ci_level) / 2.0
    ci_low, ci_high = ((float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))) if n_boot
                       else (value, value))
    ranks = rankdata(np.concatenate([pos, neg]))  # tie-averaged: a permutation only reshuffles them
    offset = pos.size * (pos.size + 1) / 2.0
    exceed = 0
    for _ in range(n_perm):
        shuffled = rng.permutation(ranks)
        exceed += (shuffled[: pos.size].sum() - offset) / (pos.size * neg.size) >= value - 1e-12
    p_value = (1.0 + exceed) / (1.0 + n_perm)
    return LeakScore(value=value, ci_low=ci_low, ci_high=ci_high, ci_level=ci_level, p_value=float(p_value),
                     n_members=int(pos.size), n_nonmembers=int(neg.size), method=LEAK_SCORE_METHOD)


def bootstrap_aucs(pos: np.ndarray, neg: np.ndarray, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """AUCs of ``rounds`` bootstrap resamples, each in O(n + m): resampling as counts, no sort per round.

    Each positive's place among the sorted negatives is found once; a resample
    weights positives and negatives by multinomial counts, and the negatives
    below (or tied with) a positive are a cumulative sum of their counts.
    """
    order = np.sort(neg)
    below = np.searchsorted(order, pos, side="left")  # (n,) negatives strictly below each positive
    not_above = np.searchsorted(order, pos, side="right")
    out = np.empty(rounds, dtype=np.float64)
    for r in range(rounds):
        w = np.bincount(rng.integers(0, pos.size, pos.size), minlength=pos.size)
        v = np.concatenate([[0], np.cumsum(np.bincount(rng.integers(0, neg.size, neg.size), minlength=neg.size))])
        out[r] = float(w @ (v[below] + v[not_above])) / (2.0 * pos.size * neg.size)
    return out


def distribution_summary(
    best_ssim: torch.Tensor | np.ndarray, thresholds: Sequence[float] = (0.4, 0.5, 0.6)
) -> dict[str, object]:
    """Mean, quantiles (0.5/0.9/0.95/0.99/max) and fraction above each threshold, as plain floats."""
    x = finite_values(best_ssim)
    if x.size == 0:
        raise DataError("no best-match SSIM values to summarise")
    quantiles = {str(q): float(np.quantile(x, q)) for q in QUANTILES}
    quantiles["max"] = float(x.max())
    return {
        "mean": float(x.mean()),
        "quantiles": quantiles,
        "fraction_above": {str(t): float((x > t).mean()) for t in thresholds},
    }


def histogram(
    train_best: torch.Tensor | np.ndarray,
    holdout_best: torch.Tensor | np.ndarray | None = None,
    *,
    bins: int = 20,
    low: float = 0.0,
    high: float = 1.0,
) -> dict[str, list[float] | list[int] | None]:
    """Counts of best-match SSIM in ``bins`` equal bins on [low, high] for the report.

    ``bins`` in the result are the bins + 1 edges; values outside [low, high]
    (SSIM can be negative) are counted in the first or last bin.
    """
    edges = np.linspace(low, high, bins + 1)

    def counts(values: torch.Tensor | np.ndarray) -> list[int]:
        x = np.clip(finite_values(values), low, high)
        return [int(c) for c in np.histogram(x, bins=edges)[0]]

    return {
        "bins": [float(e) for e in edges],
        "train": counts(train_best),
        "holdout": None if holdout_best is None else counts(holdout_best),
    }


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def holdout_rank(n_holdout: int, quantile: float) -> int:
    """r such that the holdout's ``quantile`` (linear interpolation) lies at or above its r-th largest value.

    With n values, position q·(n−1) counted from the smallest has
    n − 1 − ⌊q·(n−1)⌋ values above it (fewer when there are ties), so a member
    above the quantile is above the r-th largest, r = n − ⌊q·(n−1)⌋.
    """
    return max(1, n_holdout - math.floor(quantile * (n_holdout - 1) + 1e-9))


def exceedance_p_value(exceed: int, n_members: int, n_holdout: int, rank: int) -> float:
    """P(at least ``exceed`` members rank above the holdout's ``rank``-th largest), members and non-members
    exchangeable.

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
    return MembershipTest(auc=value, ci_low=low, ci_high=high, ci_level=ci_level, p_value=mann_whitney_p(pos, neg),
                          tpr_at_fpr=rates, n_members=int(pos.size), n_nonmembers=int(neg.size),
                          method=MEMBERSHIP_METHOD)


# Informed mode: what the weights must add over the pre-trained generator before it counts as evidence.
EVIDENCE_MIN_AUC = 0.55
EVIDENCE_MAX_P = 0.01


@dataclass(frozen=True)
class WeightsGain:
    """Informed mode: the leak score of each image's gain over the pre-trained generator (what the weights added)."""

    gain: LeakScore  # members' gains vs non-members' gains
    pretrained: LeakScore  # the leak score of the pre-trained generator alone
    train_mean_gain: float
    holdout_mean_gain: float

    @property
    def is_evidence(self) -> bool:
        return self.gain.value >= EVIDENCE_MIN_AUC and self.gain.p_value < EVIDENCE_MAX_P

    def to_dict(self) -> dict[str, Any]:
        return {
            "paired_auc": self.gain.value, "ci_low": self.gain.ci_low, "ci_high": self.gain.ci_high,
            "p_value": self.gain.p_value, "leak_score_pretrained": self.pretrained.value,
            "train_mean_gain": self.train_mean_gain, "holdout_mean_gain": self.holdout_mean_gain,
        }


def weights_gain(train_best: torch.Tensor, null_best: torch.Tensor, pretrained_train: torch.Tensor,
                 pretrained_null: torch.Tensor, *, seed: int = 0) -> WeightsGain:
    """Paired test of the weights' contribution: each image's best-match gain, members vs non-members.

    The pre-trained generator knows only public data, so any excess gain of
    members over non-members comes from the classifier's weights. A claim
    needs AUC ≥ 0.55 at p < 0.01 (``is_evidence``), replicated on two seeds.
    """
    gain = leak_score(train_best - pretrained_train, null_best - pretrained_null, seed=seed)
    before = leak_score(pretrained_train, pretrained_null, seed=seed)
    return WeightsGain(gain, before, float((train_best - pretrained_train).mean()),
                       float((null_best - pretrained_null).mean()))


def quantile(values: torch.Tensor, q: float) -> float | None:
    """The ``q`` quantile (linear interpolation) of the finite values, None when there are none."""
    finite = values[torch.isfinite(values)].double()
    return float(torch.quantile(finite, q)) if len(finite) else None
