"""Whether the attack could have found a leak: the controls scored with the audit's own code and gate.

A rung shows power when its control would fail the audit's own reconstruction
conditions (the SSIM condition, counted above the null's quantile and beyond
chance, or the leak score), evaluated by ``gate_conditions`` with the audit's
thresholds. The statement names the largest K per class whose copy is still
reconstructed, beside the audited model's own images per class. Nothing here
touches the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from leakaudit.gate.conditions import chance_test, leak_condition, members_of, ssim_condition
from leakaudit.gate.settings import GateSettings
from leakaudit.matching.search import auto_prefilter, best_matches
from leakaudit.record import LeakScore, MemberScore, PowerRecord, Rung
from leakaudit.record.parse import frozen
from leakaudit.scoring import leak_score, quantile

PowerStatus = Literal["shown", "not shown", "not measured"]
SEEN_SSIM = 0.4  # a member "at SSIM ≥ 0.4" is visibly reconstructed (the summaries' first level)


@dataclass(frozen=True)
class RungResult:
    """One control, scored: the numbers a reader needs to judge it."""

    k: int
    n_members: int
    n_null: int
    leak: LeakScore | None
    above_quantile: int  # members above the control null's gate quantile
    quantile_value: float | None
    at_seen: int  # members at SSIM ≥ SEEN_SSIM
    shown: bool
    reason: str  # which condition failed, or why none did
    memorised: bool
    steps: int
    final_loss: float
    accuracy: float
    complete: bool
    seconds: float
    members: list[int]  # indices into the holdout
    null: list[int]  # indices into the holdout
    member_best_ssim: list[float]
    member_best_index: list[int]
    notes: list[str] = field(default_factory=list)

    def rung(self) -> Rung:
        """The rung as the audit record holds it."""
        return Rung(k=self.k, n_members=self.n_members, n_null=self.n_null, leak_score=self.leak,
                    members_above_quantile=self.above_quantile, quantile_value=self.quantile_value,
                    members_at_ssim_0_4=self.at_seen, shown=self.shown, reason=self.reason, memorised=self.memorised,
                    training_steps=self.steps,
                    final_loss=self.final_loss if self.final_loss == self.final_loss else None,  # NaN: none recorded
                    accuracy=self.accuracy, complete=self.complete, members=tuple(self.members), null=tuple(self.null),
                    member_best_ssim=tuple(self.member_best_ssim), member_best_index=tuple(self.member_best_index),
                    notes=tuple(self.notes), seconds=self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return self.rung().to_dict()


def _gate_for_control(gate: GateSettings) -> GateSettings:
    """The audit's thresholds without what belongs to the audited model alone (ignores, baseline)."""
    return replace(gate, ignore=(), baseline_path=None)


@dataclass(frozen=True)
class RungScore:
    """A control's candidates matched and judged with the audit's conditions."""

    leak: LeakScore
    above_quantile: int  # members above the control null's gate quantile
    quantile_value: float | None
    at_seen: int  # members at SSIM ≥ SEEN_SSIM
    shown: bool  # the control fails the audit's reconstruction conditions
    reason: str
    member_best_ssim: torch.Tensor  # (members,) float64
    member_best_index: torch.Tensor  # (members,) the best candidate of each member


def score_rung(candidates: torch.Tensor, member_images: torch.Tensor, null_images: torch.Tensor,
               gate: GateSettings, seed: int) -> RungScore:
    """Match a control's candidates and judge them with the audit's SSIM and leak score conditions."""
    prefilter = auto_prefilter(int(candidates.shape[0]), len(member_images) + len(null_images))
    train = best_matches(candidates, member_images, k=1, prefilter=prefilter)
    null = best_matches(candidates, null_images, k=1, prefilter=prefilter)
    train_best, null_best = train.best_ssim.double(), null.best_ssim.double()
    leak = leak_score(train_best, null_best, seed=seed)
    settings = _gate_for_control(gate)
    q = quantile(null_best, settings.holdout_quantile)
    rows = [MemberScore(str(i), float(s)) for i, s in enumerate(train_best.tolist())]
    chance = chance_test(rows, len(rows), len(null_images), settings, q)
    ssim = ssim_condition(settings, members_of(rows, {}, settings, chance, {}, None), chance)
    leak_cond = leak_condition(settings, leak, True, None)
    failed = [c for c in (ssim, leak_cond) if c.status == "fail"]
    if failed:
        reason = " ".join(f"{c.name}: {c.message}" for c in failed)
    else:
        reason = "Would pass the gate: " + " ".join(f"{c.name}: {c.message}" for c in (leak_cond, ssim))
    above = int((train_best > q).sum()) if q is not None else 0
    seen = int((train_best >= SEEN_SSIM).sum())
    return RungScore(leak, above, q, seen, bool(failed), reason, train_best, train.best_index)


