"""The record of one audit: what the stages hand each other, and what every output format renders.

Facts derived from the record (the exposure, the leaked members, the headline,
the holdout reference) are properties here, computed in this one place; no
format derives them again. The JSON document is one rendering of a record
(``record/document.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Literal

from leakaudit.record.findings import Finding
from leakaudit.record.gate import Exposure, GateRecord, Thresholds, Verdict
from leakaudit.record.membership import AttackResult, ReferenceMembership
from leakaudit.record.parse import JsonObject, thawed
from leakaudit.record.power import PowerRecord
from leakaudit.record.scores import LeakScore, Membership, MembershipTest

AttackResultType = AttackResult
ExposureKind = Literal["both", "reconstruction", "membership", "neither", "incomplete"]
HEADLINES: dict[ExposureKind, str] = {
    "both": "Reconstructs training images and memorises membership",
    "reconstruction": "Reconstructs training images",
    "membership": "Memorises membership",
    "neither": "No leakage found",
    "incomplete": "Incomplete: the attack did not finish",
}
POWER_HEADLINES = {
    "not shown": "No leakage found, but the attack did not reconstruct a planted copy of this architecture",
    "not measured": "No leakage found; the attack's power was not measured",
}
_EMPTY: JsonObject = MappingProxyType({})


@dataclass(frozen=True)
class Summary:
    """The audit's figures over every member: counts, the leak score, membership, distributions, notes."""

    n_train: int
    n_holdout: int | None
    n_candidates: int
    leak_score: LeakScore | None
    membership: Membership | None
    train: JsonObject  # best-match SSIM of members: mean, quantiles, fraction above each level
    holdout: JsonObject | None  # the same for non-members (None without a holdout)
    holdout_ssim_p95: float | None
    holdout_ssim_p99: float | None
    class_mean_null: JsonObject | None
    per_class: tuple[JsonObject, ...]
    histogram: JsonObject
    weights_gain: JsonObject | None
    notes: tuple[str, ...]
    extra: JsonObject = field(default_factory=lambda: _EMPTY)

    @property
    def membership_test(self) -> MembershipTest | None:
        """The membership test the gate's ``membership`` condition reads (the strongest attack)."""
        return None if self.membership is None else self.membership.strongest

    @property
    def membership_loss_auc(self) -> float | None:
        """The loss-threshold test's AUC (the document's ``membership_loss_auc``)."""
        return None if self.membership is None else self.membership.primary.auc

    @property
    def class_names(self) -> dict[int, str]:
        return {int(c["class_index"]): str(c["class"]) for c in self.per_class}

    @property
    def holdout_quantile_keys(self) -> tuple[str, ...]:
        """The quantiles of non-members' best match the audit recorded (``"0.99"``, ``"max"``, …)."""
        return tuple(str(k) for k in ((self.holdout or _EMPTY).get("quantiles") or _EMPTY))

    @property
    def prototype_train_mean(self) -> float | None:
        """Members' mean best match against the class-mean images (the prototype null); None when not measured."""
        value = (self.class_mean_null or _EMPTY).get("train_mean")
        return None if value is None else float(value)

    def holdout_quantile(self, q: float) -> float | None:
        """Non-members' best-match SSIM at quantile ``q``, as the audit recorded it; None when not recorded."""
        quantiles = (self.holdout or _EMPTY).get("quantiles") or _EMPTY
        for key in (f"{q:g}", str(q)):
            if quantiles.get(key) is not None:
                return float(quantiles[key])
        return None


@dataclass(frozen=True)
class Inversion:
    """What the attack planned, what ran, and whether it finished."""

    mode: str
    effort: str
    complete: bool
    incomplete_reason: str | None
    resumed: bool
    resumed_from: str | None
    steps: int
    planned_steps: int
    seconds: float
    completed_fraction: float
    phase_seconds: JsonObject
    candidates_per_class: int | None
    notes: tuple[str, ...]
    gallery: JsonObject | None  # class index → candidate indices (diverse mode), else None
    extra: JsonObject = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class BudgetCut:
    """A phase after the attack that the budget ended (matching, the control, membership), and how far it got."""

    phase: str  # "matching" | "positive control" | "membership"
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"phase": self.phase, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BudgetCut:
        return cls(str(d["phase"]), str(d["reason"]))


