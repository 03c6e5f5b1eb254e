"""What the report's membership section shows: each attack's row and ROC, the recipe check, the exposed members.

Every choice is made here; the template only lays it out. Without reference
models the section says the loss threshold, the weakest known test, decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from markupsafe import Markup

from leakaudit.record import AuditRecord
from leakaudit.record.membership import AttackRate, AttackResult
from leakaudit.report.images import ImageRenderer
from leakaudit.report.roc import roc_svg
from leakaudit.report.view import num

FITS = (("in_loss", "IN loss"), ("in_accuracy", "IN accuracy"), ("out_loss", "OUT loss"),
        ("out_accuracy", "OUT accuracy"), ("loss_gap", "loss gap (OUT − IN)"))


def _rate(rate: AttackRate | None) -> str:
    if rate is None:
        return "–"
    text = f"{rate.tpr:.1%} ({rate.ci_low:.1%}–{rate.ci_high:.1%})"
    return text if rate.resolvable else text + " not resolvable"


def _row(row: AttackResult, strongest: AttackResult) -> dict[str, Any]:
    return {"name": row.name, "attack": row.attack, "models": row.reference_models,
            "auc": f"{row.auc:.3f} ({row.ci_low:.3f}–{row.ci_high:.3f})", "tpr1": _rate(row.rate(0.01)),
            "tpr01": _rate(row.rate(0.001)), "resolution": f"{row.fpr_resolution:.2%}", "strongest": row is strongest,
            "note": row.note}


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "none" if value is None else str(value)


def _check(check: Mapping[str, Any] | None) -> list[dict[str, str]]:
    if not check:
        return []
    target, refs = check.get("target") or {}, check.get("references") or {}
    return [{"label": label, "target": num(target.get(key)), "references": num(refs.get(key))} for key, label in FITS]


def _exposed(record: AuditRecord, arrays: Mapping[str, np.ndarray], images: ImageRenderer) -> list[dict[str, Any]]:
    attacks = record.membership_attacks
    if attacks is None:
        return []
    train, recon = arrays.get("membership_train_images"), arrays.get("images")
    rows = []
    for k, e in enumerate(attacks.exposed):
        member = train[k] if train is not None and k < len(train) else None
        best = (recon[e.reconstruction_index] if recon is not None and e.reconstruction_index is not None
                and 0 <= e.reconstruction_index < len(recon) else None)
        rows.append({"index": e.index, "score": f"{e.score:.3g}", "ssim": num(e.ssim), "member": images.uri(member),
                     "recon": images.uri(best)})
    return rows


def membership_view(record: AuditRecord, arrays: Mapping[str, np.ndarray],
                    images: ImageRenderer) -> dict[str, Any] | None:
    """The membership section; None without a holdout (no membership test ran)."""
    if record.summary.membership is None:
        return None
    attacks = record.membership_attacks
    if attacks is None or attacks.reference_models == 0:
        return {"test": record.membership_test_name, "rows": [], "curves": [], "check": [], "exposed": [],
                "warning": None, "recipe": None, "given": False, "notes": list(attacks.notes) if attacks else []}
    strongest = attacks.strongest
    loss = next((a for a in attacks.attacks if a.attack == "loss"), None)
    curves = [{"name": a.name, "svg": Markup(roc_svg(a, loss, i))} for i, a in enumerate(attacks.attacks)]
    recipe = ", ".join(f"{k} = {_value(v)}" for k, v in attacks.recipe.items())
    return {"test": record.membership_test_name, "rows": [_row(a, strongest) for a in attacks.attacks],
            "curves": curves, "check": _check(attacks.recipe_check), "warning": attacks.recipe_warning,
            "recipe": recipe, "given": attacks.recipe_given, "exposed": _exposed(record, arrays, images),
            "notes": list(attacks.notes), "models": attacks.reference_models, "planned": attacks.planned_models,
            "seconds": num(attacks.seconds_per_model, 2), "method": attacks.method}
