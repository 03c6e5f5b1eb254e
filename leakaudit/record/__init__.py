"""The typed record of an audit: what the pipeline, the gate and every output format hand each other.

``AuditRecord`` holds one gated audit; ``load`` and ``dump`` turn it into the
JSON findings document and back (``document.py``).
"""

from leakaudit.record.audit import AuditRecord, BudgetCut, ExposureKind, Inversion, Summary
from leakaudit.record.document import SCHEMA_VERSION, as_record, dump, load, load_ungated
from leakaudit.record.findings import BaselineStatus, Finding, FindingStatus, MemberScore
from leakaudit.record.gate import (
    BaselineSummary, Condition, Counted, Exposure, GateRecord, Ignored, Status, Thresholds, Verdict,
)
from leakaudit.record.power import PowerRecord, PowerStatus, Rung
from leakaudit.record.scores import LeakScore, Membership, MembershipTest

__all__ = [
    "SCHEMA_VERSION", "AuditRecord", "BaselineStatus", "BaselineSummary", "BudgetCut", "Condition", "Counted",
    "Exposure", "ExposureKind", "Finding", "FindingStatus", "GateRecord", "Ignored", "Inversion", "LeakScore",
    "MemberScore", "Membership", "MembershipTest", "PowerRecord", "PowerStatus", "Rung", "Status", "Summary",
    "Thresholds", "Verdict", "as_record", "dump", "load", "load_ungated",
]