@dataclass(frozen=True)
class AuditRecord:
    """One gated audit: the model's findings and figures, the gate's decision, the control, the provenance."""

    schema_version: str
    tool: JsonObject
    verdict: Verdict
    exit_code: int
    mode: str
    threat_model: str
    calibrated: bool
    thresholds: Thresholds
    metrics: JsonObject
    summary: Summary
    findings: tuple[Finding, ...]
    gate: GateRecord
    inversion: Inversion
    provenance: JsonObject
    power: PowerRecord | None
    extra: JsonObject = field(default_factory=lambda: _EMPTY)  # top-level keys the record does not model
    membership_attacks: ReferenceMembership | None = None  # the reference-model attacks (None: R = 0, or none ran)
    budget_cuts: tuple[BudgetCut, ...] = ()  # the phases after the attack the budget ended, in order

    @cached_property
    def exposure(self) -> Exposure:
        """What the gate found to hold, from its conditions and verdict."""
        return Exposure.decide(self.gate.conditions, self.verdict)

    @property
    def incomplete(self) -> bool:
        """The attack, or a phase after it, did not finish (or the gate said incomplete)."""
        membership_unfinished = self.membership_attacks is not None and not self.membership_attacks.complete
        return (self.verdict == "incomplete" or not self.inversion.complete or self.inversion.completed_fraction < 1.0
                or membership_unfinished or bool(self.budget_cuts))

    @property
    def strongest_membership(self) -> AttackResultType | None:
        """The membership attack that decides the gate: the strongest reference-model attack, else the loss test."""
        return None if self.membership_attacks is None else self.membership_attacks.strongest

    @property
    def membership_test_name(self) -> str | None:
        """Which membership test stood behind the verdict, in words (None without a holdout)."""
        if self.summary.membership is None:
            return None
        m = self.membership_attacks
        if m is not None and not m.complete:
            cut = f"the budget ended the reference models' training after {m.reference_models} of {m.planned_models}"
            return (f"{m.strongest.name} ({cut})" if m.reference_models else
                    f"the loss threshold (the weakest known test: {cut})")
        if m is None or m.reference_models == 0:
            return "the loss threshold (the weakest known test; no reference models)"
        recipe = "the given recipe" if m.recipe_given else "a guessed recipe"
        check = " (the recipe check warns)" if m.recipe_warning else ""
        if m.strongest.reference_models <= 0:
            return (f"the loss threshold, stronger here than the attacks on {m.reference_models} reference models "
                    f"trained by {recipe}{check}")
        return f"{m.strongest.name}, trained by {recipe}{check}"

    @property
    def power_required(self) -> bool:
        """require_power, not the attack, made this audit incomplete."""
        membership_done = self.membership_attacks is None or self.membership_attacks.complete
        return (self.verdict == "incomplete" and self.inversion.complete and membership_done
                and not self.budget_cuts and self.thresholds.require_power)

    @property
    def gate_power_gap(self) -> str | None:
        """What require_power found missing: the control's power, membership by the loss threshold alone, or both."""
        gaps = []
        power = None if self.power is None else self.power.status
        if power != "shown":
            gaps.append(f"power {power or 'not measured'}")
        if self.summary.membership is not None and (self.membership_attacks is None
                                                    or self.membership_attacks.reference_models == 0):
            gaps.append("membership tested only by the loss threshold")
        return " and ".join(gaps) or None

    @property
    def exposure_kind(self) -> ExposureKind:
        """``both``, ``reconstruction``, ``membership``, ``neither`` or ``incomplete`` (nothing found, unfinished)."""
        rec, mem = bool(self.exposure.reconstruction), bool(self.exposure.membership)
        kind: ExposureKind = "both" if rec and mem else "reconstruction" if rec else "membership" if mem else "neither"
        return "incomplete" if kind == "neither" and self.incomplete else kind

    @property
    def headline(self) -> str:
        """What holds, in words; a pass the attack could not have failed never reads as clean."""
        kind = self.exposure_kind
        headline = HEADLINES[kind]
        power = None if self.power is None else self.power.status
        if kind == "neither" and self.verdict == "warn":
            headline = "No leakage at the fail level, with warnings to look at"
        if kind == "neither" and power in POWER_HEADLINES:
            headline = POWER_HEADLINES[power]
        if self.power_required:
            return f"Incomplete: {self.gate_power_gap or 'power not measured'}, and require_power is set"
        phases = ", ".join(self.unfinished_after_attack)
        if kind == "incomplete" and phases:
            return f"Incomplete: the budget ended the audit during {phases}"
        if self.incomplete and kind != "incomplete":
            headline += f" (from an audit the budget ended during {phases})" if phases else (
                " (from an attack that did not finish)")
        return headline

    @property
    def unfinished_after_attack(self) -> tuple[str, ...]:
        """The phases the budget left unfinished after a finished attack: its recorded cuts, and a membership phase
        whose reference models it cut short (recorded on the attacks' own record, not as a cut)."""
        if not self.inversion.complete:
            return ()
        phases = [c.phase for c in self.budget_cuts]
        if self.membership_attacks is not None and not self.membership_attacks.complete:
            phases.append("membership")
        return tuple(dict.fromkeys(phases))

    @property
    def holdout_reference(self) -> float | None:
        """The holdout quantile a member must exceed to count (only when calibrated)."""
        return self.summary.holdout_quantile(self.thresholds.holdout_quantile) if self.calibrated else None

    @cached_property
    def leaked_members(self) -> int | None:
        """Members matched better than the holdout's quantile (every member, not only the listed rows)."""
        if not self.calibrated:
            return None
        counted = sum(int(c.get("n_flagged") or 0) for c in self.summary.per_class)
        listed = sum(1 for f in self.findings if f.above_holdout_p99)  # a lower bound
        return max(counted, listed)

    def count(self, status: str) -> int:
        """Listed findings with this status."""
        return sum(1 for f in self.findings if f.status == status)

    @property
    def notes(self) -> tuple[str, ...]:
        return self.summary.notes

    def _provenance(self, section: str, key: str) -> Any:
        part = self.provenance.get(section)
        return part.get(key) if isinstance(part, Mapping) else None

    @property
    def lpips_available(self) -> bool:
        return bool(self._metric("lpips", "available"))

    @property
    def lpips_reason(self) -> str:
        """Why LPIPS is unavailable, in the scorer's words."""
        return str(self._metric("lpips", "reason") or "no reason given")

    def _metric(self, metric: str, key: str) -> Any:
        settings = self.metrics.get(metric)
        return settings.get(key) if isinstance(settings, Mapping) else None

    @property
    def model_sha256(self) -> str | None:
        value = self._provenance("model", "sha256")
        return None if value is None else str(value)

    @property
    def elapsed_s(self) -> float:
        return float(self.provenance.get("elapsed_s") or 0.0)

    @property
    def started_at(self) -> str | None:
        value = self.provenance.get("started_at")
        return None if value is None else str(value)

    @property
    def model_format(self) -> str | None:
        value = self._provenance("model", "format")
        return None if value is None else str(value)

    @property
    def unconfined_reason(self) -> str | None:
        """Why the model ran outside the confined worker; None when confined, or the caller's own module."""
        record = self.provenance.get("confinement")
        if not isinstance(record, Mapping) or record.get("worker") or record.get("caller_object"):
            return None
        return str(record.get("reason") or "confinement unavailable")

    def json_section(self, name: str) -> Any:
        """A plain copy of an untyped section (``metrics``, ``provenance``), for a caller that wants a dict."""
        return thawed(getattr(self, name))
