"""What the gate decides, as typed values: conditions, per-finding statuses, the baseline comparison, ignores.

``GateOutcome.gate_dict`` is the ``gate`` object of the findings document;
``apply_gate`` writes the rest of the outcome into the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from leakaudit.gate.settings import IgnoreEntry

Status = Literal["pass", "warn", "fail", "skipped"]
Verdict = Literal["pass", "warn", "fail", "incomplete"]
FindingStatus = Literal["fail", "warn", "ok", "ignored"]
BaselineStatus = Literal["new", "persisting", "worse"]


@dataclass(frozen=True)
class Condition:
    """One gate condition: what was compared, and how it came out."""

    name: str
    status: Status
    threshold: float | None
    observed: float | None
    message: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "threshold": self.threshold,
            "observed": self.observed,
            "message": self.message,
            **dict(self.extra),
        }


@dataclass(frozen=True)
class FindingOutcome:
    """The gate's view of one finding, in the findings' order."""

    fingerprint: str
    status: FindingStatus
    baseline_status: BaselineStatus | None
    rule: str = ""


@dataclass(frozen=True)
class BaselineSummary:
    """Flagged findings compared with a previous audit."""

    path: str
    new: int
    persisting: int
    worse: int
    fixed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "new": self.new,
            "persisting": self.persisting,
            "worse": self.worse,
            "fixed": list(self.fixed),
        }


@dataclass(frozen=True)
class IgnoredOutcome:
    """An ignore entry and whether it still applies."""

    entry: IgnoreEntry
    expired: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.entry.fingerprint,
            "reason": self.entry.reason,
            "expires": self.entry.expires.isoformat(),
            "expired": self.expired,
        }


@dataclass(frozen=True)
class GateOutcome:
    """Everything the gate decides; ``apply_gate`` writes it into a document."""

    verdict: Verdict
    exit_code: int
    conditions: tuple[Condition, ...]
    findings: tuple[FindingOutcome, ...]
    baseline: BaselineSummary | None
    ignored: tuple[IgnoredOutcome, ...]
    notes: tuple[str, ...] = field(default=())
    exposure: Mapping[str, Any] = field(default_factory=dict)
    counted: Mapping[str, Any] = field(default_factory=dict)

    def gate_dict(self) -> dict[str, Any]:
        """The ``gate`` object of the findings document."""
        return {
            "conditions": [c.to_dict() for c in self.conditions],
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "ignored": [i.to_dict() for i in self.ignored],
            "counted": dict(self.counted),
        }
