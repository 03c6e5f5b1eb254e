"""An audit's result for Python callers: a thin facade over the audit record, and its outputs.

``AuditReport`` holds the record (``leakaudit.record``) the audit wrote its
document from; every figure it gives is the record's own, so a report from
``leakaudit.audit`` and one loaded from a written ``leakaudit.json`` say the
same. The records are frozen: a test or a notebook can keep them without
aliasing anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from leakaudit.errors import OutputError
from leakaudit.exit_codes import ExitStatus
from leakaudit.record import AuditRecord, Finding, LeakScore, MembershipTest, as_record, dump
from leakaudit.report.images import Redaction
from leakaudit.report.summary import headline_line, summarise

Membership = MembershipTest  # the public name of the membership test's figures

__all__ = ["AuditReport", "Finding", "LeakScore", "Membership", "OutputOptions"]


@dataclass(frozen=True)
class OutputOptions:
    """How ``AuditReport.write`` renders, as the audit's settings said (redact, images, junit, markdown)."""

    redact: Redaction = "none"
    include_images: bool = True
    junit: Path | None = None
    markdown: Path | None = None


def _no_arrays() -> Mapping[str, np.ndarray]:
    return MappingProxyType({})


@dataclass(frozen=True)
class AuditReport:
    """What one audit found: the verdict, exit status and figures, and every output file on demand.

    ``record`` may be given as a findings document; it is read into a record once, here. An audit stopped before
    its verdict, or a rank other than 0 of a distributed run, has none (an empty document reads as none): its
    report keeps the exit status and the files written, and asking it for a figure is an error.
    """

    record: AuditRecord | Mapping[str, Any] | None
    exit_status: ExitStatus  # what ``leakaudit run`` exits with: 0 passed, 1 gate failed, 2 incomplete, 130 stopped
    arrays: Mapping[str, np.ndarray] = field(repr=False, default_factory=_no_arrays)
    written: tuple[Path, ...] = ()  # files the audit already wrote (``out=`` given)
    warnings: tuple[str, ...] = ()
    options: OutputOptions = field(default_factory=OutputOptions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "record", as_record(self.record) if self.record else None)

    @property
    def has_result(self) -> bool:
        """False when the audit stopped before its verdict (or on a rank other than 0)."""
        return self.record is not None

    @property
    def audit(self) -> AuditRecord:
        """The audit record (typed)."""
        if self.record is None:
            raise OutputError(f"this audit has no result (exit status {int(self.exit_status)}): it stopped before "
                              "its verdict, or ran on a rank other than 0")
        return as_record(self.record)

    @property
    def document(self) -> dict[str, Any]:
        """The findings document (``leakaudit.json``), a fresh copy."""
        return dump(self.audit)

    @property
    def verdict(self) -> str:
        """``pass``, ``warn``, ``fail`` or ``incomplete``."""
        return self.audit.verdict

    @property
    def passed(self) -> bool:
        """The whole attack ran and the gate passed (warnings allowed): exit status 0."""
        return self.exit_status == ExitStatus.PASSED

    @property
    def exposure(self) -> str:
        """What holds: ``both``, ``reconstruction``, ``membership``, ``neither`` or ``incomplete``."""
        return self.audit.exposure_kind

    @property
    def headline(self) -> str:
        """The first line of the terminal summary, e.g. ``✖ FAIL: reconstructs training images (…)``."""
        return headline_line(self.audit)

    @property
    def leak_score(self) -> LeakScore | None:
        """None without a holdout (nothing to compare members with)."""
        return self.audit.summary.leak_score

    @property
    def membership(self) -> MembershipTest | None:
        """The strongest membership test; None without a holdout."""
        return self.audit.summary.membership_test

    @property
    def findings(self) -> tuple[Finding, ...]:
        """The listed training images, best reconstructed first (``top`` of them)."""
        return self.audit.findings

    @property
    def notes(self) -> tuple[str, ...]:
        return self.audit.notes

    def summary(self) -> str:
        """The headline and each failing or warning condition, one per line (for an assertion message)."""
        lines = [self.headline] + [f"  {c.name}: {c.status}: {c.text}" for c in summarise(self.audit).conditions]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The findings document (``leakaudit.json``), a copy the caller may change."""
        return self.document

    def to_json(self) -> str:
        from leakaudit.report import dumps

        return dumps(self.document)

    def to_html(self, *, redact: Redaction | None = None, include_images: bool | None = None) -> str:
        """The self-contained HTML report, as ``report.html`` holds it."""
        from leakaudit.report import render_html

        return render_html(self.audit, dict(self.arrays), redact=redact or self.options.redact,
                           include_images=self.options.include_images if include_images is None else include_images)

    def write(self, out: str | Path, *, junit: str | Path | None = None,
              markdown: str | Path | None = None) -> tuple[Path, ...]:
        """Every output file into ``out`` (JSON, HTML, arrays; JUnit and Markdown when asked); the paths written."""
        from leakaudit.pipeline.inputs import check_output_folder
        from leakaudit.runtime.outlock import output_lock
        from leakaudit.report import write_outputs

        folder = Path(out)
        check_output_folder(folder)
        with output_lock(folder):
            outputs = write_outputs(self.audit, dict(self.arrays), folder, redact=self.options.redact,
                                    include_images=self.options.include_images,
                                    junit_path=Path(junit) if junit else self.options.junit,
                                    markdown_path=Path(markdown) if markdown else self.options.markdown)
        return tuple(outputs.paths)

    def __str__(self) -> str:
        return self.headline
