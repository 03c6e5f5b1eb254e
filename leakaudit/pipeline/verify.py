"""Checks made before the attack runs: what was asked for can be evaluated, the baseline can be trusted.

A CI gate that quietly skips a condition the user asked for, or that accepts
a baseline it cannot vouch for, turns a failing audit into a pass. Every check
here raises a ``LeakAuditError`` (exit 2) with one line that says why and
what to pass, and runs before minutes of inversion are spent.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from leakaudit.errors import ConfigError, DataError, OutputError, UsageError
from leakaudit.record import AuditRecord, load
from leakaudit.report.json_format import load_document
from leakaudit.report.schema import schema_errors

if TYPE_CHECKING:
    from leakaudit.pipeline.inputs import AuditInputs
    from leakaudit.config import AuditSettings
    from leakaudit.gate.settings import GateSettings
    from leakaudit.matching.lpips import LpipsScorer


def load_baseline(path: Path) -> AuditRecord:
    """A previous audit's record, from its schema-validated document; a forged or damaged file is refused here."""
    try:
        document = load_document(path)
    except Exception as exc:  # OutputError: missing, unreadable, not JSON
        raise UsageError(f"--baseline {path}: {exc}") from None
    try:
        problems = schema_errors(document)
    except ModuleNotFoundError:
        raise UsageError("--baseline needs the jsonschema package to validate the file "
                         "(pip install jsonschema)") from None
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise UsageError(f"--baseline {path} is not a valid leakaudit findings document: {shown}")
    try:
        return load(document)
    except OutputError as exc:  # a schema-valid document the record still cannot read (an older version)
        raise UsageError(f"--baseline {path}: {exc}") from None


def check_baseline_provenance(previous: AuditRecord, inputs: AuditInputs, settings: AuditSettings) -> None:
    """A baseline must come from an audit of this model on this training data, unless told otherwise."""
    if settings.allow_foreign_baseline:
        return
    provenance = previous.provenance  # the schema requires its model and data objects
    differences = []
    model_sha = provenance["model"]["sha256"]
    if model_sha != inputs.model.info.sha256:  # a loaded model always has its digest (file or state_dict)
        this = (inputs.model.info.sha256 or "none")[:12]
        differences.append(f"another model (sha256 {str(model_sha)[:12]}…, this one {this}…)")
    data_sha = provenance["data"]["manifest_sha256"]
    if data_sha != inputs.train.manifest_sha256:
        differences.append(f"other training data (manifest {str(data_sha)[:12]}…, this one "
                           f"{inputs.train.manifest_sha256[:12]}…)")
    if differences:
        raise UsageError(f"--baseline {settings.baseline} was made for {' and '.join(differences)}; pass "
                         "--allow-foreign-baseline if comparing with that audit is meant")


def require_evaluable(gate: GateSettings, settings: AuditSettings, inputs: AuditInputs) -> None:
    """Every condition the user asked for must be computable from these inputs."""
    if inputs.holdout is None:
        for key, flag in (("fail_leak_score", "--fail-leak-score"), ("fail_membership_auc", "--fail-membership-auc"),
                          ("warn_membership_auc", "warn_membership_auc")):
            if key in gate.sources and getattr(gate, key) is not None:
                raise UsageError(f"{gate.sources[key]} needs non-member images to compare with: pass --holdout DIR "
                                 f"(or drop {flag})")
        return
    missing = sorted(set(range(len(inputs.train.classes))) - set(inputs.holdout.labels.unique().tolist()))
    if missing:
        names = ", ".join(inputs.train.classes[c] for c in missing)
        raise DataError(f"the holdout {settings.holdout} has no images of class(es) {names}, which the training "
                        "data has: every class needs non-members for the comparison; add them to the holdout")


def require_lpips(gate: GateSettings, scorer: LpipsScorer) -> None:
    """An LPIPS threshold needs LPIPS: unavailable is an error, not a skipped condition."""
    if gate.fail_lpips is not None and not scorer.available:
        where = gate.sources.get("fail_lpips", "fail_lpips")
        raise ConfigError(f"{where} is set but LPIPS is unavailable: {scorer.reason}; provide the backbone weights "
                          "(--lpips-weights FILE) or drop the LPIPS threshold")
