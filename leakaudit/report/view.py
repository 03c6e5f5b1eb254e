"""What the HTML template shows, computed from the audit record and its arrays.

The template only lays things out; every choice (which rule decided a row,
what the baseline changed, which images are the top leaked ones, which notes
are worth a line) is made here, in small functions over the record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from leakaudit.record import AuditRecord
from leakaudit.record.parse import thawed
from leakaudit.report.images import DIFF_GAIN, ImageRenderer
from leakaudit.report.ranking import list_title, most_leaked
from leakaudit.report.summary import format_p

GALLERY_PER_CLASS = 12
GALLERY_MAX_CLASSES = 40
GALLERY_THUMB_SIDE = 64
NO_RULE = "decided by the gate (this document predates the gate's per-row rule)"

Row = dict[str, Any]  # one line of the template: a finding's JSON object, its pictures and its words


def num(value: Any, digits: int = 3) -> str:
    """A number as the report prints it: fixed digits, ``–`` when missing."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


def _pick(array: np.ndarray | None, index: int) -> np.ndarray | None:
    if array is None or not (0 <= index < len(array)):
        return None
    picked: np.ndarray = array[index]
    return picked


def finding_rows(record: AuditRecord, arrays: Mapping[str, np.ndarray], images: ImageRenderer) -> list[Row]:
    """One row per finding: numbers, the deciding rule (the gate's words), the baseline change, three pictures."""
    recon, train = arrays.get("images"), arrays.get("finding_train_images")
    rows = []
    for k, finding in enumerate(record.findings):
        r, t = _pick(recon, finding.reconstruction_index), _pick(train, k)
        previous = finding.previous_ssim
        rows.append({
            "f": finding, "recon": images.uri(r), "train": images.uri(t), "diff": images.diff_uri(r, t),
            "lpips": num(finding.lpips), "rule": finding.status_rule or NO_RULE, "flagged": finding.flagged,
            "previous": num(previous), "change": None if previous is None else f"{float(finding.ssim) - previous:+.3f}",
        })
    return rows


def top_leaked(record: AuditRecord, rows: Sequence[Row], arrays: Mapping[str, np.ndarray],
               images: ImageRenderer) -> dict[str, Any]:
    """The most-leaked list (``ranking.most_leaked``: both signals, each named) with each image's pictures: its
    finding's row where it has one, else the exposed member beside its best reconstruction."""
    samples = most_leaked(record)
    members, recon = arrays.get("membership_train_images"), arrays.get("images")
    out = []
    for s in samples:
        if s.finding_index is not None and s.finding is not None:
            row = rows[s.finding_index]
            pictures, anchor = (row["recon"], row["train"]), f"finding-{s.finding.rank}"
        else:
            assert s.membership is not None  # an image on neither list is never ranked
            m = s.membership
            best = _pick(recon, -1 if m.member.reconstruction_index is None else m.member.reconstruction_index)
            pictures, anchor = (images.uri(best), images.uri(_pick(members, m.exposed_index))), f"exposed-{m.rank}"
        out.append({"s": s, "recon": pictures[0], "train": pictures[1], "anchor": anchor, "label": s.label,
                    "reasons": list(s.reasons), "status": s.status})
    return {"title": list_title(samples), "rows": out}


def _gallery_source(record: AuditRecord, arrays: Mapping[str, np.ndarray]) -> tuple[str, dict[int, list[int]]]:
    """Diverse-mode galleries when the inversion made them, else the candidates grouped by target class."""
    gallery = record.inversion.gallery
    if gallery:
        return "diverse", {int(k): [int(i) for i in v] for k, v in gallery.items()}
    targets = arrays.get("targets")
    if targets is None:
        return "none", {}
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(np.asarray(targets).tolist()):
        groups.setdefault(int(label), []).append(index)
    return "candidates", groups


