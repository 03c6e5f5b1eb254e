"""The record as the JSON findings document (``OUT/leakaudit.json``), and the document read back as a record.

``dump`` gives the document an audit writes, key for key; ``load`` checks a
document (against the schema when ``jsonschema`` is installed, and field by
field always) and returns its record. Documents of older schema versions are
read here and only here: every other module sees the current record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from leakaudit.errors import OutputError
from leakaudit.record.audit import AuditRecord, BudgetCut, Inversion, Summary
from leakaudit.record.findings import Finding
from leakaudit.record.gate import VERDICTS, Exposure, GateRecord, Thresholds
from leakaudit.record.parse import (
    JsonObject, flag, frozen, integer, items, number, obj, optional_integer, optional_number, optional_obj,
    optional_text, rest, text, thawed,
)
from leakaudit.record.membership import ReferenceMembership
from leakaudit.record.power import PowerRecord
from leakaudit.record.scores import LeakScore, Membership, MembershipTest

SCHEMA_VERSION = "1.2"
_TOP = ("schema_version", "tool", "verdict", "exit_code", "mode", "threat_model", "calibrated", "thresholds",
        "metrics", "summary", "findings", "gate", "inversion", "provenance", "power", "exposure",
        "membership_attacks", "budget_cuts")
_SUMMARY = ("n_train", "n_holdout", "n_candidates", "leak_score", "membership_loss_auc", "membership", "train",
            "holdout", "holdout_ssim_p95", "holdout_ssim_p99", "class_mean_null", "per_class", "histogram",
            "weights_gain", "notes")
_INVERSION = ("mode", "effort", "complete", "incomplete_reason", "resumed", "resumed_from", "steps", "planned_steps",
              "seconds", "completed_fraction", "phase_seconds", "candidates_per_class", "notes", "gallery")


def _summary(d: JsonObject) -> Summary:
    leak, membership = optional_obj(d, "leak_score"), optional_obj(d, "membership")
    return Summary(
        n_train=integer(d, "n_train"), n_holdout=optional_integer(d, "n_holdout"),
        n_candidates=integer(d, "n_candidates"), leak_score=None if leak is None else LeakScore.from_dict(leak),
        membership=None if membership is None else Membership((MembershipTest.from_dict(membership),)),
        train=frozen(dict(obj(d, "train"))), holdout=frozen(optional_obj(d, "holdout")),
        holdout_ssim_p95=optional_number(d, "holdout_ssim_p95"),
        holdout_ssim_p99=optional_number(d, "holdout_ssim_p99"),
        class_mean_null=frozen(optional_obj(d, "class_mean_null")), per_class=frozen(list(items(d, "per_class"))),
        histogram=frozen(dict(obj(d, "histogram"))), weights_gain=frozen(optional_obj(d, "weights_gain")),
        notes=tuple(str(n) for n in items(d, "notes")), extra=rest(d, _SUMMARY),
    )


def _dump_summary(s: Summary) -> dict[str, Any]:
    test = None if s.membership is None else s.membership.primary
    return {
        "n_train": s.n_train, "n_holdout": s.n_holdout, "n_candidates": s.n_candidates,
        "leak_score": None if s.leak_score is None else s.leak_score.to_dict(),
        "membership_loss_auc": s.membership_loss_auc,
        "membership": None if test is None else test.to_dict(),
        "train": thawed(s.train), "holdout": thawed(s.holdout), "holdout_ssim_p95": s.holdout_ssim_p95,
        "holdout_ssim_p99": s.holdout_ssim_p99, "class_mean_null": thawed(s.class_mean_null),
        "per_class": thawed(s.per_class), "histogram": thawed(s.histogram), "weights_gain": thawed(s.weights_gain),
        "notes": list(s.notes), **thawed(s.extra),
    }


def _inversion(d: JsonObject) -> Inversion:
    gallery = optional_obj(d, "gallery")
    return Inversion(
        mode=text(d, "mode"), effort=str(d.get("effort") or "standard"), complete=bool(d.get("complete", True)),
        incomplete_reason=optional_text(d, "incomplete_reason"), resumed=bool(d.get("resumed", False)),
        resumed_from=optional_text(d, "resumed_from"), steps=integer(d, "steps"),
        planned_steps=integer(d, "planned_steps"), seconds=number(d, "seconds"),
        completed_fraction=number(d, "completed_fraction"), phase_seconds=frozen(dict(d.get("phase_seconds") or {})),
        candidates_per_class=optional_integer(d, "candidates_per_class"),
        notes=tuple(str(n) for n in items(d, "notes")), gallery=None if gallery is None else frozen(dict(gallery)),
        extra=rest(d, _INVERSION),
    )


def _dump_inversion(i: Inversion) -> dict[str, Any]:
    return {"mode": i.mode, "effort": i.effort, "complete": i.complete, "incomplete_reason": i.incomplete_reason,
            "resumed": i.resumed, "resumed_from": i.resumed_from, "steps": i.steps, "planned_steps": i.planned_steps,
            "seconds": i.seconds, "completed_fraction": i.completed_fraction, "phase_seconds": thawed(i.phase_seconds),
            "candidates_per_class": i.candidates_per_class, "notes": list(i.notes), "gallery": thawed(i.gallery),
            **thawed(i.extra)}


def _upgraded(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """A document of an older schema version in the current shape (what ``load`` reads)."""
    version = str(document.get("schema_version", "1.0"))
    if version == SCHEMA_VERSION:
        return document
    if version not in ("1.0", "1.1"):
        raise OutputError(f"findings document of schema version {version}: this leakaudit reads {SCHEMA_VERSION} "
                          "and older")
    # 1.0 had no positive control and no exposure: both are read as absent (the exposure is decided again);
    # 1.0 and 1.1 had no reference-model attacks (absent, as in an audit with R = 0)
    return {**document, "schema_version": SCHEMA_VERSION, "power": document.get("power")}


def _record(d: Mapping[str, Any], gated: bool = True) -> AuditRecord:
    verdict = text(d, "verdict") if gated else "pass"
    if verdict not in VERDICTS:
        raise OutputError(f"findings document: unknown verdict {verdict!r}")
    power, attacks = optional_obj(d, "power"), optional_obj(d, "membership_attacks")
    return AuditRecord(
        schema_version=text(d, "schema_version"), tool=frozen(dict(obj(d, "tool"))), verdict=verdict,
        exit_code=integer(d, "exit_code") if gated else 0, mode=text(d, "mode"), threat_model=text(d, "threat_model"),
        calibrated=flag(d, "calibrated"),
        thresholds=Thresholds.from_dict(obj(d, "thresholds")) if gated else Thresholds(),
        metrics=frozen(dict(obj(d, "metrics"))), summary=_summary(obj(d, "summary")),
        findings=tuple(Finding.from_dict(f) for f in items(d, "findings")),
        gate=GateRecord.from_dict(obj(d, "gate")) if gated else GateRecord(()),
        inversion=_inversion(obj(d, "inversion")),
        provenance=frozen(dict(obj(d, "provenance"))), power=None if power is None else PowerRecord.from_dict(power),
        extra=rest(d, _TOP),
        membership_attacks=None if attacks is None else ReferenceMembership.from_dict(attacks),
        budget_cuts=tuple(BudgetCut.from_dict(c) for c in items(d, "budget_cuts")),
    )


def load(document: Mapping[str, Any], *, validate: bool = True) -> AuditRecord:
    """The record of a gated findings document; a document that is not one is an ``OutputError`` saying why.

    ``validate`` checks it against the schema first when ``jsonschema`` is installed.
    """
    upgraded = _upgraded(document)
    if validate:
        _schema_check(upgraded)
    try:
        return _record(upgraded)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise OutputError(f"not a leakaudit findings document: {exc}") from exc


def load_ungated(document: Mapping[str, Any]) -> AuditRecord:
    """The record of a document the gate has not decided yet (its verdict, thresholds and gate are ignored)."""
    try:
        return _record(_upgraded(document), gated=False)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise OutputError(f"not a leakaudit findings document: {exc}") from exc


def _schema_check(document: Mapping[str, Any]) -> None:
    try:
        from leakaudit.report.schema import validate as schema_validate
        schema_validate(document)
    except ModuleNotFoundError:  # jsonschema is a test extra: without it, the field checks of ``load`` remain
        return


def dump(record: AuditRecord) -> dict[str, Any]:
    """The findings document of ``record``, as an audit writes it."""
    document: dict[str, Any] = {
        "schema_version": record.schema_version, "tool": thawed(record.tool), "verdict": record.verdict,
        "exit_code": record.exit_code, "mode": record.mode, "threat_model": record.threat_model,
        "calibrated": record.calibrated, "thresholds": record.thresholds.to_dict(), "metrics": thawed(record.metrics),
        "summary": _dump_summary(record.summary), "findings": [f.to_dict() for f in record.findings],
        "gate": record.gate.to_dict(), "inversion": _dump_inversion(record.inversion),
        "provenance": thawed(record.provenance), "power": None if record.power is None else record.power.to_dict(),
        "exposure": record.exposure.to_dict(),
    }
    if record.membership_attacks is not None:  # R = 0 writes the document as before
        document["membership_attacks"] = record.membership_attacks.to_dict()
    if record.budget_cuts:  # a run the budget let finish writes the document as before
        document["budget_cuts"] = [c.to_dict() for c in record.budget_cuts]
    document.update(thawed(record.extra))
    return document



def as_record(value: AuditRecord | Mapping[str, Any]) -> AuditRecord:
    """A record as it is, or a findings document read as one (field checks only: the writer validated it)."""
    return value if isinstance(value, AuditRecord) else load(value, validate=False)


__all__ = ["SCHEMA_VERSION", "Exposure", "as_record", "dump", "load", "load_ungated"]
