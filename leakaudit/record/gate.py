"""What the gate decided, as the record holds it: thresholds, conditions, baseline, ignores, exposure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from leakaudit.record.parse import (
    JsonObject, flag, frozen, integer, items, number, obj, optional_flag, optional_number, rest,
    text, thawed,
)

Status = Literal["pass", "warn", "fail", "skipped"]
Verdict = Literal["pass", "warn", "fail", "incomplete"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skipped")
VERDICTS: tuple[Verdict, ...] = ("pass", "warn", "fail", "incomplete")
RECONSTRUCTION_CONDITIONS = ("ssim", "lpips", "leak_score")
EXPOSURE_STATEMENTS = {
    (True, True): "reconstructs training images and memorises membership",
    (True, False): "reconstructs training images",
    (False, True): "memorises membership",
    (False, False): "neither",
}
_EMPTY: JsonObject = MappingProxyType({})


@dataclass(frozen=True)
class Condition:
    """One gate condition: what was compared, and how it came out."""

    name: str
    status: Status
    threshold: float | None
    observed: float | None
    message: str
    extra: JsonObject = field(default_factory=lambda: _EMPTY)  # the condition's own figures (counts, CI, p-value)

    @property
    def found(self) -> bool:
        """The condition found something (warn or fail)."""
        return self.status in ("warn", "fail")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "threshold": self.threshold, "observed": self.observed,
                "message": self.message, **thawed(self.extra)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Condition:
        status = text(d, "status")
        if status not in STATUSES:
            raise ValueError(f"unknown condition status {status!r}")
        return cls(name=text(d, "name"), status=status, threshold=optional_number(d, "threshold"),
                   observed=optional_number(d, "observed"), message=text(d, "message"),
                   extra=rest(d, ("name", "status", "threshold", "observed", "message")))


@dataclass(frozen=True)
class BaselineSummary:
    """Flagged findings compared with a previous audit."""

    path: str
    new: int
    persisting: int
    worse: int
    fixed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "new": self.new, "persisting": self.persisting, "worse": self.worse,
                "fixed": list(self.fixed)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BaselineSummary:
        return cls(path=text(d, "path"), new=integer(d, "new"), persisting=integer(d, "persisting"),
                   worse=integer(d, "worse"), fixed=tuple(str(f) for f in items(d, "fixed")))


@dataclass(frozen=True)
class Ignored:
    """An ignore entry the gate was given, and whether it had expired."""

    fingerprint: str
    reason: str
    expires: str  # ISO date
    expired: bool

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "reason": self.reason, "expires": self.expires,
                "expired": self.expired}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Ignored:
        return cls(fingerprint=text(d, "fingerprint"), reason=text(d, "reason"), expires=text(d, "expires"),
                   expired=flag(d, "expired"))


@dataclass(frozen=True)
class Counted:
    """How many members the gate counted, and from what (every member, or the listed findings)."""

    members: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"members": self.members, "from": self.source}


@dataclass(frozen=True)
class GateRecord:
    """The ``gate`` object: every condition, the baseline comparison, the ignore entries, what was counted."""

    conditions: tuple[Condition, ...]
    baseline: BaselineSummary | None = None
    ignored: tuple[Ignored, ...] = ()
    counted: Counted | None = None

    def condition(self, name: str) -> Condition | None:
        return next((c for c in self.conditions if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        gate: dict[str, Any] = {"conditions": [c.to_dict() for c in self.conditions],
                                "baseline": None if self.baseline is None else self.baseline.to_dict(),
                                "ignored": [i.to_dict() for i in self.ignored]}
        if self.counted is not None:
            gate["counted"] = self.counted.to_dict()
        return gate

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateRecord:
        baseline = d.get("baseline")
        counted = d.get("counted")
        return cls(conditions=tuple(Condition.from_dict(c) for c in items(d, "conditions")),
                   baseline=None if baseline is None else BaselineSummary.from_dict(baseline),
                   ignored=tuple(Ignored.from_dict(i) for i in items(d, "ignored")),
                   counted=None if counted is None else Counted(integer(counted, "members"), text(counted, "from")))


@dataclass(frozen=True)
class Exposure:
    """What holds: reconstruction of training images, membership, both, neither; None where it cannot be said."""

    reconstruction: bool | None
    membership: bool | None
    statement: str

    @classmethod
    def decide(cls, conditions: tuple[Condition, ...], verdict: Verdict) -> Exposure:
        """The gate's rule: a condition at warn or fail finds its kind of exposure; skipped membership is unknown."""
        status = {c.name: c.status for c in conditions}
        reconstruction: bool | None = any(status.get(n) in ("warn", "fail") for n in RECONSTRUCTION_CONDITIONS)
        skipped = status.get("membership") == "skipped"
        membership: bool | None = None if skipped else any(status.get(n) in ("warn", "fail")
                                                           for n in ("membership", "membership_tpr"))
        if verdict == "incomplete":
            return cls(reconstruction or None, membership, "incomplete")
        return cls(reconstruction, membership, EXPOSURE_STATEMENTS[(bool(reconstruction), bool(membership))])

    def to_dict(self) -> dict[str, Any]:
        return {"reconstruction": self.reconstruction, "membership": self.membership, "statement": self.statement}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Exposure:
        return cls(optional_flag(d, "reconstruction"), optional_flag(d, "membership"), text(d, "statement"))


THRESHOLD_NAMES = ("fail_ssim", "warn_ssim", "fail_lpips", "fail_leak_score", "warn_membership_auc",
                   "fail_membership_auc", "fail_membership_tpr")


@dataclass(frozen=True)
class Thresholds:
    """The thresholds the gate applied (None: that threshold was off); the defaults are the gate's own."""

    fail_ssim: float | None = 0.70
    warn_ssim: float | None = 0.45
    fail_lpips: float | None = None
    fail_leak_score: float | None = 0.70
    warn_membership_auc: float | None = 0.70
    fail_membership_auc: float | None = None
    fail_membership_tpr: float | None = 10.0
    holdout_quantile: float = 0.99
    require_power: bool = False
    directions: JsonObject = field(default_factory=lambda: _EMPTY)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in THRESHOLD_NAMES}, "holdout_quantile": self.holdout_quantile,
                "require_power": self.require_power, "directions": thawed(self.directions)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Thresholds:
        directions = d.get("directions")
        return cls(fail_ssim=optional_number(d, "fail_ssim"), warn_ssim=optional_number(d, "warn_ssim"),
                   fail_lpips=optional_number(d, "fail_lpips"), fail_leak_score=optional_number(d, "fail_leak_score"),
                   warn_membership_auc=optional_number(d, "warn_membership_auc"),
                   fail_membership_auc=optional_number(d, "fail_membership_auc"),
                   fail_membership_tpr=optional_number(d, "fail_membership_tpr"),
                   holdout_quantile=number(d, "holdout_quantile"), require_power=bool(d.get("require_power", False)),
                   directions=frozen(dict(obj(d, "directions")) if directions is not None else {}))

__all__ = ["BaselineSummary", "Condition", "Counted", "Exposure", "GateRecord", "Ignored", "Status", "Thresholds",
           "Verdict"]
