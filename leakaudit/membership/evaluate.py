"""Each attack's row: AUC with its interval, TPR at the FPR levels with intervals, the ROC, per-member scores.

TPR at an FPR sets the threshold on the non-members (``scoring.tpr_at_fpr``)
and counts members above it; its interval is Clopper–Pearson on that count.
With n non-members no FPR below 1/n can be resolved, and every row says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import beta

from leakaudit.record.membership import gate_rate_of
from leakaudit.scoring import _bootstrap_aucs, auc, tpr_at_fpr

ROC_POINTS = 200


@dataclass(frozen=True)
class Rate:
    """TPR at one FPR level with its Clopper–Pearson interval."""

    fpr: float
    tpr: float
    low: float
    high: float
    resolvable: bool  # fpr ≥ 1 / n non-members

    def to_dict(self) -> dict[str, Any]:
        return {"fpr": self.fpr, "tpr": self.tpr, "ci_low": self.low, "ci_high": self.high,
                "resolvable": self.resolvable}


@dataclass(frozen=True)
class AttackRow:
    """One membership attack evaluated on the audit's members vs non-members."""

    attack: str  # "loss" | "lira-online" | "lira-offline" | "rmia-offline"
    reference_models: int
    auc: float
    auc_low: float
    auc_high: float
    rates: tuple[Rate, ...]
    fpr_resolution: float  # 1 / n non-members
    roc_fpr: tuple[float, ...]
    roc_tpr: tuple[float, ...]
    member_scores: tuple[float, ...]  # in the members' order
    n_members: int
    n_nonmembers: int
    note: str = ""

    def tpr(self, fpr: float) -> float:
        return next(r.tpr for r in self.rates if abs(r.fpr - fpr) < 1e-12)

    def gate_tpr(self, fpr: float) -> float:
        """The TPR the gate reads: at ``fpr`` when the non-members resolve it, else at the lowest recorded FPR they
        resolve; -1 when they resolve none (so the AUC alone ranks such rows)."""
        rate = gate_rate_of(self.rates, fpr)
        return -1.0 if rate is None else rate.tpr

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "reference_models": self.reference_models, "auc": self.auc,
                "ci_low": self.auc_low, "ci_high": self.auc_high, "tpr_at_fpr": [r.to_dict() for r in self.rates],
                "fpr_resolution": self.fpr_resolution, "roc": {"fpr": list(self.roc_fpr), "tpr": list(self.roc_tpr)},
                "n_members": self.n_members, "n_nonmembers": self.n_nonmembers, "note": self.note}


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
             auc_interval: tuple[float, float, float] | None = None) -> AttackRow:
    """The row of one attack; ``auc_interval`` (value, low, high) when computed elsewhere (the loss test's own)."""
    pos, neg = np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64)
    if auc_interval is None:
        value = auc(pos, neg)
        boots = _bootstrap_aucs(pos, neg, n_boot, np.random.default_rng(seed + 7919))
        auc_interval = (value, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)))
    rates = []
    for level in fpr_levels:
        tpr = tpr_at_fpr(pos, neg, level)
        low, high = clopper_pearson(int(round(tpr * pos.size)), pos.size)
        rates.append(Rate(level, tpr, low, high, level >= 1.0 / neg.size))
    roc_fpr, roc_tpr = roc_curve(pos, neg)
    return AttackRow(attack, models, *auc_interval, tuple(rates), 1.0 / neg.size, roc_fpr, roc_tpr,
                     tuple(float(s) for s in pos), int(pos.size), int(neg.size), note)


def strongest(rows: tuple[AttackRow, ...] | list[AttackRow], fpr: float) -> AttackRow:
    """The attack with the highest TPR at the FPR the gate reads (the lowest resolvable one at or above ``fpr``),
    ties by AUC: a TPR the non-members cannot resolve never decides which attack is strongest."""
    return max(rows, key=lambda r: (r.gate_tpr(fpr), r.auc))