def galleries(record: AuditRecord, arrays: Mapping[str, np.ndarray], images: ImageRenderer) -> dict[str, Any]:
    """Per-class pictures of what the inversion produced, and which kind they are."""
    kind, groups = _gallery_source(record, arrays)
    recon = arrays.get("images")
    if not groups or recon is None or not images.include:
        return {"kind": kind, "classes": [], "total": len(groups)}
    names = record.summary.class_names
    small = replace(images, max_side=GALLERY_THUMB_SIDE)  # galleries grow with the class count: keep them light
    out = []
    for key in sorted(groups)[:GALLERY_MAX_CLASSES]:
        uris = [small.uri(_pick(recon, i)) for i in groups[key][:GALLERY_PER_CLASS]]
        out.append({"class_index": key, "name": names.get(key, str(key)), "images": [u for u in uris if u],
                    "n": len(groups[key])})
    return {"kind": kind, "classes": out, "total": len(groups)}


def _about_missing_lpips(note: str) -> bool:
    lowered = note.lower()
    return "lpips" in lowered and "unavailable" in lowered


def notes(record: AuditRecord) -> list[str]:
    """The audit's notes once each (the inversion's are also in the summary's); LPIPS's reason is shown elsewhere."""
    lpips_missing = not record.lpips_available
    seen: list[str] = []
    for note in record.summary.notes + record.inversion.notes:
        if note not in seen and not (lpips_missing and _about_missing_lpips(note)):
            seen.append(note)
    return seen


def leak_facts(record: AuditRecord) -> dict[str, str] | None:
    """The leak score with its interval and p-value, as short strings."""
    leak = record.summary.leak_score
    if leak is None:
        return None
    level = round(float(leak.ci_level) * 100)
    return {"value": num(leak.value), "ci": f"{level}% CI {num(leak.ci_low)}–{num(leak.ci_high)}",
            "p": format_p(leak.p_value), "members": str(leak.n_members), "nonmembers": str(leak.n_nonmembers)}


def diff_scale() -> str:
    """The stated scale of the difference maps."""
    return (f"|reconstruction − training image| × {DIFF_GAIN:g}: black = identical, "
            f"white = a difference of {100 / DIFF_GAIN:.0f}% of the pixel range or more")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _power_pairs(record: AuditRecord, arrays: Mapping[str, np.ndarray], images: ImageRenderer) -> list[dict[str, Any]]:
    """The shown rung's members beside their best reconstruction."""
    members, recon = arrays.get("power_member_images"), arrays.get("power_reconstructions")
    order = arrays.get("power_pair_order")
    rung = None if record.power is None else record.power.shown_rung
    if members is None or recon is None or order is None or rung is None:
        return []
    best = rung.member_best_ssim
    pairs = []
    for i, index in enumerate(order.tolist()):
        ssim = best[index] if 0 <= index < len(best) else None
        pairs.append({"member": images.uri(_pick(members, i)), "recon": images.uri(_pick(recon, i)), "ssim": num(ssim)})
    return [p for p in pairs if p["member"]]


def power_view(record: AuditRecord, arrays: Mapping[str, np.ndarray], images: ImageRenderer) -> dict[str, Any] | None:
    """The positive control: its status, one row per rung, and its members beside their reconstructions."""
    power = record.power
    if power is None:
        return None
    rungs = []
    for r in power.rungs:
        leak = r.leak_score
        rungs.append({"k": r.k, "leak": num(None if leak is None else leak.value),
                      "ci": "–" if leak is None else f"{num(leak.ci_low)}–{num(leak.ci_high)}",
                      "above": f"{r.members_above_quantile}/{r.n_members}",
                      "seen": f"{r.members_at_ssim_0_4}/{r.n_members}", "shown": r.shown,
                      "memorised": r.memorised, "steps": r.training_steps, "n_null": r.n_null, "reason": r.reason})
    return {"status": power.status, "slug": power.status.replace(" ", "-"),
            "statement": _sentence(power.plain_statement), "reason": _sentence(power.reason), "rungs": rungs,
            "pairs": _power_pairs(record, arrays, images), "images_k": power.images_k,
            "recipe": thawed(power.recipe), "copy": power.copy}
