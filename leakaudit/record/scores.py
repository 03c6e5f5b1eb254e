"""The statistics an audit reports: the leak score and the membership tests, as frozen values.

One class each, shared by ``scoring.py`` (which computes them), the record, the
gate and every format (which read them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from leakaudit.record.parse import number, integer, optional_number, text


@dataclass(frozen=True)
class LeakScore:
    """Members' best-match SSIM against non-members' (an AUC), with its bootstrap interval and permutation p."""

    value: float
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float
    n_members: int
    n_nonmembers: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "ci_level": self.ci_level,
                "p_value": self.p_value, "n_members": self.n_members, "n_nonmembers": self.n_nonmembers,
                "method": self.method}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LeakScore:
        return cls(value=number(d, "value"), ci_low=number(d, "ci_low"), ci_high=number(d, "ci_high"),
                   ci_level=number(d, "ci_level"), p_value=number(d, "p_value"), n_members=integer(d, "n_members"),
                   n_nonmembers=integer(d, "n_nonmembers"), method=text(d, "method"))


@dataclass(frozen=True)
class MembershipTest:
    """How well one attack tells members from non-members: its AUC, interval, p-value and TPR at low FPR."""

    auc: float
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float
    tpr_at_fpr: Mapping[str, float]  # "0.01" → TPR, "0.001" → TPR
    n_members: int
    n_nonmembers: int
    method: str

    @property
    def fpr_resolution(self) -> float:
        """The smallest false-positive rate the non-members can resolve."""
        return 1.0 / self.n_nonmembers

    def to_dict(self) -> dict[str, Any]:
        return {"auc": self.auc, "ci_low": self.ci_low, "ci_high": self.ci_high, "ci_level": self.ci_level,
                "p_value": self.p_value, "tpr_at_fpr": dict(self.tpr_at_fpr), "fpr_resolution": self.fpr_resolution,
                "n_members": self.n_members, "n_nonmembers": self.n_nonmembers, "method": self.method}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MembershipTest:
        level = optional_number(d, "ci_level")
        rates = d.get("tpr_at_fpr")
        return cls(auc=number(d, "auc"), ci_low=number(d, "ci_low"), ci_high=number(d, "ci_high"),
                   ci_level=0.95 if level is None else level, p_value=number(d, "p_value"),
                   tpr_at_fpr=MappingProxyType(dict(rates) if isinstance(rates, Mapping) else {}),
                   n_members=integer(d, "n_members"), n_nonmembers=integer(d, "n_nonmembers"),
                   method=text(d, "method"))


@dataclass(frozen=True)
class Membership:
    """Every membership attack the audit ran, in the order it ran them; the strongest decides."""

    attacks: tuple[MembershipTest, ...]

    @property
    def primary(self) -> MembershipTest:
        """The model's own loss-threshold test: the one the document's ``membership`` object holds."""
        return self.attacks[0]

    @property
    def strongest(self) -> MembershipTest:
        """The attack that separates members best (highest AUC; the first on a tie)."""
        return max(self.attacks, key=lambda a: a.auc)
