"""What the gate decides, as typed values: conditions, per-finding statuses, the baseline comparison, ignores.

The condition, baseline and exposure types are the audit record's own
(``leakaudit.record``); ``GateOutcome.record`` is the record's ``gate`` part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leakaudit.gate.settings import IgnoreEntry
from leakaudit.record import (
    BaselineStatus, BaselineSummary, Condition, Counted, Exposure, FindingStatus, GateRecord, Ignored, Status, Verdict,
)

__all__ = ["BaselineStatus", "BaselineSummary", "Condition", "FindingOutcome", "FindingStatus", "GateOutcome",
           "IgnoredOutcome", "Status", "Verdict"]


@dataclass(frozen=True)
class FindingOutcome:
    """The gate's view of one finding, in the findings' order."""

    fingerprint: str
    status: FindingStatus
    baseline_status: BaselineStatus | None
    rule: str = ""


@dataclass(frozen=True)
class IgnoredOutcome:
    """An ignore entry and whether it still applies."""

    entry: IgnoreEntry
    expired: bool

    def record(self) -> Ignored:
        return Ignored(self.entry.fingerprint, self.entry.reason, self.entry.expires.isoformat(), self.expired)


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
    exposure: Exposure = field(default_factory=lambda: Exposure(None, None, "incomplete"))
    counted: Counted | None = None

    def record(self) -> GateRecord:
        """The ``gate`` part of the audit record."""
        return GateRecord(self.conditions, self.baseline, tuple(i.record() for i in self.ignored), self.counted)
