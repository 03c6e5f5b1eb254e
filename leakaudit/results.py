"""An audit's result for Python callers: the findings document, read as typed records, and its outputs.

The document (``leakaudit.json``) stays the one source of truth; ``AuditReport``
only reads it, so a report from ``leakaudit.audit`` and one loaded from a
written ``leakaudit.json`` say the same. The records are frozen: a test or a
notebook can keep them without aliasing the document.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from leakaudit.exit_codes import ExitStatus
from leakaudit.report.summary import headline_line, summarise


@dataclass(frozen=True)
class LeakScore:
    """Members' best-match SSIM against non-members' (an AUC), with its bootstrap interval and permutation p."""

    value: float
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float
    n_members: int
    n_nonmembers: int
    method: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LeakScore:
        return cls(float(d["value"]), float(d["ci_low"]), float(d["ci_high"]), float(d["ci_level"]),
                   float(d["p_value"]), int(d["n_members"]), int(d["n_nonmembers"]), str(d["method"]))


@dataclass(frozen=True)
class Membership:
    """How well the model's own loss tells members from non-members (loss-threshold attack AUC)."""

    auc: float
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float
    tpr_at_fpr: Mapping[str, float]
    n_members: int
    n_nonmembers: int
    method: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Membership:
        return cls(float(d["auc"]), float(d["ci_low"]), float(d["ci_high"]), float(d["ci_level"]),
                   float(d["p_value"]), MappingProxyType(dict(d.get("tpr_at_fpr") or {})), int(d["n_members"]),
                   int(d["n_nonmembers"]), str(d["method"]))


@dataclass(frozen=True)
class Finding:
    """One training image and the reconstruction closest to it."""

    rank: int
    fingerprint: str  # stable identity (path and pixels): what a gate ignore entry names
    path: str  # where its input holds it: a file path, ``images[17]`` (.npz), ``x.parquet[3]``, ``train[17]`` (in memory)
    class_name: str
    class_index: int
    train_index: int
    reconstruction_index: int
    ssim: float
    lpips: float | None
    excess_over_holdout_p95: float | None
    above_holdout_p99: bool | None
    status: str  # ok | warn | fail | ignored

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        def opt(key: str) -> float | None:
            return None if d.get(key) is None else float(d[key])

        above = d.get("above_holdout_p99")
        return cls(int(d["rank"]), str(d["fingerprint"]), str(d["path"]), str(d["class"]), int(d["class_index"]),
                   int(d["train_index"]), int(d["reconstruction_index"]), float(d["ssim"]), opt("lpips"),
                   opt("excess_over_holdout_p95"), None if above is None else bool(above), str(d.get("status", "ok")))


@dataclass(frozen=True)
class OutputOptions:
    """How ``AuditReport.write`` renders, as the audit's settings said (``redact``, ``images``, ``junit``, ``markdown``)."""

    redact: str = "none"
    include_images: bool = True
    junit: Path | None = None
    markdown: Path | None = None


@dataclass(frozen=True)
class AuditReport:
    """What one audit found: the verdict, exit status and figures, and every output file on demand."""

    document: dict[str, Any]
    exit_status: ExitStatus  # what ``leakaudit run`` exits with: 0 passed, 1 gate failed, 2 incomplete, 130 stopped
    arrays: Mapping[str, np.ndarray] = field(repr=False, default_factory=dict)
    written: tuple[Path, ...] = ()  # files the audit already wrote (``out=`` given)
    warnings: tuple[str, ...] = ()
    options: OutputOptions = field(default_factory=OutputOptions)

    @property
    def verdict(self) -> str:
        """``pass``, ``warn``, ``fail`` or ``incomplete``."""
        return str(self.document.get("verdict", "fail"))

    @property
    def passed(self) -> bool:
        """The whole attack ran and the gate passed (warnings allowed): exit status 0."""
        return self.exit_status == ExitStatus.PASSED

    @property
    def exposure(self) -> str:
        """What holds: ``both``, ``reconstruction``, ``membership``, ``neither`` or ``incomplete``."""
        return summarise(self.document).exposure

    @property
    def headline(self) -> str:
        """The first line of the terminal summary, e.g. ``✖ FAIL: reconstructs training images (…)``."""
        return headline_line(self.document)

    @property
    def leak_score(self) -> LeakScore | None:
        """None without a holdout (nothing to compare members with)."""
        d = (self.document.get("summary") or {}).get("leak_score")
        return LeakScore.from_dict(d) if d else None

    @property
    def membership(self) -> Membership | None:
        d = (self.document.get("summary") or {}).get("membership")
        return Membership.from_dict(d) if d else None

    @property
    def findings(self) -> tuple[Finding, ...]:
        """The listed training images, best reconstructed first (``top`` of them)."""
        return tuple(Finding.from_dict(row) for row in self.document.get("findings") or [])

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple((self.document.get("summary") or {}).get("notes") or ())

    def summary(self) -> str:
        """The headline and each failing or warning condition, one per line (for an assertion message)."""
        lines = [self.headline] + [f"  {c.name}: {c.status}: {c.text}" for c in summarise(self.document).conditions]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The findings document (``leakaudit.json``), a copy the caller may change."""
        return copy.deepcopy(self.document)

    def to_json(self) -> str:
        from leakaudit.report import dumps

        return dumps(self.document)

    def to_html(self, *, redact: str | None = None, include_images: bool | None = None) -> str:
        """The self-contained HTML report, as ``report.html`` holds it."""
        from leakaudit.report import render_html

        return render_html(self.document, dict(self.arrays), redact=redact or self.options.redact,  # type: ignore[arg-type]
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
            outputs = write_outputs(self.document, dict(self.arrays), folder, redact=self.options.redact,  # type: ignore[arg-type]
                                    include_images=self.options.include_images,
                                    junit_path=Path(junit) if junit else self.options.junit,
                                    markdown_path=Path(markdown) if markdown else self.options.markdown)
        return tuple(outputs.paths)

    def __str__(self) -> str:
        return self.headline