@dataclass(frozen=True)
class Power:
    """The power of this audit's attack, as the verdict states it."""

    status: PowerStatus
    reason: str
    statement: str
    largest_k: int | None
    model_per_class: float | None
    rungs: tuple[RungResult, ...] = ()
    method: str | None = None  # how the copy got its weights (fresh, or the --init weights)
    recipe: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def display_k(self) -> int | None:
        """The rung the report shows beside its members: the largest shown, else the smallest tried."""
        if self.largest_k is not None:
            return self.largest_k
        return min((r.k for r in self.rungs), default=None)

    def record(self) -> PowerRecord:
        """The power as the audit record holds it."""
        return PowerRecord(status=self.status, reason=self.reason, statement=self.statement,
                           largest_k_shown=self.largest_k, model_images_per_class=self.model_per_class,
                           rungs=tuple(r.rung() for r in self.rungs), copy=self.method,
                           recipe=None if self.recipe is None else frozen(self.recipe), seconds=self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return self.record().to_dict()


def per_class_text(n: float | None) -> str:
    if n is None:
        return "an unknown number of"
    return f"{n:,.0f}" if abs(n - round(n)) < 1e-9 else f"{n:,.1f}"


def not_measured(reason: str, model_per_class: float | None) -> Power:
    """No control ran: the pass rests on the attack alone."""
    return Power("not measured", reason, f"Power not measured: {reason}. A pass does not show that the model is "
                 "safe: nothing shows that this attack could reconstruct a model of this architecture.",
                 None, model_per_class)


def decide(rungs: Sequence[RungResult], model_per_class: float | None, method: str | None,
           recipe: dict[str, Any] | None, seconds: float) -> Power:
    """Shown when any rung fails the gate; the statement names the largest such K against the model's N per class."""
    n_text = per_class_text(model_per_class)
    shown = [r for r in rungs if r.shown]
    tried = ", ".join(str(r.k) for r in rungs)
    if not rungs:
        return not_measured("no control could be planted", model_per_class)
    if shown:
        k = max(r.k for r in shown)
        plural = "image" if k == 1 else "images"
        statement = (f"Power shown: the same attack reconstructs a copy of this architecture memorising up to {k} "
                     f"{plural} per class; this model was trained on {n_text} per class.")
        if model_per_class is not None and model_per_class > k:
            # said alike for every verdict: its reading of a pass
            statement += (f" So a pass would mean no leak the attack can see at {k} per class, not that a model "
                          f"memorising {n_text} per class is safe.")
        return Power("shown", f"a control fails the gate at K = {k} (ladder K = {tried})", statement, k,
                     model_per_class, tuple(rungs), method, recipe, seconds)
    smallest = min(r.k for r in rungs)
    plural = "image" if smallest == 1 else "images"
    unmemorised = [r.k for r in rungs if not r.memorised]
    reason = f"no control fails the gate (ladder K = {tried})"
    if unmemorised:
        reason += f"; the copy did not memorise at K = {', '.join(map(str, unmemorised))}"
    statement = (f"Power not shown: the same attack did not reconstruct a copy of this architecture memorising "
                 f"{smallest} {plural} per class, so a pass does not show that the model is safe "
                 f"(this model was trained on {n_text} per class).")
    return Power("not shown", reason, statement, None, model_per_class, tuple(rungs), method, recipe, seconds)
