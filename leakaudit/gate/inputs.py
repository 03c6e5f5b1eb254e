"""What the gate reads about an audit, as typed values: the findings, every member's score, the statistics.

``GateInput.from_document`` reads an ungated (or gated) findings document once;
the conditions and the verdict then work on these values only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from leakaudit.record import Finding, LeakScore, MemberScore, MembershipTest
from leakaudit.record.parse import items, obj, optional_integer, optional_obj


@dataclass(frozen=True)
class GateInput:
    """The facts of one audit the gate decides on."""

    findings: tuple[Finding, ...]  # the listed rows, in their order
    n_train: int
    n_holdout: int | None
    calibrated: bool
    holdout_quantiles: Mapping[str, float]  # non-members' best-match SSIM at the recorded quantiles
    leak: LeakScore | None
    membership: MembershipTest | None
    lpips_available: bool
    lpips_reason: str | None
    complete: bool
    steps: int | None
    planned_steps: int | None
    power_status: str  # shown | not shown | not measured
    power_reason: str | None

    def holdout_reference(self, quantile: float) -> float | None:
        for key in (f"{quantile:g}", str(quantile)):
            if self.holdout_quantiles.get(key) is not None:
                return float(self.holdout_quantiles[key])
        return None

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> GateInput:
        summary = obj(document, "summary")
        holdout = optional_obj(summary, "holdout") or {}
        quantiles = holdout.get("quantiles") or {}
        leak, test = optional_obj(summary, "leak_score"), optional_obj(summary, "membership")
        lpips = (optional_obj(document, "metrics") or {}).get("lpips") or {}
        inversion = optional_obj(document, "inversion") or {}
        power = optional_obj(document, "power") or {}
        findings = tuple(Finding.from_dict(f) for f in items(document, "findings"))
        n_train = optional_integer(summary, "n_train")
        return cls(
            findings=findings, n_train=n_train or len(findings), n_holdout=optional_integer(summary, "n_holdout"),
            calibrated=bool(document.get("calibrated")),
            holdout_quantiles=MappingProxyType({str(k): v for k, v in quantiles.items()}),
            leak=None if not leak else LeakScore.from_dict(leak),
            membership=None if not test else MembershipTest.from_dict(test),
            lpips_available=bool(lpips.get("available", False)), lpips_reason=lpips.get("reason"),
            complete=bool(inversion.get("complete", True)), steps=inversion.get("steps"),
            planned_steps=inversion.get("planned_steps"), power_status=str(power.get("status", "not measured")),
            power_reason=power.get("reason"),
        )


def member_scores(rows: Sequence[MemberScore | Mapping[str, Any]]) -> tuple[MemberScore, ...]:
    """Members as typed scores (rows of ``{fingerprint, ssim}`` are read once, here)."""
    return tuple(r if isinstance(r, MemberScore) else MemberScore(str(r["fingerprint"]), float(r["ssim"]))
                 for r in rows)
