"""The positive control as the record holds it: each rung's control, scored, and the power statement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from leakaudit.record.parse import (
    JsonObject, flag, frozen, integer, items, number, obj, optional_integer, optional_number, optional_obj,
    optional_text, text, thawed,
)
from leakaudit.record.scores import LeakScore

PowerStatus = Literal["shown", "not shown", "not measured"]
POWER_STATUSES: tuple[PowerStatus, ...] = ("shown", "not shown", "not measured")


@dataclass(frozen=True)
class Rung:
    """One control at K images per class: how it was trained, and how the audit's attack and gate judged it."""

    k: int
    n_members: int
    n_null: int
    leak_score: LeakScore | None
    members_above_quantile: int  # members above the control null's gate quantile
    quantile_value: float | None
    members_at_ssim_0_4: int
    shown: bool
    reason: str  # which condition failed, or why none did
    memorised: bool
    training_steps: int
    final_loss: float | None
    accuracy: float
    complete: bool
    members: tuple[int, ...]  # indices into the holdout
    null: tuple[int, ...]  # indices into the holdout
    member_best_ssim: tuple[float, ...] = ()
    member_best_index: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "n_members": self.n_members, "n_null": self.n_null,
                "leak_score": None if self.leak_score is None else self.leak_score.to_dict(),
                "members_above_quantile": self.members_above_quantile, "quantile_value": self.quantile_value,
                "members_at_ssim_0_4": self.members_at_ssim_0_4, "shown": self.shown, "reason": self.reason,
                "memorised": self.memorised, "training_steps": self.training_steps, "final_loss": self.final_loss,
                "accuracy": self.accuracy, "complete": self.complete,
                "splits": {"members": list(self.members), "null": list(self.null)},
                "member_best_ssim": list(self.member_best_ssim), "member_best_index": list(self.member_best_index),
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], seconds: float = 0.0) -> Rung:
        leak = optional_obj(d, "leak_score")
        splits = obj(d, "splits")
        return cls(
            k=integer(d, "k"), n_members=integer(d, "n_members"), n_null=integer(d, "n_null"),
            leak_score=None if leak is None else LeakScore.from_dict(leak),
            members_above_quantile=integer(d, "members_above_quantile"),
            quantile_value=optional_number(d, "quantile_value"), members_at_ssim_0_4=integer(d, "members_at_ssim_0_4"),
            shown=flag(d, "shown"), reason=text(d, "reason"), memorised=flag(d, "memorised"),
            training_steps=integer(d, "training_steps"), final_loss=optional_number(d, "final_loss"),
            accuracy=number(d, "accuracy"), complete=flag(d, "complete"),
            members=tuple(int(i) for i in items(splits, "members")), null=tuple(int(i) for i in items(splits, "null")),
            member_best_ssim=tuple(items(d, "member_best_ssim")),
            member_best_index=tuple(int(i) for i in items(d, "member_best_index")),
            notes=tuple(str(n) for n in items(d, "notes")), seconds=seconds,
        )


@dataclass(frozen=True)
class PowerRecord:
    """Whether the attack could have found a leak: fresh copies made to memorise K images per class, attacked."""

    status: PowerStatus
    reason: str
    statement: str
    largest_k_shown: int | None
    model_images_per_class: float | None
    rungs: tuple[Rung, ...] = ()
    copy: str | None = None  # how the copy got its weights: arch, reset or init
    recipe: JsonObject | None = None
    seconds: float = 0.0

    @property
    def images_k(self) -> int | None:
        """The rung the report shows beside its members: the largest shown, else the smallest tried."""
        if self.largest_k_shown is not None:
            return self.largest_k_shown
        return min((r.k for r in self.rungs), default=None)

    @property
    def ladder(self) -> tuple[int, ...]:
        return tuple(r.k for r in self.rungs)

    @property
    def shown_rung(self) -> Rung | None:
        """The rung whose members the report shows (``images_k``)."""
        return next((r for r in self.rungs if r.k == self.images_k), None)

    @property
    def plain_statement(self) -> str:
        """The statement without its ``Power <status>:`` prefix."""
        prefix = f"Power {self.status}: "
        return self.statement[len(prefix):] if self.statement.startswith(prefix) else self.statement

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "statement": self.statement, "images_k": self.images_k,
                "largest_k_shown": self.largest_k_shown, "model_images_per_class": self.model_images_per_class,
                "ladder": list(self.ladder), "rungs": [r.to_dict() for r in self.rungs], "copy": self.copy,
                "recipe": None if self.recipe is None else thawed(self.recipe), "seconds": self.seconds,
                "rung_seconds": [r.seconds for r in self.rungs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PowerRecord:
        status = d.get("status") or "not measured"
        rows = items(d, "rungs")
        seconds = list(items(d, "rung_seconds")) + [0.0] * len(rows)
        recipe = optional_obj(d, "recipe")
        return cls(
            status=status if status in POWER_STATUSES else "not measured", reason=str(d.get("reason") or ""),
            statement=str(d.get("statement") or ""), largest_k_shown=optional_integer(d, "largest_k_shown"),
            model_images_per_class=optional_number(d, "model_images_per_class"),
            rungs=tuple(Rung.from_dict(r, s) for r, s in zip(rows, seconds)), copy=optional_text(d, "copy"),
            recipe=None if recipe is None else frozen(dict(recipe)), seconds=d.get("seconds", 0.0),
        )
