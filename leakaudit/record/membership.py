"""The reference-model membership attacks of an audit (LiRA, RMIA beside the loss threshold), as frozen values.

Written to the document as ``membership_attacks`` when the audit trained
reference models (R > 0); an audit with R = 0 has none and its document is
unchanged. The strongest attack, which the gate reads, is derived here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from leakaudit.record.parse import (
    JsonObject, flag, frozen, integer, items, number, optional_integer, optional_number, optional_obj, text, thawed,
)

ATTACK_NAMES = {"loss": "the loss threshold", "lira-online": "LiRA", "lira-offline": "LiRA offline",
                "rmia-offline": "RMIA"}


@dataclass(frozen=True)
class AttackRate:
    """TPR at one FPR level, its Clopper–Pearson interval, and whether the non-members can resolve that FPR."""

    fpr: float
    tpr: float
    ci_low: float
    ci_high: float
    resolvable: bool

    def to_dict(self) -> dict[str, Any]:
        return {"fpr": self.fpr, "tpr": self.tpr, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "resolvable": self.resolvable}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttackRate:
        return cls(number(d, "fpr"), number(d, "tpr"), number(d, "ci_low"), number(d, "ci_high"),
                   flag(d, "resolvable"))


def strongest_attack(attacks: Sequence[AttackResult], fpr: float) -> AttackResult:
    """The attack with the highest TPR at the FPR the gate reads (``gate_rate``: a TPR the non-members cannot
    resolve never decides), ties by AUC, the first on a full tie. The one rule, for the engine and the record."""
    def key(row: AttackResult) -> tuple[float, float]:
        rate = row.gate_rate(fpr)
        return (-1.0 if rate is None else rate.tpr, row.auc)

    return max(attacks, key=key)


@dataclass(frozen=True)
class AttackResult:
    """One membership attack on the audit's members vs non-members."""

    attack: str  # "loss" | "lira-online" | "lira-offline" | "rmia-offline"
    reference_models: int
    auc: float
    ci_low: float
    ci_high: float
    rates: tuple[AttackRate, ...]
    fpr_resolution: float  # the smallest FPR the non-members resolve (1 / their count)
    roc_fpr: tuple[float, ...]
    roc_tpr: tuple[float, ...]
    n_members: int
    n_nonmembers: int
    note: str = ""
    # Every member's score, in the members' order, as the engine computed it. Not written to the document (a loaded
    # record holds none), so it takes no part in comparing records.
    member_scores: tuple[float, ...] = field(default=(), compare=False, repr=False)

    @property
    def name(self) -> str:
        """How outputs name the attack: "LiRA with 8 reference models", "the loss threshold"."""
        base = ATTACK_NAMES.get(self.attack, self.attack)
        if self.reference_models <= 0:
            return base
        return f"{base} with {self.reference_models} reference model{'s' if self.reference_models != 1 else ''}"

    def rate(self, fpr: float) -> AttackRate | None:
        return next((r for r in self.rates if abs(r.fpr - fpr) < 1e-12), None)

    def tpr(self, fpr: float) -> float:
        rate = self.rate(fpr)
        return 0.0 if rate is None else rate.tpr

    def gate_rate(self, fpr: float) -> AttackRate | None:
        """The rate the gate reads: at ``fpr`` when the non-members resolve it, else at the lowest recorded FPR above
        it that they resolve; None when they resolve none."""
        usable = sorted((r for r in self.rates if r.resolvable and r.fpr >= fpr - 1e-12), key=lambda r: r.fpr)
        return usable[0] if usable else None

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "reference_models": self.reference_models, "auc": self.auc,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "tpr_at_fpr": [r.to_dict() for r in self.rates],
                "fpr_resolution": self.fpr_resolution, "roc": {"fpr": list(self.roc_fpr), "tpr": list(self.roc_tpr)},
                "n_members": self.n_members, "n_nonmembers": self.n_nonmembers, "note": self.note}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttackResult:
        roc = optional_obj(d, "roc") or {}
        return cls(text(d, "attack"), integer(d, "reference_models"), number(d, "auc"), number(d, "ci_low"),
                   number(d, "ci_high"), tuple(AttackRate.from_dict(r) for r in items(d, "tpr_at_fpr")),
                   number(d, "fpr_resolution"), tuple(float(v) for v in roc.get("fpr", ())),
                   tuple(float(v) for v in roc.get("tpr", ())), integer(d, "n_members"), integer(d, "n_nonmembers"),
                   str(d.get("note") or ""))


@dataclass(frozen=True)
class ExposedMember:
    """A member the strongest attack scores high: its index among the members, its score, its best reconstruction."""

    index: int
    score: float
    reconstruction_index: int | None = None  # the candidate that matches it best (None: not matched)
    ssim: float | None = None  # that match's SSIM

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "score": self.score, "reconstruction_index": self.reconstruction_index,
                "ssim": self.ssim}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExposedMember:
        return cls(integer(d, "index"), number(d, "score"), optional_integer(d, "reconstruction_index"),
                   optional_number(d, "ssim"))


@dataclass(frozen=True)
class ReferenceMembership:
    """Every membership attack, how the reference models were made, the recipe check and the splits."""

    attacks: tuple[AttackResult, ...]  # the loss threshold first
    gate_fpr: float
    reference_models: int  # trained
    planned_models: int
    recipe: JsonObject
    recipe_given: bool
    recipe_check: JsonObject | None  # target's vs reference models' IN/OUT loss and accuracy, and a warning
    splits: JsonObject | None  # seed, subset size, models, digest of the IN/OUT masks
    seconds_per_model: float | None
    method: str  # "loss" | "full" | "head"
    complete: bool
    notes: tuple[str, ...]
    exposed: tuple[ExposedMember, ...]  # the strongest attack's top members, highest first

    @property
    def strongest(self) -> AttackResult:
        """The attack the gate reads (``strongest_attack``)."""
        return strongest_attack(self.attacks, self.gate_fpr)

    @property
    def recipe_warning(self) -> str | None:
        value = (self.recipe_check or {}).get("warning")
        return None if value is None else str(value)

    def to_dict(self) -> dict[str, Any]:
        return {"attacks": [a.to_dict() for a in self.attacks], "strongest": self.strongest.attack,
                "gate_fpr": self.gate_fpr, "reference_models": self.reference_models,
                "planned_models": self.planned_models, "recipe": thawed(self.recipe), "recipe_given": self.recipe_given,
                "recipe_check": thawed(self.recipe_check), "splits": thawed(self.splits),
                "seconds_per_model": self.seconds_per_model, "method": self.method, "complete": self.complete,
                "notes": list(self.notes), "exposed": [e.to_dict() for e in self.exposed]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceMembership:
        return cls(tuple(AttackResult.from_dict(a) for a in items(d, "attacks")), number(d, "gate_fpr"),
                   integer(d, "reference_models"), integer(d, "planned_models"), frozen(dict(d.get("recipe") or {})),
                   flag(d, "recipe_given"), optional_obj(d, "recipe_check"), optional_obj(d, "splits"),
                   optional_number(d, "seconds_per_model"), text(d, "method"), flag(d, "complete"),
                   tuple(str(n) for n in items(d, "notes")),
                   tuple(ExposedMember.from_dict(e) for e in items(d, "exposed")))

    def __post_init__(self) -> None:
        if not self.attacks:
            raise ValueError("a membership record holds at least the loss threshold's row")


