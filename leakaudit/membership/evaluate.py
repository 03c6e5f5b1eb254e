"""Each attack's row: AUC with its interval, TPR at the FPR levels with intervals, the ROC, per-member scores.

TPR at an FPR sets the threshold on the non-members (``scoring.tpr_at_fpr``)
and counts members above it; its interval is Clopper–Pearson on that count.
With n non-members no FPR below 1/n can be resolved, and every row says so.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta

from leakaudit.record.membership import AttackRate, AttackResult
from leakaudit.scoring import auc, bootstrap_aucs, tpr_at_fpr

ROC_POINTS = 200

# The engine's row is the record's: ``evaluate`` makes the ``AttackResult`` the document holds, its members' scores
# beside it (not written); the strongest attack is chosen by the record's one rule (``strongest_attack``).


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact binomial interval of k successes in n."""
    alpha = 1.0 - level
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def roc_curve(pos: np.ndarray, neg: np.ndarray,
              points: int = ROC_POINTS) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(FPR, TPR) at thresholds spaced evenly in log FPR from 1/n to 1, for a log–log plot."""
    neg_sorted = np.sort(neg)[::-1]
    pos_sorted = np.sort(pos)
    levels = np.unique(np.clip(np.round(np.geomspace(1, neg.size, points)).astype(int), 1, neg.size))
    fpr, tpr = [], []
    for k in levels:  # k non-members at or above the threshold
        threshold = neg_sorted[k - 1]
        fpr.append(float(np.mean(neg >= threshold)))
        tpr.append(float(pos.size - np.searchsorted(pos_sorted, threshold, side="left")) / pos.size)
    return tuple(fpr), tuple(tpr)


def evaluate(attack: str, models: int, member_scores: np.ndarray, nonmember_scores: np.ndarray,
             fpr_levels: tuple[float, ...], seed: int, n_boot: int = 500, note: str = "",
             auc_interval: tuple[float, float, float] | None = None) -> AttackResult:
    """The row of one attack; ``auc_interval`` (value, low, high) when computed elsewhere (the loss test's own)."""
    pos, neg = np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64)
    if auc_interval is None:
        value = auc(pos, neg)
        boots = bootstrap_aucs(pos, neg, n_boot, np.random.default_rng(seed + 7919))
        auc_interval = (value, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)))
    rates = []
    for level in fpr_levels:
        tpr = tpr_at_fpr(pos, neg, level)
        low, high = clopper_pearson(int(round(tpr * pos.size)), pos.size)
        rates.append(AttackRate(level, tpr, low, high, level >= 1.0 / neg.size))
    roc_fpr, roc_tpr = roc_curve(pos, neg)
    return AttackResult(attack, models, *auc_interval, tuple(rates), 1.0 / neg.size, roc_fpr, roc_tpr, int(pos.size),
                        int(neg.size), note, member_scores=tuple(float(s) for s in pos))

